"""What a batch costs when a stage fans out over a work pool, against the same stage in process.

Starts a local Prefect server, a process pool with ``--workers`` workers and the
``stage-batch/local`` deployment (as deployments/README.md, section 8, tells a user to), then runs
the teacher stage of the demo recipe (sim backend) twice on the same committed ingest: in the
flow's own task runner, and fanned out. It prints, as JSON, both stages' wall times and their
ratio, and from the server's records, per batch: the seconds from the coordinator's request to the
run starting (a worker picking it up and starting a process), the run's own seconds, and the
seconds its shard tasks ran. The difference is the per-batch overhead a user sizes batches
against (``shards_per_task``): a batch should hold many times that much work.

    .venv/bin/python benchmarks/fanout_overhead.py                 # 2 workers, 24 shards, 6 batches
    .venv/bin/python benchmarks/fanout_overhead.py --smoke         # 1 worker, 4 shards, 2 batches
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "flows"))

# The teacher stage alone, from a committed ingest, with the executor the flags name.
STAGE = """
import json, sys, time
from prefect import flow
from flows.dag import execute_stage
from sightsound_core.config import load_config
from sightsound_core.dag import gather, run_local, stages
from sightsound_core.pipeline import open_store

@flow(name="teacher-stage")
def teacher_stage(overrides):
    cfg = load_config("demo.yaml", overrides)
    store = open_store(cfg)
    ingest, teacher = stages(cfg, "distill")[:2]
    inputs = gather(teacher, {"ingest": run_local(ingest, cfg, store, gather(ingest, {}))})
    began = time.perf_counter()
    execute_stage(teacher, cfg, store, inputs)
    return time.perf_counter() - began

print(json.dumps(teacher_stage(json.loads(sys.argv[1]))))
"""


def _stage_seconds(env: dict, overrides: dict) -> float:
    out = subprocess.run([sys.executable, "-c", STAGE, json.dumps(overrides)], env=env, cwd=ROOT,
                         text=True, capture_output=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _batches(env: dict) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, TaskRunFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["stage-batch"])))
            out = []
            for run in runs:
                tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id={"any_": [run.id]}))
                at = {state.type.value: state.timestamp for state in client.read_flow_run_states(run.id)}
                out.append({
                    "name": run.name,
                    "worker": run.labels.get("prefect.worker.name"),
                    "queued_s": (at["PENDING"] - run.created).total_seconds(),
                    "process_start_s": (at["RUNNING"] - at["PENDING"]).total_seconds(),
                    "run_s": run.total_run_time.total_seconds(),
                    "tasks_s": sum(t.total_run_time.total_seconds() for t in tasks),
                    "shards": len(run.parameters["shards"]),
                })
    return out


def main() -> None:
    from prefect_procs import prefect_cli, prefect_server_env, stop

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=24, help="teacher shards (48 clips each)")
    parser.add_argument("--shards-per-batch", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="1 worker, 4 shards, 2 a batch")
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.shards, args.shards_per_batch = 1, 4, 2

    with tempfile.TemporaryDirectory() as tmp, prefect_server_env(Path(tmp) / "prefect") as env:
        env = dict(env, SIGHTSOUND_REPO=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="1")
        prefect_cli(env, "work-pool", "create", "sightsound-local", "--type", "process")
        prefect_cli(env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                    "--name", "stage-batch/local")
        workers = [
            subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool",
                              "sightsound-local", "--name", f"w{i}", "--limit", "1"],
                             env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                             start_new_session=True)
            for i in range(1, args.workers + 1)
        ]
        try:
            base = {"ingest.synthetic.n_clips": 48 * args.shards, "ingest.shard_size": 48,
                    "orchestration.shards_per_task": args.shards_per_batch,
                    "orchestration.max_workers": args.workers}
            in_process = _stage_seconds(env, {**base, "store.root": f"file://{tmp}/a"})
            fanned = _stage_seconds(env, {**base, "store.root": f"file://{tmp}/b",
                                          "orchestration.fanout": "stage-batch/local",
                                          "orchestration.fanout_stages": ["teacher"],
                                          "orchestration.fanout_poll_s": 0.5})
            batches = _batches(env)
        finally:
            for worker in workers:
                with contextlib.suppress(Exception):
                    stop(worker, grace=5.0)

    def mean(key: str) -> float:
        return round(sum(b[key] for b in batches) / len(batches), 3)

    print(json.dumps({
        "benchmark": "fanout_overhead",
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "shards": args.shards,
        "clips_per_shard": 48,
        "batches": len(batches),
        "teacher_stage_s": {"in_process": round(in_process, 3), "fanned_out": round(fanned, 3),
                            "ratio": round(fanned / in_process, 3)},
        # queued: waiting for a free worker; process_start: the worker taking it up (Pending) to the
        # flow running in its new process; overhead: that start plus the run's own time outside
        # its shard tasks (loading the recipe, planning, reading the inputs' manifests).
        "per_batch_mean_s": {"queued": mean("queued_s"), "process_start": mean("process_start_s"),
                             "run": mean("run_s"), "shard_tasks": mean("tasks_s"),
                             "overhead": round(mean("process_start_s") + mean("run_s") - mean("tasks_s"), 3)},
        "batches_by_worker": {w: sum(1 for b in batches if b["worker"] == w)
                              for w in sorted({b["worker"] for b in batches})},
        "per_batch": batches,
    }, indent=2, default=str))


if __name__ == "__main__":
    main()
