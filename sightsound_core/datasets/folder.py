"""A folder or bucket of unlabeled videos (the YouTube-style corpus), ingested incrementally.

Every file under ``path`` whose name ends with one of ``extensions`` is a video; symlinks are
listed (and refused when they lead out of the root) but symlinked folders are not followed.

Incremental ingest. A *ledger* in the run's object store, ``{stage dir}/_ledger/``, records which
files went into which shard, each by its content key (relative path, size, and the object store's
ETag or the file's mtime). It is append-only: each run that finds new files writes one more
Parquet part, ``part-{n:06d}.parquet``, with columns ``shard, path, size, stamp, changed``, and
never rewrites an earlier one. Each run lists the root page by page (``DatasetRoot.pages``),
appends the files whose key the ledger does not hold as new shards after the existing ones, and
plans every ledger shard: old shards are committed and reused as they are, so a scheduled run
decodes only the new files and writes only their shards. A file that changed since it was ingested (same path,
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
next part's name would be taken twice; the scheduler runs one at a time).

Unlabeled clips. A Clip needs a question with at least two options, and these videos have none
yet. Each clip carries a placeholder yes/no question that is meaningful on any video (whether the
sound comes from something on screen), ``label=None`` (the vote stage may use a pseudo-label) and
``meta={"needs_questions": true, ...}``: question synthesis for unlabeled clips (the teacher's
issue) replaces the placeholder wherever that flag is set.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

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

LEDGER = "_ledger"
LEDGER_SCHEMA = pa.schema(
    [("shard", pa.int64()), ("path", pa.string()), ("size", pa.int64()), ("stamp", pa.string()),
     ("changed", pa.bool_())]
)
PLACEHOLDER_QUESTION = "Is the sound in this clip made by something visible on screen?"
PLACEHOLDER_OPTIONS = ["yes", "no"]


def new_videos(
    root: DatasetRoot, extensions: list[str], known: dict[str, tuple[str, int, str]], page_size: int
) -> list[dict[str, Any]]:
    """Video files under the root whose key ``known`` (path -> key) does not hold, sorted by path,
    each ``{path, size, stamp}``; the listing is read a page at a time."""
    endings = tuple(e.lower() for e in extensions)
    new = [
        {"path": rel, **stat}
        for page in root.pages(page_size)
        for rel, stat in page
        if rel.lower().endswith(endings) and known.get(rel) != (rel, stat["size"], stat["stamp"])
    ]
    return sorted(new, key=lambda f: f["path"])


def ledger_uri(cfg: IngestConfig, store: ObjectStore, run: str, stage: str) -> str:
    return join(stage_dir(store, run, stage, compute_stage_hash(stage, cfg, [])), LEDGER)


def read_ledger(store: ObjectStore, uri: str) -> list[list[dict[str, Any]]]:
    """The ledger's shards in order, each the list of its files."""
    shards: list[list[dict[str, Any]]] = []
    for name in store.ls(uri):
        if not (name.startswith("part-") and name.endswith(".parquet")):
            continue
        for row in store.read_table(join(uri, name), LEDGER_SCHEMA).to_pylist():
            while len(shards) <= row["shard"]:
                shards.append([])
            shards[row["shard"]].append({k: row[k] for k in ("path", "size", "stamp", "changed")})
    return shards


def plan_folder(
    cfg: IngestConfig, store: ObjectStore, run: str, stage: str, root: DatasetRoot
) -> list[dict[str, Any]]:
    """Append the files not yet ingested to the ledger; return one source per ledger shard."""
    uri = ledger_uri(cfg, store, run, stage)
    shards = read_ledger(store, uri)
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, files in enumerate(shards):
        for f in files:
            latest[f["path"]] = (index, f)

    new = new_videos(root, cfg.extensions, {p: _key(f) for p, (_, f) in latest.items()}, cfg.page_size)
    if cfg.limit is not None:
        new = new[: max(0, cfg.limit - sum(len(files) for files in shards))]
    if new:
        out_dir = stage_dir(store, run, stage, compute_stage_hash(stage, cfg, []))
        became_clip: dict[int, set[str]] = {}
        for f in new:
            earlier = latest.get(f["path"])
            f["changed"] = earlier is not None and _was_clip(
                store, out_dir, earlier[0], f["path"], became_clip
            )
        first = len(shards)
        shards += [new[start : start + cfg.shard_size] for start in range(0, len(new), cfg.shard_size)]
        rows = [{"shard": i, **f} for i in range(first, len(shards)) for f in shards[i]]
        parts = [n for n in store.ls(uri) if n.startswith("part-")]
        store.write_table(join(uri, f"part-{len(parts):06d}.parquet"), pa.Table.from_pylist(rows, LEDGER_SCHEMA))
    return [{"kind": "folder", "root": root.uri, "files": files} for files in shards]


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
