"""``run_status`` on a run in every state: committed, stale, being repaired, repair killed."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from fakes.verify_world import make_world
from sightsound_core.config import VerifyConfig
from sightsound_core.stage import PARTS_DIR, REPAIR, plan_sources, run_plan
from sightsound_core.status import run_status
from sightsound_core.storage import MANIFEST, ObjectStore
from sightsound_core.verify import resume_verify, run_verify

REPAIR_RUN = textwrap.dedent(
    """
    import sys
    from sightsound_core.config import VerifyConfig
    from sightsound_core.storage import ObjectStore
    from sightsound_core.verify import resume_verify
    resume_verify(VerifyConfig.model_validate_json(sys.argv[2]), ObjectStore(sys.argv[1]), "r")
    """
)


def _cfg(server) -> VerifyConfig:
    return VerifyConfig(backend="openai", model="fake-audio", base_url=server.url, api_key_env=None,
                        samples_per_clip=2, concurrency=2, max_retries=0, timeout_s=5.0,
                        backoff_base_s=0.01, backoff_max_s=0.02)


def _commit_toy(store: ObjectStore, stage: str) -> None:
    plan = plan_sources(store, "r", stage, {}, [{"n": 0}])
    run_plan(store, plan, lambda job: (pa.table({"x": [1]}), None))


def _states(store):
    return {r["stage"]: r for r in run_status(store, "r")}


@pytest.fixture
def failed_run(tmp_path, openai_server):
    """A run whose verify stage committed with http_500 errors, and two stages after it."""
    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=40, samples_per_clip=2, clips_per_shard=20)
    openai_server.configure(p500=0.5)
    run_verify(_cfg(openai_server), store, "r", refs["clips"], refs["samples"], refs["votes"])
    _commit_toy(store, "corpus")
    _commit_toy(store, "sft")
    openai_server.configure(p500=0.0)
    return store


def test_errors_by_kind_and_no_stage_stale_after_a_clean_run(failed_run):
    rows = _states(failed_run)
    verify = rows["verify"]
    assert verify["state"] == "done" and set(verify["errors"]) == {"http_500"}
    assert verify["errors"]["http_500"] == verify["statuses"]["error"] > 0
    assert verify["summary"]["requests"] >= 80
    assert not any(r["stale"] for r in rows.values())


def test_status_during_a_repair_after_it_is_killed_and_after_it_is_resumed(failed_run, openai_server):
    store = failed_run
    openai_server.configure(latency_s=0.3)
    proc = subprocess.Popen([sys.executable, "-c", REPAIR_RUN, store.root, _cfg(openai_server).model_dump_json()],
                            cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    verify_dir = _states(store)["verify"]["dir"]
    local = store.local_path(verify_dir)
    try:
        deadline = time.monotonic() + 60
        parts = os.path.join(local, PARTS_DIR)
        while os.path.exists(os.path.join(local, MANIFEST)) or not glob.glob(f"{parts}/*/part-*"):
            assert proc.poll() is None and time.monotonic() < deadline, "the repair did not start"
            time.sleep(0.01)
        during = _states(store)
        assert during["verify"]["state"] == "repairing"
        assert during["verify"]["repair"]["pid"] == proc.pid
        assert during["corpus"]["stale"] and during["sft"]["stale"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = _states(store)
    assert killed["verify"]["state"] == "repair stopped" and killed["verify"]["saved"] >= 1
    assert os.path.exists(os.path.join(local, REPAIR))

    openai_server.configure(latency_s=0.0)
    resume_verify(_cfg(openai_server), store, "r")
    after = _states(store)
    assert after["verify"]["state"] == "done" and after["verify"]["repair"] is None
    assert not after["verify"]["errors"] and not after["verify"]["stale"]
    assert after["corpus"]["stale"] and after["sft"]["stale"]  # they read the old verdicts
    assert not os.path.exists(os.path.join(local, REPAIR))


def test_a_manifest_gone_without_a_repair_is_incomplete(failed_run):
    store = failed_run
    os.remove(os.path.join(store.local_path(_states(store)["verify"]["dir"]), MANIFEST))
    rows = _states(store)
    assert rows["verify"]["state"] == "incomplete" and rows["corpus"]["stale"]
