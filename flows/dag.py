"""The SightSound-R1 DAG as Prefect flows: distill -> train -> evaluate, and ``pipeline`` over them.

The stages, their order and how each is planned and run are the core's ``sightsound_core.dag``
(written once, also walked by the plain loop); each flow here walks its own part of it. A stage
is planned by the core (which shards, under which content hash), its shards run as mapped tasks,
and its manifest is committed last by a final task.
A stage in ``orchestration.fanout_stages`` sends its batches to the workers of a work pool
instead, one flow run each, when the recipe names a fan-out deployment (``flows/fanout.py``).
The training and evaluation flows run in place by default, or are dispatched to a GPU work pool
with ``run_deployment`` when the recipe names a deployment (``orchestration.dispatch_*``); the
dispatching flow then finds every shard committed and reuses them.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.fanout import fan_out, fans_out
from sightsound_core.config import DEFAULT_RECIPE, PipelineConfig, load_config
from sightsound_core.dag import Inputs, Stage, prepare, walk
from sightsound_core.pipeline import open_store
from sightsound_core.report import artifact_key, report_artifacts, report_uris
from sightsound_core.stage import ShardJob, StagePlan, StageRef, run_shard
from sightsound_core.storage import ObjectStore
from tasks.stages import commit_task, stage_task

log = logging.getLogger(__name__)

# Called after each stage commits, with (stage name, output); the CLI sets it to drive its progress bar.
STAGE_HOOKS: list[Callable[[str, StageRef], None]] = []


def run_stage(
    cfg: PipelineConfig,
    plan: StagePlan,
    store: ObjectStore,
    compute: Callable[..., Any] | None = None,
    summary: Callable[[], dict] | None = None,
    work: Callable[[ShardJob], str] | None = None,
    refresh: set[int] = frozenset(),
) -> StageRef:
    """Run the plan's shards as tasks (``shards_per_task`` each), then commit the manifest.

    ``compute`` makes a shard's tables (committed by the core); a stage with its own per-shard
    unit passes ``work`` instead. Batches holding a shard index in ``refresh`` bypass the cache:
    their committed shards are about to be repaired.
    """
    orch = cfg.orchestration
    task = stage_task(plan.stage, store, orch.retries)
    if work is None:
        def work(job: ShardJob) -> str:
            return run_shard(store, job, compute)

    size = orch.batch_size(len(plan.jobs))
    batches = [plan.jobs[i : i + size] for i in range(0, len(plan.jobs), size)]
    futures = [
        task.with_options(refresh_cache=any(j.index in refresh for j in batch)).submit(
            jobs=batch, work=work
        )
        for batch in batches
    ]
    for future in futures:
        future.result()
    return _commit(plan, store, summary)


def _commit(plan: StagePlan, store: ObjectStore, summary: Callable[[], dict] | None) -> StageRef:
    ref = commit_task(plan, store, summary)
    for hook in STAGE_HOOKS:
        hook(plan.stage, ref)
    return ref


def execute_stage(stage: Stage, cfg: PipelineConfig, store: ObjectStore, inputs: Inputs) -> StageRef:
    """The Prefect executor of a stage spec: plan it (reopening it first when committed shards
    are repaired in place, as verify's failed requests are), then ``run_stage``."""
    prepared = prepare(stage, cfg, store, inputs)
    if fans_out(cfg, stage):
        fan_out(stage, cfg, store, inputs, prepared)
        return _commit(prepared.plan, store, prepared.summary)
    return run_stage(cfg, prepared.plan, store, work=prepared.work, summary=prepared.summary,
                     refresh=prepared.repair)


def _walk(cfg: PipelineConfig, flow_name: str, done: dict[str, StageRef]) -> dict[str, StageRef]:
    """This flow's stages of the DAG, as tasks."""
    return walk(cfg, open_store(cfg), execute_stage, flow=flow_name, done=done)


def _distill(cfg: PipelineConfig) -> dict[str, StageRef]:
    """The distill flow with the recipe's cap on concurrent shard tasks."""
    runner = ThreadPoolTaskRunner(max_workers=cfg.orchestration.max_workers)
    return distill.with_options(task_runner=runner)(cfg)


@flow(name="distill")
def distill(cfg: PipelineConfig) -> dict[str, StageRef]:
    """ingest -> (questions, for a video folder) -> teacher (K samples) -> vote -> verify (AGFV).

    Committed verify shards with error rows (API failures) are repaired in place: only those
    rows are asked again, so nothing settled is billed twice.
    """
    return _walk(cfg, "distill", {})


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=True)
def train(cfg: PipelineConfig, distilled: dict[str, StageRef]) -> dict[str, StageRef]:
    """corpus -> SFT (LoRA) -> GRPO."""
    return _walk(cfg, "train", distilled)


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=True)
def evaluate(cfg: PipelineConfig, trained: dict[str, StageRef]) -> dict[str, StageRef]:
    """benchmarks -> every model on every benchmark -> report (also as Prefect artifacts)."""
    evaluated = _walk(cfg, "evaluate", trained)
    publish_report(open_store(cfg), evaluated["report"])
    return {"evaluate": evaluated["evaluate"], "report": evaluated["report"]}


def publish_report(store: ObjectStore, report: StageRef) -> None:
    """The report on the flow run: its Markdown and each of its tables as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    run = report.manifest["run"]
    published = report_artifacts(store, report)
    create_markdown_artifact(
        markdown=published["markdown"], key=artifact_key(run, "report"),
        description=f"sightsound report of run {run}",
    )
    for key, rows in published["tables"].items():
        create_table_artifact(table=rows, key=key)


def _dispatch(deployment: str, recipe: str, overrides: dict[str, Any] | None) -> None:
    """Run a flow of this DAG on another work pool and wait for it; fail if it failed."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={"recipe": recipe, "overrides": overrides or {}})
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"dispatched flow {deployment} ended {run.state and run.state.name}")


@flow(name="pipeline")
def pipeline(recipe: str = str(DEFAULT_RECIPE), overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The whole SightSound-R1 DAG on one recipe; returns where the report is."""
    cfg = load_config(recipe, overrides)
    distilled = _distill(cfg)
    if cfg.orchestration.dispatch_train:
        _dispatch(cfg.orchestration.dispatch_train, recipe, overrides)
    trained = train(cfg, distilled)
    if cfg.orchestration.dispatch_evaluate:
        _dispatch(cfg.orchestration.dispatch_evaluate, recipe, overrides)
    evaluated = evaluate(cfg, trained)
    return report_uris(evaluated["report"])


@flow(name="train-recipe", persist_result=True)
def train_recipe(recipe: str, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Entry point of a GPU-pool deployment: distill (reused) then train, from a recipe."""
    cfg = load_config(recipe, overrides)
    trained = train(cfg, _distill(cfg))
    return {name: ref.dir for name, ref in trained.items()}


@flow(name="evaluate-recipe", persist_result=True)
def evaluate_recipe(recipe: str, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Entry point of a GPU-pool deployment: everything before evaluation is reused."""
    cfg = load_config(recipe, overrides)
    return report_uris(evaluate(cfg, train(cfg, _distill(cfg)))["report"])
