"""The SightSound-R1 DAG as Prefect flows: distill -> train -> evaluate, and ``pipeline`` over them.

Every stage is planned by the core (which shards, under which content hash), its shards run as
mapped tasks, and its manifest is committed last by a final task. Flow bodies read like the DAG.
The training and evaluation flows run in place by default, or are dispatched to a GPU work pool
with ``run_deployment`` when the recipe names a deployment (``orchestration.dispatch_*``); the
dispatching flow then finds every shard committed and reuses them.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from sightsound_core.config import DEFAULT_RECIPE, PipelineConfig, load_config
from sightsound_core.corpus import corpus_work, plan_corpus
from sightsound_core.datasets.ingest import ingest_shard, plan_ingest
from sightsound_core.evaluation.run import evaluate_shard, evaluation_summary, plan_evaluate
from sightsound_core.pipeline import benchmark_stage, needs_question_stage, open_store
from sightsound_core.questions import plan_questions, questions_shard
from sightsound_core.report import (
    artifact_key,
    plan_report,
    report_artifacts,
    report_shard,
    report_uris,
)
from sightsound_core.stage import ShardJob, StagePlan, StageRef, run_shard
from sightsound_core.storage import ObjectStore
from sightsound_core.teacher import (
    plan_teacher,
    plan_vote,
    teacher_shard,
    vote_shard,
    vote_stage_summary,
)
from sightsound_core.training.stages import grpo_shard, model_paths, plan_grpo, plan_sft, sft_shard
from sightsound_core.verify import plan_verify, reopen, verify_job, verify_summary
from tasks.stages import GPU_STAGES, commit_task, result_storage, shard_task

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
    tags = [f"stage:{plan.stage}"] + (["gpu"] if plan.stage in GPU_STAGES else [])
    task = shard_task.with_options(
        name=plan.stage, tags=tags, retries=orch.retries, result_storage=result_storage(store)
    )
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
    ref = commit_task(plan, store, summary)
    for hook in STAGE_HOOKS:
        hook(plan.stage, ref)
    return ref


def _distill(cfg: PipelineConfig) -> dict[str, StageRef]:
    """The distill flow with the recipe's cap on concurrent shard tasks."""
    runner = ThreadPoolTaskRunner(max_workers=cfg.orchestration.max_workers)
    return distill.with_options(task_runner=runner)(cfg)


@flow(name="distill")
def distill(cfg: PipelineConfig) -> dict[str, StageRef]:
    """ingest -> teacher (K samples) -> vote -> verify (AGFV)."""
    store = open_store(cfg)
    clips = run_stage(cfg, plan_ingest(cfg.ingest, store, cfg.run), store,
                      lambda job: ingest_shard(cfg.ingest, store, job))
    if needs_question_stage(cfg):
        clips = run_stage(cfg, plan_questions(cfg.teacher, store, cfg.run, clips), store,
                          lambda job: questions_shard(cfg.teacher, store, job))
    samples = run_stage(cfg, plan_teacher(cfg.teacher, store, cfg.run, clips), store,
                        lambda job: teacher_shard(cfg.teacher, store, job))
    vote_plan = plan_vote(cfg.vote, store, cfg.run, clips, samples)
    votes = run_stage(cfg, vote_plan, store, lambda job: vote_shard(cfg.vote, store, job),
                      summary=lambda: vote_stage_summary(store, vote_plan))
    # Committed verify shards with error rows (API failures) are repaired in place: only those
    # rows are asked again, so nothing settled is billed twice.
    verify_plan = plan_verify(cfg.verify, store, cfg.run, clips, samples, votes)
    repair = set(reopen(store, verify_plan))
    verdicts = run_stage(cfg, verify_plan, store, work=lambda job: verify_job(cfg.verify, store, job),
                         summary=lambda: verify_summary(store, verify_plan), refresh=repair)
    return {"clips": clips, "samples": samples, "votes": votes, "verdicts": verdicts}


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=True)
def train(cfg: PipelineConfig, distilled: dict[str, StageRef]) -> dict[str, StageRef]:
    """corpus -> SFT (LoRA) -> GRPO."""
    store = open_store(cfg)
    compute, summary = corpus_work(cfg, store, distilled)
    corpus = run_stage(cfg, plan_corpus(cfg, store, distilled), store, compute, summary)
    sft = run_stage(cfg, plan_sft(cfg, store, corpus), store,
                    lambda job: sft_shard(cfg, store, job, corpus))
    out = {"corpus": corpus, "sft": sft}
    if cfg.grpo.enabled:
        out["grpo"] = run_stage(cfg, plan_grpo(cfg, store, corpus, sft), store,
                                lambda job: grpo_shard(cfg, store, job, corpus, sft))
    return out


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=True)
def evaluate(cfg: PipelineConfig, trained: dict[str, StageRef]) -> dict[str, StageRef]:
    """benchmarks -> every model on every benchmark -> report (also as Prefect artifacts)."""
    store = open_store(cfg)
    benchmarks = {}
    for bench in cfg.evaluate.benchmarks:
        name = benchmark_stage(bench.name)
        benchmarks[bench.name] = run_stage(
            cfg, plan_ingest(bench.ingest, store, cfg.run, name), store,
            lambda job, b=bench: ingest_shard(b.ingest, store, job),
        )
    models = model_paths(cfg, store, trained["sft"], trained.get("grpo"))
    plan = plan_evaluate(cfg, store, models, benchmarks)
    evaluation = run_stage(
        cfg, plan, store,
        lambda job: evaluate_shard(cfg, store, job, models, benchmarks),
        summary=lambda: evaluation_summary(store, plan, benchmarks),
    )
    inputs = {**trained, "evaluate": evaluation}
    report = run_stage(cfg, plan_report(store, cfg.run, inputs), store,
                       lambda job: report_shard(store, job, cfg.run, inputs))
    publish_report(store, report)
    return {"evaluate": evaluation, "report": report}


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
