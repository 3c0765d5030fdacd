"""Capacity planning: GPU-hours, API calls, cost and wall time of a run before it starts.

A roofline estimate from first principles, with efficiency factors that default to what was
measured on an H100 here (docs/ARCHITECTURE.md, "Measured baselines"): decode is bound by reading
the weights once per step (``decode_efficiency`` of that bound is reached), prefill and training
by FLOPs (``mfu`` of peak). Training FLOPs count 4·N per token for a frozen base with LoRA
(forward + input gradients), 6·N for full fine-tuning; a reference-model forward adds 2·N.

``plan_recipe`` fills the inputs from a recipe and, for a folder corpus, from the corpus itself:
it lists the folder and probes a sample of its videos to count windows (``survey_corpus``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sightsound_core.config import IngestConfig, PipelineConfig
from sightsound_core.datasets import folder
from sightsound_core.datasets.ingest import ADAPTERS, annotations_uri, dataset_root, read_records
from sightsound_core.media.decode import MediaError, probe
from sightsound_core.storage import ObjectStore


class CapacityInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clips: int = Field(100_000, ge=1, description="Clips (questions) in the corpus.")
    k: int = Field(5, ge=1, description="Teacher samples per question.")
    teacher_params_b: float = Field(32.0, gt=0, description="Teacher parameters, billions.")
    teacher_prompt_tokens: int = Field(700, ge=1, description="Frames + question tokens per clip.")
    trace_tokens: int = Field(256, ge=1, description="Generated tokens per teacher sample.")
    kept_fraction: float = Field(0.4, ge=0, le=1, description="Clips kept by the vote.")
    verify_per_clip: int = Field(1, ge=1, description="Traces verified per kept clip.")
    verify_input_tokens: int = Field(800, ge=1, description="Audio + text tokens per verify call.")
    verify_output_tokens: int = Field(60, ge=1)
    price_in_per_m: float = Field(40.0, ge=0, description="API price per million input tokens.")
    price_out_per_m: float = Field(80.0, ge=0, description="API price per million output tokens.")
    api_concurrency: int = Field(64, ge=1)
    api_latency_s: float = Field(2.0, gt=0)
    api_rpm: int | None = Field(None, ge=1, description="Requests per minute allowed, if limited.")
    student_params_b: float = Field(8.4, gt=0, description="Student parameters, billions.")
    sft_steps: int = Field(2000, ge=0)
    sft_batch: int = Field(8, ge=1)
    seq_tokens: int = Field(1000, ge=1, description="Tokens per training sequence (audio + text).")
    lora: bool = Field(True, description="LoRA on a frozen base (else full fine-tuning).")
    grpo_steps: int = Field(1000, ge=0)
    grpo_prompts_per_step: int = Field(8, ge=1)
    grpo_generations: int = Field(8, ge=1)
    grpo_completion_tokens: int = Field(256, ge=1)
    gpus: int = Field(8, ge=1, description="GPUs available to the run.")
    gpu_memory_gb: float = Field(80.0, gt=0)
    gpu_peak_tflops: float = Field(989.0, gt=0, description="Dense bf16 peak (H100 SXM: 989).")
    gpu_bandwidth_tbs: float = Field(3.0, gt=0, description="Measured copy bandwidth (H100: ~3.0).")
    mfu: float = Field(0.257, gt=0, le=1, description="Training/prefill model-FLOPs utilisation.")
    decode_efficiency: float = Field(0.14, gt=0, le=1, description="Share of the decode bound reached.")
    decode_batch: int = Field(64, ge=1, description="Sequences decoded together per replica.")
    gpu_hour_price: float = Field(2.5, ge=0, description="Price of one GPU-hour.")


def _replica_gpus(params_b: float, inp: CapacityInputs) -> int:
    """GPUs one bf16 replica needs, leaving 30% of memory for activations and the KV cache."""
    return max(1, math.ceil(params_b * 2 / (inp.gpu_memory_gb * 0.7)))


def _decode_hours(params_b: float, tokens: float, inp: CapacityInputs) -> float:
    """GPU-hours to generate ``tokens`` with a model of ``params_b`` (weights read each step)."""
    tp = _replica_gpus(params_b, inp)
    step_s = params_b * 2e9 / (inp.gpu_bandwidth_tbs * 1e12 * tp) / inp.decode_efficiency
    steps = tokens / inp.decode_batch
    return steps * step_s * tp / 3600


def _flop_hours(flops: float, inp: CapacityInputs) -> float:
    return flops / (inp.gpu_peak_tflops * 1e12 * inp.mfu) / 3600


def estimate(inp: CapacityInputs) -> dict[str, dict[str, float]]:
    """Per stage: GPU-hours, API calls and cost, and wall hours on ``inp.gpus`` GPUs."""
    n_t, n_s = inp.teacher_params_b * 1e9, inp.student_params_b * 1e9
    train_per_token = (4 if inp.lora else 6) * n_s

    teacher_prefill = _flop_hours(2 * n_t * inp.teacher_prompt_tokens * inp.clips, inp)
    teacher_decode = _decode_hours(inp.teacher_params_b, inp.clips * inp.k * inp.trace_tokens, inp)
    teacher = teacher_prefill + teacher_decode

    calls = inp.clips * inp.kept_fraction * inp.verify_per_clip
    api_cost = calls * (
        inp.verify_input_tokens * inp.price_in_per_m + inp.verify_output_tokens * inp.price_out_per_m
    ) / 1e6
    per_s = inp.api_concurrency / inp.api_latency_s
    if inp.api_rpm:
        per_s = min(per_s, inp.api_rpm / 60)
    verify_wall_h = calls / per_s / 3600

    sft_tokens = inp.sft_steps * inp.sft_batch * inp.seq_tokens
    sft = _flop_hours(train_per_token * sft_tokens, inp)

    grpo_seqs = inp.grpo_steps * inp.grpo_prompts_per_step * inp.grpo_generations
    grpo_gen = _decode_hours(inp.student_params_b, grpo_seqs * inp.grpo_completion_tokens, inp)
    grpo_train = _flop_hours((train_per_token + 2 * n_s) * grpo_seqs * inp.seq_tokens, inp)
    grpo = grpo_gen + grpo_train

    def stage(gpu_h: float, **extra: float) -> dict[str, float]:
        return {"gpu_hours": round(gpu_h, 2), "wall_hours": round(gpu_h / inp.gpus, 2),
                "gpu_cost": round(gpu_h * inp.gpu_hour_price, 2), **extra}

    out = {
        "teacher": stage(teacher, generated_tokens=float(inp.clips * inp.k * inp.trace_tokens),
                         replica_gpus=float(_replica_gpus(inp.teacher_params_b, inp))),
        "verify": {"api_calls": round(calls), "api_cost": round(api_cost, 2),
                   "wall_hours": round(verify_wall_h, 2), "gpu_hours": 0.0, "gpu_cost": 0.0},
        "sft": stage(sft, train_tokens=float(sft_tokens)),
        "grpo": stage(grpo, generation_gpu_hours=round(grpo_gen, 2), train_gpu_hours=round(grpo_train, 2)),
    }
    out["total"] = {
        "gpu_hours": round(sum(s["gpu_hours"] for s in out.values()), 2),
        "gpu_cost": round(sum(s["gpu_cost"] for s in out.values()), 2),
        "api_cost": out["verify"]["api_cost"],
        "wall_hours": round(sum(s["wall_hours"] for s in out.values()), 2),
    }
    return out


# -- from a recipe --------------------------------------------------------------------------------
def params_from_name(model: str, default: float) -> float:
    """Billions of parameters read from a model id (``Qwen2.5-VL-32B-Instruct`` -> 32.0).

    >>> params_from_name("Qwen/Qwen2.5-VL-32B-Instruct", 7.0), params_from_name("tiny://x", 7.0)
    (32.0, 7.0)
    """
    found = re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)[Bb](?![a-z])", model.rsplit("/", 1)[-1])
    return float(found[-1]) if found else default


def survey_corpus(cfg: IngestConfig, store: ObjectStore, sample: int) -> dict[str, Any]:
    """How many clips a recipe's ingest gives, without ingesting.

    A folder is listed (page by page) and up to ``sample`` of its videos, spread evenly over the
    listing, are probed (headers only) for their windows; the windows of the rest are scaled by
    bytes. The count is before silent windows are skipped: an upper bound. Synthetic data and
    annotation files are counted exactly.
    """
    if cfg.dataset == "synthetic":
        n = cfg.synthetic.n_clips if cfg.limit is None else min(cfg.limit, cfg.synthetic.n_clips)
        return {"dataset": "synthetic", "clips": n}
    root = dataset_root(cfg, store)
    if cfg.dataset != "folder":
        records = read_records(cfg, store, annotations_uri(cfg, ADAPTERS[cfg.dataset], root))
        return {"dataset": cfg.dataset, "clips": len(records)}

    files = folder.new_videos(root, cfg.extensions, {}, cfg.page_size)[: cfg.limit]
    picks = files if len(files) <= sample else [files[i * len(files) // sample] for i in range(sample)]
    seconds = windows = probed_bytes = unreadable = 0
    for f in picks:
        try:
            duration = probe(root.resolve(f["path"]), root.storage_options).duration_s
        except MediaError:
            unreadable += 1
            continue
        if duration > cfg.limits.max_file_duration_s:
            unreadable += 1
            continue
        spans, _ = folder.window_spans(duration, cfg.windows)
        seconds += duration
        windows += sum(1 for a, b in spans if b - a >= cfg.windows.min_s)
        probed_bytes += f["size"]
    total_bytes = sum(f["size"] for f in files)
    scale = total_bytes / probed_bytes if probed_bytes and len(picks) < len(files) else 1.0
    return {
        "dataset": "folder", "files": len(files), "bytes": total_bytes, "probed": len(picks),
        "refused_in_sample": unreadable, "exact": len(picks) == len(files),
        "seconds": round(seconds * scale, 1), "windows": round(windows * scale), "clips": round(windows * scale),
    }


def plan_recipe(
    cfg: PipelineConfig, store: ObjectStore, workers: int, sample: int = 50,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A recipe's corpus surveyed, and its estimate on ``workers`` GPU workers.

    Each worker has the teacher's tensor-parallel degree of GPUs. A folder corpus's windows are
    first proposed questions (one teacher generation each, the ``questions`` row) and each gives
    ``questions_per_clip`` questions for the K-sample teacher, vote and verifier. ``overrides``
    are CapacityInputs fields that win over what the recipe says (prices, efficiencies).
    """
    corpus = survey_corpus(cfg.ingest, store, sample)
    windows = corpus["clips"]
    questions = windows * cfg.teacher.questions_per_clip if cfg.ingest.dataset == "folder" else windows
    gpus_per_worker = cfg.teacher.tensor_parallel_size
    base = dict(
        clips=max(1, questions), k=cfg.teacher.k, trace_tokens=cfg.teacher.max_new_tokens,
        teacher_params_b=params_from_name(cfg.teacher.model, CapacityInputs().teacher_params_b),
        student_params_b=params_from_name(cfg.models.student, CapacityInputs().student_params_b),
        verify_per_clip=cfg.verify.samples_per_clip,
        sft_steps=cfg.sft.max_steps * len(cfg.sft.variants),
        sft_batch=cfg.sft.per_device_batch_size * cfg.sft.gradient_accumulation_steps,
        lora=cfg.sft.lora is not None,
        grpo_steps=cfg.grpo.max_steps if cfg.grpo.enabled else 0,
        grpo_prompts_per_step=cfg.grpo.prompts_per_step, grpo_generations=cfg.grpo.num_generations,
        grpo_completion_tokens=cfg.grpo.max_completion_length,
        gpus=workers * gpus_per_worker,
    )
    inputs = CapacityInputs.model_validate({**base, **(overrides or {})})
    result = estimate(inputs)
    if cfg.ingest.dataset == "folder":
        proposals = estimate(inputs.model_copy(update={"clips": max(1, windows), "k": 1}))["teacher"]
        result = {"questions": proposals, **result}
        for key in ("gpu_hours", "gpu_cost", "wall_hours"):
            result["total"][key] = round(result["total"][key] + proposals[key], 2)
    return {"corpus": corpus, "workers": workers, "gpus_per_worker": gpus_per_worker,
            "inputs": inputs.model_dump(), "estimate": result}
