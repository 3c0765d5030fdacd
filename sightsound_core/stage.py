"""The resumability contract every stage follows (docs/ARCHITECTURE.md, "The stage contract").

A stage's output directory is ``{root}/{run}/{stage}/{stage_hash}/``. ``stage_hash`` covers the
stage's result-changing config, the hashes of the stages it reads, and the code version, so a
changed config moves that stage and everything downstream to new directories and leaves upstream
work where it is.

Work is sharded. Shard ``i`` of a map stage reads shard ``i`` of each input stage; its *input
fingerprint* is the content hash of those input shards (or of the source items, for ingest) and is
stored in the output shard's Parquet metadata. A committed shard is reused only when its recorded
input fingerprint matches, so re-runs recompute nothing that is committed and valid, and a shard
whose inputs changed is recomputed. When every shard is committed, the manifest is written last,
then the run index entry that ``sightsound status`` reads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import socket
import time
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from sightsound_core.config import CODE_VERSION, StageConfig, digest
from sightsound_core.storage import MANIFEST, ObjectStore, join

log = logging.getLogger(__name__)

FP_KEY = b"sightsound.input_fingerprint"
HASH_KEY = b"sightsound.stage_hash"
PARTS_DIR = "_parts"
REPAIR = "_REPAIR.json"


@dataclasses.dataclass(frozen=True)
class StageRef:
    """A committed stage output, read from its manifest."""

    stage: str
    stage_hash: str
    dir: str
    shards: list[str]
    shard_fingerprints: list[str]
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return digest(self.shard_fingerprints)


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One unit of work: shard ``index`` of ``stage``."""

    stage: str
    stage_hash: str
    index: int
    output_uri: str
    quarantine_uri: str
    inputs: dict[str, str]
    input_fingerprint: str
    source: Any = None

    @property
    def cache_key(self) -> str:
        """Content signature of this shard's work; the output URI brings in the run."""
        where = hashlib.sha256(self.output_uri.encode()).hexdigest()[:8]
        return f"{self.stage}-{self.stage_hash}-{self.index:05d}-{self.input_fingerprint}-{where}"


@dataclasses.dataclass(frozen=True)
class StagePlan:
    run: str
    stage: str
    stage_hash: str
    dir: str
    jobs: list[ShardJob]
    config_payload: dict[str, Any]


def compute_stage_hash(stage: str, config: StageConfig | dict[str, Any], upstream: list[str]) -> str:
    payload = config.hash_payload() if isinstance(config, StageConfig) else config
    return digest({"stage": stage, "config": payload, "upstream": upstream, "code": CODE_VERSION})


def stage_dir(store: ObjectStore, run: str, stage: str, stage_hash: str) -> str:
    return store.uri(run, stage, stage_hash)


def _plan(
    store: ObjectStore,
    run: str,
    stage: str,
    config: StageConfig | dict[str, Any],
    upstream: list[str],
    work: list[tuple[dict[str, str], str, Any]],
) -> StagePlan:
    """A plan of one job per ``(inputs, input fingerprint, source)`` item, shard ``i`` for item ``i``."""
    stage_hash = compute_stage_hash(stage, config, upstream)
    out_dir = stage_dir(store, run, stage, stage_hash)
    jobs = [
        ShardJob(
            stage=stage,
            stage_hash=stage_hash,
            index=i,
            output_uri=shard_uri(out_dir, i),
            quarantine_uri=quarantine_uri(out_dir, i),
            inputs=inputs,
            input_fingerprint=fingerprint,
            source=source,
        )
        for i, (inputs, fingerprint, source) in enumerate(work)
    ]
    payload = config.hash_payload() if isinstance(config, StageConfig) else config
    return StagePlan(run, stage, stage_hash, out_dir, jobs, payload)


def plan_map(
    store: ObjectStore,
    run: str,
    stage: str,
    config: StageConfig | dict[str, Any],
    inputs: dict[str, StageRef],
    primary: str,
) -> StagePlan:
    """Plan a stage that maps shard ``i`` of its inputs to its own shard ``i``.

    ``primary`` names the input whose shard count sets the stage's; the other inputs must have
    the same count (they are aligned by index).
    """
    n = len(inputs[primary].shards)
    for name, ref in inputs.items():
        if len(ref.shards) != n:
            raise ValueError(f"{stage}: input {name} has {len(ref.shards)} shards, {primary} has {n}")
    work = [
        (
            {name: ref.shards[i] for name, ref in inputs.items()},
            digest({name: ref.shard_fingerprints[i] for name, ref in inputs.items()}),
            None,
        )
        for i in range(n)
    ]
    upstream = [f"{name}={ref.stage_hash}" for name, ref in sorted(inputs.items())]
    return _plan(store, run, stage, config, upstream, work)


def plan_sources(
    store: ObjectStore,
    run: str,
    stage: str,
    config: StageConfig | dict[str, Any],
    sources: list[Any],
    upstream: list[str] | None = None,
) -> StagePlan:
    """Plan a stage whose shards come from outside the store (ingest): one job per source item.

    Each source must be JSON-able; its digest is the shard's input fingerprint.
    """
    work = [({}, digest(src), src) for src in sources]
    return _plan(store, run, stage, config, upstream or [], work)


def shard_uri(out_dir: str, i: int) -> str:
    return join(out_dir, f"shard-{i:05d}.parquet")


def quarantine_uri(out_dir: str, i: int) -> str:
    return join(out_dir, f"quarantine-{i:05d}.parquet")


def _shard_fingerprint_meta(store: ObjectStore, uri: str) -> dict[bytes, bytes]:
    with store.open(uri, "rb") as fh:
        return pq.read_metadata(fh).metadata or {}


def is_committed(store: ObjectStore, job: ShardJob) -> bool:
    """True when the job's shard is committed and was made from the same inputs."""
    if not store.exists(job.output_uri):
        return False
    meta = _shard_fingerprint_meta(store, job.output_uri)
    return meta.get(FP_KEY, b"").decode() == job.input_fingerprint


def parts_dir(job: ShardJob) -> str:
    """Where an uncommitted shard keeps the rows it has paid for (API answers), so a killed
    attempt's successor asks only for the rest. Keyed by input fingerprint: new inputs, new parts."""
    stage_dir = job.output_uri.rsplit("/", 1)[0]
    return join(stage_dir, PARTS_DIR, f"{job.index:05d}-{job.input_fingerprint}")


def write_part(store: ObjectStore, job: ShardJob, table: pa.Table) -> None:
    """Make ``table``'s rows durable for ``job`` before more work is paid for (one atomic file)."""
    name = f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
    store.write_table(join(parts_dir(job), name), table)


def read_parts(store: ObjectStore, job: ShardJob) -> list[pa.Table]:
    """Every part file of ``job``, oldest first."""
    return [store.read_table(uri) for uri in store.list_shards(parts_dir(job), prefix="part-")]


def commit_shard(
    store: ObjectStore, job: ShardJob, table: pa.Table, quarantine: pa.Table | None = None
) -> str:
    """Commit a shard (quarantine rows first, the shard last: its presence means done), then
    drop the part files it was assembled from.

    A shard already here from other inputs is removed first: were the process to die between the
    writes, it would otherwise sit beside a quarantine file written for these inputs, and be
    reused with it if its own inputs came back. A shard from the same inputs (a repair) stays.
    """
    if not is_committed(store, job):
        store.rm(job.output_uri)
    if quarantine is not None and quarantine.num_rows:
        store.write_table(job.quarantine_uri, quarantine)
    else:
        store.rm(job.quarantine_uri)
    meta = dict(table.schema.metadata or {})
    meta[FP_KEY] = job.input_fingerprint.encode()
    meta[HASH_KEY] = job.stage_hash.encode()
    store.write_table(job.output_uri, table.replace_schema_metadata(meta))
    store.rm(parts_dir(job), recursive=True)
    return job.output_uri


def reopen_stage(store: ObjectStore, plan: StagePlan, shards: list[int]) -> None:
    """Open a committed stage for an in-place repair of ``shards``: a repair marker (who, where,
    since when) first, then the manifest goes. The next ``finalize`` writes the manifest and
    removes the marker; until then ``sightsound status`` shows the repair, running or stopped."""
    store.write_json(join(plan.dir, REPAIR), {
        "stage": plan.stage,
        "shards": shards,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    })
    store.rm(join(plan.dir, MANIFEST))


def read_repair(store: ObjectStore, dir_uri: str) -> dict[str, Any] | None:
    """The repair marker of a stage directory, or None when no repair is open."""
    uri = join(dir_uri, REPAIR)
    return store.read_json(uri) if store.exists(uri) else None


def run_shard(
    store: ObjectStore, job: ShardJob, compute: Callable[[ShardJob], tuple[pa.Table, pa.Table | None]]
) -> str:
    """Compute and commit ``job`` unless a valid commit exists. Returns the shard URI."""
    if is_committed(store, job):
        log.debug("%s shard %d: committed, reused", job.stage, job.index)
        return job.output_uri
    table, quarantine = compute(job)
    return commit_shard(store, job, table, quarantine)


def _file_sha(store: ObjectStore, uri: str) -> str:
    return hashlib.sha256(store.read_bytes(uri)).hexdigest()[:16]


def finalize(
    store: ObjectStore, plan: StagePlan, summary: Callable[[], dict[str, Any]] | None = None
) -> StageRef:
    """Write the manifest (last) and the run index entry; return the committed output.

    Reuses an existing manifest when it names exactly the plan's shards with the same inputs;
    ``summary`` is called only when a new manifest is written. A shard the existing manifest
    already describes (same URI, same inputs) keeps its entry, so a stage that grew by a few
    shards (an incremental ingest and everything downstream) reads only the new ones.
    """
    existing = store.read_manifest(plan.dir)
    expected = [(j.output_uri, j.input_fingerprint) for j in plan.jobs]
    if existing and [(s["uri"], s["input_fingerprint"]) for s in existing["shards"]] == expected:
        manifest = existing
    else:
        known = {(s["uri"], s["input_fingerprint"]): s for s in (existing or {}).get("shards", [])}
        shards = []
        for job in plan.jobs:
            if not is_committed(store, job):
                raise RuntimeError(f"{plan.stage}: shard {job.index} is not committed")
            entry = known.get((job.output_uri, job.input_fingerprint))
            shards.append(dict(entry, index=job.index) if entry else _shard_entry(store, job))
        manifest = {
            "run": plan.run,
            "stage": plan.stage,
            "stage_hash": plan.stage_hash,
            "code_version": CODE_VERSION,
            "config": plan.config_payload,
            "shards": shards,
            "rows": sum(s["rows"] for s in shards),
            "quarantined": sum(s["quarantined"] for s in shards),
            "summary": summary() if summary else {},
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        store.commit_manifest(plan.dir, manifest)
    store.rm(join(plan.dir, REPAIR))  # a repair, if one was open, is closed by the manifest
    record_in_index(store, plan.run, plan.stage, plan.dir, plan.stage_hash)
    return ref_from_manifest(plan.dir, manifest)


def _shard_entry(store: ObjectStore, job: ShardJob) -> dict[str, Any]:
    table = store.read_table(job.output_uri)
    quarantined = (
        store.read_table(job.quarantine_uri).num_rows if store.exists(job.quarantine_uri) else 0
    )
    return {
        "index": job.index,
        "uri": job.output_uri,
        "rows": table.num_rows,
        "fingerprint": _file_sha(store, job.output_uri),
        "input_fingerprint": job.input_fingerprint,
        "source": job.source,
        "quarantined": quarantined,
        "status_counts": _status_counts(table),
    }


def _status_counts(table: pa.Table) -> dict[str, int]:
    for column in ("status", "kept", "correct"):
        if column in table.column_names:
            values = table.column(column).to_pylist()
            counts: dict[str, int] = {}
            for v in values:
                counts[str(v)] = counts.get(str(v), 0) + 1
            return counts
    return {}


def ref_from_manifest(dir_uri: str, manifest: dict[str, Any]) -> StageRef:
    return StageRef(
        stage=manifest["stage"],
        stage_hash=manifest["stage_hash"],
        dir=dir_uri,
        shards=[s["uri"] for s in manifest["shards"]],
        shard_fingerprints=[s["fingerprint"] for s in manifest["shards"]],
        manifest=manifest,
    )


def load_ref(store: ObjectStore, dir_uri: str) -> StageRef | None:
    manifest = store.read_manifest(dir_uri)
    return ref_from_manifest(dir_uri, manifest) if manifest else None


def record_in_index(store: ObjectStore, run: str, stage: str, dir_uri: str, stage_hash: str) -> None:
    store.write_json(
        store.uri(run, "_index", f"{stage}.json"),
        {"stage": stage, "dir": dir_uri, "stage_hash": stage_hash},
    )


def read_index(store: ObjectStore, run: str) -> dict[str, dict[str, Any]]:
    """The latest committed output of each stage of a run, by stage name."""
    index_dir = store.uri(run, "_index")
    out = {}
    for name in store.ls(index_dir):
        if name.endswith(".json"):
            entry = store.read_json(join(index_dir, name))
            out[entry["stage"]] = entry
    return out


def read_all(store: ObjectStore, ref: StageRef) -> pa.Table:
    """All committed shards of a stage as one table."""
    tables = [store.read_table(u) for u in ref.shards]
    if not tables:
        raise ValueError(f"{ref.stage} has no shards")
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])


def run_plan(
    store: ObjectStore,
    plan: StagePlan,
    compute: Callable[[ShardJob], tuple[pa.Table, pa.Table | None]],
    summary: Callable[[], dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StageRef:
    """Run every pending shard of ``plan`` in order, then finalize. The plain-loop executor."""
    for n, job in enumerate(plan.jobs, 1):
        run_shard(store, job, compute)
        if progress:
            progress(n, len(plan.jobs))
    return finalize(store, plan, summary)
