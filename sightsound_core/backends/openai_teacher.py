"""The teacher on any OpenAI-compatible server: ``vllm serve`` with video input, or a hosted model.

One chat request per clip asks for ``n=K`` choices, so a server that shares prefill across ``n``
(vLLM does) encodes the video once. The silent frames go either as a video (``media="video"``: the
sampled frames re-encoded with PyAV into an H.264 mp4 with no audio stream, as a ``video_url``
data URL, which ``vllm serve`` feeds to Qwen2.5-VL's video path) or as images (``media="frames"``:
one JPEG ``image_url`` per frame, each preceded by its timestamp, for hosted image models).

Concurrency, client-side rate limits, retries with backoff on 429/5xx/timeouts/malformed bodies
and the ``Retry-After`` discipline all live in ``openai_client.ChatClient``; this module only
builds requests and maps replies to ``TeacherResult``; ``sample_stream`` hands each result over as
it arrives, so the teacher stage can save it before another request is sent. Each request carries the request id
``teacher:{clip_id}:{seed}`` (``questions:…`` for synthesis). A request that fails after its
retries gives a result with no samples and the error; the teacher stage turns it into K error
rows and a quarantine row, so no sample is ever lost or duplicated.

Token counts: the API reports completion tokens summed over the ``n`` choices; each sample gets
an equal share.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any, Callable

import numpy as np

from sightsound_core.backends.base import Generation, TeacherRequest, TeacherResult
from sightsound_core.backends.openai_client import (
    ChatRequest,
    ChatResult,
    image_part,
    run_chat,
    system_message,
    text_part,
)
from sightsound_core.config import ClientConfig, TeacherConfig
from sightsound_core.prompts import QUESTIONS_SYSTEM, TEACHER_SYSTEM, questions_user_text, teacher_user_text

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length"}


def silent_mp4(frames: np.ndarray, times: np.ndarray) -> bytes:
    """The frames (T, H, W, 3) uint8 as an H.264 mp4 with no audio stream, timed like the clip."""
    import av

    fps = 1.0 / float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=max(1, round(fps)))
        stream.height, stream.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[: stream.height, : stream.width]), format="rgb24")
            out.mux(stream.encode(image))
        out.mux(stream.encode())
    return buf.getvalue()


def video_part(frames: np.ndarray, times: np.ndarray) -> dict[str, Any]:
    data = base64.b64encode(silent_mp4(frames, times)).decode("ascii")
    return {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{data}"}}


def media_parts(frames: np.ndarray, times: np.ndarray, media: str) -> list[dict[str, Any]]:
    """The clip's silent frames as message parts: one video, or timestamped images."""
    if media == "video":
        return [video_part(frames, times)]
    parts: list[dict[str, Any]] = []
    for frame, t in zip(frames, times):
        parts += [text_part(f"Frame at {float(t):.2f} s:"), image_part(frame)]
    return parts


class OpenAITeacher:
    """Teacher over an OpenAI-compatible chat API (implements ``TeacherBackend`` and
    ``QuestionProposer``).

    Args:
        client: server, key names and client discipline (a stage's ``client``).
        model: the served model name.
        media: ``video`` or ``frames`` (see the module docstring).
    """

    name = "openai"

    def __init__(
        self,
        client: ClientConfig,
        model: str,
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        media: str = "video",
    ):
        self.client = client
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.media = media

    @classmethod
    def from_config(cls, cfg: TeacherConfig) -> "OpenAITeacher":
        return cls(cfg.client, cfg.model, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.media)

    def load(self) -> None:
        """Nothing to load: a client is opened per call (``run_chat``)."""

    def sample(self, requests: list[TeacherRequest], k: int, seed: int) -> list[TeacherResult]:
        return self.sample_stream(requests, k, seed)

    def sample_stream(
        self,
        requests: list[TeacherRequest],
        k: int,
        seed: int,
        on_result: Callable[[int, TeacherResult], None] | None = None,
    ) -> list[TeacherResult]:
        """One result per request, in request order; ``on_result(i, result)`` as each finishes,
        inside the client's event loop (no request is sent while it runs)."""

        def chat(r: TeacherRequest) -> ChatRequest:
            return ChatRequest(
                messages=[
                    system_message(TEACHER_SYSTEM),
                    {"role": "user", "content": [*media_parts(r.frames, r.frame_times, self.media),
                                                 text_part(teacher_user_text(r.clip.question, r.clip.options))]},
                ],
                max_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                n=k,
                seed=seed,
                request_id=f"teacher:{r.clip.clip_id}:{seed}",
            )

        results: list[TeacherResult | None] = [None] * len(requests)

        def done(i: int, res: ChatResult) -> None:
            results[i] = self._result(requests[i], res, k)
            if on_result is not None:
                on_result(i, results[i])

        run_chat(self.client, self.model, requests, done, build=chat)
        return results  # type: ignore[return-value]

    def propose(self, requests: list[TeacherRequest], n: int, seed: int) -> list[TeacherResult]:
        """One question-synthesis reply per clip (JSON text, parsed by ``questions.parse_proposals``)."""

        def chat(r: TeacherRequest) -> ChatRequest:
            return ChatRequest(
                messages=[
                    system_message(QUESTIONS_SYSTEM),
                    {"role": "user", "content": [*media_parts(r.frames, r.frame_times, self.media),
                                                 text_part(questions_user_text(n))]},
                ],
                # A JSON list of questions is longer than one reasoning trace.
                max_tokens=2 * self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=seed,
                request_id=f"questions:{r.clip.clip_id}:{seed}",
            )

        return [self._result(r, res, 1) for r, res in zip(requests, run_chat(self.client, self.model, requests, build=chat), strict=True)]

    @staticmethod
    def _result(req: TeacherRequest, res: ChatResult, k: int) -> TeacherResult:
        if not res.ok:
            return TeacherResult(req.clip.clip_id, [], res.latency_s, error=f"{res.error}: {res.detail}")
        # A server that returns fewer than n choices leaves the missing samples to the stage's error
        # rows; extra choices are never kept (each sample index appears once).
        choices = res.choices[:k]
        share = res.completion_tokens // max(1, len(choices))
        samples = [Generation(c.text, _FINISH.get(c.finish_reason, "error"), res.prompt_tokens, share) for c in choices]
        if len(res.choices) != k:
            log.warning("%s: server returned %d of %d choices", req.clip.clip_id, len(res.choices), k)
        return TeacherResult(req.clip.clip_id, samples, res.latency_s)
