"""The whole DAG as plain function calls, no orchestrator: for notebooks, tests and baselines.

The Prefect flows in ``flows/`` run the same stage functions shard by shard as tasks; this module
is the reference order of the stages and the names each stage's inputs go by.
"""

from __future__ import annotations

import logging
from typing import Callable

from sightsound_core.config import PipelineConfig
from sightsound_core.corpus import run_corpus
from sightsound_core.datasets.ingest import run_ingest
from sightsound_core.evaluation.run import run_evaluate
from sightsound_core.questions import run_questions
from sightsound_core.report import run_report
from sightsound_core.stage import StageRef
from sightsound_core.storage import ObjectStore
from sightsound_core.teacher import run_teacher, run_vote
from sightsound_core.training.stages import model_paths, run_grpo, run_sft
from sightsound_core.verify import run_verify

log = logging.getLogger(__name__)

def open_store(cfg: PipelineConfig) -> ObjectStore:
    return ObjectStore(cfg.store.root, cfg.store.storage_options)


def needs_question_stage(cfg: PipelineConfig) -> bool:
    """Unlabeled corpora (a video folder) get teacher-proposed questions before sampling."""
    return cfg.ingest.dataset == "folder"


def benchmark_stage(name: str) -> str:
    return f"bench-{name}"


def run_pipeline(
    cfg: PipelineConfig, on_stage: Callable[[str, StageRef], None] | None = None
) -> dict[str, StageRef]:
    """Run (or reuse) every stage in order; returns each stage's committed output."""
    store = open_store(cfg)
    refs: dict[str, StageRef] = {}

    def done(name: str, ref: StageRef) -> StageRef:
        refs[name] = ref
        if on_stage:
            on_stage(name, ref)
        return ref

    clips = done("ingest", run_ingest(cfg.ingest, store, cfg.run))
    if needs_question_stage(cfg):
        clips = done("questions", run_questions(cfg.teacher, store, cfg.run, clips))
    samples = done("teacher", run_teacher(cfg.teacher, store, cfg.run, clips))
    votes = done("vote", run_vote(cfg.vote, store, cfg.run, clips, samples))
    verdicts = done("verify", run_verify(cfg.verify, store, cfg.run, clips, samples, votes))
    corpus = done(
        "corpus",
        run_corpus(cfg, store, {"clips": clips, "samples": samples, "votes": votes, "verdicts": verdicts}),
    )
    sft = done("sft", run_sft(cfg, store, corpus))
    grpo = done("grpo", run_grpo(cfg, store, corpus, sft)) if cfg.grpo.enabled else None
    benchmarks = {
        b.name: done(benchmark_stage(b.name), run_ingest(b.ingest, store, cfg.run, benchmark_stage(b.name)))
        for b in cfg.evaluate.benchmarks
    }
    models = model_paths(cfg, store, sft, grpo)
    evaluation = done("evaluate", run_evaluate(cfg, store, models, benchmarks))
    inputs = {"corpus": corpus, "sft": sft, "evaluate": evaluation}
    if grpo is not None:
        inputs["grpo"] = grpo
    done("report", run_report(store, cfg.run, inputs))
    return refs
