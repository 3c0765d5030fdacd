"""The AGFV verifier on any OpenAI-compatible server: GPT-4o-audio, or ``vllm serve`` with
Qwen2-Audio / Qwen2.5-Omni behind it.

Each trace goes out as one chat completion: the verifier system prompt, then a user message with
the clip's audio as a base64 WAV ``input_audio`` part and the question, options and fenced trace as
text. The reply goes through ``parse_verdict`` like every backend's; a request that fails after its
retries becomes an ``error`` result whose reason is the error class (``http_429``, ``timeout``…).

Requests are encoded just before they are sent (at most ``2 * concurrency`` WAVs in memory), so a
shard of long clips does not hold every clip's base64 at once.
"""

from __future__ import annotations

import logging
from typing import Callable

from sightsound_core.backends.base import VerifyRequest, VerifyResult
from sightsound_core.backends.openai_client import (
    ChatRequest,
    ChatResult,
    audio_part,
    run_chat,
    system_message,
    user_message,
)
from sightsound_core.config import ClientConfig, VerifyConfig
from sightsound_core.prompts import verifier_prompt
from sightsound_core.verdicts import parse_verdict

log = logging.getLogger(__name__)


def request_id(req: VerifyRequest) -> str:
    """``clip_id/sample_idx``, ASCII-only (it travels as an HTTP header)."""
    return f"{req.clip.clip_id}/{req.sample_idx}".encode("ascii", "backslashreplace").decode()


def to_result(result: ChatResult) -> VerifyResult:
    """A client result as a verifier result: the parsed verdict, or ``error`` with its class."""
    if not result.ok:
        return VerifyResult("error", [], result.error or "error", "", result.attempts, result.latency_s)
    raw = result.choices[0].text
    status, claims, reason = parse_verdict(raw)
    return VerifyResult(status, claims, reason, raw, result.attempts, result.latency_s)


class OpenAIVerifier:
    """Implements ``VerifierBackend``, plus ``verify_stream`` for results as they finish.

    Args:
        client: server, key names and client discipline (a stage's ``client``).
        model: the served model name.
        max_new_tokens: completion budget for the JSON verdict.
    """

    name = "openai"

    def __init__(self, client: ClientConfig, model: str, max_new_tokens: int = 256):
        self.client = client
        self.model = model
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_config(cls, cfg: VerifyConfig) -> "OpenAIVerifier":
        return cls(cfg.client, cfg.model, cfg.max_new_tokens)

    def load(self) -> None:
        """Nothing to load; the key is resolved when a client opens, at each call."""

    def chat_request(self, req: VerifyRequest) -> ChatRequest:
        system, user = verifier_prompt(req.clip.question, req.clip.options, req.trace)
        return ChatRequest(
            messages=[system_message(system), user_message(audio_part(req.audio, req.sample_rate), user)],
            max_tokens=self.max_new_tokens,
            temperature=0.0,
            request_id=request_id(req),
        )

    def verify(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        return self.verify_stream(requests)

    def verify_stream(
        self,
        requests: list[VerifyRequest],
        on_result: Callable[[int, VerifyResult], None] | None = None,
    ) -> list[VerifyResult]:
        """One result per request, in request order; ``on_result(i, result)`` as each finishes."""
        results: list[VerifyResult | None] = [None] * len(requests)

        def done(i: int, reply: ChatResult) -> None:
            if not reply.ok:
                log.warning("verify %s failed after %d attempts: %s (%s)",
                            request_id(requests[i]), reply.attempts, reply.error, reply.detail)
            results[i] = to_result(reply)
            if on_result is not None:
                on_result(i, results[i])

        run_chat(self.client, self.model, requests, done, build=self.chat_request)
        return results  # type: ignore[return-value]

