"""A stage's batches fanned out over the workers of a work pool: one flow run per batch.

With ``orchestration.fanout`` naming a deployment of ``stage_batch`` (``stage-batch/gpu``), the
flow that walks the DAG plans a stage in ``fanout_stages`` as usual, then, instead of running its
shards in its own task runner, asks Prefect for one flow run of that deployment per batch
(``run_deployment``, as subflows, so the UI shows each batch under its stage). The work pool hands
the runs to its workers, as many at a time as it has workers; each run records the worker it ran
on (Prefect's ``prefect.worker.name`` label) and which of its shards it computed and which it found
committed. The coordinator waits for every batch, then commits the manifest itself.

A batch whose worker died stays Running until Prefect's unresponsive-run automation
(``deployments/automations/crash-unresponsive-runs.yaml``: no heartbeat within its window) marks
it Crashed; the coordinator then asks for the batch again, up to ``fanout_attempts`` runs, and any
free worker takes it. The shard contract makes that safe: a shard the dead worker had committed
is found committed and reused, so every shard is committed once. No queue of our own: Prefect
holds the batches, workers pull them, and its UI shows each batch, its worker and its state.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from sightsound_core.config import PipelineConfig, digest
from sightsound_core.dag import Inputs, Prepared, Stage, prepare, stages
from sightsound_core.stage import load_ref
from sightsound_core.storage import ObjectStore
from tasks.stages import public_options, stage_tags, stage_task

log = logging.getLogger(__name__)

# Flow-run state types that end a batch's run.
_DONE, _CRASHED, _STOPPED = "COMPLETED", "CRASHED", ("FAILED", "CANCELLED", "CANCELLING")


def fans_out(cfg: PipelineConfig, stage: Stage) -> bool:
    """Whether this stage's batches go to the fan-out deployment."""
    return bool(cfg.orchestration.fanout) and stage.name in cfg.orchestration.fanout_stages


def portable_config(cfg: PipelineConfig, store: ObjectStore) -> dict[str, Any]:
    """The resolved recipe as a flow-run parameter, for a worker on another machine: the store's
    root made absolute (a relative ``file://`` root names the coordinator's working directory),
    and no credentials (parameters are stored by the Prefect server; workers take theirs from
    their environment or IAM, as s3fs does)."""
    data = cfg.model_dump(mode="json")
    data["store"]["root"] = store.root
    data["store"]["storage_options"] = public_options(data["store"]["storage_options"])
    return data


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    """Shard indices in runs of at most ``size``.

    >>> _chunks([0, 1, 2, 5, 6], 2)
    [[0, 1], [2, 5], [6]]
    """
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def fan_out(stage: Stage, cfg: PipelineConfig, store: ObjectStore, inputs: Inputs, prepared: Prepared) -> None:
    """Run every shard of ``prepared`` that is not final as flow runs of the fan-out deployment,
    one per batch, and wait for all of them. Raises when a batch fails, or crashes on every one
    of its ``fanout_attempts`` runs; committed shards stay committed either way.

    Batches of this stage output still queued or running from an earlier coordinator (a pipeline
    run that died and was started again) are waited for, not sent twice: every batch's run carries
    a tag naming the stage's output directory, and the server is asked for those first.
    """
    orch = cfg.orchestration
    plan = prepared.plan
    todo = [j.index for j in plan.jobs if j.index in prepared.repair or not stage.reusable(store, j)]
    if not todo:
        log.info("%s: every shard is committed; nothing to fan out", stage.name)
        return
    common = {
        "cfg": portable_config(cfg, store),
        "stage": stage.name,
        "stage_hash": plan.stage_hash,
        "inputs": {name: ref.dir for name, ref in inputs.items()},
    }
    output_tag = f"output:{digest(plan.dir, 16)}"
    tags = stage_tags(stage.name) + [output_tag]

    def dispatch(shards: list[int], attempt: int) -> Any:
        span = f"{shards[0]:05d}" if len(shards) == 1 else f"{shards[0]:05d}-{shards[-1]:05d}"
        return run_deployment(
            orch.fanout, timeout=0, as_subflow=True, tags=tags,
            flow_run_name=f"{stage.name}-{span}-try{attempt}",
            parameters={**common, "shards": shards,
                        "refresh": sorted(prepared.repair.intersection(shards))},
        )

    with get_client(sync_client=True) as client:
        waiting = {run.id: (run.parameters["shards"], 1) for run in _in_flight(client, output_tag)}
        adopted = {i for shards, _ in waiting.values() for i in shards}
        if waiting:
            log.info("%s: waiting for %d batches already sent (%d shards)", stage.name, len(waiting),
                     len(adopted))
        rest = [i for i in todo if i not in adopted]
        for shards in _chunks(rest, orch.batch_size(len(plan.jobs))):
            waiting[dispatch(shards, 1).id] = (shards, 1)
        log.info("%s: %d shards in %d batches on %s", stage.name, len(todo), len(waiting), orch.fanout)
        while waiting:
            time.sleep(orch.fanout_poll_s)
            for run_id, (shards, attempt) in list(waiting.items()):
                run = client.read_flow_run(run_id)
                kind = run.state.type.value if run.state else None
                if kind == _DONE:
                    del waiting[run_id]
                elif kind == _CRASHED and attempt < orch.fanout_attempts:
                    del waiting[run_id]
                    log.warning("%s: batch %s crashed (%s); asking for it again", stage.name,
                                run.name, run.state.message)
                    waiting[dispatch(shards, attempt + 1).id] = (shards, attempt + 1)
                elif kind == _CRASHED or kind in _STOPPED:
                    raise RuntimeError(f"{stage.name}: batch {run.name} ended {run.state.name}"
                                       f" after {attempt} run(s): {run.state.message}")


def _in_flight(client: Any, tag: str) -> list[Any]:
    """Flow runs carrying ``tag`` that have not ended (scheduled, late, pending or running)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    alive = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(
        tags=FlowRunFilterTags(all_=[tag]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=alive)),
    ))


@flow(name="stage-batch", persist_result=False)
def stage_batch(
    cfg: dict[str, Any],
    stage: str,
    stage_hash: str,
    inputs: dict[str, str],
    shards: list[int],
    refresh: list[int] | None = None,
) -> dict[str, Any]:
    """Make shards ``shards`` of ``stage`` final on this worker: one task each, in order.

    Fails before any work when this worker plans the stage under another hash than its
    coordinator did (a worker image on other code, or other inputs). Returns, and publishes as a
    table artifact, which shards it computed and which it found committed, and the worker's name.
    """
    from prefect.artifacts import create_table_artifact

    config = PipelineConfig.model_validate(cfg)
    store = ObjectStore(config.store.root, config.store.storage_options)
    spec = next((s for s in stages(config) if s.name == stage), None)
    if spec is None:
        raise ValueError(f"the recipe has no stage {stage!r}")
    refs = {}
    for name, uri in inputs.items():
        ref = load_ref(store, uri)
        if ref is None:
            raise FileNotFoundError(f"input {name} of {stage} is not committed at {uri}")
        refs[name] = ref
    prepared = prepare(spec, config, store, Inputs(refs), reopen=False)
    if prepared.plan.stage_hash != stage_hash:
        raise RuntimeError(f"{stage}: this worker plans stage hash {prepared.plan.stage_hash}, its "
                           f"coordinator {stage_hash}: are both on the same code and recipe?")
    by_index = {job.index: job for job in prepared.plan.jobs}
    missing = [i for i in shards if i not in by_index]
    if missing:
        raise ValueError(f"{stage} has no shards {missing} (it has {len(by_index)})")
    task = stage_task(stage, store, config.orchestration.retries)
    redo = set(refresh or ())
    computed, reused = [], []
    for i in shards:
        job = by_index[i]
        (reused if spec.reusable(store, job) and i not in redo else computed).append(i)
        task.with_options(refresh_cache=i in redo)(jobs=[job], work=prepared.work)
    # The worker that started this run says who it is in the run's environment.
    record = {"worker": os.environ.get("PREFECT__WORKER_NAME"), "computed": computed, "reused": reused}
    create_table_artifact(
        table=[{"shard": i, "outcome": "computed" if i in computed else "reused",
                "worker": record["worker"] or ""} for i in shards],
        description=f"{stage}: shards of this batch, computed here or found committed",
    )
    return record
