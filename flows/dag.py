"""The SightSound-R1 DAG as Prefect flows: distill -> train -> evaluate, and ``pipeline`` over them.

Every stage is planned by the core (which shards, under which content hash), its shards run as
mapped tasks, and its manifest is committed last by a final task. Flow bodies read like the DAG.
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
from sightsound_core.pipeline import benchmark_stage, open_store
from sightsound_core.report import plan_report, report_shard, report_uris
from sightsound_core.stage import StagePlan, StageRef
from sightsound_core.storage import ObjectStore
from sightsound_core.teacher import plan_teacher, plan_vote, teacher_shard, vote_shard
from sightsound_core.training.stages import grpo_shard, model_paths, plan_grpo, plan_sft, sft_shard
from sightsound_core.verify import plan_verify, verify_shard
from tasks.stages import commit_task, shard_task

log = logging.getLogger(__name__)

# Called after each stage commits, with (stage name, output); the CLI sets it to drive its progress bar.
STAGE_HOOKS: list[Callable[[str, StageRef], None]] = []


def run_stage(
    plan: StagePlan,
    store: ObjectStore,
    compute: Callable[..., Any],
    summary: Callable[[], dict] | None = None,
) -> StageRef:
    """Map ``compute`` over the plan's shards as tasks, then commit the manifest."""
    task = shard_task.with_options(name=plan.stage, tags=[f"stage:{plan.stage}"])
    futures = [task.submit(job=job, store=store, compute=compute) for job in plan.jobs]
    for future in futures:
        future.result()
    ref = commit_task(plan, store, summary)
    for hook in STAGE_HOOKS:
        hook(plan.stage, ref)
    return ref


@flow(name="distill", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def distill(cfg: PipelineConfig) -> dict[str, StageRef]:
    """ingest -> teacher (K samples) -> vote -> verify (AGFV)."""
    store = open_store(cfg)
    clips = run_stage(plan_ingest(cfg.ingest, store, cfg.run), store,
                      lambda job: ingest_shard(cfg.ingest, store, job))
    samples = run_stage(plan_teacher(cfg.teacher, store, cfg.run, clips), store,
                        lambda job: teacher_shard(cfg.teacher, store, job))
    votes = run_stage(plan_vote(cfg.vote, store, cfg.run, clips, samples), store,
                      lambda job: vote_shard(cfg.vote, store, job))
    verdicts = run_stage(plan_verify(cfg.verify, store, cfg.run, clips, samples, votes), store,
                         lambda job: verify_shard(cfg.verify, store, job))
    return {"clips": clips, "samples": samples, "votes": votes, "verdicts": verdicts}


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=1))
def train(cfg: PipelineConfig, distilled: dict[str, StageRef]) -> dict[str, StageRef]:
    """corpus -> SFT (LoRA) -> GRPO."""
    store = open_store(cfg)
    compute, summary = corpus_work(cfg.corpus, store, distilled)
    corpus = run_stage(plan_corpus(cfg.corpus, store, cfg.run, distilled), store, compute, summary)
    sft = run_stage(plan_sft(cfg, store, corpus), store, lambda job: sft_shard(cfg, store, job, corpus))
    out = {"corpus": corpus, "sft": sft}
    if cfg.grpo.enabled:
        out["grpo"] = run_stage(plan_grpo(cfg, store, corpus, sft), store,
                                lambda job: grpo_shard(cfg, store, job, corpus, sft))
    return out


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=1))
def evaluate(cfg: PipelineConfig, trained: dict[str, StageRef]) -> dict[str, StageRef]:
    """benchmarks -> every model on every benchmark -> report."""
    store = open_store(cfg)
    benchmarks = {}
    for bench in cfg.evaluate.benchmarks:
        name = benchmark_stage(bench.name)
        benchmarks[bench.name] = run_stage(
            plan_ingest(bench.ingest, store, cfg.run, name), store,
            lambda job, b=bench: ingest_shard(b.ingest, store, job),
        )
    models = model_paths(cfg, store, trained["sft"], trained.get("grpo"))
    plan = plan_evaluate(cfg, store, models, benchmarks)
    evaluation = run_stage(
        plan, store,
        lambda job: evaluate_shard(cfg, store, job, models, benchmarks),
        summary=lambda: evaluation_summary(store, plan),
    )
    inputs = {**trained, "evaluate": evaluation}
    report = run_stage(plan_report(store, cfg.run, inputs), store,
                       lambda job: report_shard(store, job, cfg.run, inputs))
    return {"evaluate": evaluation, "report": report}


@flow(name="pipeline")
def pipeline(recipe: str = str(DEFAULT_RECIPE), overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The whole SightSound-R1 DAG on one recipe; returns where the report is."""
    cfg = load_config(recipe, overrides)
    distilled = distill(cfg)
    trained = train(cfg, distilled)
    evaluated = evaluate(cfg, trained)
    return report_uris(evaluated["report"])
