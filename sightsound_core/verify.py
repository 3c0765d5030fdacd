"""Audio-grounded fact verification (AGFV): an audio model hears each kept trace's clip.

For every clip the vote kept, the first ``samples_per_clip`` traces that gave the winning answer are
sent with the clip's real audio to the verifier. Every trace sent yields exactly one Verdict row:
accepted, rejected, unparseable or error (with the reason).
"""

from __future__ import annotations

import functools
import logging

import pyarrow as pa

from sightsound_core.backends.base import VerifierBackend, VerifyRequest
from sightsound_core.config import VerifyConfig
from sightsound_core.media.decode import MediaError, load_audio
from sightsound_core.schemas import Clip, Quarantine, TeacherSample, Verdict, Vote
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_map, run_plan
from sightsound_core.storage import ObjectStore

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def make_verifier(cfg: VerifyConfig) -> VerifierBackend:
    if cfg.backend == "sim":
        from sightsound_core.backends.sim import SimVerifier

        backend: VerifierBackend = SimVerifier()
    else:
        raise ValueError(f"unknown verifier backend {cfg.backend!r}")
    backend.load()
    return backend


def traces_to_verify(
    votes: list[Vote], samples: list[TeacherSample], per_clip: int
) -> list[TeacherSample]:
    """The traces AGFV checks: for each kept clip, its first ``per_clip`` winning samples."""
    by_clip: dict[str, list[TeacherSample]] = {}
    for s in samples:
        by_clip.setdefault(s.clip_id, []).append(s)
    chosen = []
    for vote in votes:
        if not vote.kept:
            continue
        winners = [s for s in sorted(by_clip[vote.clip_id], key=lambda s: s.sample_idx)
                   if s.answer == vote.winner]
        chosen.extend(winners[:per_clip])
    return chosen


def plan_verify(
    cfg: VerifyConfig,
    store: ObjectStore,
    run: str,
    clips: StageRef,
    samples: StageRef,
    votes: StageRef,
) -> StagePlan:
    inputs = {"clips": clips, "samples": samples, "votes": votes}
    return plan_map(store, run, "verify", cfg, inputs, primary="clips")


def verify_shard(
    cfg: VerifyConfig, store: ObjectStore, job: ShardJob
) -> tuple[pa.Table, pa.Table | None]:
    clips = {c.clip_id: c for c in Clip.from_table(store.read_table(job.inputs["clips"]))}
    samples = TeacherSample.from_table(store.read_table(job.inputs["samples"]))
    votes = Vote.from_table(store.read_table(job.inputs["votes"]))
    todo = traces_to_verify(votes, samples, cfg.samples_per_clip)
    backend = make_verifier(cfg)

    # Hear each clip once, however many of its traces are checked.
    audio_cache: dict[str, object] = {}
    pending: list[tuple[TeacherSample, VerifyRequest]] = []
    verdicts: list[Verdict] = []
    quarantine: list[Quarantine] = []
    for sample in todo:
        clip = clips[sample.clip_id]
        if clip.clip_id not in audio_cache:
            try:
                audio_cache[clip.clip_id] = load_audio(
                    clip.audio_uri, storage_options=store.storage_options
                )
            except MediaError as exc:
                audio_cache[clip.clip_id] = exc
                quarantine.append(Quarantine(job.stage, clip.clip_id, exc.reason, exc.detail))
        audio = audio_cache[clip.clip_id]
        if isinstance(audio, MediaError):
            verdicts.append(_verdict(sample, "error", [], f"media:{audio.reason}", "", 0, 0.0, backend, clip))
            continue
        request = VerifyRequest(clip=clip, sample_idx=sample.sample_idx, trace=sample.raw, audio=audio)
        pending.append((sample, request))

    results = backend.verify([r for _, r in pending]) if pending else []
    if len(results) != len(pending):
        raise RuntimeError(f"verifier returned {len(results)} results for {len(pending)} requests")
    for (sample, req), res in zip(pending, results):
        verdicts.append(
            _verdict(
                sample, res.status, res.unsupported_claims, res.reason, res.raw, res.attempts,
                res.latency_s, backend, req.clip,
            )
        )
    return Verdict.to_table(verdicts), Quarantine.to_table(quarantine)


def _verdict(
    sample: TeacherSample,
    status: str,
    claims: list[str],
    reason: str,
    raw: str,
    attempts: int,
    latency_s: float,
    backend: VerifierBackend,
    clip: Clip,
) -> Verdict:
    from sightsound_core.backends.sim import planted_hallucination

    return Verdict(
        clip_id=sample.clip_id,
        sample_idx=sample.sample_idx,
        status=status,
        unsupported_claims=list(claims),
        reason=reason,
        raw=raw,
        attempts=attempts,
        latency_s=round(latency_s, 6),
        backend=backend.name,
        model=backend.model,
        planted=planted_hallucination(sample.raw, clip),
    )


def hallucination_scores(verdicts: list[Verdict]) -> dict[str, float | int | None]:
    """Precision and recall of rejections against planted (known-false) claims, where known.

    >>> v = lambda s, p: Verdict("c", 0, s, [], "", "", 1, 0.0, "sim", "m", p)
    >>> hallucination_scores([v("rejected", True), v("accepted", True), v("rejected", False), v("accepted", False)])
    {'labelled': 4, 'precision': 0.5, 'recall': 0.5}
    """
    known = [v for v in verdicts if v.planted is not None and v.status in ("accepted", "rejected")]
    if not known:
        return {"labelled": 0, "precision": None, "recall": None}
    tp = sum(v.status == "rejected" and v.planted for v in known)
    rejected = sum(v.status == "rejected" for v in known)
    planted = sum(bool(v.planted) for v in known)
    return {
        "labelled": len(known),
        "precision": round(tp / rejected, 4) if rejected else None,
        "recall": round(tp / planted, 4) if planted else None,
    }


def run_verify(
    cfg: VerifyConfig,
    store: ObjectStore,
    run: str,
    clips: StageRef,
    samples: StageRef,
    votes: StageRef,
) -> StageRef:
    plan = plan_verify(cfg, store, run, clips, samples, votes)
    return run_plan(store, plan, lambda job: verify_shard(cfg, store, job))
