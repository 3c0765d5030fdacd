"""One Prefect task per kind of shard work. Each only adds orchestration to a core call.

Cache keys are the shard's content signature (stage hash, shard index, input fingerprint), so a
re-run with the same inputs is a cache hit in the UI, and the core's own check (a committed shard
with the same input fingerprint) keeps the store the source of truth.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from sightsound_core import stage as core_stage
from sightsound_core.stage import ShardJob, StagePlan, StageRef
from sightsound_core.storage import ObjectStore


def _job_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["job"].cache_key


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network and server trouble, never bad input (which is quarantined, not raised)."""
    try:
        state.result()
    except (ConnectionError, TimeoutError, OSError):
        return True
    except Exception:
        return False
    return False


@task(
    cache_key_fn=_job_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_transient,
    task_run_name="{job.stage}-{job.index:05d}",
)
def shard_task(
    job: ShardJob,
    store: ObjectStore,
    compute: Callable[[ShardJob], Any],
) -> str:
    """Compute and commit one shard (or reuse its valid commit); returns the shard URI."""
    return core_stage.run_shard(store, job, compute)


@task(cache_policy=NO_CACHE, task_run_name="commit-{plan.stage}")
def commit_task(plan: StagePlan, store: ObjectStore, summary: Callable[[], dict] | None = None) -> StageRef:
    """Write the stage's manifest last, once every shard is committed."""
    return core_stage.finalize(store, plan, summary)
