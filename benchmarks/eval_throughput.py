"""Evaluation throughput: N synthetic items through the evaluate stage, tiny student, batched.

    .venv/bin/python benchmarks/eval_throughput.py --items 1000

Generates the benchmark (timed apart: it is ingest, not evaluation), then times ``run_evaluate``
for the pretrained tiny student alone: model load, audio decoding, generation with the demo
recipe's ``max_new_tokens``, scoring, commit. Prints one JSON object.

On 2 CPU cores, batch 64 is about twice as fast as 16: the untrained student never stops early,
so each batch runs every decode step, and a step's fixed cost is shared by more items.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from sightsound_core.config import DEFAULT_RECIPE, load_config
from sightsound_core.dag import benchmark_stage
from sightsound_core.datasets.ingest import run_ingest
from sightsound_core.evaluation.run import run_evaluate
from sightsound_core.pipeline import open_store
from sightsound_core.tiny import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", default=None, help="store root (default: a temporary folder)")
    args = parser.parse_args()

    root = args.root or tempfile.mkdtemp(prefix="eval-throughput-")
    overrides = {
        "run": "throughput",
        "store.root": f"file://{os.path.abspath(root)}",
        "models.device": args.device,
        "evaluate.models": ["pretrained"],
        "evaluate.benchmarks": [{
            "name": "synthetic-test",
            "ingest": {"shard_size": 250, "synthetic": {"n_clips": args.items, "seed": 1, "split": "test"}},
        }],
    }
    overrides["evaluate.batch_size"] = args.batch_size
    if args.max_new_tokens:
        overrides["evaluate.max_new_tokens"] = args.max_new_tokens
    cfg = load_config(DEFAULT_RECIPE, overrides, environ={})
    store = open_store(cfg)
    bench = cfg.evaluate.benchmarks[0]

    began = time.perf_counter()
    items = run_ingest(bench.ingest, store, cfg.run, benchmark_stage(bench.name))
    ingest_s = time.perf_counter() - began
    student = resolve_model(cfg.models.student, cfg.models.cache_dir)

    began = time.perf_counter()
    ref = run_evaluate(cfg, store, {"pretrained": (student, cfg.models.student)}, {bench.name: items})
    evaluate_s = time.perf_counter() - began

    acc = ref.manifest["summary"]["accuracy"]["pretrained"][bench.name]["all"]
    print(json.dumps({
        "benchmark": "eval_throughput",
        "items": acc["n"],
        "batch_size": cfg.evaluate.batch_size,
        "max_new_tokens": cfg.evaluate.max_new_tokens,
        "device": args.device,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "ingest_s": round(ingest_s, 2),
        "evaluate_s": round(evaluate_s, 2),
        "items_per_s": round(acc["n"] / evaluate_s, 2),
        "accuracy": acc["accuracy"],
    }))


if __name__ == "__main__":
    main()
