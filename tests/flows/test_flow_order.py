"""The Prefect flows walk the same DAG spec as the plain loop; GPU stages' tasks are tagged."""

import datetime as dt

import pytest

from sightsound_core.config import load_config
from test_dag_order import DEMO, FOLDER, plain_walk, recording_executor


@pytest.mark.parametrize("recipe, expected", [("demo.yaml", DEMO), ("folder.yaml", FOLDER)])
def test_flows_walk_the_stages_the_plain_loop_walks(prefect_harness, tmp_path, monkeypatch, recipe, expected):
    import flows.cli as cli
    import flows.dag as dag

    walked, dispatched = [], []
    monkeypatch.setattr(dag, "execute_stage", recording_executor(walked))
    monkeypatch.setattr(dag, "publish_report", lambda store, ref: None)
    monkeypatch.setattr(dag, "_dispatch", lambda deployment, *args: dispatched.append(deployment))
    overrides = {"store.root": f"file://{tmp_path}/store"}
    dag.pipeline(recipe=recipe, overrides=overrides)

    cfg, plain = plain_walk(recipe, tmp_path)
    assert walked == plain  # same stages, same order, same inputs
    assert [name for name, _ in walked] == expected
    # The CLI's progress bar ends where the run does (a folder recipe also has the question stage).
    assert cli.stage_count(cfg) == len(walked)
    # Training and evaluation still go to their deployments when the recipe names them.
    orch = cfg.orchestration
    assert dispatched == [d for d in (orch.dispatch_train, orch.dispatch_evaluate) if d]


def test_teacher_tasks_carry_the_gpu_tag(prefect_harness, tmp_path, small_recipe):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    from flows.dag import distill

    recipe = small_recipe(tmp_path / "small.yaml", f"file://{tmp_path}/store")
    t0 = dt.datetime.now(dt.timezone.utc)
    distill(load_config(recipe))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=t0)), limit=200
        )
    tags = {}
    for r in runs:
        stage = next((t.split(":", 1)[1] for t in r.tags if t.startswith("stage:")), None)
        if stage:
            tags.setdefault(stage, set()).add("gpu" in r.tags)
    assert tags == {"ingest": {False}, "teacher": {True}, "vote": {False}, "verify": {False}}

