"""Teacher sampling and the test-time-scaling vote.

Teacher: the vision-language teacher sees only the silent frames of each clip and writes K
audio-focused reasoning samples per question (``make_teacher`` picks the backend: sim, hf, vllm,
openai). Every clip yields exactly K TeacherSample rows, failed requests included (finish reason
``error``, with a quarantine row saying why).

Vote: each clip is kept when its K parsed answers agree under the configured policy (and match
the label, where there is one and it is required); an unlabeled clip's kept answer becomes its
pseudo-label. The vote manifest's summary reports the kept fraction per question family.
"""

from __future__ import annotations

import logging
from collections import Counter

import pyarrow as pa

from sightsound_core.answers import OK, parse_response
from sightsound_core.backends.base import StreamingTeacher, TeacherBackend, TeacherRequest
from sightsound_core.backends.registry import make_teacher
from sightsound_core.config import TeacherConfig, VoteConfig
from sightsound_core.media.decode import MediaError, load_frames
from sightsound_core.schemas import Clip, Quarantine, TeacherSample, Vote
from sightsound_core.stage import (
    ShardJob,
    StagePlan,
    StageRef,
    plan_map,
    read_parts,
    run_plan,
    write_part,
)
from sightsound_core.storage import ObjectStore

log = logging.getLogger(__name__)


# -- teacher ---------------------------------------------------------------------------------------
def plan_teacher(cfg: TeacherConfig, store: ObjectStore, run: str, clips: StageRef) -> StagePlan:
    return plan_map(store, run, "teacher", cfg, {"clips": clips}, primary="clips")


def teacher_shard(
    cfg: TeacherConfig, store: ObjectStore, job: ShardJob
) -> tuple[pa.Table, pa.Table | None]:
    """K rows per clip, in clip order. Answers are paid for once: each clip's rows are saved to a
    part file as soon as its reply arrives (a streaming backend, ``sample_stream``) or after each
    batch call, before the next request goes out; a later attempt of a killed shard reuses them
    and asks only for the other clips. A failed request is not saved, so it is asked again."""
    clips = Clip.from_table(store.read_table(job.inputs["clips"]))
    backend = make_teacher(cfg)

    requests, quarantine = load_requests(clips, cfg, store, job.stage)
    by_clip: dict[str, list[TeacherSample]] = {}
    for part in read_parts(store, job):
        for row in TeacherSample.from_table(part):
            by_clip.setdefault(row.clip_id, []).append(row)
    pending = [r for r in requests if r.clip.clip_id not in by_clip]
    if len(pending) < len(requests):
        log.info("teacher shard %d: %d of %d clips already answered, asking for %d",
                 job.index, len(requests) - len(pending), len(requests), len(pending))

    # Sample K per clip; every clip yields exactly K rows, errors included.
    failed: dict[str, str] = {}

    def on_results(results: list[tuple[TeacherRequest, TeacherResult]]) -> None:
        answered: list[TeacherSample] = []
        for req, res in results:
            rows = _sample_rows(req, res, cfg.k, backend)
            by_clip[req.clip.clip_id] = rows
            if res.error is None:
                answered += rows
            else:
                failed[req.clip.clip_id] = res.error
        if answered:
            write_part(store, job, TeacherSample.to_table(answered))

    streams = isinstance(backend, StreamingTeacher)
    for start in range(0, len(pending), cfg.batch_size):
        batch = pending[start : start + cfg.batch_size]
        if streams:
            results = backend.sample_stream(batch, cfg.k, cfg.seed,
                                            lambda i, res, b=batch: on_results([(b[i], res)]))
        else:
            results = backend.sample(batch, cfg.k, cfg.seed)
        if [r.clip_id for r in results] != [r.clip.clip_id for r in batch]:
            raise RuntimeError(f"{backend.name} teacher returned results out of request order")
        if not streams:
            on_results(list(zip(batch, results)))
    quarantine += [Quarantine(job.stage, r.clip.clip_id, "teacher_error", failed[r.clip.clip_id])
                   for r in requests if r.clip.clip_id in failed]
    rows = [row for req in requests for row in sorted(by_clip[req.clip.clip_id], key=lambda s: s.sample_idx)]
    return TeacherSample.to_table(rows), Quarantine.to_table(quarantine)


def _sample_rows(req: TeacherRequest, res: TeacherResult, k: int, backend: TeacherBackend) -> list[TeacherSample]:
    rows = []
    for i in range(k):
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
    return rows


def load_requests(
    clips: list[Clip], cfg: TeacherConfig, store: ObjectStore, stage: str
) -> tuple[list[TeacherRequest], list[Quarantine]]:
    """Decode each clip's silent frames; a clip whose video cannot be read is quarantined."""
    requests: list[TeacherRequest] = []
    quarantine: list[Quarantine] = []
    for clip in clips:
        if clip.video_uri is None:
            quarantine.append(Quarantine(stage, clip.clip_id, "no_video", "clip has no video"))
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
            quarantine.append(Quarantine(stage, clip.clip_id, exc.reason, exc.detail))
            continue
        requests.append(TeacherRequest(clip=clip, frames=frames, frame_times=times))
    return requests, quarantine


def run_teacher(cfg: TeacherConfig, store: ObjectStore, run: str, clips: StageRef) -> StageRef:
    plan = plan_teacher(cfg, store, run, clips)
    return run_plan(store, plan, lambda job: teacher_shard(cfg, store, job))


# -- vote ------------------------------------------------------------------------------------------
def decide(
    answers: list[str | None], label: str | None, cfg: VoteConfig
) -> tuple[str | None, float, bool, str]:
    """Apply the vote policy to K parsed answers: (winner, agreement, kept, reason).

    ``unanimous`` keeps a clip whose K samples all parsed to one option; ``majority`` keeps one
    whose most frequent option has agreement >= ``min_agreement`` and is not tied with another.
    A sample that did not parse counts against agreement. Reasons: ``kept``, ``no_parse``,
    ``disagree``, ``tie``, ``label_mismatch``.

    >>> decide(["a", "a", "a"], "a", VoteConfig())
    ('a', 1.0, True, 'kept')
    >>> decide(["a", "b", "a"], "a", VoteConfig())
    ('a', 0.667, False, 'disagree')
    >>> decide(["a", "b", "a"], "a", VoteConfig(policy="majority", min_agreement=0.6))
    ('a', 0.667, True, 'kept')
    >>> decide(["a", "b", "b", "a"], None, VoteConfig(policy="majority", min_agreement=0.5))
    ('a', 0.5, False, 'tie')
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
        if counts[winner] != len(answers):
            return winner, agreement, False, "disagree"
    else:
        if agreement < cfg.min_agreement:
            return winner, agreement, False, "disagree"
        if sum(c == counts[winner] for c in counts.values()) > 1:
            return winner, agreement, False, "tie"
    if cfg.require_label_match and label is not None and winner != label:
        return winner, agreement, False, "label_mismatch"
    return winner, agreement, True, "kept"


def vote_summary(votes: list[Vote]) -> dict[str, dict[str, float]]:
    """Per question family (and ``all``): clips, kept, kept fraction, pseudo-labels, reasons.

    >>> v = Vote("c", ["a"], "a", 1.0, True, False, "a", "kept", "visual")
    >>> vote_summary([v])["visual"]["kept_fraction"]
    1.0
    """
    out: dict[str, dict[str, float]] = {}
    for family in sorted({v.family for v in votes}) + ["all"]:
        group = [v for v in votes if family in ("all", v.family)]
        reasons = Counter(v.reason for v in group)
        kept = sum(v.kept for v in group)
        out[family] = {
            "clips": len(group),
            "kept": kept,
            "kept_fraction": round(kept / len(group), 4) if group else 0.0,
            "pseudo_labels": sum(v.pseudo_label for v in group),
            **{f"reason_{r}": n for r, n in sorted(reasons.items())},
        }
    return out


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
        if all(s.finish_reason == "error" for s in clip_samples):
            reason = "teacher_error"  # the backend failed; no sample to judge
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
    return run_plan(
        store, plan, lambda job: vote_shard(cfg, store, job), summary=lambda: vote_stage_summary(store, plan)
    )


def vote_stage_summary(store: ObjectStore, plan: StagePlan) -> dict[str, dict[str, float]]:
    """``vote_summary`` over every committed shard of a vote plan (the manifest's summary)."""
    votes = [v for job in plan.jobs for v in Vote.from_table(store.read_table(job.output_uri))]
    return vote_summary(votes)
