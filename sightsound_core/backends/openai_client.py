"""Async client for OpenAI-compatible chat completions, shared by the teacher and the verifier.

One ``ChatClient`` serves GPT-4o(-audio), ``vllm serve`` and any server speaking
``POST {base_url}/chat/completions``. HTTP is the ``openai`` SDK's (``AsyncOpenAI`` on its aiohttp
transport, ``DefaultAioHttpClient``); this module adds the discipline every caller needs when it
sends thousands of requests, which the SDK does not have:

- bounded concurrency (an asyncio semaphore held only while a request is on the wire);
- client-side rate limits in requests and tokens per minute (token buckets; token use is
  estimated before a call and corrected from the reply's ``usage``);
- retries on 408/409/429/5xx, timeouts, connection failures and malformed bodies, with full-jitter
  exponential backoff that never waits less than the server's ``retry-after-ms`` / ``Retry-After``;
- a result per call that never raises for API trouble: the choices, or an error class
  (``http_429``, ``http_500``, ``timeout``, ``connect``, ``malformed``, ``http_401``…) with a
  redacted detail, plus the attempts made and the wall time spent.

The API key is resolved when the client opens (``secrets.resolve_api_key``, from the names in
``ClientConfig``), handed to the SDK, and registered for log redaction; it is not an attribute of
any config object. After a 401 or 403 the client stops sending: every later call fails at once
with the same error class, so a bad key costs at most ``concurrency`` requests, not thousands.

Typical use, from synchronous code (a stage, a Prefect task)::

    config = ClientConfig(base_url="http://127.0.0.1:8000/v1", api_key_env=None, concurrency=32)
    requests = [ChatRequest(messages=[user_message(audio_part(wav), "What is this?")],
                            max_tokens=64, request_id=f"item-{i}") for i, wav in enumerate(clips)]
    results = run_chat(config, "Qwen2-Audio-7B-Instruct", requests)  # one result per request, in order

or from async code::

    async with ChatClient(config, "Qwen2-Audio-7B-Instruct") as client:
        result = await client.chat(requests[0])
        results = await client.chat_many(requests, on_result=lambda i, r: ...)

The transport is aiohttp, not the SDK's default httpx: on 2 cores, 64 concurrent small requests to
a local server went at about 1,150/s with aiohttp and 77/s with httpx 0.28. The SDK's own request
building and send path cost about 1.3 ms of CPU a request under cProfile (``_base_client.request``).

What the SDK would redo on every request is since done once (headers at open, an absolute URL, one
TLS context a process) and its X-Stainless-* telemetry headers are left out. Instructions in the
client process on that benchmark's path (``benchmarks/client_cpu.py`` under callgrind): 4.78M a
request before, 4.27M after, and a client open 344M before, 100M after; the same path without the
SDK's layer (its httpx2 client called directly) was 3.41M, with aiohttp alone 2.72M. So the SDK and
httpx2 still cost about a third of a request's CPU. What brought ``benchmarks/verify_throughput.py``
at concurrency 64 from 0.904 to 0.925 of its bound (12 runs each, alternating, 2026-11-30; the
hand-written client it replaced measured 0.927 and 0.934) was scheduling: ``chat_many``'s workers
build each request after the loop has served the replies of its burst (see there, and
benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import email.utils
import functools
import io
import json
import logging
import random
import ssl
import struct
import time
import uuid
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import numpy as np

from sightsound_core import secrets
from sightsound_core.config import ClientConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

OPENAI_URL = "https://api.openai.com/v1"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
FATAL_STATUS = frozenset({401, 403})
_FATAL_KINDS = frozenset(f"http_{s}" for s in FATAL_STATUS)
# Rough token costs for the rate limiter's estimate; the reply's usage corrects it afterwards.
CHARS_PER_TOKEN = 4
AUDIO_TOKENS_PER_S = 25  # Qwen2-Audio and Whisper-style encoders: one token per 40 ms
IMAGE_TOKENS = 256
_DETAIL_CHARS = 300
_BUILD_AFTER_TURNS = 2  # event-loop turns a worker lets pass before building its next request
# The openai SDK's X-Stainless-* telemetry headers: the platform's, sent with every request
# unless omitted in ``default_headers``, and the per-attempt ones, omitted per request only.
_SDK_PLATFORM_HEADERS = ("X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
                         "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async")
_SDK_ATTEMPT_HEADERS = ("X-Stainless-Retry-Count", "X-Stainless-Read-Timeout")


@dataclasses.dataclass
class ChatRequest:
    """One chat completion to make.

    Attributes:
        messages: OpenAI chat messages (build parts with ``audio_part`` / ``image_part``).
        max_tokens: completion budget per choice.
        temperature, top_p, seed: sampling (top_p / seed omitted when None).
        n: choices to return (the teacher's K samples in one request).
        request_id: sent as ``X-Client-Request-Id`` (OpenAI's tracing header); the test server
            counts requests per id.
        extra: further body fields (``response_format``, ``modalities``…), merged last.
    """

    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    n: int = 1
    seed: int | None = None
    request_id: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ChatChoice:
    text: str
    finish_reason: str  # stop | length | content_filter | …, as the server says


@dataclasses.dataclass(frozen=True)
class ChatResult:
    """The outcome of one ``ChatRequest`` after all its attempts.

    Attributes:
        choices: ``n`` choices in index order; empty on error.
        prompt_tokens, completion_tokens: from the reply's usage (0 when absent or on error).
        attempts: requests sent for this call, retries included (0 when none was sent).
        latency_s: wall time from the first attempt on the wire to the result, retry waits
            included, queueing for a slot before it excluded.
        error: None on success, else the error class of the last attempt.
        detail: short redacted description of the error ('' on success).
    """

    choices: list[ChatChoice]
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    latency_s: float
    error: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


# -------------------------------------------------------------------------------------------
# Message parts


def wav_bytes(audio: np.ndarray, sample_rate: int = 16000) -> bytes:
    """16-bit PCM WAV of a mono float waveform in [-1, 1] (clipped).

    Written by hand: a 44-byte header and the samples, about ten times faster than a codec
    library, which matters when the event loop encodes hundreds of clips a second. The samples
    are scaled, clipped and rounded in one float buffer and written once into the file's bytes.

    >>> wav = wav_bytes(np.array([0.0, 0.5, -1.0, 2.0]))
    >>> wav[:4], len(wav), np.frombuffer(wav, "<i2", offset=44).tolist()
    (b'RIFF', 52, [0, 16384, -32767, 32767])
    """
    pcm = np.multiply(np.asarray(audio, dtype=np.float32), np.float32(32767.0))
    np.clip(pcm, -32767.0, 32767.0, out=pcm)
    np.rint(pcm, out=pcm)
    size = 2 * pcm.size
    wav = bytearray(44 + size)
    struct.pack_into("<4sI4s4sIHHIIHH4sI", wav, 0, b"RIFF", 36 + size, b"WAVE", b"fmt ", 16, 1, 1,
                     sample_rate, sample_rate * 2, 2, 16, b"data", size)
    np.frombuffer(wav, dtype="<i2", offset=44)[:] = pcm
    return bytes(wav)


def audio_part(audio: np.ndarray, sample_rate: int = 16000) -> dict[str, Any]:
    """A GPT-4o-audio style ``input_audio`` content part holding base64 WAV (also what vLLM's
    OpenAI server accepts for Qwen2-Audio and Qwen2.5-Omni)."""
    data = base64.b64encode(wav_bytes(audio, sample_rate)).decode("ascii")
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def image_part(frame: np.ndarray, quality: int = 90) -> dict[str, Any]:
    """An ``image_url`` content part holding one (H, W, 3) uint8 RGB frame as a JPEG data URL."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def user_message(*parts: dict[str, Any] | str) -> dict[str, Any]:
    """A user message from parts; plain strings become text parts."""
    return {"role": "user", "content": [text_part(p) if isinstance(p, str) else p for p in parts]}


def system_message(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def estimate_tokens(request: ChatRequest) -> int:
    """Tokens a request may use, for the rate limiter: prompt estimate plus the full budget."""
    prompt = 0
    for message in request.messages:
        content = message.get("content")
        parts = [content] if isinstance(content, str) else content or []
        for part in parts:
            if isinstance(part, str):
                prompt += len(part) // CHARS_PER_TOKEN
            elif part.get("type") == "text":
                prompt += len(part.get("text", "")) // CHARS_PER_TOKEN
            elif part.get("type") == "input_audio":
                # base64 of 16-bit 16 kHz PCM: 4/3 chars per byte, 32,000 bytes per second.
                seconds = len(part["input_audio"].get("data", "")) * 3 / 4 / 32000
                prompt += int(seconds * AUDIO_TOKENS_PER_S)
            else:
                prompt += IMAGE_TOKENS
    return prompt + request.max_tokens * request.n


# -------------------------------------------------------------------------------------------
# Rate limiting


class TokenBucket:
    """An async token bucket: ``per_minute`` units a minute, bursts up to ``burst_s`` worth.

    A request larger than the bucket may go once the bucket is full, leaving it in debt, so a
    single large request is delayed rather than refused. Waiters are served in arrival order.
    """

    def __init__(self, per_minute: float, burst_s: float = 1.0):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            self._refill()
            while self.level < need:
                await asyncio.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        """Give back an over-estimate (or charge an under-estimate, when negative)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


# -------------------------------------------------------------------------------------------
# The client


class _Failure(Exception):
    """One failed attempt (internal): its error class, whether to retry, the wait it asks for."""

    def __init__(self, kind: str, detail: str, retry: bool, retry_after: float | None = None):
        super().__init__(kind)
        self.kind, self.detail, self.retry, self.retry_after = kind, detail, retry, retry_after


@dataclasses.dataclass
class _Call:
    """Bookkeeping of one ``chat`` call: requests sent, and when the first one went out."""

    attempts: int = 0
    started: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0


class ChatClient:
    """Async OpenAI-compatible chat client; use as ``async with ChatClient(config, model) as c``.

    Args:
        config: where and how hard (``ClientConfig``, a stage's ``client``).
        model: model name sent in each request.
        api_key: an explicit key (tests); by default resolved from the config at open.
    """

    def __init__(self, config: ClientConfig, model: str, api_key: str | None = None):
        self.config = config
        self.model = model
        self._explicit_key = api_key
        self._sdk: Any = None
        self._headers: dict[str, Any] = {}
        self._url = ""
        self._slots: asyncio.Semaphore | None = None
        self._rpm = TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
        self._tpm = TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None
        self._rng = random.Random()
        self._fatal: _Failure | None = None

    def __repr__(self) -> str:
        return f"ChatClient(base_url={self.config.base_url!r}, model={self.model!r})"

    async def __aenter__(self) -> "ChatClient":
        import httpx2
        from openai import AsyncOpenAI, DefaultAioHttpClient, Omit

        key = self._explicit_key
        if key is None:
            key = secrets.resolve_api_key(self.config.api_key_env, self.config.api_key_secret)
        else:
            secrets.register_secret(key)
            secrets.install_log_redaction()
        # A server that takes no key gets no Authorization header. The SDK insists on a key and
        # would otherwise read $OPENAI_API_KEY itself and send it to whatever server this is.
        # The SDK's per-attempt headers (retry count, read timeout) can only be left out per
        # request; they are fixed here, once, with the key's.
        self._headers = {h: Omit() for h in _SDK_ATTEMPT_HEADERS}
        if not key:
            self._headers["Authorization"] = Omit()
        n, timeout = self.config.concurrency, self.config.timeout_s
        self._sdk = AsyncOpenAI(
            api_key=key or "unused",
            base_url=self.config.base_url or OPENAI_URL,
            # Set once rather than per request. The SDK's telemetry headers go: no server this
            # client talks to reads them, and every header is work on each request in the SDK,
            # httpx2 and aiohttp alike (16 headers a request become 8).
            default_headers={"Content-Type": "application/json", **{h: Omit() for h in _SDK_PLATFORM_HEADERS}},
            # Retries are this client's, not the SDK's: each result reports its attempts and its
            # own error class, every attempt takes its rate-limit tokens and a concurrency slot
            # again (the SDK would sleep holding the slot and bypass the buckets), a malformed
            # 200 is retried (the SDK returns it), and a 401 stops every queued call.
            max_retries=0,
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
            http_client=DefaultAioHttpClient(verify=_tls_context(),
                                             limits=httpx2.Limits(max_connections=n, max_keepalive_connections=n)),
        )
        # An absolute URL, resolved once: the SDK then parses it once a request, where a path
        # relative to its base URL is parsed and merged into it again on every request.
        self._url = str(self._sdk.base_url.join("chat/completions"))
        self._slots = asyncio.Semaphore(n)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._sdk.close()
        self._sdk = None

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Make one request with retries. Never raises for API or network trouble."""
        if self._sdk is None:
            raise RuntimeError("ChatClient is not open: use `async with ChatClient(...)`")
        body = dumps_body(self._body(request)).encode()
        headers = dict(self._headers)
        if request.request_id:
            headers["X-Client-Request-Id"] = request.request_id
        estimate = estimate_tokens(request) if self._tpm else 0
        call = _Call()
        while True:
            if self._rpm:
                await self._rpm.acquire(1)
            if self._tpm:
                await self._tpm.acquire(estimate)
            try:
                choices, usage = await self._attempt(body, headers, call)
            except _Failure as exc:
                failure = exc
                if exc.kind in _FATAL_KINDS:
                    self._fatal = exc
                if not exc.retry or call.attempts > self.config.max_retries:
                    break
                delay = self._backoff(call.attempts, exc.retry_after)
                log.debug("%s attempt %d: %s, retrying in %.2f s", request.request_id or "request",
                          call.attempts, exc.kind, delay)
                await asyncio.sleep(delay)
                continue
            if self._tpm:
                self._tpm.refund(estimate - usage[0] - usage[1])
            return ChatResult(choices, usage[0], usage[1], call.attempts, call.elapsed())
        return ChatResult([], 0, 0, call.attempts, call.elapsed(), failure.kind, failure.detail)

    async def chat_many(
        self,
        items: Sequence[Any],
        on_result: Callable[[int, ChatResult], None] | None = None,
        build: Callable[[Any], ChatRequest] | None = None,
    ) -> list[ChatResult]:
        """Every item, ``concurrency`` at a time; results in item order. ``on_result(i, r)`` is
        called in the event loop as each finishes (in completion order).

        Items are ``ChatRequest``s, or anything ``build`` turns into one, just before its turn:
        ``2 * concurrency`` workers take items in order, so at most that many requests are built
        at once (a long list of clips never has every clip's base64 in memory) and a slot that
        frees finds the next request ready to send. A task per item instead would build the
        first window, then start and park every other item's task before the first request
        went out.
        """
        results: list[ChatResult | None] = [None] * len(items)
        todo = iter(range(len(items)))  # shared: each worker takes the next index

        async def worker() -> None:
            for i in todo:
                if build is not None:
                    # Building is the one step here nothing waits on (a built request is already
                    # queued for every free slot), so it goes after the replies and sends that
                    # arrived with this one: replies come back in bursts, and each reply's SDK
                    # path takes a few turns of the loop. At concurrency 64 with 200 ms replies,
                    # this and the workers took verify_throughput from 0.904 to 0.925 of its
                    # bound (12 runs each, 2026-11-30); one turn gave about half, more turns nothing more.
                    for _ in range(_BUILD_AFTER_TURNS):
                        await asyncio.sleep(0)
                    request = build(items[i])
                else:
                    request = items[i]
                results[i] = result = await self.chat(request)
                if on_result is not None:
                    on_result(i, result)

        await asyncio.gather(*(worker() for _ in range(min(len(items), 2 * self.config.concurrency))))
        return results  # type: ignore[return-value]

    # -- internals ----------------------------------------------------------------------------

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "n": request.n,
        }
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None:
            body["seed"] = request.seed
        body.update(request.extra)
        return body

    async def _attempt(
        self, body: bytes, headers: dict[str, Any], call: _Call
    ) -> tuple[list[ChatChoice], tuple[int, int]]:
        import httpx2
        from openai import APIConnectionError, APIStatusError

        assert self._slots is not None
        async with self._slots:
            if self._fatal is not None:  # checked once a slot is held: calls queued behind it
                raise self._fatal
            if call.started is None:
                call.started = time.monotonic()
            call.attempts += 1
            try:
                # The SDK's generic post with the body already encoded (``dumps_body`` skips
                # scanning base64 media); the SDK's typed ``create`` would re-encode it. The
                # outer timeout bounds the whole attempt: the transport's bounds each read.
                async with asyncio.timeout(self.config.timeout_s):
                    response = await self._sdk.post(
                        self._url, content=body, cast_to=httpx2.Response,
                        options={"headers": headers},
                    )
            except APIStatusError as exc:
                status = exc.status_code
                text = exc.response.content[:_DETAIL_CHARS].decode("utf-8", "replace")
                detail = secrets.redact(f"HTTP {status}: {text}")
                retry = status in RETRYABLE_STATUS
                raise _Failure(f"http_{status}", detail, retry,
                               retry_after(exc.response.headers) if retry else None) from None
            except TimeoutError:
                raise _Failure("timeout", f"no complete reply in {self.config.timeout_s:g} s", retry=True) from None
            except APIConnectionError as exc:
                # Classified by the transport's own error: aiohttp's failures reach the SDK as
                # httpx "connect timeouts" even when the connection was refused.
                root = _root(exc)
                kind = "timeout" if isinstance(root, (TimeoutError, httpx2.TimeoutException)) else "connect"
                raise _Failure(kind, secrets.redact(f"{type(root).__name__}: {root}"), retry=True) from None
        return parse_completion(response.content)

    def _backoff(self, attempt: int, server_wait: float | None) -> float:
        c = self.config
        delay = self._rng.uniform(0, min(c.backoff_max_s, c.backoff_base_s * 2 ** (attempt - 1)))
        if server_wait is not None:
            wait = min(server_wait, c.max_retry_after_s)
            # At least what the server asked for, plus a little spread so a burst of 429s does
            # not come back as one burst.
            delay = max(delay, wait + self._rng.uniform(0, 0.1 * wait))
        return delay


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context every client of the process shares (httpx2's default, from the
    environment's CA settings as first read). Building one loads the CA bundle, about 20 ms of CPU
    that each client open paid otherwise: four fifths of an open's cost."""
    import httpx2

    return httpx2.create_ssl_context()


def _root(exc: BaseException) -> BaseException:
    """The innermost cause of an exception chain (the transport's own error)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def dumps_body(body: dict[str, Any]) -> str:
    """``json.dumps(body)``, without scanning base64 media for characters to escape.

    Base64 and ``data:`` URLs hold no character JSON escapes, so each is swapped for a short
    placeholder, the rest is encoded, and the payloads are put back: on 2-second clips this
    halves the client's CPU time per request.

    >>> dumps_body({"messages": [{"content": [{"type": "input_audio", "input_audio": {"data": "QUJD"}}]}]})
    '{"messages": [{"content": [{"type": "input_audio", "input_audio": {"data": "QUJD"}}]}]}'
    """
    payloads: list[str] = []
    tag = uuid.uuid4().hex  # a placeholder no text in the body can spell by chance

    def hold(value: str) -> str:
        payloads.append(value)
        return f"\x00{tag}{len(payloads) - 1}\x00"

    messages = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "input_audio":
                    audio = part["input_audio"]
                    part = {**part, "input_audio": {**audio, "data": hold(audio["data"])}}
                elif part.get("type") == "image_url" and part["image_url"].get("url", "").startswith("data:"):
                    image = part["image_url"]
                    part = {**part, "image_url": {**image, "url": hold(image["url"])}}
                parts.append(part)
            message = {**message, "content": parts}
        messages.append(message)
    text = json.dumps({**body, "messages": messages}) if "messages" in body else json.dumps(body)
    for i, payload in enumerate(payloads):
        text = text.replace(f"\\u0000{tag}{i}\\u0000", payload, 1)
    return text


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or an
    HTTP date); None when absent or unreadable.

    >>> retry_after({"retry-after-ms": "250"}), retry_after({"retry-after": "2"}), retry_after({})
    (0.25, 2.0, None)
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_completion(content: bytes) -> tuple[list[ChatChoice], tuple[int, int]]:
    """Choices and (prompt, completion) token usage from a chat-completion body.

    Raises the internal retryable failure ``malformed`` for anything that is not a completion.
    """
    try:
        obj = json.loads(content)
        raw_choices = sorted(obj["choices"], key=lambda c: c.get("index", 0))
        choices = []
        for c in raw_choices:
            text = c["message"].get("content")
            if isinstance(text, list):  # content parts, as some servers return
                text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
            choices.append(ChatChoice(text or "", str(c.get("finish_reason") or "stop")))
        usage = obj.get("usage") or {}
        tokens = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _Failure("malformed", f"unreadable completion body ({type(exc).__name__})", retry=True) from None
    if not choices:
        raise _Failure("malformed", "completion body has no choices", retry=True)
    return choices, tokens


def run_sync(main: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``main()`` to completion from synchronous code.

    Works from plain code, from worker threads (Prefect tasks) and from inside a running event
    loop (a notebook), where it runs a fresh loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sightsound-chat") as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


def run_chat(
    config: ClientConfig,
    model: str,
    items: Sequence[Any],
    on_result: Callable[[int, ChatResult], None] | None = None,
    api_key: str | None = None,
    build: Callable[[Any], ChatRequest] | None = None,
) -> list[ChatResult]:
    """Synchronous ``chat_many`` with a client opened for the call (see ``run_sync``)."""

    async def main() -> list[ChatResult]:
        async with ChatClient(config, model, api_key=api_key) as client:
            return await client.chat_many(items, on_result, build)

    return run_sync(main)
