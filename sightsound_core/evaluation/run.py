"""Evaluation: every model the run produced, on every configured benchmark, batched.

One job per (model, benchmark): generate with the student's prompt, score with the benchmark's
rule, commit Prediction rows. The manifest summary holds accuracy with 95% intervals overall,
per question family and per category.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from sightsound_core.config import PipelineConfig
from sightsound_core.evaluation.scoring import accuracy, score_option
from sightsound_core.schemas import Clip, Prediction
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, read_all, run_plan
from sightsound_core.storage import ObjectStore
from sightsound_core.training.stages import audio_loader

log = logging.getLogger(__name__)

STAGE = "evaluate"


def plan_evaluate(
    cfg: PipelineConfig,
    store: ObjectStore,
    models: dict[str, tuple[str, str]],
    benchmarks: dict[str, StageRef],
) -> StagePlan:
    sources = [
        {"model": tag, "model_fp": models[tag][1], "benchmark": name, "bench_fp": ref.fingerprint}
        for tag in cfg.evaluate.models
        if tag in models
        for name, ref in benchmarks.items()
    ]
    # The models are inputs too: a retrained model moves evaluation to a new directory instead
    # of overwriting the results of the old one.
    upstream = [f"{name}={ref.stage_hash}" for name, ref in sorted(benchmarks.items())]
    upstream += [f"model:{tag}={models[tag][1]}" for tag in cfg.evaluate.models if tag in models]
    return plan_sources(store, cfg.run, STAGE, cfg.evaluate, sources, upstream)


def evaluate_shard(
    cfg: PipelineConfig,
    store: ObjectStore,
    job: ShardJob,
    models: dict[str, tuple[str, str]],
    benchmarks: dict[str, StageRef],
) -> tuple[pa.Table, None]:
    from sightsound_core.backends.hf_student import StudentModel

    tag, bench = job.source["model"], job.source["benchmark"]
    clips = [c for c in Clip.from_table(read_all(store, benchmarks[bench])) if c.label is not None]
    model = StudentModel(models[tag][0], device=cfg.models.device)
    model.load()
    load = audio_loader(store)
    rows: list[Prediction] = []
    size = cfg.evaluate.batch_size
    for start in range(0, len(clips), size):
        batch = clips[start : start + size]
        items = [(load(c.audio_uri), c.question, list(c.options)) for c in batch]
        outputs = model.generate(items, max_new_tokens=cfg.evaluate.max_new_tokens, temperature=0.0)
        for clip, texts in zip(batch, outputs):
            answer, correct = score_option(texts[0], list(clip.options), clip.label)
            rows.append(
                Prediction(tag, bench, clip.clip_id, texts[0], answer, clip.label, correct,
                           clip.family, clip.category)
            )
    log.info("evaluate %s on %s: %d items", tag, bench, len(rows))
    return Prediction.to_table(rows), None


def summarize(predictions: list[Prediction]) -> dict[str, Any]:
    """Accuracy per model and benchmark: overall, per family, per category."""
    out: dict[str, Any] = {}
    keys = sorted({(p.model_tag, p.benchmark) for p in predictions})
    for tag, bench in keys:
        preds = [p for p in predictions if p.model_tag == tag and p.benchmark == bench]
        entry = {"all": accuracy([p.correct for p in preds]), "by_family": {}, "by_category": {}}
        for field in ("family", "category"):
            for value in sorted({getattr(p, field) for p in preds}):
                entry[f"by_{field}"][value] = accuracy(
                    [p.correct for p in preds if getattr(p, field) == value]
                )
        out.setdefault(tag, {})[bench] = entry
    return out


def run_evaluate(
    cfg: PipelineConfig,
    store: ObjectStore,
    models: dict[str, tuple[str, str]],
    benchmarks: dict[str, StageRef],
) -> StageRef:
    plan = plan_evaluate(cfg, store, models, benchmarks)
    return run_plan(
        store,
        plan,
        lambda job: evaluate_shard(cfg, store, job, models, benchmarks),
        lambda: evaluation_summary(store, plan),
    )


def evaluation_summary(store: ObjectStore, plan: StagePlan) -> dict[str, Any]:
    preds = [p for j in plan.jobs for p in Prediction.from_table(store.read_table(j.output_uri))]
    return {"accuracy": summarize(preds)}
