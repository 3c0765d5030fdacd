"""The verify-kill benchmark's smoke at 16 clips (one verify shard, 9 traces): a SIGKILL inside
verify, a resume, and every answer paid for at most once (issue #17)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # about 50 s: three CLI runs, each starting a Prefect server


@pytest.fixture(scope="module")
def smoke() -> dict:
    # grace 0.1 s: verify lasts about 0.6 s here, so the first answers count as answered before
    # the kill (at the default 1 s none would, and the exactly-once check would be empty).
    out = subprocess.run(
        [sys.executable, "benchmarks/verify_kill.py", "--trials", "1", "--clips", "16", "--grace-s", "0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def test_the_kill_lands_inside_verify_after_some_answers(smoke):
    (trial,) = smoke["per_trial"]
    assert smoke["killed_during_verify"] == 1
    assert trial["requests_run"] < smoke["traces"]
    assert smoke["answered_before_kill"] >= 1


def test_answered_items_are_never_asked_again_and_nothing_is_lost(smoke):
    (trial,) = smoke["per_trial"]
    assert smoke["max_requests_per_answered_item"] == 1
    assert smoke["max_asked_twice_per_trial"] <= smoke["on_the_wire_bound"]
    assert trial["items"] == smoke["traces"]
    assert smoke["items_lost"] == 0 and smoke["duplicate_rows"] == 0 and trial["errors"] == 0
    # The resume asks only what no part file held: what the killed run never had answered.
    assert trial["requests_resume"] <= smoke["traces"] - trial["answered_before_kill"]


def test_no_process_outlives_the_killed_run(smoke):
    assert smoke["orphan_processes"] == 0
