"""CPU a request in the client process, on verify_throughput's path (fake server in its own process).

Wall-clock throughput moves with whatever else the machine runs; CPU a request in the client
process moves much less, and the instruction count under callgrind hardly at all (0.1% between
runs). Each round times one ``verify`` of ``--items`` requests (one client open included, as in
verify_throughput) and prints CPU seconds a request by ``time.process_time``.

    .venv/bin/python benchmarks/client_cpu.py --rounds 3

Instructions, by two callgrind runs whose difference leaves out the client's open and close:

    for n in 128 640; do valgrind --tool=callgrind --callgrind-out-file=cg.$n.%p \\
        .venv/bin/python benchmarks/client_cpu.py --rounds 1 --items $n --callgrind; done
    # in each run's dump triggered by "after0", the summary line: instructions of that verify

(marginal instructions a request = (summary_640 - summary_128) / 512).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import verify_throughput as vt  # noqa: E402


def _dump(label: str) -> None:
    """Ask callgrind to write its counts so far (needs valgrind's ``callgrind_control``)."""
    subprocess.run(["callgrind_control", "-d", label, str(os.getpid())], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1024, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per call, seconds")
    parser.add_argument("--audio-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind", action="store_true",
                        help="running under callgrind: dump its counts before and after each round")
    args = parser.parse_args()

    from sightsound_core.backends.openai_verifier import OpenAIVerifier
    from sightsound_core.config import VerifyConfig

    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=vt._serve, args=(args.latency, ports, stop), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/v1"
        cfg = VerifyConfig(backend="openai", model="fake-audio",
                           client={"base_url": url, "api_key_env": None, "concurrency": args.concurrency,
                                   "timeout_s": 30})
        verifier = OpenAIVerifier.from_config(cfg)
        verifier.verify(vt._requests(vt.warmup_items(args.concurrency), 10**6, args.audio_s))
        rounds = []
        for i in range(args.rounds):
            requests = vt._requests(args.items, i * args.items, args.audio_s)
            if args.callgrind:
                _dump(f"before{i}")
            cpu, wall = time.process_time(), time.perf_counter()
            results = verifier.verify(requests)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if args.callgrind:
                _dump(f"after{i}")
            assert all(r.status == "accepted" for r in results), {r.status for r in results}
            rounds.append({"cpu_ms_per_request": round(1000 * cpu / args.items, 3),
                           "ratio": round(args.items / wall / (args.concurrency / args.latency), 3)})
    finally:
        stop.set()
        server.join(10)
    print(json.dumps({"benchmark": "client_cpu", "items": args.items, "concurrency": args.concurrency,
                      "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
