"""Caching, partial failure and config changes through Prefect, with the store on S3 (moto)."""

import datetime as dt

import pyarrow as pa
import pytest

from sightsound_core.config import PipelineConfig, load_config
from sightsound_core.errors import TransientError
from sightsound_core.pipeline import open_store
from sightsound_core.stage import plan_sources, read_index

UPSTREAM = ("ingest", "teacher", "vote")
DOWNSTREAM = ("verify", "corpus", "sft", "grpo", "evaluate", "report")


def _s3_recipe(tmp_path, s3_store, small_recipe, run, name="r.yaml"):
    return small_recipe(tmp_path / name, s3_store.root, s3_store.storage_options, run=run)


def _task_runs_since(t0):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=t0)), limit=200
        )
    # Shard tasks carry a stage tag; subflow wrappers and manifest commits do not.
    return [r for r in runs if any(t.startswith("stage:") for t in r.tags)]


def _modified(store, uris):
    return {u: store.fs.info(store._path(u))["LastModified"] for u in uris}


def test_second_run_is_fully_cached_then_verifier_change_reruns_only_downstream(
    prefect_harness, tmp_path, s3_store, small_recipe
):
    from flows.dag import pipeline

    recipe = _s3_recipe(tmp_path, s3_store, small_recipe, run="cache")
    pipeline(recipe=str(recipe))
    store = open_store(load_config(recipe))
    first = read_index(store, "cache")

    t0 = dt.datetime.now(dt.timezone.utc)
    pipeline(recipe=str(recipe))
    runs = _task_runs_since(t0)
    assert runs, "no shard task ran in the second run"
    assert {r.state_name for r in runs} == {"Cached"}, sorted((r.name, r.state_name) for r in runs)
    assert read_index(store, "cache") == first

    upstream_shards = [u for s in UPSTREAM for u in store.list_shards(first[s]["dir"])]
    stamps = _modified(store, upstream_shards)
    pipeline(recipe=str(recipe), overrides={"verify.samples_per_clip": 2})
    after = read_index(store, "cache")
    for stage in UPSTREAM:
        assert after[stage]["stage_hash"] == first[stage]["stage_hash"], stage
    for stage in DOWNSTREAM:
        assert after[stage]["stage_hash"] != first[stage]["stage_hash"], stage
    assert _modified(store, upstream_shards) == stamps


def test_failed_verify_shard_is_the_only_one_recomputed(
    prefect_harness, tmp_path, s3_store, small_recipe, monkeypatch
):
    import flows.dag as dag
    import sightsound_core.dag as core_dag

    real = core_dag.verify_shard
    calls = []

    def planted(cfg, store, job, previous=None):
        calls.append(job.index)
        if job.index == 1 and calls.count(1) == 1:
            raise ValueError("planted failure in verify shard 1")
        return real(cfg, store, job, previous)

    monkeypatch.setattr(core_dag, "verify_shard", planted)
    recipe = _s3_recipe(tmp_path, s3_store, small_recipe, run="fail")
    with pytest.raises(ValueError, match="planted failure"):
        dag.pipeline(recipe=str(recipe))
    assert sorted(calls) == [0, 1]  # not retried: a ValueError is not transient
    store = open_store(load_config(recipe))
    assert "verify" not in read_index(store, "fail")

    teacher_dir = read_index(store, "fail")["teacher"]["dir"]
    stamps = _modified(store, store.list_shards(teacher_dir))
    dag.pipeline(recipe=str(recipe))
    assert sorted(calls) == [0, 1, 1]
    assert _modified(store, store.list_shards(teacher_dir)) == stamps
    assert read_index(store, "fail")["report"]


def test_transient_shard_failure_is_retried_and_succeeds(prefect_harness, s3_store, monkeypatch):
    import flows.dag as dag
    import tasks.stages as stage_tasks
    from prefect import flow

    # The shard task's own retry rule and count, without its back-off wait.
    monkeypatch.setattr(stage_tasks, "shard_task", stage_tasks.shard_task.with_options(retry_delay_seconds=0))
    calls = []

    def compute(job):
        calls.append(job.index)
        if job.index == 1 and calls.count(1) == 1:
            raise TransientError("planted: rate limited")
        return pa.table({"i": [job.index]}), None

    plan = plan_sources(s3_store, "retry", "ingest", {"a": 1}, [{"n": 0}, {"n": 1}])

    @flow
    def one_stage():
        return dag.run_stage(PipelineConfig(), plan, s3_store, compute)

    ref = one_stage()
    assert sorted(calls) == [0, 1, 1]  # shard 1 retried once, shard 0 (its own task) not
    assert ref.shards == [job.output_uri for job in plan.jobs]
