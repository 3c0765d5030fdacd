"""The fan-out overhead benchmark's smoke: its batches are the stage's shards, each run by the one
worker, and the overhead it reports is what the server's records add up to."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_smoke_accounts_for_every_shard_and_second():
    out = subprocess.run([sys.executable, "benchmarks/fanout_overhead.py", "--smoke"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout)
    batches = result["per_batch"]
    assert sorted(b["name"] for b in batches) == ["teacher-00000-00001-try1", "teacher-00002-00003-try1"]
    assert result["batches_by_worker"] == {"w1": 2} and all(b["shards"] == 2 for b in batches)
    for b in batches:
        assert 0 < b["tasks_s"] <= b["run_s"] and b["process_start_s"] > 0
    mean = result["per_batch_mean_s"]
    assert mean["overhead"] == pytest.approx(mean["process_start"] + mean["run"] - mean["shard_tasks"], abs=2e-3)
    stage = result["teacher_stage_s"]
    assert stage["fanned_out"] > 0 and stage["ratio"] == pytest.approx(stage["fanned_out"] / stage["in_process"], rel=1e-2)
