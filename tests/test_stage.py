import pyarrow as pa
import pytest

from sightsound_core.config import TeacherConfig, VoteConfig
from sightsound_core.stage import (
    commit_shard, finalize, is_committed, plan_map, plan_sources, read_index, run_plan, run_shard,
)
from sightsound_core.status import run_status


def _toy(calls):
    def compute(job):
        calls.append(job.index)
        return pa.table({"i": [job.index], "src": [str(job.source)]}), None
    return compute


def _quarantining(job):
    """A shard of one row, plus a quarantine row when the source is marked bad."""
    table = pa.table({"i": [job.index]})
    if job.source.get("bad"):
        return table, pa.table({"input": [str(job.source)], "reason": ["bad"]})
    return table, None


def _crash_on(store, monkeypatch, uri):
    """Make the store's write of ``uri`` fail, as a process killed at that point would."""
    real = store.write_table

    def write_table(target, table):
        if target == uri:
            raise OSError(f"killed while writing {target}")
        return real(target, table)

    monkeypatch.setattr(store, "write_table", write_table)


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


def test_runtime_only_upstream_change_keeps_downstream_hashes(store):
    calls = []

    def upstream_then_plan_downstream(teacher):
        up = run_plan(store, plan_sources(store, "r", "teacher", teacher, [{"n": 0}]), _toy(calls))
        return up.stage_hash, plan_map(store, "r", "vote", VoteConfig(), {"x": up}, "x").stage_hash

    first = upstream_then_plan_downstream(TeacherConfig())
    assert upstream_then_plan_downstream(TeacherConfig(concurrency=64, timeout_s=5.0, batch_size=2)) == first
    assert calls == [0]
    up, down = upstream_then_plan_downstream(TeacherConfig(k=3))
    assert up != first[0] and down != first[1]


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


def test_failed_quarantine_write_leaves_no_committed_shard(store, monkeypatch):
    plan = plan_sources(store, "r", "ingest", {"a": 4}, [{"n": 0, "bad": True}])
    job = plan.jobs[0]
    _crash_on(store, monkeypatch, job.quarantine_uri)
    with pytest.raises(OSError, match="killed"):
        run_shard(store, job, _quarantining)
    assert not is_committed(store, job)
    monkeypatch.undo()
    assert run_plan(store, plan, _quarantining).manifest["quarantined"] == 1


@pytest.mark.parametrize("before, after", [({"n": 0, "bad": True}, {"n": 0}), ({"n": 0}, {"n": 0, "bad": True})])
def test_crash_mid_commit_never_pairs_a_shard_with_other_inputs_quarantine(store, monkeypatch, before, after):
    old = plan_sources(store, "r", "ingest", {"a": 5}, [before]).jobs[0]
    new = plan_sources(store, "r", "ingest", {"a": 5}, [after]).jobs[0]
    assert old.output_uri == new.output_uri
    run_shard(store, old, _quarantining)
    # The re-run settles the quarantine file for its own inputs, then dies before its shard lands.
    _crash_on(store, monkeypatch, new.output_uri)
    with pytest.raises(OSError, match="killed"):
        commit_shard(store, new, *_quarantining(new))
    # The old shard would be reused if its inputs came back, so it must not survive beside the
    # new quarantine state.
    assert not is_committed(store, old) and not is_committed(store, new)


def test_fixed_input_removes_its_stale_quarantine(store):
    bad = run_plan(store, plan_sources(store, "r", "ingest", {"a": 6}, [{"n": 0, "bad": True}]), _quarantining)
    assert bad.manifest["quarantined"] == 1
    plan = plan_sources(store, "r", "ingest", {"a": 6}, [{"n": 0}])
    fixed = run_plan(store, plan, _quarantining)
    assert fixed.manifest["quarantined"] == 0
    assert not store.exists(plan.jobs[0].quarantine_uri)
