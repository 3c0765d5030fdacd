"""Verified items per second through the openai verifier backend, against the local fake server.

The server (tests/fakes/openai_server.py) runs in its own process and answers every request after
``--latency`` seconds; the verifier sends 2 s clips as base64 WAV, as in production. With
concurrency c the bound is c / latency items per second; the benchmark prints, as JSON, the
measured rate and its ratio to that bound at each concurrency, and the requests the server
answered (timed items plus a few warm-up ones per concurrency), counted by the server itself.

    .venv/bin/python benchmarks/verify_throughput.py            # concurrency 1, 16, 64; 200 ms
    .venv/bin/python benchmarks/verify_throughput.py --smoke    # seconds: concurrency 1 and 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _serve(latency_s: float, ports: mp.Queue, stop: mp.Event) -> None:
    """Serve until ``stop``, then put the number of requests answered on ``ports``."""
    from fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(latency_s=latency_s) as server:
        ports.put(server.port)
        stop.wait()
        ports.put(sum(server.requests.values()))


def _requests(n: int, offset: int, audio_s: float):
    from sightsound_core.backends.base import VerifyRequest
    from sightsound_core.schemas import Clip

    t = np.arange(int(16000 * audio_s)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    out = []
    for i in range(offset, offset + n):
        clip = Clip(f"bench:{i}", "bench", "train", None, "file:///bench.wav", audio_s,
                    "Is the tone low or high?", ["low", "high"], "low", "acoustic", "pitch")
        out.append(VerifyRequest(clip, 0, f"Trace {i}: a steady low tone.", audio))
    return out


def measure(url: str, concurrency: int, n: int, latency_s: float, audio_s: float) -> dict:
    """Time ``n`` verifications at ``concurrency``, after ``warmup_items(concurrency)`` untimed."""
    from sightsound_core.backends.openai_verifier import OpenAIVerifier
    from sightsound_core.config import VerifyConfig

    cfg = VerifyConfig(backend="openai", model="fake-audio",
                       client={"base_url": url, "api_key_env": None, "concurrency": concurrency, "timeout_s": 30})
    verifier = OpenAIVerifier.from_config(cfg)
    verifier.verify(_requests(warmup_items(concurrency), 10**6, audio_s))  # warm: imports, connections
    requests = _requests(n, 0, audio_s)
    began = time.perf_counter()
    results = verifier.verify(requests)
    seconds = time.perf_counter() - began
    assert all(r.status == "accepted" for r in results), {r.status for r in results}
    rate = n / seconds
    bound = concurrency / latency_s
    return {"concurrency": concurrency, "items": n, "seconds": round(seconds, 3),
            "items_per_s": round(rate, 2), "bound_per_s": round(bound, 2), "ratio": round(rate / bound, 3)}


def warmup_items(concurrency: int) -> int:
    return min(concurrency, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per call, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=16, help="items per slot at each concurrency")
    parser.add_argument("--audio-s", type=float, default=2.0, help="clip length sent per item")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: concurrency 1 and 4, 2 rounds, 50 ms latency, 0.5 s clips")
    args = parser.parse_args()
    if args.smoke:
        args.latency, args.concurrency, args.rounds, args.audio_s = 0.05, [1, 4], 2, 0.5

    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.latency, ports, stop), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
        results = [measure(url, c, max(8, c * args.rounds), args.latency, args.audio_s)
                   for c in args.concurrency]
        stop.set()
        answered = ports.get(timeout=30)
    finally:
        stop.set()
        server.join(10)
    top = results[-1]
    print(json.dumps({
        "benchmark": "verify_throughput",
        "backend": "openai",
        "server_latency_s": args.latency,
        "audio_s": args.audio_s,
        "cpu_count": os.cpu_count(),
        "results": results,
        "server_requests": answered,
        "warmup_requests": sum(warmup_items(c) for c in args.concurrency),
        "goal": {"concurrency": top["concurrency"], "min_ratio": 0.9, "met": top["ratio"] >= 0.9},
    }, indent=2))


if __name__ == "__main__":
    main()
