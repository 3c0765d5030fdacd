"""Ingest: turn a dataset source into Clip shards, quarantining what cannot be used.

Every item becomes either a Clip row or a Quarantine row with a reason; nothing is dropped
silently and nothing stops the run.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from sightsound_core.config import IngestConfig
from sightsound_core.schemas import Clip, Quarantine
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, run_plan
from sightsound_core.storage import ObjectStore, join

log = logging.getLogger(__name__)

STAGE = "ingest"


def validate_clip(clip: Clip) -> tuple[str, str] | None:
    """Why a clip cannot be used, as (reason, detail), or None when it is fine."""
    if not clip.question.strip():
        return "missing_question", f"{clip.clip_id}: empty question"
    if len(clip.options) < 2:
        return "too_few_options", f"{clip.clip_id}: {len(clip.options)} option(s), need at least 2"
    if len(set(clip.options)) != len(clip.options):
        return "duplicate_options", f"{clip.clip_id}: options repeat: {clip.options}"
    if clip.label is not None and clip.label not in clip.options:
        return "label_not_in_options", f"{clip.clip_id}: label {clip.label!r} not in {clip.options}"
    if clip.video_uri is None and clip.audio_uri is None:
        return "no_media", f"{clip.clip_id}: neither video nor audio"
    return None


def screen(clips: list[Clip], stage: str = STAGE) -> tuple[list[Clip], list[Quarantine]]:
    """Split clips into usable ones and quarantine rows (bad fields, duplicate ids)."""
    good: list[Clip] = []
    bad: list[Quarantine] = []
    seen: set[str] = set()
    for clip in clips:
        problem = validate_clip(clip)
        if problem is None and clip.clip_id in seen:
            problem = ("duplicate_id", f"{clip.clip_id} appears more than once")
        if problem:
            bad.append(Quarantine(stage, clip.clip_id, *problem))
            continue
        seen.add(clip.clip_id)
        good.append(clip)
    return good, bad


def _synthetic_sources(cfg: IngestConfig) -> list[dict[str, Any]]:
    n = cfg.synthetic.n_clips if cfg.limit is None else min(cfg.limit, cfg.synthetic.n_clips)
    return [
        {"kind": "synthetic", "start": s, "stop": min(s + cfg.shard_size, n)}
        for s in range(0, n, cfg.shard_size)
    ]


def plan_ingest(
    cfg: IngestConfig, store: ObjectStore, run: str, stage: str = STAGE
) -> StagePlan:
    if cfg.dataset != "synthetic":
        raise ValueError(f"ingest.dataset={cfg.dataset!r} has no adapter yet")
    return plan_sources(store, run, stage, cfg, _synthetic_sources(cfg))


def ingest_shard(
    cfg: IngestConfig, store: ObjectStore, job: ShardJob
) -> tuple[pa.Table, pa.Table | None]:
    from sightsound_core.datasets.synthetic import generate_clips

    media_dir = join(job.output_uri.rsplit("/", 1)[0], "media")
    src = job.source
    clips = generate_clips(cfg.synthetic, media_dir, src["start"], src["stop"], store.storage_options)
    good, bad = screen(clips, job.stage)
    return Clip.to_table(good), Quarantine.to_table(bad)


def run_ingest(cfg: IngestConfig, store: ObjectStore, run: str, stage: str = STAGE) -> StageRef:
    plan = plan_ingest(cfg, store, run, stage)
    return run_plan(store, plan, lambda job: ingest_shard(cfg, store, job))
