"""A local OpenAI-compatible chat server for tests and benchmarks, with injectable trouble.

``FakeOpenAIServer`` is a real HTTP server (aiohttp, in a background thread with its own event
loop, on 127.0.0.1) speaking ``POST /v1/chat/completions`` with ``n`` choices. Each attempt of each item
draws its fate from a seeded hash of (seed, item, attempt number), so a run's faults do not depend
on the order requests arrive in:

- ``p429``: 429 with ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms``;
- ``p500``: 500 with an OpenAI-style error body;
- ``p_timeout``: the reply never comes (the handler waits ``hang_s`` or until the server stops);
- ``p_malformed``: 200 with a truncated JSON body.

An *item* is the ``X-Client-Request-Id`` header when the client sends one, else a digest of the
last user message. ``requests[item]`` counts attempts per item and ``outcomes`` counts fates, so a
test can assert which items a run touched; ``answered_at[item]`` is the wall-clock time the
handler last handed a successful reply to the transport (what a kill test compares with the moment
of its kill); ``headers[request_id]`` holds the last request's headers (lower-cased names) for each
``X-Client-Request-Id`` ('' for none); ``script(item, [...])`` forces the next fates of one item. With ``api_key`` set, a request without ``Authorization: Bearer <api_key>`` gets a 401 whose
body quotes the key it was sent (as real servers partly do), to test redaction; it is counted in
``outcomes["401"]`` only.

Replies come from ``responder(body, choice_index) -> str``; the default answers the verifier with
``fake_verdict`` of the trace in the prompt, the teacher with a ``<think>…</think><answer>…</answer>``
choosing one of the listed options, and anything else with ``"ok"``.

    with FakeOpenAIServer(latency_s=0.01, p429=0.1, seed=0) as server:
        ClientConfig(base_url=server.url, api_key_env=None)

The ``openai_server`` pytest fixture (``tests/conftest.py``) yields a started server and stops it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from typing import Any, Callable

OUTCOMES = ("ok", "429", "500", "timeout", "malformed")
UNHEARD = "[unheard]"
"""Marks a sentence of a trace that ``fake_verdict`` reports as unsupported."""

_TRACE = re.compile(r"<<<TRACE\n(.*)\nTRACE>>>", re.DOTALL)
_OPTION = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)


def fake_verdict(trace: str) -> str:
    """The verdict the default responder gives: sentences holding ``[unheard]`` are unsupported.

    >>> fake_verdict("A low hum.")
    '{"verdict": "accept", "unsupported_claims": []}'
    >>> fake_verdict("A low hum. A bang [unheard].")
    '{"verdict": "reject", "unsupported_claims": ["A bang [unheard]."]}'
    """
    sentences = re.findall(r"[^.!?]+[.!?]?", trace)
    claims = [s.strip() for s in sentences if UNHEARD in s]
    return json.dumps({"verdict": "reject" if claims else "accept", "unsupported_claims": claims})


def _user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(p.get("text", "") for p in content or [] if p.get("type") == "text")
    return ""


def default_responder(body: dict[str, Any], index: int) -> str:
    text = _user_text(body)
    trace = _TRACE.search(text)
    if trace:
        return fake_verdict(trace.group(1))
    options = _OPTION.findall(text)
    if options:
        # Greedy requests agree across choices; sampled ones vary with the choice index.
        salt = index if body.get("temperature", 0) > 0 else 0
        pick = int(hashlib.sha256(f"{text}|{salt}".encode()).hexdigest(), 16) % len(options)
        letter, option = options[pick]
        return f"<think>From the scene, option {letter} fits best.</think><answer>{option}</answer>"
    return "ok"


def item_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(_user_text(body).encode()).hexdigest()[:16]


class FakeOpenAIServer:
    """See the module docstring. All rates are probabilities per attempt; they may change between
    runs with ``configure``."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        p429: float = 0.0,
        p500: float = 0.0,
        p_timeout: float = 0.0,
        p_malformed: float = 0.0,
        retry_after_s: float = 0.05,
        hang_s: float = 30.0,
        seed: int = 0,
        api_key: str | None = None,
        responder: Callable[[dict[str, Any], int], str] = default_responder,
    ):
        self.latency_s = latency_s
        self.p429, self.p500, self.p_timeout, self.p_malformed = p429, p500, p_timeout, p_malformed
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.seed = seed
        self.api_key = api_key
        self.responder = responder
        self.requests: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.log: list[tuple[str, int, str]] = []
        self.answered_at: dict[str, float] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._scripts: dict[str, list[str]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # -- control --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def configure(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            if not hasattr(self, key) or key.startswith("_"):
                raise AttributeError(key)
            setattr(self, key, value)

    def script(self, item: str, outcomes: list[str]) -> None:
        """Force the next attempts of ``item`` (each one of ``OUTCOMES``), before any dice."""
        assert all(o in OUTCOMES for o in outcomes), outcomes
        self._scripts[item] = list(outcomes)

    def reset_counters(self) -> None:
        self.requests.clear()
        self.outcomes.clear()
        self.log.clear()
        self.answered_at.clear()
        self.headers.clear()
        self.max_in_flight = 0

    def start(self) -> "FakeOpenAIServer":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sock, ready), name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        self._thread = None

    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        from aiohttp import web

        async def main() -> None:
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_post("/v1/chat/completions", self._completions)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
            await runner.setup()
            await web.SockSite(runner, sock, backlog=2048).start()
            ready.set()
            await self._stopping.wait()
            await runner.cleanup()

        asyncio.run(main())

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- serving --------------------------------------------------------------------------------
    def _fate(self, item: str, attempt: int) -> str:
        script = self._scripts.get(item)
        if script:
            return script.pop(0)
        digest = hashlib.sha256(f"{self.seed}|{item}|{attempt}".encode()).digest()
        u = int.from_bytes(digest[:8], "little") / 2**64
        for outcome, p in (("429", self.p429), ("500", self.p500), ("timeout", self.p_timeout),
                           ("malformed", self.p_malformed)):
            if u < p:
                return outcome
            u -= p
        return "ok"

    async def _completions(self, request: Any) -> Any:
        from aiohttp import web

        self.headers[request.headers.get("x-client-request-id", "")] = {k.lower(): v for k, v in request.headers.items()}
        if self.api_key is not None:
            sent = request.headers.get("authorization", "")
            if sent != f"Bearer {self.api_key}":
                self.outcomes["401"] += 1
                message = f"Incorrect API key provided: {sent.removeprefix('Bearer ')}"
                return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                                    "code": "invalid_api_key"}}, status=401)
        body = json.loads(await request.read())
        item = request.headers.get("x-client-request-id") or item_key(body)
        attempt = self.requests[item]
        self.requests[item] += 1
        fate = self._fate(item, attempt)
        self.outcomes[fate] += 1
        self.log.append((item, attempt, fate))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if fate == "429":
                wait = self.retry_after_s
                headers = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))}
                return web.json_response({"error": {"message": "Rate limit reached", "type": "requests",
                                                    "code": "rate_limit_exceeded"}}, status=429, headers=headers)
            if fate == "500":
                return web.json_response({"error": {"message": "The server had an error",
                                                    "type": "server_error"}}, status=500)
            if fate == "timeout":
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.hang_s)
                except asyncio.TimeoutError:
                    pass
                return web.json_response({"error": {"message": "late"}}, status=504)
            if fate == "malformed":
                return web.Response(text='{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"ind',
                                    content_type="application/json")
            reply = web.json_response(self._completion(body))
            self.answered_at[item] = time.time()
            return reply
        finally:
            self.in_flight -= 1

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        texts = [self.responder(body, i) for i in range(n)]
        prompt_tokens = len(_user_text(body)) // 4
        return {
            "id": f"chatcmpl-{hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": sum(len(t) // 4 for t in texts),
                "total_tokens": prompt_tokens + sum(len(t) // 4 for t in texts),
            },
        }
