"""What a run has committed, stage by stage: the data behind ``sightsound status``.

A stage is in one of these states:

- ``done``: its manifest is committed (``stale`` too when a stage it reads was committed again
  after it, e.g. a verify repair: its output no longer reflects its inputs until the DAG runs again);
- ``partial``: shards (and saved answers) only, never committed;
- ``repairing``: a committed stage reopened for an in-place repair (``stage.reopen_stage``) by a
  process that is still alive, or on another host, where that cannot be checked;
- ``repair stopped``: the same, but the repairing process on this host is gone (killed);
- ``incomplete``: the run index names a directory whose manifest is missing, with no repair open.

Reading status never fails on a run in any of these states: it reads only what exists.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from typing import Any, Callable, TypeVar

from sightsound_core.dag import ORDER, kind_of, upstream_of
from sightsound_core.schemas import Quarantine
from sightsound_core.stage import PARTS_DIR, read_index, read_repair
from sightsound_core.storage import MANIFEST, ObjectStore, join

T = TypeVar("T")


def downstream(stage: str, present: list[str]) -> list[str]:
    """The stages among ``present`` that read ``stage``, directly or not, in DAG order.

    >>> downstream("verify", ["ingest", "verify", "corpus", "sft", "bench-x", "evaluate", "report"])
    ['corpus', 'sft', 'evaluate', 'report']
    """
    out: list[str] = []
    for name in sorted(present, key=_order):
        if any(up == stage or up in out for up in upstream_of(name, present)):
            out.append(name)
    return out


def _order(stage: str) -> tuple[int, str]:
    kind = kind_of(stage)
    return (ORDER.index(kind) if kind in ORDER else len(ORDER), stage)


def _alive(repair: dict[str, Any]) -> bool | None:
    """Whether the repairing process still runs: None when it ran on another host."""
    if repair.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(repair["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def error_kinds(store: ObjectStore, dir_uri: str, summary: dict[str, Any]) -> dict[str, int]:
    """Errors of a stage by kind: the verify summary's error classes (``http_429``, ``timeout``,
    ``media:…``), else its quarantine reasons, a failed teacher request by its error class."""
    if "errors" in summary:
        return dict(summary["errors"])
    kinds: Counter[str] = Counter()
    for uri in store.list_shards(dir_uri, prefix="quarantine-"):
        for q in _read_if_there(lambda u=uri: Quarantine.from_table(store.read_table(u)), []):
            kinds[q.detail.split(":", 1)[0] if q.reason == "teacher_error" else q.reason] += 1
    return dict(kinds)


def _saved_answers(store: ObjectStore, dir_uri: str) -> int:
    """Rows in part files: answers an unfinished shard has paid for and kept."""
    parts = join(dir_uri, PARTS_DIR)
    return sum(
        _read_if_there(lambda u=uri: store.read_table(u).num_rows, 0)
        for shard in store.ls(parts)
        for uri in store.list_shards(join(parts, shard), prefix="part-")
    )


def _read_if_there(read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` when the file went away since it was listed (a running stage
    commits a shard and drops its parts; a repair removes the manifest)."""
    try:
        return read()
    except FileNotFoundError:
        return default


def run_status(store: ObjectStore, run: str) -> list[dict[str, Any]]:
    """One row per stage seen in the run, in DAG order.

    Rows: stage, state (see the module docstring), stale, stage_hash, shards, rows, quarantined,
    statuses (counts of the status, kept or correct column), errors (by kind), saved (answers
    kept by unfinished shards), summary (the manifest's), repair (the open repair's marker or
    None), committed_at, dir.
    """
    index = read_index(store, run)
    stages = sorted((s for s in store.ls(store.uri(run)) if not s.startswith("_")), key=_order)
    rows = []
    for name in stages:
        entry = index.get(name)
        dirs = [entry["dir"]] if entry is not None else [
            store.uri(run, name, h) for h in store.ls(store.uri(run, name)) if not h.startswith("_")
        ]
        for dir_uri in dirs:
            rows.append(_stage_row(store, name, dir_uri, indexed=entry is not None))
    # Stale: a stage read something committed after it, or something not committed now.
    by_stage = {r["stage"]: r for r in rows}
    for r in rows:
        ups = [by_stage[u] for u in upstream_of(r["stage"], list(by_stage))]
        r["stale"] = r["state"] == "done" and any(
            u["stale"] or u["state"] != "done" or (u["committed_at"] or "") > (r["committed_at"] or "")
            for u in ups
        )
    return rows


def _stage_row(store: ObjectStore, name: str, dir_uri: str, indexed: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stage": name, "state": "partial", "stale": False, "stage_hash": dir_uri.rsplit("/", 1)[-1],
        "shards": len(store.list_shards(dir_uri)), "rows": None, "quarantined": None, "statuses": {},
        "errors": {}, "saved": _saved_answers(store, dir_uri), "summary": {}, "repair": None,
        "committed_at": None, "dir": dir_uri,
    }
    manifest = _read_if_there(lambda: store.read_json(join(dir_uri, MANIFEST)), None)
    if manifest is None:
        if indexed:
            repair = read_repair(store, dir_uri)
            row["repair"] = repair
            if repair is None:
                row["state"] = "incomplete"
            else:
                row["state"] = "repair stopped" if _alive(repair) is False else "repairing"
        return row
    statuses: Counter[str] = Counter()
    for shard in manifest["shards"]:
        statuses.update(shard["status_counts"])
    summary = manifest.get("summary") or {}
    row.update(
        state="done", stage_hash=manifest["stage_hash"], shards=len(manifest["shards"]),
        rows=manifest["rows"], quarantined=manifest["quarantined"], statuses=dict(statuses),
        errors=error_kinds(store, dir_uri, summary), summary=summary,
        committed_at=manifest.get("committed_at"),
    )
    return row
