import pyarrow as pa
import pytest

from sightsound_core.config import VoteConfig
from sightsound_core.stage import (
    finalize, is_committed, plan_map, plan_sources, read_index, run_plan, run_shard,
)
from sightsound_core.status import run_status


def _toy(calls):
    def compute(job):
        calls.append(job.index)
        return pa.table({"i": [job.index], "src": [str(job.source)]}), None
    return compute


def test_rerun_recomputes_nothing_committed(store):
    calls = []
    plan = plan_sources(store, "r", "ingest", {"a": 1}, [{"n": 0}, {"n": 1}, {"n": 2}])
    ref = run_plan(store, plan, _toy(calls))
    assert calls == [0, 1, 2] and len(ref.shards) == 3
    again = run_plan(store, plan_sources(store, "r", "ingest", {"a": 1}, [{"n": 0}, {"n": 1}, {"n": 2}]), _toy(calls))
    assert calls == [0, 1, 2]
    assert again.manifest == ref.manifest


def test_changed_source_recomputes_only_that_shard(store):
    calls = []
    run_plan(store, plan_sources(store, "r", "ingest", {"a": 1}, [{"n": 0}, {"n": 1}]), _toy(calls))
    run_plan(store, plan_sources(store, "r", "ingest", {"a": 1}, [{"n": 0}, {"n": 9}]), _toy(calls))
    assert calls == [0, 1, 1]


def test_changed_config_moves_stage_and_downstream_not_upstream(store):
    up_calls, down_calls = [], []
    up = run_plan(store, plan_sources(store, "r", "ingest", {"a": 1}, [{"n": 0}]), _toy(up_calls))
    down1 = run_plan(store, plan_map(store, "r", "vote", VoteConfig(), {"x": up}, "x"), _toy(down_calls))
    down2 = run_plan(store, plan_map(store, "r", "vote", VoteConfig(policy="majority"), {"x": up}, "x"), _toy(down_calls))
    assert down1.stage_hash != down2.stage_hash and down1.dir != down2.dir
    assert up_calls == [0] and down_calls == [0, 0]
    # Runtime-only changes of the upstream keep downstream hashes: same upstream hash, same plan.
    assert plan_map(store, "r", "vote", VoteConfig(), {"x": up}, "x").stage_hash == down1.stage_hash


def test_manifest_only_after_every_shard(store):
    plan = plan_sources(store, "r", "ingest", {"a": 2}, [{"n": 0}, {"n": 1}])
    run_shard(store, plan.jobs[0], _toy([]))
    with pytest.raises(RuntimeError, match="shard 1 is not committed"):
        finalize(store, plan)
    assert store.read_manifest(plan.dir) is None
    rows = run_status(store, "r")
    assert [(r["stage"], r["state"], r["shards"]) for r in rows] == [("ingest", "partial", 1)]
    run_shard(store, plan.jobs[1], _toy([]))
    finalize(store, plan)
    assert read_index(store, "r")["ingest"]["dir"] == plan.dir
    assert run_status(store, "r")[0]["state"] == "done"


def test_shard_from_other_inputs_is_not_reused(store):
    plan = plan_sources(store, "r", "ingest", {"a": 3}, [{"n": 0}])
    run_shard(store, plan.jobs[0], _toy([]))
    other = plan_sources(store, "r", "ingest", {"a": 3}, [{"n": 5}])
    assert other.jobs[0].output_uri == plan.jobs[0].output_uri
    assert not is_committed(store, other.jobs[0])
