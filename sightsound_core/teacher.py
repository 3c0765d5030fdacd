"""Teacher sampling and the test-time-scaling vote.

Teacher: the vision-language teacher sees only the silent frames of each clip and writes K
audio-focused reasoning samples per question. Vote: each clip is kept when its K parsed answers
agree under the configured policy (and match the label, where there is one and it is required).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter

import pyarrow as pa

from sightsound_core.answers import OK, parse_response
from sightsound_core.backends.base import TeacherBackend, TeacherRequest
from sightsound_core.config import TeacherConfig, VoteConfig
from sightsound_core.media.decode import MediaError, load_frames
from sightsound_core.schemas import Clip, Quarantine, TeacherSample, Vote
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_map, run_plan
from sightsound_core.storage import ObjectStore

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def make_teacher(cfg: TeacherConfig) -> TeacherBackend:
    """The configured backend, loaded once per process and config."""
    if cfg.backend == "sim":
        from sightsound_core.backends.sim import SimTeacher

        backend: TeacherBackend = SimTeacher(temperature=cfg.temperature, seed=cfg.seed)
    else:
        raise ValueError(f"unknown teacher backend {cfg.backend!r}")
    backend.load()
    return backend


# -- teacher ---------------------------------------------------------------------------------------
def plan_teacher(cfg: TeacherConfig, store: ObjectStore, run: str, clips: StageRef) -> StagePlan:
    return plan_map(store, run, "teacher", cfg, {"clips": clips}, primary="clips")


def teacher_shard(
    cfg: TeacherConfig, store: ObjectStore, job: ShardJob
) -> tuple[pa.Table, pa.Table | None]:
    clips = Clip.from_table(store.read_table(job.inputs["clips"]))
    backend = make_teacher(cfg)

    # Decode silent frames; a clip whose video cannot be read is quarantined, the rest go on.
    requests: list[TeacherRequest] = []
    quarantine: list[Quarantine] = []
    for clip in clips:
        if clip.video_uri is None:
            quarantine.append(Quarantine(job.stage, clip.clip_id, "no_video", "clip has no video"))
            continue
        try:
            frames, times = load_frames(
                clip.video_uri,
                fps=cfg.frames.fps,
                max_frames=cfg.frames.max_frames,
                max_pixels=cfg.frames.max_pixels,
                storage_options=store.storage_options,
            )
        except MediaError as exc:
            quarantine.append(Quarantine(job.stage, clip.clip_id, exc.reason, exc.detail))
            continue
        requests.append(TeacherRequest(clip=clip, frames=frames, frame_times=times))

    # Sample K per clip in batches; every clip yields exactly K rows, errors included.
    rows: list[TeacherSample] = []
    for start in range(0, len(requests), cfg.batch_size):
        batch = requests[start : start + cfg.batch_size]
        results = backend.sample(batch, cfg.k, cfg.seed)
        for req, res in zip(batch, results):
            for i in range(cfg.k):
                gen = res.samples[i] if i < len(res.samples) else None
                text = gen.text if gen else ""
                parsed = parse_response(text, req.clip.options)
                rows.append(
                    TeacherSample(
                        clip_id=req.clip.clip_id,
                        sample_idx=i,
                        raw=text,
                        think=parsed.think,
                        answer=parsed.option,
                        parse_status=parsed.status if gen else "error",
                        finish_reason=gen.finish_reason if gen else "error",
                        prompt_tokens=gen.prompt_tokens if gen else 0,
                        completion_tokens=gen.completion_tokens if gen else 0,
                        latency_s=round(res.latency_s, 6),
                        backend=backend.name,
                        model=backend.model,
                    )
                )
    return TeacherSample.to_table(rows), Quarantine.to_table(quarantine)


def run_teacher(cfg: TeacherConfig, store: ObjectStore, run: str, clips: StageRef) -> StageRef:
    plan = plan_teacher(cfg, store, run, clips)
    return run_plan(store, plan, lambda job: teacher_shard(cfg, store, job))


# -- vote ------------------------------------------------------------------------------------------
def decide(
    answers: list[str | None], label: str | None, cfg: VoteConfig
) -> tuple[str | None, float, bool, str]:
    """Apply the vote policy to K parsed answers: (winner, agreement, kept, reason).

    >>> decide(["a", "a", "a"], "a", VoteConfig())
    ('a', 1.0, True, 'kept')
    >>> decide(["a", "b", "a"], "a", VoteConfig())
    ('a', 0.667, False, 'disagree')
    >>> decide(["a", "b", "a"], "a", VoteConfig(policy="majority", min_agreement=0.6))
    ('a', 0.667, True, 'kept')
    >>> decide(["b", "b"], "a", VoteConfig())
    ('b', 1.0, False, 'label_mismatch')
    """
    parsed = [a for a in answers if a]
    if not parsed:
        return None, 0.0, False, "no_parse"
    # Ties break toward the answer seen first, so the decision does not depend on dict order.
    counts = Counter(parsed)
    winner = max(counts, key=lambda a: (counts[a], -parsed.index(a)))
    agreement = round(counts[winner] / len(answers), 3)
    if cfg.policy == "unanimous":
        agreed = counts[winner] == len(answers)
    else:
        agreed = agreement >= cfg.min_agreement
    if not agreed:
        return winner, agreement, False, "disagree"
    if cfg.require_label_match and label is not None and winner != label:
        return winner, agreement, False, "label_mismatch"
    return winner, agreement, True, "kept"


def plan_vote(
    cfg: VoteConfig, store: ObjectStore, run: str, clips: StageRef, samples: StageRef
) -> StagePlan:
    return plan_map(store, run, "vote", cfg, {"clips": clips, "samples": samples}, primary="clips")


def vote_shard(cfg: VoteConfig, store: ObjectStore, job: ShardJob) -> tuple[pa.Table, None]:
    clips = Clip.from_table(store.read_table(job.inputs["clips"]))
    samples = TeacherSample.from_table(store.read_table(job.inputs["samples"]))
    by_clip: dict[str, list[TeacherSample]] = {}
    for s in samples:
        by_clip.setdefault(s.clip_id, []).append(s)
    votes = []
    for clip in clips:
        clip_samples = sorted(by_clip.get(clip.clip_id, []), key=lambda s: s.sample_idx)
        if not clip_samples:
            continue  # quarantined by the teacher stage, which recorded why
        answers = [s.answer if s.parse_status == OK else None for s in clip_samples]
        winner, agreement, kept, reason = decide(answers, clip.label, cfg)
        pseudo = clip.label is None and kept
        votes.append(
            Vote(
                clip_id=clip.clip_id,
                answers=[a or "" for a in answers],
                winner=winner,
                agreement=agreement,
                kept=kept,
                pseudo_label=pseudo,
                label=winner if pseudo else clip.label,
                reason=reason,
                family=clip.family,
            )
        )
    return Vote.to_table(votes), None


def run_vote(
    cfg: VoteConfig, store: ObjectStore, run: str, clips: StageRef, samples: StageRef
) -> StageRef:
    plan = plan_vote(cfg, store, run, clips, samples)
    return run_plan(store, plan, lambda job: vote_shard(cfg, store, job))
