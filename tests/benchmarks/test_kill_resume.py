"""The kill-resume benchmark's smoke at one trial: the whole run SIGKILLed inside a stage, resumed,
and nothing committed before the kill written again (issue #17)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # about 4 min: four runs of the shrunk demo


@pytest.fixture(scope="module")
def smoke() -> dict:
    out = subprocess.run(
        [sys.executable, "benchmarks/kill_resume.py", "--trials", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def test_the_run_was_killed_inside_a_stage(smoke):
    (trial,) = smoke["trials"]
    assert smoke["killed_trials"] == 1 and smoke["killed_mid_stage"] == 1
    assert trial["open_at_kill"] and trial["shards_at_kill"] > 0
    assert set(trial["done_at_kill"]) < set(trial["stages_equal"])  # the kill was before the end


def test_the_resume_rewrote_nothing_committed_before_the_kill(smoke):
    (trial,) = smoke["trials"]
    assert smoke["recomputed_shards"] == 0, trial["recomputed"]
    assert all(trial["stages_equal"][s] for s in trial["done_at_kill"])


def test_the_resumed_run_has_every_shard_once(smoke):
    (trial,) = smoke["trials"]
    assert trial["shards_differ"] == [] and trial["duplicate_rows"] == 0
    assert trial["rows"] == smoke["reference_rows"]
