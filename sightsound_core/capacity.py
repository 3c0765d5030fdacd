"""Capacity planning: GPU-hours, API calls, cost and wall time of a run before it starts.

A roofline estimate from first principles, with efficiency factors that default to what was
measured on an H100 here (shared NOTES.md): decode is bound by reading the weights once per step
(``decode_efficiency`` of that bound is reached), prefill and training by FLOPs (``mfu`` of peak).
Training FLOPs follow NOTES.md: 4·N per token for a frozen base with LoRA (forward + input
gradients), 6·N for full fine-tuning; a reference-model forward adds 2·N.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field


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
