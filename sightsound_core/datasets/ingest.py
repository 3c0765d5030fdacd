"""Ingest: turn a dataset source into Clip shards, quarantining what cannot be used.

Every item becomes either a Clip row or a Quarantine row with a reason; nothing is dropped
silently and nothing stops the run.

Sources (``IngestConfig.dataset``):

- ``synthetic``: the procedural world (sightsound_core.datasets.synthetic), files written here.
- ``avqa``, ``music_avqa``, ``mmau``: an annotation JSON plus media under a dataset root
  (local path or object-store URI). The file's records are sharded in order, ``shard_size`` per
  shard; a shard's input fingerprint covers its records, what they depend on elsewhere in the
  file (duplicate ids, MUSIC-AVQA's answer pools) and each media file's size and mtime or ETag, so
  a re-run reuses every committed shard whose inputs did not change. An annotation file that
  cannot be read at all becomes one shard holding one Quarantine row.
- ``folder``: unlabeled videos under a root, added incrementally (sightsound_core.datasets.folder).

Checks, cheapest first, each refusal a Quarantine row (``input`` is the clip id, or
``{annotations}#/{position}`` before an id is known): a record that is not an object, non-UTF-8
text, missing or mistyped fields, an id that records give with different answers (all of them, for
adapters that name the answer: MUSIC-AVQA), a duplicate id (the first record keeps it), a media
path that escapes the root, too few options, options that repeat a string (except where the adapter
keeps them: MMAU, whose official scorer reads the text) or a label not among them, then the media
file itself (``media.decode.screen_media``: not found, empty, not media, truncated, over the
configured duration or resolution, missing a stream the dataset needs, zero-length or NaN/inf audio).
A folder corpus's videos are cut into windows (sightsound_core.datasets.folder): the duration limit
applies to windows, files have a much larger one, and each skipped window is a row too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from typing import Any

import pyarrow as pa

from sightsound_core.errors import InputRefused
from sightsound_core.config import IngestConfig, digest
from sightsound_core.datasets import avqa, folder, mmau, music_avqa
from sightsound_core.datasets.common import (
    Adapter,
    DatasetRoot,
    Refused,
    check_text,
    read_annotations,
    safe_text,
)
from sightsound_core.media.decode import MediaError, MediaInfo, screen_media
from sightsound_core.schemas import Clip, Quarantine
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, run_plan
from sightsound_core.storage import ObjectStore, join

log = logging.getLogger(__name__)

STAGE = "ingest"
ADAPTERS: dict[str, Adapter] = {a.name: a for a in (avqa.ADAPTER, music_avqa.ADAPTER, mmau.ADAPTER)}


def validate_clip(clip: Clip, repeated_options: bool = False) -> tuple[str, str] | None:
    """Why a clip cannot be used, as (reason, detail), or None when it is fine. Options that repeat
    a string are refused unless ``repeated_options`` (see ``Adapter.repeated_options``)."""
    if not clip.question.strip():
        return "missing_question", f"{clip.clip_id}: empty question"
    if len(clip.options) < 2:
        return "too_few_options", f"{clip.clip_id}: {len(clip.options)} option(s), need at least 2"
    if not repeated_options and len(set(clip.options)) != len(clip.options):
        return "duplicate_options", f"{clip.clip_id}: options repeat: {clip.options}"
    if clip.label is not None and clip.label not in clip.options:
        return "label_not_in_options", f"{clip.clip_id}: label {clip.label!r} not in {clip.options}"
    if clip.video_uri is None and clip.audio_uri is None:
        return "no_media", f"{clip.clip_id}: neither video nor audio"
    return None


def quarantine(stage: str, item: str, reason: str, detail: str) -> Quarantine:
    return Quarantine(stage, safe_text(item), reason, safe_text(detail))


def screen(
    clips: list[Clip], stage: str = STAGE, repeated_options: bool = False
) -> tuple[list[Clip], list[Quarantine]]:
    """Split clips into usable ones and quarantine rows (bad fields, duplicate ids)."""
    good: list[Clip] = []
    bad: list[Quarantine] = []
    seen: set[str] = set()
    for clip in clips:
        problem = validate_clip(clip, repeated_options)
        if problem is None and clip.clip_id in seen:
            problem = ("duplicate_id", f"{clip.clip_id} appears more than once")
        if problem:
            bad.append(quarantine(stage, clip.clip_id, *problem))
            continue
        seen.add(clip.clip_id)
        good.append(clip)
    return good, bad


# -- where a dataset lives ------------------------------------------------------------------------
def storage_options(cfg: IngestConfig, store: ObjectStore, uri: str) -> dict[str, Any]:
    """fsspec options for a dataset URI: ``cfg.storage_options``, else the store's on its protocol."""
    if cfg.storage_options is not None:
        return cfg.storage_options
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    protocol = {"s3a": "s3", "s3n": "s3"}.get(protocol, protocol)
    return store.storage_options if protocol == store.protocol else {}


def dataset_root(cfg: IngestConfig, store: ObjectStore) -> DatasetRoot:
    assert cfg.path is not None
    return DatasetRoot.open(cfg.path, storage_options(cfg, store, cfg.path))


def annotations_uri(cfg: IngestConfig, adapter: Adapter, root: DatasetRoot) -> str:
    name = cfg.annotations or adapter.default_annotations(cfg)
    if "://" in name or os.path.isabs(name):
        return name
    return join(root.uri, name)


def read_records(cfg: IngestConfig, store: ObjectStore, uri: str) -> list[Any]:
    records = read_annotations(uri, storage_options(cfg, store, uri))
    return records[: cfg.limit] if cfg.limit else records


# -- annotated datasets ---------------------------------------------------------------------------
def _safe_id(adapter: Adapter, record: Any) -> str | None:
    try:
        return adapter.native_id(record)
    except (Refused, TypeError, AttributeError):
        return None


def _first_positions(adapter: Adapter, records: list[Any]) -> dict[str, int]:
    """Each native id's first position in the file: later records with that id are duplicates."""
    first: dict[str, int] = {}
    for pos, record in enumerate(records):
        native = _safe_id(adapter, record)
        if native is not None:
            first.setdefault(native, pos)
    return first


def _conflicts(adapter: Adapter, records: list[Any]) -> dict[str, list[int]]:
    """Ids that records give with different answers (``adapter.answer_of``): id -> positions."""
    if adapter.answer_of is None:
        return {}
    positions: dict[str, list[int]] = {}
    answers: dict[str, set[str]] = {}
    for pos, record in enumerate(records):
        native = _safe_id(adapter, record)
        try:
            answer = digest(adapter.answer_of(record))
        except (Refused, TypeError, AttributeError):
            continue
        if native is not None:
            positions.setdefault(native, []).append(pos)
            answers.setdefault(native, set()).add(answer)
    return {native: positions[native] for native, found in answers.items() if len(found) > 1}


def _media_key(adapter: Adapter, record: Any) -> str | None:
    try:
        return posixpath.normpath(adapter.media_path(record))
    except (Refused, TypeError, AttributeError):
        return None


def _records_fingerprint(
    adapter: Adapter,
    records: list[Any],
    first: dict[str, int],
    conflicts: dict[str, list[int]],
    context: Any,
    start: int,
    stop: int,
) -> str:
    """What shard ``start..stop``'s clips depend on in the annotation file: its records, which of
    them are duplicates of earlier ones or share an id with a record of another answer, and the
    part of the file-wide context they use."""
    part = records[start:stop]
    ids = [_safe_id(adapter, r) or "" for r in part]
    duplicates = [pos for pos, native in zip(range(start, stop), ids) if first.get(native, pos) != pos]
    conflicted = [pos for pos, native in zip(range(start, stop), ids) if native in conflicts]
    return digest([part, duplicates, conflicted, adapter.context_for(context, part)])


def _annotated_sources(cfg: IngestConfig, store: ObjectStore) -> list[dict[str, Any]]:
    adapter = ADAPTERS[cfg.dataset]
    root = dataset_root(cfg, store)
    uri = annotations_uri(cfg, adapter, root)
    head = {"kind": cfg.dataset, "annotations": uri}
    try:
        records = read_records(cfg, store, uri)
    except Refused as exc:
        return [{**head, "error": [exc.reason, exc.detail]}]
    first, context = _first_positions(adapter, records), adapter.context(records)
    conflicts = _conflicts(adapter, records)
    listing = root.listing()
    sources = []
    for start in range(0, max(len(records), 1), cfg.shard_size):
        stop = min(start + cfg.shard_size, len(records))
        media = [listing.get(_media_key(adapter, r) or "") for r in records[start:stop]]
        sources.append(
            {
                **head,
                "start": start,
                "stop": stop,
                "records": _records_fingerprint(adapter, records, first, conflicts, context, start, stop),
                "media": digest(media),
            }
        )
    return sources


def _ingest_annotated(
    cfg: IngestConfig, store: ObjectStore, job: ShardJob
) -> tuple[list[Clip], list[Quarantine]]:
    src = job.source
    if "error" in src:
        return [], [quarantine(job.stage, src["annotations"], *src["error"])]
    adapter = ADAPTERS[cfg.dataset]
    root = dataset_root(cfg, store)
    uri = src["annotations"]
    records = read_records(cfg, store, uri)
    first, context = _first_positions(adapter, records), adapter.context(records)
    conflicts = _conflicts(adapter, records)
    start, stop = src["start"], src["stop"]
    if _records_fingerprint(adapter, records, first, conflicts, context, start, stop) != src["records"]:
        raise RuntimeError(f"{uri} changed since this stage was planned; plan it again")

    clips: list[Clip] = []
    bad: list[Quarantine] = []
    probed: dict[str, MediaInfo | MediaError] = {}
    for pos in range(start, stop):
        record = records[pos]
        item = f"{uri}#/{pos}"
        try:
            if not isinstance(record, dict):
                raise Refused("malformed_record", f"record is a {type(record).__name__}, not an object")
            native = adapter.native_id(record)
            item = f"{adapter.name}:{native}"
            check_text(record)
            if native in conflicts:
                raise Refused(
                    "conflicting_answers",
                    f"{item} is given with different answers by records {conflicts[native]}",
                )
            if first[native] != pos:
                raise Refused("duplicate_id", f"{item} already given by record {first[native]}")
            media_uri = root.resolve(adapter.media_path(record))
            clip = adapter.to_clip(record, context, cfg, media_uri)
            problem = validate_clip(clip, adapter.repeated_options)
            if problem:
                raise Refused(*problem)
            info = _screen(cfg, root, media_uri, probed)
            clips.append(dataclasses.replace(clip, duration_s=info.duration_s))
        except InputRefused as exc:
            bad.append(quarantine(job.stage, item, exc.reason, exc.detail))
    return clips, bad


def _screen(
    cfg: IngestConfig, root: DatasetRoot, uri: str, probed: dict[str, MediaInfo | MediaError]
) -> MediaInfo:
    """``screen_media`` once per file in a shard (AVQA and MUSIC-AVQA ask many questions per video)."""
    if uri not in probed:
        try:
            probed[uri] = screen_media(
                uri, cfg.limits, cfg.requires_video, cfg.requires_audio, root.storage_options
            )
        except MediaError as exc:
            probed[uri] = exc
    result = probed[uri]
    if isinstance(result, MediaError):
        raise result
    return result


# -- folder of unlabeled videos -------------------------------------------------------------------
def _ingest_folder(
    cfg: IngestConfig, store: ObjectStore, job: ShardJob
) -> tuple[list[Clip], list[Quarantine]]:
    root = dataset_root(cfg, store)
    clips: list[Clip] = []
    bad: list[Quarantine] = []
    for f in job.source["files"]:
        item = f"folder:{f['path']}"
        try:
            folder.check_file(f)
            uri = root.resolve(f["path"])
            info = screen_media(uri, cfg.limits, cfg.requires_video, cfg.requires_audio,
                                root.storage_options, windowed=True)
            made, skipped = folder.cut_windows(f, cfg, uri, info.duration_s, root.storage_options)
            clips += made
            bad += [quarantine(job.stage, *row) for row in skipped]
        except InputRefused as exc:
            bad.append(quarantine(job.stage, item, exc.reason, exc.detail))
    return clips, bad


# -- synthetic world ------------------------------------------------------------------------------
def _synthetic_sources(cfg: IngestConfig) -> list[dict[str, Any]]:
    n = cfg.synthetic.n_clips if cfg.limit is None else min(cfg.limit, cfg.synthetic.n_clips)
    return [
        {"kind": "synthetic", "start": s, "stop": min(s + cfg.shard_size, n)}
        for s in range(0, n, cfg.shard_size)
    ]


def _ingest_synthetic(
    cfg: IngestConfig, store: ObjectStore, job: ShardJob
) -> tuple[list[Clip], list[Quarantine]]:
    from sightsound_core.datasets.synthetic import generate_clips

    media_dir = join(job.output_uri.rsplit("/", 1)[0], "media")
    src = job.source
    clips = generate_clips(cfg.synthetic, media_dir, src["start"], src["stop"], store.storage_options)
    return clips, []


# -- the stage ------------------------------------------------------------------------------------
def plan_ingest(
    cfg: IngestConfig, store: ObjectStore, run: str, stage: str = STAGE
) -> StagePlan:
    if cfg.dataset == "synthetic":
        sources = _synthetic_sources(cfg)
    elif cfg.dataset == "folder":
        sources = folder.plan_folder(cfg, store, run, stage, dataset_root(cfg, store))
    else:
        sources = _annotated_sources(cfg, store)
    return plan_sources(store, run, stage, cfg, sources)


def ingest_shard(
    cfg: IngestConfig, store: ObjectStore, job: ShardJob
) -> tuple[pa.Table, pa.Table | None]:
    if cfg.dataset == "synthetic":
        clips, bad = _ingest_synthetic(cfg, store, job)
    elif cfg.dataset == "folder":
        clips, bad = _ingest_folder(cfg, store, job)
    else:
        clips, bad = _ingest_annotated(cfg, store, job)
    adapter = ADAPTERS.get(cfg.dataset)
    good, refused = screen(clips, job.stage, adapter is not None and adapter.repeated_options)
    bad += refused
    if bad:
        log.info("%s shard %d: %d clips, %d quarantined", job.stage, job.index, len(good), len(bad))
    return Clip.to_table(good), Quarantine.to_table(bad)


def run_ingest(cfg: IngestConfig, store: ObjectStore, run: str, stage: str = STAGE) -> StageRef:
    plan = plan_ingest(cfg, store, run, stage)
    return run_plan(store, plan, lambda job: ingest_shard(cfg, store, job))
