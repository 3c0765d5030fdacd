"""Orchestration overhead: one stage of N tiny shards, Prefect tasks vs the same core calls in a loop.

Usage: .venv/bin/python benchmarks/orchestration_overhead.py [--shards 1000] [--batch 1 50]
       .venv/bin/python benchmarks/orchestration_overhead.py --smoke    # 20 shards, 5 per task

Each shard does real stage work (plan, compute a small table, atomic Parquet commit, fingerprint
check); the stage ends with its manifest. Prints JSON: wall time of the plain loop, and for each
``shards_per_task`` the stage's wall time inside a running flow with its overhead relative to the
loop, plus the whole flow's wall time (a flow's own start and finish are paid once per flow, and
a flow holds several stages). Each configuration runs on a fresh server after a warm-up flow run.
Batching removes the per-task cost; what remains per stage is its manifest task and the
result-storage block. Each configuration also reports the shards its manifest committed and the
shard task runs the Prefect server recorded for the flow run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def _compute(job):
    import pyarrow as pa

    return pa.table({"i": list(range(job.index, job.index + 20))}), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--batch", nargs="+", default=["1", "50", "auto"],
                        help="shards_per_task values to measure (integers or auto)")
    parser.add_argument("--smoke", action="store_true", help="20 shards, 5 per task: one server start")
    args = parser.parse_args()
    if args.smoke:
        args.shards, args.batch = 20, ["5"]

    tmp = tempfile.mkdtemp(prefix="sightsound-orch-")
    os.environ.setdefault("PREFECT_HOME", os.path.join(tmp, "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)

    from prefect import flow, get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.runtime import flow_run
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness

    from flows.dag import run_stage
    from sightsound_core.config import PipelineConfig
    from sightsound_core.stage import plan_sources, run_plan
    from sightsound_core.storage import ObjectStore

    sources = [{"n": i} for i in range(args.shards)]

    store = ObjectStore(f"file://{tmp}/plain")
    t0 = time.perf_counter()
    plain = run_plan(store, plan_sources(store, "bench", "tiny", {"v": 1}, sources), _compute)
    plain_s = time.perf_counter() - t0

    results = []
    for batch in [b if b == "auto" else int(b) for b in args.batch]:
        # A fresh server per configuration: a run of 1,000 tasks leaves the server digesting its
        # events for a while, which would slow whatever is measured next.
        with prefect_test_harness(server_startup_timeout=90):
            # The first flow run of a server pays one-time setup; keep it out of the measurement.
            warm_store = ObjectStore(f"file://{tmp}/warm-{batch}")
            warm_plan = plan_sources(warm_store, "bench", "tiny", {"v": 1}, sources[:2])

            @flow(name="overhead-warmup")
            def warmup():
                run_stage(PipelineConfig(), warm_plan, warm_store, _compute)

            warmup()
            cfg = PipelineConfig.model_validate(
                {"orchestration": {"shards_per_task": batch, "max_workers": 2}}
            )
            store = ObjectStore(f"file://{tmp}/prefect-{batch}")
            plan = plan_sources(store, "bench", "tiny", {"v": 1}, sources)

            inside: dict[str, float] = {}

            @flow(name=f"overhead-{batch}", task_runner=ThreadPoolTaskRunner(max_workers=2))
            def stage_flow():
                inside["flow_run_id"] = flow_run.id
                t0 = time.perf_counter()
                inside["ref"] = run_stage(cfg, plan, store, _compute)
                inside["stage_s"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            stage_flow()
            flow_s = time.perf_counter() - t0
            with get_client(sync_client=True) as client:
                runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[inside["flow_run_id"]]))
                )
        results.append({
            "shards_per_task": batch,
            "tasks": -(-args.shards // cfg.orchestration.batch_size(args.shards)),
            "shard_task_runs": sum(r.name.startswith("tiny-") for r in runs),
            "shards_committed": len(inside["ref"].manifest["shards"]),
            "stage_s": round(inside["stage_s"], 3),
            "overhead": round(inside["stage_s"] / plain_s - 1, 3),
            "flow_s": round(flow_s, 3),
            "overhead_with_flow_start": round(flow_s / plain_s - 1, 3),
        })
    print(json.dumps({"shards": args.shards, "plain_loop_s": round(plain_s, 3),
                      "plain_shards_committed": len(plain.manifest["shards"]), "prefect": results}, indent=2))


if __name__ == "__main__":
    main()
