"""What a run has committed, stage by stage: the data behind ``sightsound status``."""

from __future__ import annotations

from typing import Any

from sightsound_core.stage import read_index
from sightsound_core.storage import MANIFEST, ObjectStore, join

ORDER = ("ingest", "questions", "teacher", "vote", "verify", "corpus", "sft", "grpo", "evaluate", "report")


def run_status(store: ObjectStore, run: str) -> list[dict[str, Any]]:
    """One row per stage seen in the run: done (manifest committed) or partial (shards only).

    Rows: stage, state, stage_hash, shards, rows, quarantined, statuses (counts of the status,
    kept or correct column), dir.
    """
    index = read_index(store, run)
    stages = [s for s in store.ls(store.uri(run)) if not s.startswith("_")]
    rows = []
    for name in sorted(stages, key=lambda s: (ORDER.index(s) if s in ORDER else ORDER.index("evaluate") - 0.5, s)):
        entry = index.get(name)
        if entry is not None:
            manifest = store.read_json(join(entry["dir"], MANIFEST))
            statuses: dict[str, int] = {}
            for shard in manifest["shards"]:
                for k, v in shard["status_counts"].items():
                    statuses[k] = statuses.get(k, 0) + v
            rows.append({
                "stage": name, "state": "done", "stage_hash": manifest["stage_hash"],
                "shards": len(manifest["shards"]), "rows": manifest["rows"],
                "quarantined": manifest["quarantined"], "statuses": statuses, "dir": entry["dir"],
            })
            continue
        for stage_hash in store.ls(store.uri(run, name)):
            shard_dir = store.uri(run, name, stage_hash)
            rows.append({
                "stage": name, "state": "partial", "stage_hash": stage_hash,
                "shards": len(store.list_shards(shard_dir)), "rows": None, "quarantined": None,
                "statuses": {}, "dir": shard_dir,
            })
    return rows
