"""The shared OpenAI-compatible client against the local fake server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
import soundfile as sf

from sightsound_core.config import ClientConfig
from sightsound_core.backends.openai_client import (
    ChatClient,
    ChatRequest,
    TokenBucket,
    audio_part,
    estimate_tokens,
    image_part,
    run_chat,
    user_message,
)


def _settings(server, **kw) -> ClientConfig:
    base = dict(base_url=server.url, api_key_env=None, concurrency=8, max_retries=3,
                timeout_s=2.0, backoff_base_s=0.01, backoff_max_s=0.05)
    return ClientConfig(**{**base, **kw})


def _request(i: int, **kw) -> ChatRequest:
    text = f"Question: which one {i}?\nOptions:\nA. low\nB. high"
    return ChatRequest(messages=[user_message(text)], max_tokens=32, request_id=f"item-{i}", **kw)


def test_n_choices_usage_and_request_ids(openai_server):
    [result] = run_chat(_settings(openai_server), "fake", [_request(0, n=3, temperature=1.0)])
    assert result.ok and result.attempts == 1 and len(result.choices) == 3
    assert all(c.text.endswith(("<answer>low</answer>", "<answer>high</answer>")) for c in result.choices)
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert openai_server.requests == {"item-0": 1}


@pytest.mark.parametrize("fault", ["429", "500", "timeout", "malformed"])
def test_each_fault_is_retried_then_succeeds(openai_server, fault):
    openai_server.script("item-0", [fault, fault, "ok"])
    [result] = run_chat(_settings(openai_server, timeout_s=0.2), "fake", [_request(0)])
    assert result.ok and result.attempts == 3
    assert openai_server.requests["item-0"] == 3


def test_retry_after_is_honoured(openai_server):
    openai_server.configure(retry_after_s=0.4)
    openai_server.script("item-0", ["429", "ok"])
    [result] = run_chat(_settings(openai_server), "fake", [_request(0)])
    assert result.ok and result.attempts == 2
    assert result.latency_s >= 0.4  # backoff alone would have waited at most 0.01 s


@pytest.mark.parametrize("fault, kind", [("429", "http_429"), ("500", "http_500"), ("timeout", "timeout"),
                                         ("malformed", "malformed")])
def test_retries_exhausted_give_the_error_class(openai_server, fault, kind):
    openai_server.script("item-0", [fault] * 3)
    [result] = run_chat(_settings(openai_server, max_retries=2, timeout_s=0.2), "fake", [_request(0)])
    assert not result.ok and result.error == kind and result.attempts == 3 and not result.choices


def test_a_bad_key_costs_one_request(openai_server):
    openai_server.configure(api_key="sk-right-key-000000")
    results = run_chat(_settings(openai_server, concurrency=1), "fake", [_request(i) for i in range(5)],
                       api_key="sk-wrong-key-111111")
    assert [r.error for r in results] == ["http_401"] * 5
    assert openai_server.outcomes == {"401": 1}
    assert "sk-wrong-key-111111" not in results[0].detail and "[REDACTED]" in results[0].detail


def test_headers_on_the_wire(openai_server):
    run_chat(_settings(openai_server), "fake", [_request(0)])
    sent = openai_server.headers["item-0"]
    assert sent["content-type"] == "application/json"
    assert "authorization" not in sent  # no key configured: none sent, not even $OPENAI_API_KEY's
    assert not [h for h in sent if h.startswith("x-stainless-")]
    openai_server.configure(api_key="sk-right-key-000000")
    [result] = run_chat(_settings(openai_server), "fake", [_request(1)], api_key="sk-right-key-000000")
    assert result.ok and openai_server.headers["item-1"]["authorization"] == "Bearer sk-right-key-000000"


def test_concurrency_is_bounded(openai_server):
    openai_server.configure(latency_s=0.05)
    results = run_chat(_settings(openai_server, concurrency=5), "fake", [_request(i) for i in range(40)])
    assert all(r.ok for r in results)
    assert openai_server.max_in_flight == 5


def test_requests_per_minute_limit(openai_server):
    began = time.monotonic()
    results = run_chat(_settings(openai_server, requests_per_minute=1200), "fake", [_request(i) for i in range(40)])
    # 20 requests a second with a one-second burst: the last 20 wait about a second.
    assert all(r.ok for r in results) and time.monotonic() - began >= 0.9


def test_tokens_per_minute_limit(openai_server):
    requests = [_request(i) for i in range(10)]
    per_request = estimate_tokens(requests[0])
    began = time.monotonic()
    # A burst of 4 requests' tokens a second, refunded down to what each actually used.
    run_chat(_settings(openai_server, tokens_per_minute=per_request * 4 * 60), "fake", requests)
    assert time.monotonic() - began >= 0.3


def test_token_bucket_lets_an_oversized_request_through():
    async def main() -> float:
        bucket = TokenBucket(per_minute=600)  # 10 a second, capacity 10
        began = time.monotonic()
        await bucket.acquire(15)  # bigger than the bucket: goes now, leaves a debt of 5
        await bucket.acquire(1)  # waits for the debt and its own token: 0.6 s
        return time.monotonic() - began

    assert 0.5 < asyncio.run(main()) < 1.2


def test_run_chat_works_inside_a_running_loop(openai_server):
    async def main():
        return run_chat(_settings(openai_server), "fake", [_request(0)])

    [result] = asyncio.run(main())
    assert result.ok


def test_async_client_streams_results(openai_server):
    seen = []

    async def main():
        async with ChatClient(_settings(openai_server), "fake") as client:
            return await client.chat_many([_request(i) for i in range(10)], lambda i, r: seen.append(i))

    results = asyncio.run(main())
    assert sorted(seen) == list(range(10)) and all(r.ok for r in results)


def test_built_requests_are_built_lazily_in_item_order(openai_server):
    """With ``build``, each item is built once, in item order, and never more than twice the
    slots are built and unanswered at once; results come back in item order."""
    openai_server.configure(latency_s=0.02)
    built, live, peak = [], set(), [0]

    def build(i):
        built.append(i)
        live.add(i)
        peak[0] = max(peak[0], len(live))
        return _request(i)

    def done(i, result):
        live.discard(i)

    results = run_chat(_settings(openai_server, concurrency=3), "fake", list(range(40)), done, build=build)
    assert built == list(range(40))
    assert 3 < peak[0] <= 6
    assert [r.ok for r in results] == [True] * 40
    assert sorted(openai_server.requests) == sorted(f"item-{i}" for i in range(40))
    assert openai_server.max_in_flight <= 3


def test_media_parts_round_trip():
    audio = (0.5 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    part = audio_part(audio)
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    decoded, rate = sf.read(io.BytesIO(base64.b64decode(part["input_audio"]["data"])), dtype="float32")
    assert rate == 16000 and np.abs(decoded - audio).max() < 1e-4
    image = image_part(np.zeros((8, 8, 3), np.uint8))
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    request = ChatRequest(messages=[user_message(part, "x" * 400)], max_tokens=10)
    assert estimate_tokens(request) == 25 + 100 + 10
    json.dumps(request.messages)  # JSON-able as sent


def test_dumps_body_equals_json_dumps_whatever_the_text():
    from sightsound_core.backends.openai_client import dumps_body, system_message

    body = {"model": "m", "n": 2, "messages": [
        system_message('sys \x00 "quoted" \\ \u00e9'),
        user_message(audio_part(np.zeros(320, np.float32)), image_part(np.zeros((4, 4, 3), np.uint8)),
                     "\x000\x00 \\u00000\\u0000 looks like a placeholder"),
    ]}
    assert json.loads(dumps_body(body)) == body
