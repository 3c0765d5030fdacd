"""The verify stage against the fake OpenAI server: final statuses under faults, resume of error
rows only, and a shard killed mid-way committing each verdict exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from fakes.openai_server import fake_verdict
from fakes.verify_world import make_world
from sightsound_core.config import VerifyConfig
from sightsound_core.schemas import Verdict
from sightsound_core.storage import ObjectStore
from sightsound_core.verdicts import parse_verdict
from sightsound_core.stage import PARTS_DIR, read_all
from sightsound_core.verify import resume_verify, run_verify

FINAL = {"accepted", "rejected", "unparseable", "error"}


def _cfg(server, **kw) -> VerifyConfig:
    base = dict(backend="openai", model="fake-audio", base_url=server.url, api_key_env=None,
                samples_per_clip=4, concurrency=64, max_retries=1, timeout_s=5.0,
                backoff_base_s=0.01, backoff_max_s=0.05, part_size=64)
    return VerifyConfig(**{**base, **kw})


def _ids(verdicts: list[Verdict]) -> list[str]:
    return [f"{v.clip_id}/{v.sample_idx}" for v in verdicts]


@pytest.fixture
def world(tmp_path):
    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=250, samples_per_clip=4, clips_per_shard=50)
    return store, refs


def test_1000_items_under_faults_end_final_and_a_rerun_touches_only_errors(world, openai_server):
    store, refs = world
    openai_server.configure(p429=0.10, p500=0.05, p_timeout=0.02, p_malformed=0.02, retry_after_s=0.05, hang_s=5)
    cfg = _cfg(openai_server, timeout_s=0.5)  # a hung request is given up after 0.5 s

    ref = run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
    first = Verdict.from_table(read_all(store, ref))
    assert len(first) == 1000 and len(set(_ids(first))) == 1000
    assert {v.status for v in first} <= FINAL
    errors = {i for i, v in zip(_ids(first), first) if v.status == "error"}
    # With one retry, about 0.19**2 of 1000 items fail twice: tens of errors, each with its class.
    assert 10 <= len(errors) <= 80
    assert {v.reason for v in first if v.status == "error"} <= {"http_429", "http_500", "timeout", "malformed"}
    # Every request the server saw is counted on its item; on a loaded machine a few timed-out
    # attempts never reach the server at all.
    assert sum(openai_server.outcomes.values()) <= sum(v.attempts for v in first)
    assert ref.manifest["summary"]["statuses"]["error"] == len(errors)
    for v in first:
        if v.status != "error":  # the server's verdict, parsed
            assert parse_verdict(v.raw)[0] == v.status

    # The second run sends exactly one request per error item and none for anything else.
    time.sleep(0.5)  # let any request the first run gave up on land before counting anew
    openai_server.reset_counters()
    openai_server.configure(p429=0, p500=0, p_timeout=0, p_malformed=0)
    cfg = _cfg(openai_server)  # same stage hash: timeouts are a runtime knob
    ref2 = run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
    assert set(openai_server.requests) == errors
    assert set(openai_server.requests.values()) == {1}
    second = Verdict.from_table(read_all(store, ref2))
    assert _ids(second) == _ids(first)
    assert not [v for v in second if v.status == "error"]
    for a, b in zip(first, second):
        if a.status != "error":
            assert a == b  # committed verdicts are never recomputed
        else:
            assert b.attempts == a.attempts + 1
    assert ref2.manifest["summary"]["statuses"].get("error", 0) == 0
    assert ref2.shard_fingerprints != ref.shard_fingerprints  # downstream sees the new content

    # A third run finds nothing to do.
    openai_server.reset_counters()
    ref3 = run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
    assert not openai_server.requests
    assert ref3.manifest == ref2.manifest


def test_resume_verify_reads_the_run_index_and_refuses_another_config(world, openai_server):
    store, refs = world
    openai_server.configure(p500=0.5)
    cfg = _cfg(openai_server, max_retries=0)
    run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
    openai_server.configure(p500=0)
    openai_server.reset_counters()
    ref = resume_verify(cfg, store, "r")
    assert ref.manifest["summary"]["statuses"].get("error", 0) == 0
    assert 300 < sum(openai_server.requests.values()) < 700
    with pytest.raises(ValueError, match="not the one the run committed"):
        resume_verify(_cfg(openai_server, max_new_tokens=99), store, "r")


def test_verdicts_follow_the_server(world, openai_server):
    store, refs = world
    ref = run_verify(_cfg(openai_server), store, "r", refs["clips"], refs["samples"], refs["votes"])
    samples = {(r["clip_id"], r["sample_idx"]): r["raw"] for r in read_all(store, refs["samples"]).to_pylist()}
    verdicts = Verdict.from_table(read_all(store, ref))
    counts = Counter(v.status for v in verdicts)
    assert counts["rejected"] == 250 and counts["accepted"] == 750
    for v in verdicts:
        trace = samples[(v.clip_id, v.sample_idx)]
        assert v.raw == fake_verdict(trace) and v.attempts == 1 and v.backend == "openai"


KILLED_RUN = textwrap.dedent(
    """
    import logging, sys
    from sightsound_core.config import VerifyConfig
    from sightsound_core.storage import ObjectStore
    from sightsound_core.verify import resume_verify
    logging.basicConfig(level=logging.INFO)
    cfg = VerifyConfig.model_validate_json(sys.argv[2])
    resume_verify(cfg, ObjectStore(sys.argv[1]), "r")
    """
)


def test_a_shard_killed_midway_never_reasks_an_answered_request(world, openai_server, tmp_path):
    store, refs = world
    openai_server.configure(latency_s=0.05)
    cfg = _cfg(openai_server, concurrency=4)  # part_size 64: far more than one shard's work in flight
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, store.root, cfg.model_dump_json()],
                            cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts_root = tmp_path / "store" / "r" / "verify"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if len(openai_server.answered_at) >= 40:
                break
            assert proc.poll() is None, "the stage finished before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("the server answered too few requests")
    finally:
        proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
    first = dict(openai_server.requests)
    # Answers the client had ample time to read (its event loop turns in milliseconds).
    answered = {item for item, t in openai_server.answered_at.items() if t < killed_at - 0.25}
    settled = set()
    for part in parts_root.glob(f"*/{PARTS_DIR}/*/part-*.parquet"):
        settled |= set(_ids(Verdict.from_table(ObjectStore(f"file://{part.parent}").read_table(f"file://{part}"))))
    assert len(answered) >= 8 and answered <= settled
    assert not list(parts_root.glob("*/shard-00000.parquet"))  # shard 0 (200 traces) never committed

    openai_server.reset_counters()
    openai_server.configure(latency_s=0.0)
    ref = resume_verify(_cfg(openai_server), store, "r")
    verdicts = Verdict.from_table(read_all(store, ref))
    ids = _ids(verdicts)
    assert len(ids) == len(set(ids)) == 1000
    assert not settled & set(openai_server.requests)  # nothing settled was asked again
    assert len(openai_server.requests) == 1000 - len(settled)
    # Asked twice over run + resume: only what was on the wire when the kill came.
    twice = [item for item in first if item in openai_server.requests]
    assert len(twice) <= cfg.client.concurrency
    assert not list(parts_root.glob(f"*/{PARTS_DIR}/*/part-*.parquet"))
