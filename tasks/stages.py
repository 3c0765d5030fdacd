"""Thin Prefect tasks around the core's shard work: caching, retries, tags, names. Nothing else.

A shard task runs one or more shards of a stage (``shards_per_task``: batching keeps Prefect's
per-task cost small for stages of many tiny shards). Its cache key is the content signature of
its shards (stage hash, shard indices, input fingerprints, output location), and its result, the
shard URIs, is persisted to the run's own object store, so a re-run shows as cache hits in the UI.
The core's check that each shard is committed from the same inputs stays the source of truth.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from sightsound_core import secrets
from sightsound_core import stage as core_stage
from sightsound_core.config import digest
from sightsound_core.dag import GPU_STAGES
from sightsound_core.errors import is_transient
from sightsound_core.stage import ShardJob, StagePlan, StageRef
from sightsound_core.storage import ObjectStore

# GPU_STAGES (from the DAG spec): stages whose work belongs on a GPU pool; their tasks are tagged
# ``gpu``, and the tag carries the pool's concurrency limit.
__all__ = ["GPU_STAGES", "commit_task", "public_options", "result_storage", "shard_task", "stage_tags", "stage_task"]
# Credentials in storage options must not reach the Prefect server (a block, flow-run parameters).
_SECRET_OPTIONS = {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key"}


def _load_secret_block(name: str) -> str:
    """API keys named by a Prefect Secret block (``api_key_secret``), resolved at call time."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


secrets.set_secret_loader(_load_secret_block)


def _batch_key(context: Any, parameters: dict[str, Any]) -> str:
    return digest([job.cache_key for job in parameters["jobs"]], length=32)


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network, rate-limit, server and GPU-memory failures; never bad input or bugs."""
    try:
        state.result()
    except Exception as exc:  # the failed state re-raises the task's exception
        return is_transient(exc)
    return False


@task(
    cache_key_fn=_batch_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10, 30],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    task_run_name=lambda: _run_name(),
)
def shard_task(jobs: list[ShardJob], work: Callable[[ShardJob], str]) -> list[str]:
    """Make each shard final (compute and commit it, or reuse its valid commit); its URIs."""
    return [work(job) for job in jobs]


def _run_name() -> str:
    from prefect.runtime import task_run

    jobs = task_run.parameters["jobs"]
    first, last = jobs[0].index, jobs[-1].index
    span = f"{first:05d}" if first == last else f"{first:05d}-{last:05d}"
    return f"{jobs[0].stage}-{span}"


def stage_tags(stage: str) -> list[str]:
    """The tags of a stage's tasks and batch runs: ``stage:{name}``, and ``gpu`` for a GPU stage."""
    return [f"stage:{stage}"] + (["gpu"] if stage in GPU_STAGES else [])


def stage_task(stage: str, store: ObjectStore, retries: int) -> Any:
    """``shard_task`` named and tagged for ``stage``, its results kept in ``store``."""
    return shard_task.with_options(name=stage, tags=stage_tags(stage), retries=retries,
                                   result_storage=result_storage(store))


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """Storage options without credentials: what may be stored by the Prefect server (a block,
    a flow run's parameters); workers take credentials from their environment or IAM."""
    return {k: v for k, v in options.items() if k not in _SECRET_OPTIONS}


@task(cache_policy=NO_CACHE, task_run_name="commit-{plan.stage}")
def commit_task(
    plan: StagePlan, store: ObjectStore, summary: Callable[[], dict] | None = None
) -> StageRef:
    """Write the stage's manifest last, once every shard is committed."""
    return core_stage.finalize(store, plan, summary)


def result_storage(store: ObjectStore) -> Any:
    """A saved Prefect storage block on the run's object store (``{root}/_prefect``).

    Saved by name because Prefect's result storage must be a saved block. Credentials are left
    out of the block: workers take them from their environment (or IAM), as s3fs does.
    """
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    base = store.uri("_prefect")
    if store.protocol == "file":
        block = LocalFileSystem(basepath=store.local_path(base))
    else:
        block = RemoteFileSystem(basepath=base, settings=public_options(store.storage_options))
    block.save(f"sightsound-results-{digest(store.root, 12)}", overwrite=True)
    return block
