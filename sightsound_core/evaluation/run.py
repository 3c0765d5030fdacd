"""Evaluation: every model the run produced, on every configured benchmark, batched.

One job per (model, benchmark): generate with the student's prompt (``inference``), score with the
benchmark's own rule (``scoring.score``), commit Prediction rows; items without a label are
quarantined. An MMAU job also writes the official prediction file next to its shard, before the
shard (so a committed shard always has its file): ``mmau-{model}-{benchmark}.json``.

The manifest summary holds, per model and benchmark, accuracy with 95% intervals overall, per
question family and per category (MMAU: task; AVQA and MUSIC-AVQA: question type; synthetic:
question kind), MMAU's official breakdown recomputed from the prediction file, and per benchmark
its scorer, answer rule, annotation release and source, where the prediction files are, and two
counts: ``file_items``, the items its ingest read (every record of the annotation file, unless
``ingest.limit``: clips plus quarantine rows), and ``items``, those scored. They differ by what
ingest quarantined and by unlabelled items; for MMAU they must be equal, as the official scorer
scores every item of the file.

The silent-audio probe (``evaluate.silent_probe``, beyond the paper: audio LMs answer many
benchmark items right with no audio at all, AudioMCQ, arXiv 2509.21060): in the same job, the model
answers every scored item again with its waveform replaced by zeros of the same length, in the
same batches. Those Prediction rows go to their own file next to the shard,
``silence-{model}-{benchmark}.parquet``, written before the shard commits; the shard, the MMAU
prediction file, the accuracy summary, the hallucination rate and the example hold the answers
with audio only. The summary's ``silence`` holds, per model and benchmark, accuracy with audio,
with silence and their difference, overall, per family and per category, with the items right
only with audio and only with silence.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from sightsound_core.backends.registry import make_verifier
from sightsound_core.claims import claim_support
from sightsound_core.config import BenchmarkConfig, PipelineConfig
from sightsound_core.evaluation.inference import generate_answers, load_generator, silenced
from sightsound_core.evaluation.judge import judge_predictions
from sightsound_core.evaluation.mmau import official_breakdown, prediction_json, prediction_record
from sightsound_core.evaluation.scoring import accuracy, score
from sightsound_core.schemas import Clip, Prediction, Quarantine
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, read_all, run_plan
from sightsound_core.storage import ObjectStore, join
from sightsound_core.training.store_io import audio_loader

log = logging.getLogger(__name__)

STAGE = "evaluate"


def plan_evaluate(
    cfg: PipelineConfig,
    store: ObjectStore,
    models: dict[str, tuple[str, str]],
    benchmarks: dict[str, StageRef],
) -> StagePlan:
    """One job per (model the run produced, benchmark), in ``evaluate.models`` order."""
    skipped = [tag for tag in cfg.evaluate.models if tag not in models]
    if skipped:
        log.info("evaluate: the run produced no %s model; not evaluated", ", ".join(skipped))
    sources = [
        {
            "model": tag,
            "model_fp": models[tag][1],
            "benchmark": name,
            "bench_fp": ref.fingerprint,
            "annotations": _annotations(ref),
            "file_items": ref.manifest["rows"] + ref.manifest["quarantined"],
        }
        for tag in cfg.evaluate.models
        if tag in models
        for name, ref in benchmarks.items()
    ]
    # The models are inputs too: a retrained model moves evaluation to a new directory instead
    # of overwriting the results of the old one.
    upstream = [f"{name}={ref.stage_hash}" for name, ref in sorted(benchmarks.items())]
    upstream += [f"model:{tag}={models[tag][1]}" for tag in cfg.evaluate.models if tag in models]
    if judges(cfg):
        # The judge's verdicts are results: another verifier moves evaluation to a new directory.
        upstream.append(f"judge={cfg.verify.content_hash()}")
    return plan_sources(store, cfg.run, STAGE, cfg.evaluate, sources, upstream)


def judges(cfg: PipelineConfig) -> bool:
    """Whether the run's verifier judges answers: ``evaluate.judge`` on and a benchmark of real clips."""
    return cfg.evaluate.judge and any(b.ingest.dataset != "synthetic" for b in cfg.evaluate.benchmarks)


def _annotations(ref: StageRef) -> list[str]:
    """The annotation files a benchmark's items came from (none for the synthetic world)."""
    return sorted({s["source"]["annotations"] for s in ref.manifest["shards"]
                   if isinstance(s.get("source"), dict) and s["source"].get("annotations")})


def _annotation_version(bench: dict[str, Any]) -> str | None:
    """The annotation release a benchmark scored (its config payload): MUSIC-AVQA's is the
    release its ingest read."""
    if bench["ingest"]["dataset"] == "music_avqa":
        return bench["ingest"]["music_avqa_release"]
    return bench["annotation_version"]


def benchmark_config(cfg: PipelineConfig, name: str) -> BenchmarkConfig:
    return next(b for b in cfg.evaluate.benchmarks if b.name == name)


def mmau_file_uri(job: ShardJob) -> str:
    """Where an MMAU job's official prediction file goes: next to its shard."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{job.source['model']}-{job.source['benchmark']}")
    return join(job.output_uri.rsplit("/", 1)[0], f"mmau-{slug}.json")


def silence_file_uri(job: ShardJob) -> str:
    """Where a job's answers with silence go: next to its shard, outside the shard listing."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{job.source['model']}-{job.source['benchmark']}")
    return join(job.output_uri.rsplit("/", 1)[0], f"silence-{slug}.parquet")


def score_all(
    tag: str,
    bench: BenchmarkConfig,
    clips: list[Clip],
    texts: list[str],
    load_audio: Callable[[str], np.ndarray] | None = None,
) -> list[Prediction]:
    """Prediction rows for generated ``texts`` (one per clip), scored by the benchmark's rule.

    With ``load_audio``, the sound claims of each synthetic item's text are checked against its
    waveform (the student hallucination rate).
    """
    rows = []
    for clip, text in zip(clips, texts, strict=True):
        scored = score(bench.scorer, text, clip, bench.answer_rule)
        claims = contradicted = 0
        if load_audio is not None and clip.source == "synthetic":
            claims, contradicted = claim_support(text, load_audio(clip.audio_uri or ""))
        rows.append(
            Prediction(tag, bench.name, clip.clip_id, text, scored.answer, clip.label or "",
                       scored.correct, clip.family, clip.category, claims, contradicted)
        )
    return rows


def evaluate_shard(
    cfg: PipelineConfig,
    store: ObjectStore,
    job: ShardJob,
    models: dict[str, tuple[str, str]],
    benchmarks: dict[str, StageRef],
) -> tuple[pa.Table, pa.Table]:
    tag, name = job.source["model"], job.source["benchmark"]
    bench = benchmark_config(cfg, name)
    # -- items: labelled ones are scored, the rest quarantined
    items = Clip.from_table(read_all(store, benchmarks[name]))
    clips = [c for c in items if c.label is not None]
    bad = [Quarantine(job.stage, c.clip_id, "unlabelled", f"{name}: no label to score against")
           for c in items if c.label is None]
    # -- generate and score
    model = load_generator(cfg.evaluate.backend, models[tag][0], cfg.models.device)
    load_audio = audio_loader(store)
    texts = generate_answers(model, clips, load_audio, cfg.evaluate.batch_size, cfg.evaluate.max_new_tokens)
    rows = score_all(tag, bench, clips, texts, load_audio)
    if cfg.evaluate.judge and any(c.source != "synthetic" for c in clips):
        rows = judge_predictions(make_verifier(cfg.verify), clips, rows, load_audio)
    # -- the silent-audio probe: the same items and batches, zeros for audio, in a file of its own
    if cfg.evaluate.silent_probe:
        silent = generate_answers(model, clips, silenced(load_audio), cfg.evaluate.batch_size,
                                  cfg.evaluate.max_new_tokens)
        store.write_table(silence_file_uri(job), Prediction.to_table(score_all(tag, bench, clips, silent)))
    # -- the official MMAU prediction file, written before the shard commits
    if bench.scorer == "mmau":
        records = [prediction_record(c, p, bench.annotation_version, bench.answer_rule)
                   for c, p in zip(clips, rows)]
        store.write_bytes(mmau_file_uri(job), prediction_json(records))
    log.info("evaluate %s on %s: %d items, %d correct", tag, name, len(rows), sum(p.correct for p in rows))
    return Prediction.to_table(rows), Quarantine.to_table(bad)


def summarize(predictions: list[Prediction]) -> dict[str, Any]:
    """Accuracy per model and benchmark (in the order they first appear): overall, per family,
    per category."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys((p.model_tag, p.benchmark) for p in predictions))
    for tag, bench in keys:
        preds = [p for p in predictions if p.model_tag == tag and p.benchmark == bench]
        entry = {"all": accuracy([p.correct for p in preds]), "by_family": {}, "by_category": {},
                 "hallucination": hallucination_rate(preds)}
        for field in ("family", "category"):
            for value in sorted({getattr(p, field) for p in preds}):
                entry[f"by_{field}"][value] = accuracy(
                    [p.correct for p in preds if getattr(p, field) == value]
                )
        out.setdefault(tag, {})[bench] = entry
    return out


def silent_probe(audio: list[Prediction], silence: list[Prediction]) -> dict[str, Any]:
    """Per model and benchmark (as ``summarize``): accuracy with audio, with silence, their
    difference (a fraction, audio minus silence), and the items right only with audio and only
    with silence, overall (``all``), per family and per category.

    >>> p = lambda clip, ok: Prediction("m", "b", clip, "", None, "a", ok, "f", "k")
    >>> r = silent_probe([p("1", True), p("2", True)], [p("1", True), p("2", False)])["m"]["b"]["all"]
    >>> (r["audio"]["accuracy"], r["silence"]["accuracy"], r["difference"], r["audio_only"], r["silence_only"])
    (1.0, 0.5, 0.5, 1, 0)
    """
    out: dict[str, Any] = {}
    for tag, bench in dict.fromkeys((p.model_tag, p.benchmark) for p in audio):
        with_audio = [p for p in audio if (p.model_tag, p.benchmark) == (tag, bench)]
        silent = {p.clip_id: p.correct for p in silence if (p.model_tag, p.benchmark) == (tag, bench)}
        entry: dict[str, Any] = {"all": _probe_group(with_audio, silent), "by_family": {}, "by_category": {}}
        for field in ("family", "category"):
            for value in sorted({getattr(p, field) for p in with_audio}):
                group = [p for p in with_audio if getattr(p, field) == value]
                entry[f"by_{field}"][value] = _probe_group(group, silent)
        out.setdefault(tag, {})[bench] = entry
    return out


def _probe_group(with_audio: list[Prediction], silent: dict[str, bool]) -> dict[str, Any]:
    """One group of the probe, on its items answered both ways."""
    both = [p for p in with_audio if p.clip_id in silent]
    audio, silence = accuracy([p.correct for p in both]), accuracy([silent[p.clip_id] for p in both])
    return {
        "audio": audio,
        "silence": silence,
        "difference": audio["accuracy"] - silence["accuracy"],
        "audio_only": sum(p.correct and not silent[p.clip_id] for p in both),
        "silence_only": sum(silent[p.clip_id] and not p.correct for p in both),
    }


def hallucination_rate(predictions: list[Prediction]) -> dict[str, Any]:
    """Share of checkable sound claims the audio contradicts, with a 95% Wilson interval over
    claims (claims of one answer are not independent, so the interval is optimistic), and how
    many answers made any claim.

    >>> p = Prediction("m", "b", "c", "", None, "a", False, "f", "k", claims=4, contradicted=1)
    >>> r = hallucination_rate([p, p])
    >>> (r["claims"], r["contradicted"], r["rate"], r["answers_with_claims"], r["unit"])
    (8, 2, 0.25, 2, 'claims')

    On real items the run's verifier judged whole answers (``evaluation/judge.py``): the unit is
    the answer, and answers the judge could not judge are counted apart.

    >>> j = [Prediction("m", "b", c, "", None, "a", False, "f", "k", claims=n, contradicted=d, judge=s)
    ...      for c, n, d, s in [("1", 1, 1, "rejected"), ("2", 1, 0, "accepted"), ("3", 0, 0, "error")]]
    >>> r = hallucination_rate(j)
    >>> (r["claims"], r["rate"], r["unit"], r["not_judged"])
    (2, 0.5, 'answers', 1)
    """
    claims = sum(p.claims for p in predictions)
    contradicted = sum(p.contradicted for p in predictions)
    stats = accuracy([True] * contradicted + [False] * (claims - contradicted))
    judged = [p for p in predictions if p.judge]
    return {
        "unit": "answers" if judged else "claims",
        "not_judged": sum(p.judge not in ("accepted", "rejected") for p in judged),
        "claims": claims,
        "contradicted": contradicted,
        "rate": stats["accuracy"] if claims else None,
        "ci_low": stats["ci_low"],
        "ci_high": stats["ci_high"],
        "answers_with_claims": sum(p.claims > 0 for p in predictions),
    }


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
        lambda: evaluation_summary(store, plan, benchmarks),
    )


def chance_accuracy(clips: list[Clip]) -> dict[str, float]:
    """Expected accuracy of a uniform guess among each item's options: overall and per family.

    >>> c = lambda f, n: Clip("i", "s", "t", None, None, 1.0, "q", ["o"] * n, "o", f, "k")
    >>> chance_accuracy([c("a", 2), c("b", 4)])
    {'all': 0.375, 'a': 0.5, 'b': 0.25}
    """
    labelled = [c for c in clips if c.label is not None]
    out = {"all": sum(1 / len(c.options) for c in labelled) / max(len(labelled), 1)}
    for family in sorted({c.family for c in labelled}):
        group = [c for c in labelled if c.family == family]
        out[family] = sum(1 / len(c.options) for c in group) / len(group)
    return out


def before_after(
    predictions: list[Prediction], models: list[str], clips: dict[str, Clip]
) -> dict[str, Any] | None:
    """Every model's answer on one held-out item that the last model gets right and the first
    (pretrained) does not, preferring one whose last answer makes checkable sound claims; None
    when there is no such item."""
    if len(models) < 2:
        return None
    by = {(p.model_tag, p.clip_id): p for p in predictions}
    first, last = models[0], models[-1]
    good = [c for c in sorted(clips) if (last, c) in by and (first, c) in by
            and by[(last, c)].correct and not by[(first, c)].correct]
    if not good:
        return None
    chosen = next((c for c in good if by[(last, c)].claims), good[0])
    clip = clips[chosen]
    return {
        "clip_id": chosen,
        "question": f"{clip.question} Options: {', '.join(clip.options)}",
        "label": clip.label,
        "answers": [(m, by[(m, chosen)].raw) for m in models if (m, chosen) in by],
    }


def evaluation_summary(
    store: ObjectStore, plan: StagePlan, items: dict[str, StageRef] | None = None
) -> dict[str, Any]:
    """The evaluate manifest's summary (see the module docstring); reads only committed output.
    With the benchmarks' items, each benchmark's info also gets its chance accuracy."""
    preds = [p for j in plan.jobs for p in Prediction.from_table(store.read_table(j.output_uri))]
    acc = summarize(preds)
    probe = plan.config_payload["silent_probe"]
    configs = {b["name"]: b for b in plan.config_payload["benchmarks"]}
    benchmarks: dict[str, Any] = {}
    for job in plan.jobs:
        tag, name = job.source["model"], job.source["benchmark"]
        bench = configs[name]
        info = benchmarks.setdefault(name, {
            "scorer": bench["scorer"],
            "answer_rule": bench["answer_rule"],
            "annotation_version": _annotation_version(bench),
            "annotations": job.source["annotations"],
            "dataset": bench["ingest"]["dataset"],
            "prediction_files": {},
            "silence_files": {},
        })
        if items is not None and "chance" not in info:
            clips = Clip.from_table(read_all(store, items[name]))
            info["chance"] = chance_accuracy(clips)
            info["example"] = before_after(
                [p for p in preds if p.benchmark == name], list(dict.fromkeys(j.source["model"] for j in plan.jobs)),
                {c.clip_id: c for c in clips},
            )
        entry = acc.setdefault(tag, {}).setdefault(
            name, {"all": accuracy([]), "by_family": {}, "by_category": {}}
        )
        info["items"] = entry["all"]["n"]
        info["file_items"] = job.source["file_items"]
        if bench["scorer"] == "mmau" and info["items"] != info["file_items"]:
            log.warning("evaluate: %s scored %d of the %d items of its file; MMAU's official "
                        "scorer scores them all", name, info["items"], info["file_items"])
        if bench["scorer"] == "mmau":
            uri = mmau_file_uri(job)
            info["prediction_files"][tag] = uri
            entry["official"] = official_breakdown(json.loads(store.read_bytes(uri)))
        if probe:
            info["silence_files"][tag] = silence_file_uri(job)
    models = list(dict.fromkeys(j.source["model"] for j in plan.jobs))
    summary = {"accuracy": acc, "benchmarks": benchmarks, "models": models}
    if probe:
        silent = [p for j in plan.jobs for p in Prediction.from_table(store.read_table(silence_file_uri(j)))]
        summary["silence"] = silent_probe(preds, silent)
    return summary
