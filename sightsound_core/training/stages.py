"""The two training stages of the DAG: SFT (one model per corpus variant) and GRPO.

Each model is one job of its stage. The job trains into ``{stage_dir}/{name}/`` (checkpoints,
then ``merged/``) and commits a shard holding its training log last: the shard's presence means
the model is complete. On an object store that is not a local disk, training runs in a local
scratch directory, checkpoints and the merged model are uploaded, and a later attempt starts
from the uploaded checkpoints.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from typing import Any

import pyarrow as pa

from sightsound_core.config import GRPOConfig, PipelineConfig, SFTConfig
from sightsound_core.corpus import DATASETS, dataset_uri
from sightsound_core.errors import is_out_of_memory
from sightsound_core.schemas import GRPOExample, SFTExample
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, run_plan
from sightsound_core.storage import ObjectStore, join
from sightsound_core.training import grpo, sft
from sightsound_core.training.launch import launch_training
from sightsound_core.training.store_io import UPLOADED, audio_loader, make_uploader

log = logging.getLogger(__name__)

LOG_SCHEMA = pa.schema([("step", pa.int64()), ("metric", pa.string()), ("value", pa.float64())])


def log_table(metrics: dict[str, Any]) -> pa.Table:
    """Flatten the per-step history of ``train_sft`` (``loss_history``) or ``train_grpo``
    (``history``), lists of ``{"step": n, metric: value, ...}``, into (step, metric, value) rows."""
    rows = [
        (int(entry["step"]), name, float(value))
        for entry in metrics.get("history") or metrics.get("loss_history") or []
        for name, value in entry.items()
        if name != "step" and isinstance(value, (int, float))
    ]
    steps, names, values = zip(*rows) if rows else ((), (), ())
    return pa.Table.from_arrays(
        [pa.array(steps, pa.int64()), pa.array(names, pa.string()), pa.array(values, pa.float64())],
        schema=LOG_SCHEMA,
    )


def model_name(name: str, input_fingerprint: str) -> str:
    """A model's directory name: new training data gets a new directory, so it never resumes
    checkpoints made from other data and never overwrites the model those made."""
    return f"{name}-{input_fingerprint[:12]}"


def workdir(store: ObjectStore, job: ShardJob, name: str) -> str:
    """Where a job trains: inside the store on a local disk, else a local scratch directory
    seeded with the checkpoints already uploaded (a killed job resumes on any machine)."""
    uri = join(job.output_uri.rsplit("/", 1)[0], name)
    if store.protocol == "file":
        return store.local_path(uri)
    scratch = os.path.join(
        os.environ.get("SIGHTSOUND_CACHE", os.path.expanduser("~/.cache/sightsound")),
        "work", job.stage, job.stage_hash, name,
    )
    if store.exists(uri):
        store.get_dir(uri, scratch)
        # A checkpoint whose upload was cut short has no marker: resuming from it would fail.
        for entry in os.listdir(scratch):
            path = os.path.join(scratch, entry)
            if entry.startswith("checkpoint-") and not os.path.exists(os.path.join(path, UPLOADED)):
                shutil.rmtree(path)
    return scratch


def checkpoint_base(store: ObjectStore, job: ShardJob, name: str) -> str | None:
    """Where a job's checkpoints are uploaded as they are written; None on a local store (the
    job trains inside it)."""
    if store.protocol == "file":
        return None
    return join(job.output_uri.rsplit("/", 1)[0], name)


def train_job(
    cfg: PipelineConfig,
    store: ObjectStore,
    job: ShardJob,
    name: str,
    phase: str,
    model_path: str,
    examples: list[SFTExample] | list[GRPOExample],
) -> dict[str, Any]:
    """Train one model of a training stage, in this process or under ``accelerate launch``.

    A job that runs out of GPU memory is tried again from its last checkpoint with a smaller
    batch and the same update: SFT with half the rows per device and twice the accumulation,
    GRPO scoring half as many completions per forward.
    """
    phase_cfg = cfg.sft if phase == "sft" else cfg.grpo
    out = workdir(store, job, name)
    base = checkpoint_base(store, job, name)
    while True:
        try:
            metrics = _train(cfg, store, phase, phase_cfg, model_path, examples, out, base)
            break
        except Exception as exc:
            smaller = smaller_batch(phase_cfg, exc, cfg.launch.num_processes)
            if smaller is None:
                raise
            log.warning("%s ran out of GPU memory; again from its last checkpoint with %s",
                        phase, smaller.model_dump(include=_BATCH_FIELDS))  # fmt: skip
            phase_cfg = smaller
            _release_gpu_memory()
    publish(store, job, name, out)
    return metrics


def _train(
    cfg: PipelineConfig,
    store: ObjectStore,
    phase: str,
    phase_cfg: SFTConfig | GRPOConfig,
    model_path: str,
    examples: list[SFTExample] | list[GRPOExample],
    out: str,
    base: str | None,
) -> dict[str, Any]:
    if cfg.launch.num_processes > 1:
        return launch_training(
            phase, model_path, examples, phase_cfg, out, store.root, store.storage_options,
            cfg.models.device, cfg.launch, upload_base=base,
        )  # fmt: skip
    train = sft.train_sft if phase == "sft" else grpo.train_grpo
    upload = make_uploader(store, base) if base else None
    return train(model_path, examples, phase_cfg, out, audio_loader(store), cfg.models.device,
                 on_checkpoint=upload)  # fmt: skip


_BATCH_FIELDS = {"per_device_batch_size", "gradient_accumulation_steps", "micro_batch_rows"}


def smaller_batch(
    cfg: SFTConfig | GRPOConfig, exc: BaseException, num_processes: int = 1
) -> SFTConfig | GRPOConfig | None:
    """``cfg`` with a smaller batch and the same update, if ``exc`` is an out-of-memory error and
    the batch can still shrink; else None. SFT: half the rows per device, twice the accumulation.
    GRPO: half the completions scored per forward (a process scores
    ``prompts_per_step / num_processes * num_generations`` per step).

    >>> smaller_batch(SFTConfig(per_device_batch_size=4), MemoryError()) is None
    True
    """
    if not is_out_of_memory(exc):
        return None
    if isinstance(cfg, GRPOConfig):
        rows = cfg.micro_batch_rows or cfg.prompts_per_step // num_processes * cfg.num_generations
        return cfg.model_copy(update={"micro_batch_rows": rows // 2}) if rows >= 2 else None
    if cfg.per_device_batch_size < 2 or cfg.per_device_batch_size % 2:
        return None
    return cfg.model_copy(
        update={
            "per_device_batch_size": cfg.per_device_batch_size // 2,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps * 2,
        }
    )


def _release_gpu_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def publish(store: ObjectStore, job: ShardJob, name: str, local_dir: str) -> None:
    if store.protocol != "file":
        store.put_dir(local_dir, join(job.output_uri.rsplit("/", 1)[0], name))


def model_dir(store: ObjectStore, ref: StageRef, name: str) -> str:
    """A local directory holding the merged model ``name`` of a training stage."""
    entry = next(
        s for s in ref.manifest["shards"]
        if name in (s["source"].get("variant"), s["source"].get("name"))
    )
    name = model_name(name, entry["input_fingerprint"])
    uri = join(ref.dir, name, "merged")
    if store.protocol == "file":
        return store.local_path(uri)
    local = os.path.join(
        os.environ.get("SIGHTSOUND_CACHE", os.path.expanduser("~/.cache/sightsound")),
        "models", ref.stage, ref.stage_hash, name,
    )
    if not os.path.exists(os.path.join(local, "config.json")):
        store.get_dir(uri, local)
    return local


def _student(cfg: PipelineConfig) -> str:
    from sightsound_core.tiny import resolve_model

    return resolve_model(cfg.models.student, cfg.models.cache_dir)


# -- SFT -------------------------------------------------------------------------------------------
def sft_payload(cfg: PipelineConfig) -> dict[str, Any]:
    """What an SFT model depends on besides its data."""
    payload = {"sft": cfg.sft.hash_payload(), "student": cfg.models.student}
    if cfg.launch.num_processes > 1:
        # Each process trains per_device_batch_size rows: the global batch, so the model, changes.
        payload["processes"] = cfg.launch.num_processes
    return payload


def plan_sft(cfg: PipelineConfig, store: ObjectStore, corpus: StageRef) -> StagePlan:
    payload = sft_payload(cfg)
    sources = [
        {"variant": v, "data": corpus.shard_fingerprints[DATASETS.index(v)]} for v in cfg.sft.variants
    ]
    return plan_sources(store, cfg.run, "sft", payload, sources, [f"corpus={corpus.stage_hash}"])


def sft_shard(
    cfg: PipelineConfig, store: ObjectStore, job: ShardJob, corpus: StageRef
) -> tuple[pa.Table, None]:
    variant = job.source["variant"]
    examples = SFTExample.from_table(store.read_table(dataset_uri(corpus, variant)))
    if not examples:
        raise ValueError(
            f"sft[{variant}]: the corpus has no examples; see the corpus funnel "
            "(teacher agreement, label match and verification all filter)"
        )
    name = model_name(variant, job.input_fingerprint)
    metrics = train_job(cfg, store, job, name, "sft", _student(cfg), examples)
    return log_table(metrics), None


def run_sft(cfg: PipelineConfig, store: ObjectStore, corpus: StageRef) -> StageRef:
    plan = plan_sft(cfg, store, corpus)
    return run_plan(store, plan, lambda job: sft_shard(cfg, store, job, corpus))


# -- GRPO ------------------------------------------------------------------------------------------
GRPO_INIT = "cot"


def plan_grpo(cfg: PipelineConfig, store: ObjectStore, corpus: StageRef, sft: StageRef) -> StagePlan:
    index = cfg.sft.variants.index(GRPO_INIT)
    sources = [
        {
            "name": "policy",
            "init": sft.shard_fingerprints[index],
            "data": corpus.shard_fingerprints[DATASETS.index("grpo")],
        }
    ]
    upstream = [f"corpus={corpus.stage_hash}", f"sft={sft.stage_hash}"]
    return plan_sources(store, cfg.run, "grpo", cfg.grpo, sources, upstream)


def grpo_shard(
    cfg: PipelineConfig, store: ObjectStore, job: ShardJob, corpus: StageRef, sft: StageRef
) -> tuple[pa.Table, None]:
    examples = GRPOExample.from_table(store.read_table(dataset_uri(corpus, "grpo")))
    if not examples:
        raise ValueError("grpo: the corpus has no labelled prompts")
    name = model_name("policy", job.input_fingerprint)
    init = model_dir(store, sft, GRPO_INIT)
    metrics = train_job(cfg, store, job, name, "grpo", init, examples)
    return log_table(metrics), None


def run_grpo(
    cfg: PipelineConfig, store: ObjectStore, corpus: StageRef, sft: StageRef
) -> StageRef:
    plan = plan_grpo(cfg, store, corpus, sft)
    return run_plan(store, plan, lambda job: grpo_shard(cfg, store, job, corpus, sft))


def model_paths(
    cfg: PipelineConfig, store: ObjectStore, sft: StageRef | None, grpo: StageRef | None
) -> dict[str, tuple[str, str]]:
    """Every model the run produced: tag -> (local path, content fingerprint)."""
    out = {"pretrained": (_student(cfg), cfg.models.student)}
    if sft is not None:
        for i, variant in enumerate(cfg.sft.variants):
            out[variant] = (model_dir(store, sft, variant), sft.shard_fingerprints[i])
    if grpo is not None:
        out["grpo"] = (model_dir(store, grpo, "policy"), grpo.shard_fingerprints[0])
    return out


def read_log(store: ObjectStore, ref: StageRef) -> dict[str, list[tuple[int, str, float]]]:
    """Training logs of a stage by model name (for the report)."""
    out = {}
    for entry in ref.manifest["shards"]:
        name = entry["source"].get("variant") or entry["source"].get("name")
        t = store.read_table(entry["uri"])
        out[name] = list(zip(t["step"].to_pylist(), t["metric"].to_pylist(), t["value"].to_pylist()))
    return out
