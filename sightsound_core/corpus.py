"""Corpus: from votes and verdicts, the training sets of the student and the ablations.

Datasets (one shard each, in this order):
    cot         verified traces of kept clips (the paper's SFT set)
    cot_noagfv  kept clips' winning traces without verification (ablation)
    label_only  the same clips as ``cot``, answer tag only (baseline)
    grpo        question + options + label prompts for GRPO (labels, or pseudo-labels of kept clips)

The manifest summary carries the distillation funnel, overall and per question family.

With ``corpus.drop_silent_solvable``, the pretrained student first answers every candidate clip
(a clip with a training label: its own, or a kept vote's pseudo-label) with its audio replaced by
silence of the same length, greedy, through evaluate's backend and ``max_new_tokens``; a clip it
answers right (the option rule, reading the raw output when it has no answer tag) is dropped from
every dataset, and the funnel counts those clips (``silent_solvable``). The student and those
settings are then inputs of the stage.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import pyarrow as pa

from sightsound_core.answers import OK, format_response
from sightsound_core.config import CorpusConfig, PipelineConfig
from sightsound_core.evaluation.inference import generate_answers, load_generator, silenced
from sightsound_core.evaluation.scoring import score
from sightsound_core.media.decode import load_audio
from sightsound_core.schemas import Clip, GRPOExample, SFTExample, TeacherSample, Verdict, Vote
from sightsound_core.stage import (
    ShardJob,
    StagePlan,
    StageRef,
    plan_sources,
    read_all,
    run_plan,
)
from sightsound_core.storage import ObjectStore
from sightsound_core.tiny import resolve_model
from sightsound_core.verify import hallucination_scores

log = logging.getLogger(__name__)

STAGE = "corpus"
DATASETS = ("cot", "cot_noagfv", "label_only", "grpo")


def plan_corpus(cfg: PipelineConfig, store: ObjectStore, inputs: dict[str, StageRef]) -> StagePlan:
    fingerprints = {name: ref.fingerprint for name, ref in sorted(inputs.items())}
    sources = [{"dataset": d, "inputs": fingerprints} for d in DATASETS]
    upstream = [f"{n}={r.stage_hash}" for n, r in sorted(inputs.items())]
    if cfg.corpus.drop_silent_solvable:
        # What the pretrained student answers on silence decides what is dropped.
        upstream.append(f"silent-student={cfg.models.student}:{cfg.evaluate.backend}:{cfg.evaluate.max_new_tokens}")
    return plan_sources(store, cfg.run, STAGE, cfg.corpus, sources, upstream)


SolvedOnSilence = Callable[[list[Clip]], set[str]]


class CorpusTables:
    """The four input stages, read once per process, and the clips the pretrained student answers
    right on silence (``silent_solvable``; None when not checked)."""

    def __init__(self, store: ObjectStore, inputs: dict[str, StageRef], on_silence: SolvedOnSilence | None = None):
        self.clips = {c.clip_id: c for c in Clip.from_table(read_all(store, inputs["clips"]))}
        self.samples = TeacherSample.from_table(read_all(store, inputs["samples"]))
        self.votes = Vote.from_table(read_all(store, inputs["votes"]))
        self.verdicts = Verdict.from_table(read_all(store, inputs["verdicts"]))
        self.by_key = {(s.clip_id, s.sample_idx): s for s in self.samples}
        self.silent_solvable = on_silence(self.candidates()) if on_silence is not None else None

    def training_label(self, clip: Clip) -> str | None:
        """The label a clip is trained on: its own, or its kept vote's pseudo-label."""
        if clip.label is not None:
            return clip.label
        vote = next((v for v in self.votes if v.clip_id == clip.clip_id and v.kept), None)
        return vote.label if vote is not None else None

    def candidates(self) -> list[Clip]:
        """Every clip a dataset may hold, with the label it would be trained on."""
        labelled = [(c, self.training_label(c)) for c in self.clips.values()]
        return [dataclasses.replace(c, label=label) for c, label in labelled if label is not None]

    def dropped(self, clip_id: str) -> bool:
        return self.silent_solvable is not None and clip_id in self.silent_solvable


def solved_on_silence(cfg: PipelineConfig, store: ObjectStore) -> SolvedOnSilence:
    """The clips the pretrained student answers right with silence in place of their audio."""

    def solve(clips: list[Clip]) -> set[str]:
        model = load_generator(cfg.evaluate.backend, resolve_model(cfg.models.student, cfg.models.cache_dir),
                               cfg.models.device)
        audio = silenced(lambda uri: load_audio(uri, storage_options=store.storage_options))
        texts = generate_answers(model, clips, audio, cfg.evaluate.batch_size, cfg.evaluate.max_new_tokens)
        solved = {c.clip_id for c, text in zip(clips, texts) if score("option", text, c, "answer_block_or_raw").correct}
        log.info("corpus: the pretrained student answers %d of %d clips right on silence", len(solved), len(clips))
        return solved

    return solve


def _sft(variant: str, clip: Clip, sample: TeacherSample | None, label: str) -> SFTExample:
    think = sample.think if sample is not None else None
    return SFTExample(
        example_id=f"{variant}:{clip.clip_id}:{sample.sample_idx if sample else 0}",
        variant=variant,
        clip_id=clip.clip_id,
        audio_uri=clip.audio_uri or "",
        question=clip.question,
        options=list(clip.options),
        completion=format_response(think, label),
        label=label,
    )


def build_dataset(name: str, cfg: CorpusConfig, t: CorpusTables) -> pa.Table:
    kept = [v for v in t.votes if v.kept and not t.dropped(v.clip_id)]
    if name == "cot" or name == "label_only":
        rows = []
        for vote in kept:
            accepted = sorted(
                (v for v in t.verdicts if v.clip_id == vote.clip_id and v.status == "accepted"),
                key=lambda v: v.sample_idx,
            )[: cfg.traces_per_clip]
            clip = t.clips[vote.clip_id]
            if name == "cot":
                rows += [_sft("cot", clip, t.by_key[(v.clip_id, v.sample_idx)], vote.label) for v in accepted]
            elif accepted:
                rows.append(_sft("label_only", clip, None, vote.label))
        return SFTExample.to_table(rows)
    if name == "cot_noagfv":
        rows = []
        for vote in kept:
            winners = sorted(
                (s for s in t.samples if s.clip_id == vote.clip_id and s.answer == vote.winner),
                key=lambda s: s.sample_idx,
            )[: cfg.traces_per_clip]
            rows += [_sft("cot_noagfv", t.clips[vote.clip_id], s, vote.label) for s in winners]
        return SFTExample.to_table(rows)
    if name == "grpo":
        votes = {v.clip_id: v for v in t.votes}
        rows = []
        for clip in t.clips.values():
            label = clip.label if clip.label is not None else (
                votes[clip.clip_id].label if clip.clip_id in votes and votes[clip.clip_id].kept else None
            )
            if label is None or t.dropped(clip.clip_id):
                continue
            rows.append(
                GRPOExample(
                    example_id=f"grpo:{clip.clip_id}",
                    clip_id=clip.clip_id,
                    audio_uri=clip.audio_uri or "",
                    question=clip.question,
                    options=list(clip.options),
                    label=label,
                    family=clip.family,
                )
            )
        return GRPOExample.to_table(rows)
    raise ValueError(f"unknown corpus dataset {name!r}")


def funnel(t: CorpusTables) -> dict[str, Any]:
    """Clips -> parsed -> unanimous -> label-agreeing -> verified, overall and per family, with
    the verify errors (traces whose request failed) beside them, and the clips dropped as
    answered right on silence (``silent_solvable``) when that was checked."""
    parsed_ok: dict[str, bool] = {}
    for s in t.samples:
        parsed_ok[s.clip_id] = parsed_ok.get(s.clip_id, True) and s.parse_status == OK
    verified = {v.clip_id for v in t.verdicts if v.status == "accepted"}
    errors = [v.clip_id for v in t.verdicts if v.status == "error"]  # traces the verifier never judged

    def count(clips: list[Clip]) -> dict[str, int]:
        ids = {c.clip_id for c in clips}
        votes = [v for v in t.votes if v.clip_id in ids]
        out = {
            "clips": len(ids),
            "parsed": sum(parsed_ok.get(i, False) for i in ids),
            "unanimous": sum(v.reason in ("kept", "label_mismatch") for v in votes),
            "label_agreeing": sum(v.kept for v in votes),
            "verified": len(ids & verified),
            "errors": sum(i in ids for i in errors),
        }
        if t.silent_solvable is not None:
            out["silent_solvable"] = len(ids & t.silent_solvable)
        return out

    families = sorted({c.family for c in t.clips.values()})
    clips = list(t.clips.values())
    agreement: dict[str, list[float]] = {}
    for v in t.votes:
        agreement.setdefault(v.family, []).append(v.agreement)
    return {
        "all": count(clips),
        "by_family": {f: count([c for c in clips if c.family == f]) for f in families},
        "agreement_by_family": agreement,
        "verifier": hallucination_scores(t.verdicts),
        "examples": examples(t),
    }


def examples(t: CorpusTables) -> dict[str, Any]:
    """For the report: the first accepted trace, and the first rejected one with the claims the
    verifier found unsupported."""
    out: dict[str, Any] = {}
    for status in ("accepted", "rejected"):
        verdict = next((v for v in sorted(t.verdicts, key=lambda v: (v.clip_id, v.sample_idx))
                        if v.status == status and (status == "accepted" or v.unsupported_claims)), None)
        if verdict is None:
            continue
        clip = t.clips[verdict.clip_id]
        entry = {
            "clip_id": clip.clip_id,
            "question": f"{clip.question} Options: {', '.join(clip.options)}",
            "trace": t.by_key[(verdict.clip_id, verdict.sample_idx)].raw,
        }
        if status == "rejected":
            entry["claims"] = list(verdict.unsupported_claims)
        out["kept" if status == "accepted" else "rejected"] = entry
    return out


def run_corpus(cfg: PipelineConfig, store: ObjectStore, inputs: dict[str, StageRef]) -> StageRef:
    plan = plan_corpus(cfg, store, inputs)
    compute, summary = corpus_work(cfg, store, inputs)
    return run_plan(store, plan, compute, summary)


def corpus_work(
    cfg: PipelineConfig, store: ObjectStore, inputs: dict[str, StageRef]
) -> tuple[Callable[[ShardJob], tuple[pa.Table, None]], Callable[[], dict[str, Any]]]:
    """The corpus stage's shard function and manifest summary, sharing one read of the inputs
    (and one silent pass of the pretrained student, when configured)."""
    on_silence = solved_on_silence(cfg, store) if cfg.corpus.drop_silent_solvable else None
    # Read the inputs only if something is computed: a fully committed corpus reads nothing.
    tables = functools.cache(lambda: CorpusTables(store, inputs, on_silence))
    return (
        lambda job: (build_dataset(job.source["dataset"], cfg.corpus, tables()), None),
        lambda: {"funnel": funnel(tables())},
    )


def dataset_uri(ref: StageRef, name: str) -> str:
    """The shard URI of one corpus dataset (loadable with datasets.load_dataset('parquet'))."""
    return ref.shards[DATASETS.index(name)]
