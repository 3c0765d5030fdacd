"""The verify-throughput benchmark's smoke: the items it claims are the requests the fake server
answered, and no rate beats the server's latency bound."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke() -> dict:
    out = subprocess.run(
        [sys.executable, "benchmarks/verify_throughput.py", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def test_every_counted_item_was_a_request_the_server_answered(smoke):
    assert [r["concurrency"] for r in smoke["results"]] == [1, 4]
    timed = sum(r["items"] for r in smoke["results"])
    assert timed > 0
    assert smoke["server_requests"] == timed + smoke["warmup_requests"]


def test_rates_are_items_over_time_within_the_latency_bound(smoke):
    latency = smoke["server_latency_s"]
    for r in smoke["results"]:
        # c requests at a time, each answered after the latency: no faster than that.
        assert r["seconds"] >= r["items"] / r["concurrency"] * latency
        assert r["items_per_s"] == pytest.approx(r["items"] / r["seconds"], rel=2e-2)
