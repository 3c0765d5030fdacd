"""The paper in miniature at several seeds: how stable each row is, and how often each claim holds.

Usage: .venv/bin/python benchmarks/fidelity.py [--seeds 0 1 2] [--out fidelity.json]

Each seed runs the demo recipe (``sightsound_core/recipes/demo.yaml``) end to end with the plain
stage loop (no Prefect server), in a fresh store, with the seed moved into everything random: the
training world (``ingest.synthetic.seed``), the held-out world (``100 + seed``), the teacher's
sampling, SFT and GRPO. The world's own parameters (tiers, partial-correlate rate) are the
recipe's and are never changed here. Prints JSON: per model and tier, each seed's accuracy and
their mean and standard deviation (percent), the hallucination rate likewise, and for each claim
of the paper the verdict at every seed and how many seeds reproduce it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sightsound_core.config import DEFAULT_RECIPE, load_config  # noqa: E402
from sightsound_core.dag import SPECS, gather  # noqa: E402
from sightsound_core.pipeline import open_store, run_pipeline  # noqa: E402
from sightsound_core.report import (  # noqa: E402
    miniature_benchmark,
    paper_claims,
    report_data,
    tier_families,
)


def run_seed(recipe: Path, seed: int, root: str, overrides: dict, held_out: int | None = None) -> dict:
    """One miniature run; its accuracy, hallucination and claim verdicts."""
    sets = {
        "run": f"fidelity-{seed}",
        "store.root": root,
        "ingest.synthetic.seed": seed,
        "teacher.seed": seed,
        "sft.seed": seed,
        "grpo.seed": seed,
        **overrides,
    }
    benchmarks = [b.model_dump(mode="json") for b in load_config(recipe, sets, environ={}).evaluate.benchmarks]
    benchmarks[0]["ingest"]["synthetic"]["seed"] = 100 + seed
    if held_out is not None:
        benchmarks[0]["ingest"]["synthetic"]["n_clips"] = held_out
    cfg = load_config(recipe, {**sets, "evaluate.benchmarks": benchmarks}, environ={})
    began = time.perf_counter()
    refs = run_pipeline(cfg)
    inputs = gather(SPECS["report"], refs)  # what the report stage read
    data = report_data(open_store(cfg), cfg.run, inputs)
    evaluation = data["evaluation"]
    bench = miniature_benchmark(evaluation)
    models = evaluation["models"]
    accuracy = {}
    for tag in models:
        entry = evaluation["accuracy"][tag][bench]
        accuracy[tag] = {f: 100 * entry["by_family"][f]["accuracy"] for f in tier_families(entry)}
        accuracy[tag]["all"] = 100 * entry["all"]["accuracy"]
        rate = (entry.get("hallucination") or {}).get("rate")
        accuracy[tag]["hallucination"] = None if rate is None else 100 * rate
    return {
        "seed": seed,
        "wall_s": round(time.perf_counter() - began, 1),
        "items": evaluation["accuracy"][models[0]][bench]["all"]["n"],
        "accuracy": accuracy,
        "claims": {c["claim"]: c["verdict"] for c in paper_claims(data, bench, models)},
    }


def summarize(runs: list[dict]) -> dict:
    rows: dict = {}
    for tag in runs[0]["accuracy"]:
        rows[tag] = {}
        for column in runs[0]["accuracy"][tag]:
            values = [r["accuracy"][tag].get(column) for r in runs]
            values = [v for v in values if v is not None]
            rows[tag][column] = {
                "seeds": [round(v, 1) for v in values],
                "mean": round(statistics.mean(values), 1) if values else None,
                "sd": round(statistics.stdev(values), 1) if len(values) > 1 else None,
            }
    claims = {}
    for claim in runs[0]["claims"]:
        verdicts = [r["claims"].get(claim) for r in runs]
        claims[claim] = {"verdicts": verdicts, "reproduced": sum(v == "reproduced" for v in verdicts),
                         "seeds": len(verdicts)}
    return {"rows": rows, "claims": claims}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="extra recipe override key=value (YAML value), e.g. to shrink a smoke run")
    parser.add_argument("--held-out", type=int, default=None, help="held-out clips (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)}
    with tempfile.TemporaryDirectory(prefix="sightsound-fidelity-") as tmp:
        runs = [run_seed(args.recipe, s, f"file://{tmp}/store", overrides, args.held_out) for s in args.seeds]
    result = {"benchmark": "fidelity", "recipe": str(args.recipe), "runs": runs, **summarize(runs)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
