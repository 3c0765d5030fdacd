import datetime as dt
import logging
import os
import socket

import pyarrow as pa
import pytest

from sightsound_core.config import CODE_VERSION, TeacherConfig, VoteConfig
from sightsound_core.stage import (
    StageRef, commit_shard, finalize, is_committed, load_ref, plan_map, plan_sources, read_all, read_index,
    read_parts, read_repair, reopen_stage, run_plan, run_shard, write_part,
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


def test_parts_come_back_oldest_first_for_the_same_inputs_only_until_the_commit(store):
    job = plan_sources(store, "r", "teacher", {"a": 7}, [{"n": 0}]).jobs[0]
    write_part(store, job, pa.table({"i": [1]}))
    write_part(store, job, pa.table({"i": [2]}))
    assert [t.column("i").to_pylist() for t in read_parts(store, job)] == [[1], [2]]
    assert run_status(store, "r")[0]["saved"] == 2
    # Answers paid for other inputs, or under another config, are not this shard's answers.
    assert read_parts(store, plan_sources(store, "r", "teacher", {"a": 7}, [{"n": 1}]).jobs[0]) == []
    assert read_parts(store, plan_sources(store, "r", "teacher", {"a": 70}, [{"n": 0}]).jobs[0]) == []
    commit_shard(store, job, pa.table({"i": [1, 2]}))
    assert read_parts(store, job) == [] and run_status(store, "r")[0]["saved"] == 0


def test_a_repair_is_open_from_reopen_until_finalize(store):
    plan = plan_sources(store, "r", "verify", {"a": 8}, [{"n": 0}, {"n": 1}])
    ref = run_plan(store, plan, _toy([]))
    assert read_repair(store, plan.dir) is None and load_ref(store, plan.dir) == ref
    reopen_stage(store, plan, [1])
    marker = read_repair(store, plan.dir)
    assert (marker["stage"], marker["shards"], marker["pid"], marker["host"]) == (
        "verify", [1], os.getpid(), socket.gethostname())
    age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(marker["started_at"])
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=5)
    # The manifest goes: nothing downstream may read the stage while it is being repaired.
    assert load_ref(store, plan.dir) is None
    assert run_status(store, "r")[0]["state"] == "repairing"
    closed = finalize(store, plan)
    assert read_repair(store, plan.dir) is None and load_ref(store, plan.dir) == closed
    assert run_status(store, "r")[0]["state"] == "done"


def test_read_all_is_every_shard_in_order_without_shard_metadata(store):
    ref = run_plan(store, plan_sources(store, "r", "ingest", {"a": 9}, [{"n": 0}, {"n": 1}, {"n": 2}]), _toy([]))
    table = read_all(store, ref)
    assert table.column("i").to_pylist() == [0, 1, 2]
    # One shard's input fingerprint must not pass for the whole stage's.
    assert table.schema.metadata is None
    empty = run_plan(store, plan_sources(store, "r", "ingest", {"a": 10}, []), _toy([]))
    with pytest.raises(ValueError, match="ingest has no shards"):
        read_all(store, empty)


def test_the_manifest_records_what_made_the_stage(store):
    plan = plan_sources(store, "r", "vote", VoteConfig(), [{"n": 0}, {"n": 1}])
    ref = run_plan(store, plan, _toy([]), summary=lambda: {"kept": 2})
    m = ref.manifest
    assert (m["run"], m["stage"], m["stage_hash"], m["code_version"], m["config"], m["summary"]) == (
        "r", "vote", plan.stage_hash, CODE_VERSION, VoteConfig().hash_payload(), {"kept": 2})
    age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(m["committed_at"])
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=5)
    assert [(s["index"], s["source"], s["rows"]) for s in m["shards"]] == [(0, {"n": 0}, 1), (1, {"n": 1}, 1)]
    assert (ref.stage, ref.stage_hash, ref.dir) == ("vote", plan.stage_hash, plan.dir)
    # verify's resume compares the recipe's stage hash with the one the index recorded.
    assert read_index(store, "r")["vote"] == {"stage": "vote", "dir": plan.dir, "stage_hash": plan.stage_hash}


def test_run_plan_reports_progress_and_summarises_only_a_new_manifest(store):
    progress, summaries = [], []
    plan = plan_sources(store, "r", "ingest", {"a": 11}, [{"n": 0}, {"n": 1}, {"n": 2}])
    for _ in range(2):
        run_plan(store, plan, _toy([]), summary=lambda: summaries.append(1) or {}, progress=lambda *a: progress.append(a))
    assert progress == [(1, 3), (2, 3), (3, 3)] * 2
    assert summaries == [1]


def test_each_shard_counts_its_status_kept_or_correct_column(store):
    sources = [
        {"status": ["ok", "ok", "bad"]},
        {"kept": [True, False, True]},
        {"correct": [False]},
        {"other": [1]},
        {"status": ["ok"], "kept": [False]},
    ]
    ref = run_plan(store, plan_sources(store, "r", "verify", {"a": 12}, sources), lambda job: (pa.table(job.source), None))
    assert [s["status_counts"] for s in ref.manifest["shards"]] == [
        {"ok": 2, "bad": 1}, {"True": 2, "False": 1}, {"False": 1}, {}, {"ok": 1}]


def test_a_grown_stage_reads_only_its_new_shards(store, monkeypatch):
    run_plan(store, plan_sources(store, "r", "ingest", {"a": 13}, [{"n": 0}, {"n": 1}]), _toy([]))
    grown = plan_sources(store, "r", "ingest", {"a": 13}, [{"n": 0}, {"n": 1}, {"n": 2}])
    read = []
    real = store.read_table
    monkeypatch.setattr(store, "read_table", lambda uri, *a: read.append(uri) or real(uri, *a))
    ref = run_plan(store, grown, _toy([]))
    assert read == [grown.jobs[2].output_uri]
    assert [s["index"] for s in ref.manifest["shards"]] == [0, 1, 2] and ref.manifest["rows"] == 3


def test_a_changed_upstream_shard_recomputes_only_its_downstream_shard(store):
    down_calls = []

    def rerun(sources):
        up = run_plan(store, plan_sources(store, "r", "ingest", {"a": 14}, sources), _toy([]))
        run_plan(store, plan_map(store, "r", "vote", VoteConfig(), {"x": up}, "x"), _toy(down_calls))

    rerun([{"n": 0}, {"n": 1}])
    rerun([{"n": 0}, {"n": 9}])
    assert down_calls == [0, 1, 1]


def test_a_shard_without_a_recorded_input_fingerprint_is_recomputed(store):
    calls = []
    plan = plan_sources(store, "r", "ingest", {"a": 15}, [{"n": 0}])
    store.write_table(plan.jobs[0].output_uri, pa.table({"i": [0]}))  # e.g. copied in by hand
    assert not is_committed(store, plan.jobs[0])
    run_plan(store, plan, _toy(calls))
    assert calls == [0] and is_committed(store, plan.jobs[0])


def _ref(stage, n):
    return StageRef(stage, f"{stage}-hash", f"file:///{stage}", [f"file:///{stage}/s{i}" for i in range(n)],
                    [f"{stage}-fp{i}" for i in range(n)], {})


def test_map_jobs_pair_shards_by_index_and_refuse_misaligned_inputs(file_store):
    plan = plan_map(file_store, "r", "vote", VoteConfig(), {"x": _ref("ingest", 2), "y": _ref("teacher", 2)}, "x")
    assert [(j.stage, j.index, j.inputs) for j in plan.jobs] == [
        ("vote", i, {"x": f"file:///ingest/s{i}", "y": f"file:///teacher/s{i}"}) for i in range(2)]
    with pytest.raises(ValueError, match="vote: input y has 1 shards, x has 2"):
        plan_map(file_store, "r", "vote", VoteConfig(), {"x": _ref("ingest", 2), "y": _ref("teacher", 1)}, "x")


def test_the_stage_hash_covers_the_stage_name_and_its_upstream(file_store):
    def stage_hash(stage, upstream=None):
        return plan_sources(file_store, "r", stage, {"a": 1}, [{"n": 0}], upstream).stage_hash

    assert stage_hash("ingest") != stage_hash("questions")
    assert len({stage_hash("ingest"), stage_hash("ingest", ["x=1"]), stage_hash("ingest", ["x=2"])}) == 3


def test_a_reused_shard_is_logged_by_stage_and_index(file_store, caplog):
    plan = plan_sources(file_store, "r", "ingest", {"a": 16}, [{"n": 0}, {"n": 1}])
    run_plan(file_store, plan, _toy([]))
    with caplog.at_level(logging.DEBUG, logger="sightsound_core.stage"):
        run_plan(file_store, plan, _toy([]))
    assert [r.getMessage() for r in caplog.records] == ["ingest shard 0: committed, reused", "ingest shard 1: committed, reused"]
