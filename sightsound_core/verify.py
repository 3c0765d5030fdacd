"""Audio-grounded fact verification (AGFV): an audio model hears each kept trace's clip.

For every clip the vote kept, the first ``samples_per_clip`` traces that gave the winning answer are
sent with the clip's real audio to the verifier. Every trace sent yields exactly one Verdict row:
``accepted``, ``rejected``, ``unparseable`` (the reply was not a valid verdict) or ``error`` (the
reason is the error class: ``http_429``, ``timeout``, ``media:<reason>``…).

Resumability, beyond the stage contract (``stage.py``):

- **Within a shard: every answer is paid for once.** Each verdict is written to a part file
  under ``{stage_dir}/_parts/{index}-{input fingerprint}/`` the moment its answer arrives, before
  any further request is sent (write-ahead: a streaming backend's callback writes inside the event
  loop, so no request can leave while an answer is only in memory; a batch backend's verdicts are
  written after each call of ``part_size`` traces, before the next call). A kill at any moment
  re-asks at most the requests that were on the wire. The next attempt verifies only the traces
  no part holds a final verdict for, then commits the shard (one row per trace, in trace order)
  and deletes the parts.
- **Across runs.** A committed shard that holds retryable ``error`` rows (anything but
  ``media:*``, which is quarantined and would fail again) is *repaired* on the next run: only its
  error rows are re-verified, and the merged shard is committed in place. Verdicts already
  committed are never recomputed or billed again. Because a repair changes a committed shard, the
  stage is reopened first (a repair marker, then the manifest removed: ``stage.reopen_stage``) and
  its manifest written again last, which closes the repair.

``run_verify`` does both; ``resume_verify(cfg, store, run)`` does the same for an existing run
from its run index (what ``sightsound resume RUN --stage verify`` calls); ``verify_job`` is the
per-shard unit for an orchestrator.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from sightsound_core.backends.base import StreamingVerifier, VerifierBackend, VerifyRequest, VerifyResult
from sightsound_core.backends.registry import make_verifier
from sightsound_core.claims import planted_hallucination
from sightsound_core.config import VerifyConfig
from sightsound_core.media.decode import MediaError, load_audio
from sightsound_core.schemas import Clip, Quarantine, TeacherSample, Verdict, Vote
from sightsound_core.stage import (
    ShardJob,
    StagePlan,
    StageRef,
    commit_shard,
    finalize,
    is_committed,
    load_ref,
    plan_map,
    read_index,
    read_parts,
    reopen_stage,
    write_part,
)
from sightsound_core.storage import ObjectStore

log = logging.getLogger(__name__)

MEDIA_ERROR = "media:"


def traces_to_verify(
    votes: list[Vote], samples: list[TeacherSample], per_clip: int
) -> list[TeacherSample]:
    """The traces AGFV checks: for each kept clip, its first ``per_clip`` winning samples."""
    by_clip: dict[str, list[TeacherSample]] = {}
    for s in samples:
        by_clip.setdefault(s.clip_id, []).append(s)
    chosen = []
    for vote in votes:
        if not vote.kept:
            continue
        winners = [s for s in sorted(by_clip[vote.clip_id], key=lambda s: s.sample_idx)
                   if s.answer == vote.winner]
        chosen.extend(winners[:per_clip])
    return chosen


def plan_verify(
    cfg: VerifyConfig,
    store: ObjectStore,
    run: str,
    clips: StageRef,
    samples: StageRef,
    votes: StageRef,
) -> StagePlan:
    inputs = {"clips": clips, "samples": samples, "votes": votes}
    return plan_map(store, run, "verify", cfg, inputs, primary="clips")


# ---------------------------------------------------------------------------------------------
# One shard


def verify_shard(
    cfg: VerifyConfig, store: ObjectStore, job: ShardJob, previous: pa.Table | None = None
) -> tuple[pa.Table, pa.Table | None]:
    """Verdicts for every trace of the shard, one row each, in trace order.

    Verdicts found in ``previous`` (the committed shard being repaired) or in part files of an
    interrupted attempt are kept as they are; only traces without one reach the backend. Media
    failures are redone each time (no request is made, and their quarantine rows are rebuilt).
    """
    # Load: the shard's traces and what earlier attempts already settled.
    clips = {c.clip_id: c for c in Clip.from_table(store.read_table(job.inputs["clips"]))}
    samples = TeacherSample.from_table(store.read_table(job.inputs["samples"]))
    votes = Vote.from_table(store.read_table(job.inputs["votes"]))
    todo = traces_to_verify(votes, samples, cfg.samples_per_clip)
    earlier = Verdict.from_table(previous) if previous is not None else []
    for part in read_parts(store, job):
        earlier += Verdict.from_table(part)
    settled: dict[tuple[str, int], Verdict] = {}
    spent: dict[tuple[str, int], tuple[int, float]] = {}  # attempts and time of failed tries
    for v in earlier:
        key = (v.clip_id, v.sample_idx)
        if v.status != "error":
            settled[key] = v
        elif not v.reason.startswith(MEDIA_ERROR):
            attempts, latency = spent.get(key, (0, 0.0))
            spent[key] = (attempts + v.attempts, latency + v.latency_s)
    pending = [s for s in todo if (s.clip_id, s.sample_idx) not in settled]
    if len(pending) < len(todo):
        log.info("verify shard %d: %d of %d traces already settled, verifying %d",
                 job.index, len(todo) - len(pending), len(todo), len(pending))

    # Hear each clip once, however many of its traces are checked.
    backend = make_verifier(cfg)
    audio: dict[str, np.ndarray | MediaError] = {}
    quarantine: list[Quarantine] = []
    requests: list[tuple[TeacherSample, VerifyRequest]] = []
    fresh: list[Verdict] = []
    for sample in pending:
        clip = clips[sample.clip_id]
        if clip.clip_id not in audio:
            try:
                audio[clip.clip_id] = load_audio(clip.audio_uri, storage_options=store.storage_options)
            except MediaError as exc:
                audio[clip.clip_id] = exc
                quarantine.append(Quarantine(job.stage, clip.clip_id, exc.reason, exc.detail))
        heard = audio[clip.clip_id]
        if isinstance(heard, MediaError):
            result = VerifyResult("error", [], f"{MEDIA_ERROR}{heard.reason}", "", 0, 0.0)
            fresh.append(_verdict(sample, result, backend, clip, spent))
            continue
        requests.append((sample, VerifyRequest(clip, sample.sample_idx, sample.raw, heard)))

    # Verify: what each answer settles is durable before the next request is sent.
    def on_results(results: list[tuple[int, VerifyResult]]) -> None:
        verdicts = [_verdict(requests[i][0], r, backend, requests[i][1].clip, spent) for i, r in results]
        write_part(store, job, Verdict.to_table(verdicts))
        fresh.extend(verdicts)

    _stream(backend, [r for _, r in requests], on_results, cfg.part_size)

    # Merge: exactly one row per trace, in trace order.
    for v in fresh:
        settled[(v.clip_id, v.sample_idx)] = v
    missing = [s for s in todo if (s.clip_id, s.sample_idx) not in settled]
    if missing:
        raise RuntimeError(f"verify shard {job.index}: no verdict for {len(missing)} traces")
    rows = [settled[(s.clip_id, s.sample_idx)] for s in todo]
    return Verdict.to_table(rows), Quarantine.to_table(quarantine)


def _stream(
    backend: VerifierBackend,
    requests: list[VerifyRequest],
    on_results: Callable[[list[tuple[int, VerifyResult]]], None],
    batch: int,
) -> None:
    """Hand every result to ``on_results`` before the next request can go out: one at a time as
    each arrives when the backend streams (``verify_stream`` calls back inside its event loop,
    so nothing else is sent while the callback runs), else all of each ``batch`` of ``verify``
    calls, before the next call."""
    if isinstance(backend, StreamingVerifier):
        results = backend.verify_stream(requests, lambda i, result: on_results([(i, result)]))
        if len(results) != len(requests):
            raise RuntimeError(f"verifier returned {len(results)} results for {len(requests)} requests")
        return
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        results = backend.verify(chunk)
        if len(results) != len(chunk):
            raise RuntimeError(f"verifier returned {len(results)} results for {len(chunk)} requests")
        on_results(list(enumerate(results, start)))


def _verdict(
    sample: TeacherSample,
    result: VerifyResult,
    backend: VerifierBackend,
    clip: Clip,
    spent: dict[tuple[str, int], tuple[int, float]],
) -> Verdict:
    attempts, latency = spent.get((sample.clip_id, sample.sample_idx), (0, 0.0))
    return Verdict(
        clip_id=sample.clip_id,
        sample_idx=sample.sample_idx,
        status=result.status,
        unsupported_claims=list(result.unsupported_claims),
        reason=result.reason,
        raw=result.raw,
        attempts=attempts + result.attempts,
        latency_s=round(latency + result.latency_s, 6),
        backend=backend.name,
        model=backend.model,
        planted=planted_hallucination(sample.raw, clip),
    )


def retryable_errors(store: ObjectStore, job: ShardJob) -> int:
    """Rows of a committed shard that a re-run would re-verify."""
    table = store.read_table(job.output_uri).select(["status", "reason"])
    return sum(
        s == "error" and not r.startswith(MEDIA_ERROR)
        for s, r in zip(table.column("status").to_pylist(), table.column("reason").to_pylist())
    )


def verify_job(cfg: VerifyConfig, store: ObjectStore, job: ShardJob) -> str:
    """Make shard ``job`` final: reuse it, repair its error rows, or compute it. Returns its URI.

    The per-shard unit for an orchestrator (in place of ``stage.run_shard``). When it repairs a
    committed shard, the caller must have removed the manifest first (``reopen``).
    """
    if is_committed(store, job):
        if not retryable_errors(store, job):
            return job.output_uri
        previous = store.read_table(job.output_uri)
        table, quarantine = verify_shard(cfg, store, job, previous)
    else:
        table, quarantine = verify_shard(cfg, store, job)
    return commit_shard(store, job, table, quarantine)


def reopen(store: ObjectStore, plan: StagePlan) -> list[int]:
    """Remove the stage's manifest when a committed shard will be repaired; the repaired shards'
    indices. Call before running ``verify_job`` over the plan (manifest last, again)."""
    repair = [j.index for j in plan.jobs if is_committed(store, j) and retryable_errors(store, j)]
    if repair:
        log.info("verify: re-verifying error rows of shards %s", repair)
        reopen_stage(store, plan, repair)
    return repair


# ---------------------------------------------------------------------------------------------
# The stage


def hallucination_scores(verdicts: list[Verdict]) -> dict[str, float | int | None]:
    """Precision and recall of rejections against planted (known-false) claims, where known.

    >>> v = lambda s, p: Verdict("c", 0, s, [], "", "", 1, 0.0, "sim", "m", p)
    >>> hallucination_scores([v("rejected", True), v("accepted", True), v("rejected", False), v("accepted", False)])
    {'labelled': 4, 'precision': 0.5, 'recall': 0.5}
    """
    known = [v for v in verdicts if v.planted is not None and v.status in ("accepted", "rejected")]
    if not known:
        return {"labelled": 0, "precision": None, "recall": None}
    tp = sum(v.status == "rejected" and v.planted for v in known)
    rejected = sum(v.status == "rejected" for v in known)
    planted = sum(bool(v.planted) for v in known)
    return {
        "labelled": len(known),
        "precision": round(tp / rejected, 4) if rejected else None,
        "recall": round(tp / planted, 4) if planted else None,
    }


def verify_summary(store: ObjectStore, plan: StagePlan) -> dict[str, Any]:
    """What the manifest reports: statuses, error classes, requests billed, latency, and the
    verifier's precision and recall on planted hallucinations (synthetic data)."""
    verdicts = [v for job in plan.jobs for v in Verdict.from_table(store.read_table(job.output_uri))]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for v in verdicts:
        statuses[v.status] = statuses.get(v.status, 0) + 1
        if v.status == "error":
            errors[v.reason] = errors.get(v.reason, 0) + 1
    latencies = sorted(v.latency_s for v in verdicts if v.attempts)
    return {
        "traces": len(verdicts),
        "statuses": statuses,
        "errors": errors,
        "requests": sum(v.attempts for v in verdicts),
        "latency_p50_s": round(latencies[len(latencies) // 2], 4) if latencies else None,
        "hallucination": hallucination_scores(verdicts),
    }


def run_verify(
    cfg: VerifyConfig,
    store: ObjectStore,
    run: str,
    clips: StageRef,
    samples: StageRef,
    votes: StageRef,
) -> StageRef:
    """Verify every shard not yet final (uncommitted, or committed with retryable errors)."""
    plan = plan_verify(cfg, store, run, clips, samples, votes)
    reopen(store, plan)
    for job in plan.jobs:
        verify_job(cfg, store, job)
    ref = finalize(store, plan, lambda: verify_summary(store, plan))
    summary = ref.manifest.get("summary", {})
    log.info("verify: %s; hallucination precision/recall %s", summary.get("statuses"),
             summary.get("hallucination"))
    return ref


def read_verdicts(store: ObjectStore, run: str) -> dict[tuple[str, int], Verdict]:
    """The verdicts run ``run`` has committed, by trace (empty when it has none), from the shard
    files themselves: readable while the stage is reopened for a repair."""
    entry = read_index(store, run).get("verify")
    if entry is None:
        return {}
    return {
        (v.clip_id, v.sample_idx): v
        for uri in store.list_shards(entry["dir"])
        for v in Verdict.from_table(store.read_table(uri))
    }


def verdict_changes(
    before: dict[tuple[str, int], Verdict], after: dict[tuple[str, int], Verdict]
) -> dict[str, Any]:
    """What a resume did: committed traces asked again (``re_asked``: more attempts than their
    committed verdict), traces committed for the first time (``new``: asked now, or answered and
    saved before the interruption but not yet committed; the verdicts cannot tell which), and
    verdicts that moved, as ``{"error->accepted": n}`` (``new->…`` for the new ones).

    >>> v = lambda s, n: Verdict("c", 0, s, [], "", "", n, 0.0, "sim", "m", None)
    >>> w = lambda s, n: Verdict("d", 0, s, [], "", "", n, 0.0, "sim", "m", None)
    >>> verdict_changes({("c", 0): v("error", 1)}, {("c", 0): v("accepted", 2), ("d", 0): w("rejected", 1)})
    {'re_asked': 1, 'new': 1, 'changed': {'error->accepted': 1, 'new->rejected': 1}}
    """
    changed: dict[str, int] = {}
    re_asked = new_rows = 0
    for key, new in after.items():
        old = before.get(key)
        if old is None:
            new_rows += 1
        elif new.attempts > old.attempts:
            re_asked += 1
        if old is None or old.status != new.status:
            move = f"{old.status if old else 'new'}->{new.status}"
            changed[move] = changed.get(move, 0) + 1
    return {"re_asked": re_asked, "new": new_rows, "changed": changed}


def resume_verify(cfg: VerifyConfig, store: ObjectStore, run: str) -> StageRef:
    """Finish run ``run``'s verify stage: re-verify its error rows and uncommitted shards.

    Reads the committed ingest, teacher and vote outputs from the run index. Refuses when the
    recipe's verify config does not match the run's committed verify stage (that is a new stage
    for ``sightsound run``, not a resume).
    """
    index = read_index(store, run)
    refs = {}
    # The clips the teacher saw: the question stage's when the run synthesized questions.
    clips_stage = "questions" if "questions" in index else "ingest"
    for stage in (clips_stage, "teacher", "vote"):
        entry = index.get(stage)
        ref = load_ref(store, entry["dir"]) if entry else None
        if ref is None:
            raise ValueError(f"run {run!r} has no committed {stage} stage to verify")
        refs[stage] = ref
    plan = plan_verify(cfg, store, run, refs[clips_stage], refs["teacher"], refs["vote"])
    committed = index.get("verify")
    if committed and committed["stage_hash"] != plan.stage_hash:
        raise ValueError(
            f"run {run!r}: the recipe's verify config (stage {plan.stage_hash}) is not the one the "
            f"run committed (stage {committed['stage_hash']}); use `sightsound run` for a new config"
        )
    return run_verify(cfg, store, run, refs[clips_stage], refs["teacher"], refs["vote"])
