"""A folder or bucket of unlabeled videos (the YouTube-style corpus), ingested incrementally.

Every file under ``path`` whose name ends with one of ``extensions`` is a video; symlinks are
listed (and refused when they lead out of the root) but symlinked folders are not followed.

Incremental ingest. A *ledger* in the run's object store, ``{stage dir}/_ledger.json``, records
which files went into which shard, each by its content key (relative path, size, and the object
store's ETag or the file's mtime)::

    {"shards": [{"index": 0, "files": [{"path": "a/b.mp4", "size": 1234, "stamp": "...",
                                         "changed": false}, ...]}, ...]}

Each run lists the root, appends the files whose key the ledger does not hold as new shards after
the existing ones, and plans every ledger shard: old shards are committed and reused as they are,
so a scheduled run does only the new files. A file's clip id is ``folder:{relative path}``. A file
that changed since it was ingested (same path, new key) would give a second clip with the same id:
it is quarantined (``changed_since_ingest``) unless its earlier version never became a clip (it was
quarantined, say half-uploaded), in which case the new version is ingested. Deleted files leave
their clips in the old shards. Two runs of the same stage must not plan at the same moment (the
ledger is one object; the scheduler runs one at a time).

Unlabeled clips. A Clip needs a question with at least two options, and these videos have none
yet. Each clip carries a placeholder yes/no question that is meaningful on any video (whether the
sound comes from something on screen), ``label=None`` (the vote stage may use a pseudo-label) and
``meta={"needs_questions": true, ...}``: question synthesis for unlabeled clips (the teacher's
issue) replaces the placeholder wherever that flag is set.
"""

from __future__ import annotations

import json
from typing import Any

from sightsound_core.config import IngestConfig
from sightsound_core.datasets.common import DatasetRoot, Refused
from sightsound_core.schemas import Clip
from sightsound_core.stage import compute_stage_hash, shard_uri, stage_dir
from sightsound_core.storage import ObjectStore, join

LEDGER = "_ledger.json"
PLACEHOLDER_QUESTION = "Is the sound in this clip made by something visible on screen?"
PLACEHOLDER_OPTIONS = ["yes", "no"]


def list_videos(root: DatasetRoot, extensions: list[str]) -> list[dict[str, Any]]:
    """Video files under the root, sorted by relative path, each ``{path, size, stamp}``."""
    endings = tuple(e.lower() for e in extensions)
    return [
        {"path": rel, **stat}
        for rel, stat in root.listing().items()
        if rel.lower().endswith(endings)
    ]


def ledger_uri(cfg: IngestConfig, store: ObjectStore, run: str, stage: str) -> str:
    return join(stage_dir(store, run, stage, compute_stage_hash(stage, cfg, [])), LEDGER)


def plan_folder(
    cfg: IngestConfig, store: ObjectStore, run: str, stage: str, root: DatasetRoot
) -> list[dict[str, Any]]:
    """Update the ledger with files not yet ingested; return one source per ledger shard."""
    uri = ledger_uri(cfg, store, run, stage)
    ledger = store.read_json(uri) if store.exists(uri) else {"shards": []}
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for shard in ledger["shards"]:
        for f in shard["files"]:
            latest[f["path"]] = (shard["index"], f)

    new = [
        f for f in list_videos(root, cfg.extensions)
        if f["path"] not in latest or _key(latest[f["path"]][1]) != _key(f)
    ]
    if cfg.limit is not None:
        new = new[: max(0, cfg.limit - sum(len(s["files"]) for s in ledger["shards"]))]
    if new:
        out_dir = stage_dir(store, run, stage, compute_stage_hash(stage, cfg, []))
        became_clip: dict[int, set[str]] = {}
        for f in new:
            earlier = latest.get(f["path"])
            f["changed"] = earlier is not None and _was_clip(
                store, out_dir, earlier[0], f["path"], became_clip
            )
        for start in range(0, len(new), cfg.shard_size):
            ledger["shards"].append(
                {"index": len(ledger["shards"]), "files": new[start : start + cfg.shard_size]}
            )
        store.write_json(uri, ledger)
    return [{"kind": "folder", "root": root.uri, "files": s["files"]} for s in ledger["shards"]]


def _key(f: dict[str, Any]) -> tuple[str, int, str]:
    return f["path"], f["size"], f["stamp"]


def _was_clip(store: ObjectStore, out_dir: str, index: int, path: str, cache: dict[int, set[str]]) -> bool:
    """Whether the earlier version of ``path`` (in shard ``index``) is a clip, or may become one
    (its shard is not committed yet and would read the file as it is now)."""
    if index not in cache:
        uri = shard_uri(out_dir, index)
        if not store.exists(uri):
            return True
        cache[index] = set(store.read_table(uri).column("clip_id").to_pylist())
    return f"folder:{path}" in cache[index]


def check_file(f: dict[str, Any]) -> None:
    if f.get("changed"):
        raise Refused(
            "changed_since_ingest",
            f"{f['path']} changed after it was ingested (now {f['size']} bytes, {f['stamp']}); "
            "the earlier clip stays",
        )


def to_clip(f: dict[str, Any], cfg: IngestConfig, media_uri: str, duration_s: float) -> Clip:
    meta = {"needs_questions": True, "path": f["path"], "size": f["size"], "stamp": f["stamp"]}
    return Clip(
        clip_id=f"folder:{f['path']}",
        source="folder",
        split=cfg.split,
        video_uri=media_uri,
        audio_uri=media_uri,
        duration_s=duration_s,
        question=PLACEHOLDER_QUESTION,
        options=list(PLACEHOLDER_OPTIONS),
        label=None,
        family="unknown",
        category="unlabeled",
        meta=json.dumps(meta, sort_keys=True),
    )
