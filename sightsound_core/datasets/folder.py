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
so a scheduled run does only the new files. A file that changed since it was ingested (same path,
new key) would give second clips with the same ids: it is quarantined (``changed_since_ingest``)
unless its earlier version never became a clip (it was quarantined, say half-uploaded), in which
case the new version is ingested.

Windows. A video longer than one window (``IngestConfig.windows``) becomes clips of fixed windows,
each with id ``folder:{relative path}#t={start},{end}`` and media URIs narrowed to it the same way
(``media.decode.window_uri``): the teacher's frames, the verifier's and the student's audio all
come from the window alone. A file no longer than one window is one clip, ``folder:{relative
path}``, on the file itself. Every second of every file is accounted for: each window is a clip
or a skipped row with its reason (``silent_window``: less active sound than ``min_active_s``;
``short_window``; ``truncated`` or ``non_finite_samples`` audio in it; ``over_window_cap`` for the
rest of a video past ``max_per_video``), and a file refused as a whole is one row. Silence is
judged from one streaming pass over the audio track (``media.decode.audio_levels``). Deleted files leave
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

from sightsound_core.config import IngestConfig, WindowConfig
from sightsound_core.datasets.common import DatasetRoot, Refused
from sightsound_core.media.decode import (
    LEVEL_RATE,
    AudioLevels,
    DecodeCounter,
    audio_levels,
    seconds_text,
    window_uri,
)
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
    whole, window = f"folder:{path}", f"folder:{path}#t="
    return any(c == whole or c.startswith(window) for c in cache[index])


def check_file(f: dict[str, Any]) -> None:
    if f.get("changed"):
        raise Refused(
            "changed_since_ingest",
            f"{f['path']} changed after it was ingested (now {f['size']} bytes, {f['stamp']}); "
            "the earlier clip stays",
        )


def window_spans(duration_s: float, w: WindowConfig) -> tuple[list[tuple[float, float]], float | None]:
    """The windows ``[start, end)`` cut from a file, and where the part past the cap starts
    (None when nothing is past it).

    >>> window_spans(25.0, WindowConfig())
    ([(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)], None)
    >>> window_spans(22.0, WindowConfig(hop_s=5.0, max_per_video=2))
    ([(0.0, 10.0), (5.0, 15.0)], 15.0)
    """
    if duration_s <= w.length_s:
        return [(0.0, duration_s)], None
    spans: list[tuple[float, float]] = []
    start = 0.0
    while True:
        end = min(start + w.length_s, duration_s)
        spans.append((round(start, 3), round(end, 3)))
        if end >= duration_s:
            break
        start += w.hop
    if w.max_per_video is not None and len(spans) > w.max_per_video:
        spans = spans[: w.max_per_video]
        return spans, spans[-1][1]
    return spans, None


def window_id(path: str, start_s: float, end_s: float) -> str:
    return f"folder:{path}#t={seconds_text(start_s)},{seconds_text(end_s)}"


def cut_windows(
    f: dict[str, Any],
    cfg: IngestConfig,
    media_uri: str,
    duration_s: float,
    storage_options: dict[str, Any] | None = None,
    counter: DecodeCounter | None = None,
) -> tuple[list[Clip], list[tuple[str, str, str]]]:
    """A file's windows as clips, and ``(item, reason, detail)`` for every window skipped.

    Raises MediaError when the file's audio cannot be read at all (the file is refused whole).
    """
    w = cfg.windows
    if duration_s > 0:
        spans, past_cap = window_spans(duration_s, w)
        levels = audio_levels(media_uri, until_s=spans[-1][1], storage_options=storage_options,
                              counter=counter)
    else:  # the container does not say: the audio track's own length decides
        levels = audio_levels(media_uri, storage_options=storage_options, counter=counter)
        duration_s = float(levels.samples.sum()) / LEVEL_RATE
        spans, past_cap = window_spans(duration_s, w)
    whole = len(spans) == 1 and past_cap is None and spans[0][0] == 0.0
    clips: list[Clip] = []
    skipped: list[tuple[str, str, str]] = []
    for start, end in spans:
        item = f"folder:{f['path']}" if whole else window_id(f["path"], start, end)
        problem = _window_problem(levels, start, end, w)
        if problem:
            skipped.append((item, *problem))
            continue
        uri = media_uri if whole else window_uri(media_uri, start, end)
        clips.append(to_clip(f, cfg, uri, start, end, item))
    if past_cap is not None:
        skipped.append((
            window_id(f["path"], past_cap, duration_s), "over_window_cap",
            f"{f['path']}: {duration_s - past_cap:.1f} s past the first {w.max_per_video} windows",
        ))
    return clips, skipped


def _window_problem(levels: AudioLevels, start: float, end: float, w: WindowConfig) -> tuple[str, str] | None:
    """Why a window is skipped, as (reason, detail), or None when it becomes a clip."""
    span = f"{seconds_text(start)}-{seconds_text(end)} s"
    if end - start < w.min_s:
        return "short_window", f"{span}: {end - start:.2f} s < min_s {w.min_s} s"
    blocks = levels.span(start, end)
    expected = (end - start) * LEVEL_RATE
    got = int(levels.samples[blocks].sum())
    if got < 0.5 * expected:
        return "truncated", f"{span}: decoded {got / LEVEL_RATE:.2f} s of audio"
    bad = int(levels.non_finite[blocks].sum())
    if bad:
        return "non_finite_samples", f"{span}: {bad} NaN/inf samples"
    active = float((levels.level_db[blocks] > w.silence_db).sum()) * levels.block_s
    if active < w.min_active_s:
        return "silent_window", (
            f"{span}: {active:.1f} s above {w.silence_db:g} dBFS < min_active_s {w.min_active_s} s"
        )
    return None


def to_clip(f: dict[str, Any], cfg: IngestConfig, media_uri: str, start_s: float, end_s: float,
            clip_id: str) -> Clip:
    meta = {"needs_questions": True, "path": f["path"], "size": f["size"], "stamp": f["stamp"],
            "start_s": start_s, "end_s": end_s}
    return Clip(
        clip_id=clip_id,
        source="folder",
        split=cfg.split,
        video_uri=media_uri,
        audio_uri=media_uri,
        duration_s=round(end_s - start_s, 3),
        question=PLACEHOLDER_QUESTION,
        options=list(PLACEHOLDER_OPTIONS),
        label=None,
        family="unknown",
        category="unlabeled",
        meta=json.dumps(meta, sort_keys=True),
    )
