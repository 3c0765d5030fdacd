"""Chaos benchmark: SIGKILL the whole run at a random moment, resume it, compare with a clean run.

Usage: .venv/bin/python benchmarks/kill_resume.py [--trials 10] [--seed 0]

Two uninterrupted runs of a small recipe (the demo shrunk to seconds) are the reference and the
baseline. Each trial starts the same run in a fresh store with ``sightsound run``, kills its whole
process group with SIGKILL at a random moment within the reference's wall time, then runs it
again to the end. Every committed shard is compared on the Arrow IPC bytes of its table, without
its volatile columns (``latency_s``, wall time) and with the store's root path replaced by a
placeholder (media URIs name the store). A stage is *deterministic* when the two uninterrupted
runs agree on it byte for byte; training on CPU is not (floating-point sums vary between runs),
and neither is what depends on its models. Trials must equal the reference on every
deterministic stage and have the same shards and row counts on the others, with no duplicate
rows (by key columns). Prints JSON: per trial, the kill time, equality per stage, duplicates,
and the overhead of killed + resumed wall time against the reference.

At the kill, each trial records the stages whose manifest was written (``done_at_kill``), the
stages with a directory but no manifest (``open_at_kill``: a kill inside a stage leaves one), and
every committed Parquet file with its inode and modification time; ``recomputed_shards`` counts
those files the resumed run rewrote or removed (a write is a new file moved into place, so a
rewrite changes the inode even when the bytes are the same).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"latency_s"}
KEYS = {"clip_id", "sample_idx", "example_id", "model_tag", "benchmark", "step", "metric",
        "group", "stage", "input"}


def write_recipe(path: Path, root: str) -> None:
    data = yaml.safe_load((ROOT / "sightsound_core/recipes/demo.yaml").read_text())
    data["store"]["root"] = root
    data["models"]["student"] = "tiny://qwen2-audio"
    data["ingest"]["synthetic"]["n_clips"] = 32
    data["ingest"]["shard_size"] = 8
    data["sft"].update(max_steps=6, variants=["cot"], save_steps=2)
    data["grpo"].update(max_steps=3, num_generations=2, prompts_per_step=1, max_completion_length=8,
                        save_steps=1)
    data["evaluate"].update(models=["pretrained", "cot", "grpo"], max_new_tokens=8)
    data["evaluate"]["benchmarks"][0]["ingest"]["synthetic"]["n_clips"] = 8
    path.write_text("# Run: sightsound run (kill_resume benchmark)\n" + yaml.safe_dump(data))


def run(recipe: Path, env: dict, kill_after: float | None = None) -> tuple[float, bool]:
    """Run the CLI; with ``kill_after``, SIGKILL its process group then. Returns (wall s, killed)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", str(recipe)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = proc.returncode == -signal.SIGKILL  # not a run that ended just before the kill
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"run failed with exit code {proc.returncode}")
    return time.perf_counter() - started, killed


def _normalize(table: pa.Table, root: str) -> pa.Table:
    import pyarrow.compute as pc

    table = table.select([c for c in table.column_names if c not in VOLATILE])
    columns = [
        pc.replace_substring(col, root, "<root>") if pa.types.is_string(col.type) else col
        for col in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.column_names)


def snapshot(store_dir: Path) -> dict[str, dict]:
    """Canonical digest and key check of every committed shard, by stage and shard name."""
    out = {}
    for path in sorted(glob.glob(f"{store_dir}/demo/*/*/*.parquet")):
        stage, _hash, name = os.path.relpath(path, store_dir).split("/")[1:]
        rel = f"{stage}/{name}"
        table = _normalize(pq.read_table(path).replace_schema_metadata(None), str(store_dir))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        keys = [c for c in table.column_names if c in KEYS]
        key_rows = list(zip(*(table.column(k).to_pylist() for k in keys))) if keys else []
        out[rel] = {
            "digest": hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16],
            "rows": table.num_rows,
            "duplicates": len(key_rows) - len(set(key_rows)),
        }
    return out


def committed_files(store_dir: Path) -> dict[str, tuple[int, int]]:
    """Every committed Parquet file of the run, with (inode, mtime in ns)."""
    out = {}
    for path in glob.glob(f"{store_dir}/demo/*/*/*.parquet"):
        st = os.stat(path)
        out[path] = (st.st_ino, st.st_mtime_ns)
    return out


def stage_states(store_dir: Path) -> tuple[list[str], list[str]]:
    """(stages with a manifest, stages with a directory but none)."""
    done, open_ = set(), set()
    for stage_hash_dir in glob.glob(f"{store_dir}/demo/*/*/"):
        stage = Path(stage_hash_dir).parent.name
        if stage.startswith("_"):
            continue
        (done if os.path.exists(f"{stage_hash_dir}/_MANIFEST.json") else open_).add(stage)
    return sorted(done), sorted(open_ - done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="sightsound-chaos-"))
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect"), SIGHTSOUND_CACHE=str(work / "cache"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT))
    os.makedirs(env["PREFECT_HOME"])

    snapshots, walls = [], []
    for name in ("reference", "baseline"):
        write_recipe(work / f"{name}.yaml", f"file://{work / name}")
        wall, _ = run(work / f"{name}.yaml", env)
        walls.append(wall)
        snapshots.append(snapshot(work / name))
    reference, baseline = snapshots
    reference_s = walls[0]
    # Kill inside the faster clean run's duration, so that the kill lands before the end.
    window_s = min(walls)
    deterministic = {
        rel.split("/")[0] for rel in reference
        if all(baseline.get(r, {}).get("digest") == reference[r]["digest"]
               for r in reference if r.split("/")[0] == rel.split("/")[0])
    }

    trials = []
    for i in range(args.trials):
        store_dir = work / f"trial-{i}"
        recipe = work / f"trial-{i}.yaml"
        write_recipe(recipe, f"file://{store_dir}")
        # A run can finish before its kill time (timings vary); then it starts over in a fresh
        # store with an earlier kill, so every trial is a real kill.
        upper = 0.8
        for _attempt in range(4):
            if store_dir.exists():
                shutil.rmtree(store_dir)
            kill_at = round(rng.uniform(0.05, upper) * window_s, 2)
            killed_s, killed = run(recipe, env, kill_after=kill_at)
            if killed:
                break
            upper /= 2
        at_kill = committed_files(store_dir)
        done_at_kill, open_at_kill = stage_states(store_dir)
        resumed_s, _ = run(recipe, env)
        now = committed_files(store_dir)
        recomputed = sorted(os.path.relpath(p, store_dir) for p, sig in at_kill.items() if now.get(p) != sig)
        got = snapshot(store_dir)
        stages: dict[str, bool] = {}
        for rel, ref in reference.items():
            stage = rel.split("/")[0]
            key = "digest" if stage in deterministic else "rows"
            same = rel in got and got[rel][key] == ref[key]
            stages[stage] = stages.get(stage, True) and same
        trials.append({
            "kill_at_s": kill_at,
            "killed": killed,
            "done_at_kill": done_at_kill,
            "open_at_kill": open_at_kill,
            "shards_at_kill": len(at_kill),
            "recomputed_shards": len(recomputed),
            "recomputed": recomputed[:10],
            "equal": all(stages.values()) and set(got) == set(reference),
            "stages_equal": stages,
            "shards_differ": sorted(set(got) ^ set(reference)),
            "duplicate_rows": sum(s["duplicates"] for s in got.values()),
            "rows": sum(s["rows"] for s in got.values()),
            "overhead": round((killed_s + resumed_s) / reference_s - 1, 3),
        })
    print(json.dumps({
        "reference_s": round(reference_s, 2),
        "deterministic_stages": sorted(deterministic),
        "nondeterministic_stages": sorted({r.split("/")[0] for r in reference} - deterministic),
        "reference_rows": sum(s["rows"] for s in reference.values()),
        "trials": trials,
        "all_equal": all(t["equal"] for t in trials),
        "killed_trials": sum(t["killed"] for t in trials),
        "killed_mid_stage": sum(t["killed"] and bool(t["open_at_kill"]) for t in trials),
        "recomputed_shards": sum(t["recomputed_shards"] for t in trials),
        "mean_overhead": round(sum(t["overhead"] for t in trials) / len(trials), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
