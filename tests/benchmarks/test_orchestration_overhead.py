"""The orchestration-overhead benchmark's smoke: one temporary Prefect server (most of its ~30 s),
20 shards in tasks of 5; the tasks it claims are the task runs the server recorded, and both sides
commit every shard."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_runs_the_tasks_it_claims_and_commits_every_shard(tmp_path):
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"))
    out = subprocess.run(
        [sys.executable, "benchmarks/orchestration_overhead.py", "--smoke"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout)
    assert report["shards"] == report["plain_shards_committed"] == 20
    (prefect,) = report["prefect"]
    assert prefect["shards_per_task"] == 5
    assert prefect["shard_task_runs"] == prefect["tasks"] == 4
    assert prefect["shards_committed"] == 20
    assert prefect["stage_s"] > 0 and prefect["flow_s"] >= prefect["stage_s"]
