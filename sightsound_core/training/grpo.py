"""GRPO for the audio student: a standalone loop on TRL's semantics.

TRL 1.16's GRPOTrainer cannot run Qwen2-Audio (it fails at init, and past that its log-prob
forwards drop ``input_features``), so this loop implements the same objective directly:

- per prompt, G completions sampled at ``temperature`` (audio features reach generation);
- rewards: ``sum(weight[name] * REWARDS[name](...))`` over ``cfg.reward_weights``;
- advantages normalised within each group: ``(r - mean_G) / (std_G + 1e-4)``;
- per-token loss ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * KL``, where the
  KL is the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` against the frozen reference
  (the base with LoRA adapters disabled, or a frozen copy for full fine-tuning);
- one optimisation step per generation round (TRL's ``num_iterations=1``: the ratio is 1 in value
  and the clip only shapes the gradient), token-level normalisation over the whole batch (TRL's
  default ``loss_type="dapo"``), log-probs of logits divided by the sampling temperature, gradient
  norm clipped at 1.0, constant learning rate.

Log-probabilities come from TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``): only
completion positions are projected onto the vocabulary, in tiles, so the ``(rows, length, vocab)``
logits are never materialised (Qwen2-Audio's vocabulary has 156k entries).

Under ``accelerate launch`` (DDP) every process takes ``prompts_per_step / num_processes`` of a
step's prompts and samples their groups; the token-level normalisation counts the tokens of all
processes, so the update equals the single-process one. Only the main process writes checkpoints
and the merged model. DeepSpeed and FSDP are refused: generation would need gathered parameters
and checkpoints hold the trainable weights only.

Checkpoints hold the trainable weights, the optimizer and the step. The batch and the sampling
seed of a step are functions of ``(cfg.seed, step)``, so a resumed run repeats exactly what the
uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sightsound_core.config import GRPOConfig
from sightsound_core.schemas import GRPOExample
from sightsound_core.training.common import apply_lora, last_checkpoint, save_merged
from sightsound_core.training.inputs import (
    IGNORE_INDEX,
    encode_prompts,
    load_student,
    resolve_device,
    stop_token_ids,
)
from sightsound_core.training.rewards import REWARDS

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
MAX_GRAD_NORM = 1.0


def step_indices(n: int, step: int, k: int, seed: int) -> list[int]:
    """The ``k`` example indices of ``step``: consecutive slices of a fresh permutation per epoch.

    >>> sorted(step_indices(4, 0, 2, 0) + step_indices(4, 1, 2, 0))
    [0, 1, 2, 3]
    """
    out = []
    for pos in range(step * k, (step + 1) * k):
        epoch, i = divmod(pos, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[i]))
    return out


def make_accelerator(device: str, bf16: bool) -> Any:
    """An ``Accelerator`` for this process: DDP under ``accelerate launch``, else one device.

    The process-wide accelerate state is reset first (as transformers' Trainer does), so SFT and
    GRPO with different precision can run one after the other in one process.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(cpu=device == "cpu", mixed_precision="bf16" if bf16 else "no")


def build_grpo_policy(
    model_path: str, cfg: GRPOConfig, accelerator: Any, output_dir: str | None = None
) -> tuple[Any, Any, Any, Any, int, list[dict], Path | None]:
    """Everything ``grpo_step`` needs, set up as ``train_grpo`` runs it.

    The base is held in bf16 under LoRA with ``cfg.bf16``; TRL's fused LM head divides by the
    sampling temperature; the reference is the policy with adapters disabled (LoRA) or a frozen
    copy (full fine-tune with ``beta > 0``); the state of the last checkpoint in ``output_dir`` is
    loaded before ``accelerator.prepare``. Returns ``(policy, reference, processor, optimizer,
    start_step, history, resumed_from)``.
    """
    import torch
    from trl.trainer.utils import add_fused_lm_head

    dtype = torch.bfloat16 if cfg.bf16 and cfg.lora is not None else torch.float32
    model, processor = load_student(model_path, str(accelerator.device), dtype=dtype)
    add_fused_lm_head(model, temperature=cfg.temperature)
    reference = None
    if cfg.lora is None and cfg.beta > 0:
        reference, _ = load_student(model_path, str(accelerator.device), dtype=dtype)
        reference.requires_grad_(False)
        add_fused_lm_head(reference, temperature=cfg.temperature)
    torch.manual_seed(cfg.seed)  # the adapters' initial weights
    policy = apply_lora(model, cfg.lora)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)

    # Resume (every process loads the same checkpoint)
    start_step, history = 0, []
    resume = last_checkpoint(output_dir) if output_dir else None
    if resume is not None:
        start_step, history = _load_checkpoint(resume, policy, optimizer)
        log.info("resuming GRPO from %s (step %d)", resume, start_step)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    return policy, reference, processor, optimizer, start_step, history, resume


def train_grpo(
    model_path: str,
    examples: list[GRPOExample],
    cfg: GRPOConfig,
    output_dir: str,
    audio_loader: Callable[[str], np.ndarray],
    device: str = "auto",
    on_checkpoint: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run GRPO from ``model_path`` (usually the SFT merge); write ``{output_dir}/merged``.

    Resumes from the last ``checkpoint-N`` in ``output_dir``; ``on_checkpoint`` is called with each
    checkpoint's folder once written (main process only). Returns ``{"merged", "steps",
    "history": [per-step metrics], "wall_s", "resumed_from", "num_processes",
    "replica_fingerprints"}``; each step's metrics are ``step, prompts, reward, reward_std,
    accuracy, format, kl, loss, completion_length, generate_s, train_s, step_s`` over the prompts
    of all processes; ``replica_fingerprints`` holds each process's (sum, sum of squares) of the
    trainable weights, equal by construction.
    """
    from accelerate.utils import DistributedType

    if not examples:
        raise ValueError("train_grpo needs at least one example")
    unknown = set(cfg.reward_weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"unknown rewards {sorted(unknown)}; known: {sorted(REWARDS)}")
    started = time.perf_counter()
    accelerator = make_accelerator(resolve_device(device), cfg.bf16)
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ValueError(
            f"GRPO runs under DDP only, not {accelerator.distributed_type.value}: use "
            "deployments/accelerate/ddp.yaml (LoRA on a 7B student fits one GPU per process)"
        )
    world = accelerator.num_processes
    if cfg.prompts_per_step % world:
        raise ValueError(
            f"prompts_per_step={cfg.prompts_per_step} must be a multiple of the {world} processes"
        )

    policy, reference, processor, optimizer, start_step, history, resume = build_grpo_policy(
        model_path, cfg, accelerator, output_dir
    )

    # Train
    waveforms: dict[str, np.ndarray] = {}
    rank = accelerator.process_index
    for step in range(start_step, cfg.max_steps):
        chosen = step_indices(len(examples), step, cfg.prompts_per_step, cfg.seed)
        batch = [examples[i] for i in chosen[rank::world]]
        for e in batch:
            if e.audio_uri not in waveforms:
                waveforms[e.audio_uri] = audio_loader(e.audio_uri)
        metrics = grpo_step(
            policy, reference, processor, optimizer, batch, waveforms, cfg,
            seed=cfg.seed * 1_000_003 + step + rank * 10_000_019, accelerator=accelerator,
        )  # fmt: skip
        metrics["step"] = step + 1
        history.append(metrics)
        log.info(
            "grpo step %d/%d reward=%.3f acc=%.3f fmt=%.3f kl=%.4f loss=%.4f (%.2f s: generate %.2f, train %.2f)",
            step + 1, cfg.max_steps, metrics["reward"], metrics["accuracy"], metrics["format"],
            metrics["kl"], metrics["loss"], metrics["step_s"], metrics["generate_s"], metrics["train_s"],
        )  # fmt: skip
        if (step + 1) % cfg.save_steps == 0 or step + 1 == cfg.max_steps:
            if accelerator.is_main_process:
                _save_checkpoint(output_dir, step + 1, history, accelerator.unwrap_model(policy), optimizer)
                if on_checkpoint is not None:
                    on_checkpoint(f"{output_dir}/checkpoint-{step + 1}")
            accelerator.wait_for_everyone()

    replicas = _replica_fingerprints(accelerator, policy)

    # Export
    merged = f"{output_dir}/merged"
    if accelerator.is_main_process:
        save_merged(accelerator.unwrap_model(policy), processor, merged)
    accelerator.wait_for_everyone()
    wall = time.perf_counter() - started
    log.info("GRPO done: %d steps in %.1f s -> %s", len(history), wall, merged)
    return {
        "merged": merged,
        "steps": len(history),
        "history": history,
        "wall_s": wall,
        "resumed_from": str(resume) if resume else None,
        "num_processes": world,
        "replica_fingerprints": replicas,
    }


def _replica_fingerprints(accelerator: Any, policy: Any) -> list[list[float]]:
    """(sum, sum of squares) of the trainable weights on every process; DDP keeps them equal, so
    a difference means the processes diverged and the run is not to be trusted."""
    import torch

    weights = [p.detach().double() for p in policy.parameters() if p.requires_grad]
    mine = torch.stack([sum(w.sum() for w in weights), sum((w * w).sum() for w in weights)])
    everyone = accelerator.gather(mine[None].to(accelerator.device)).cpu().tolist()
    if any(f != everyone[0] for f in everyone):
        raise RuntimeError(f"GRPO processes diverged: trainable weights differ across processes {everyone}")
    return everyone


def grpo_step(
    policy: Any,
    reference: Any,
    processor: Any,
    optimizer: Any,
    batch: list[GRPOExample],
    waveforms: dict[str, np.ndarray],
    cfg: GRPOConfig,
    seed: int,
    accelerator: Any = None,
) -> dict[str, float]:
    """One generation round and one optimizer step on it; returns the step's metrics.

    ``policy`` carries TRL's fused LM head (``add_fused_lm_head`` before PEFT). With an
    ``accelerator``, ``batch`` is this process's share and the metrics cover every process.
    ``generate_s`` is the sampling time, ``train_s`` the scoring, backward and update.
    """
    import torch

    from sightsound_core.backends.hf_student import generate_ids

    started = time.perf_counter()
    g = cfg.num_generations
    tokenizer = processor.tokenizer
    unwrapped = accelerator.unwrap_model(policy) if accelerator is not None else policy
    device = next(unwrapped.parameters()).device

    # Sample G completions per prompt
    prompts = encode_prompts(
        processor,
        waveforms=[waveforms[e.audio_uri] for e in batch],
        questions=[e.question for e in batch],
        options=[list(e.options) for e in batch],
    )
    prompts = {k: v.to(device) for k, v in prompts.items()}
    unwrapped.eval()
    sequences = generate_ids(
        unwrapped,
        tokenizer,
        prompts,
        max_new_tokens=cfg.max_completion_length,
        temperature=cfg.temperature,
        num_return_sequences=g,
        seed=seed,
    )
    prompt_len = prompts["input_ids"].shape[1]
    completion_ids = sequences[:, prompt_len:]
    completion_mask = _completion_mask(completion_ids, stop_token_ids(tokenizer))
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    _synchronize(device)
    generated = time.perf_counter()

    # Rewards and group-normalised advantages
    columns = {
        "label": [e.label for e in batch for _ in range(g)],
        "options": [list(e.options) for e in batch for _ in range(g)],
    }
    scores = {name: torch.tensor(REWARDS[name](texts, **columns), dtype=torch.float32) for name in REWARDS}
    rewards = sum(w * scores[name] for name, w in cfg.reward_weights.items())
    grouped = rewards.view(len(batch), g)
    advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    advantages = advantages.view(-1, 1).to(device)

    # Policy and reference log-probs of the sampled tokens, audio included in both
    inputs = {
        "input_ids": sequences,
        "attention_mask": torch.cat([prompts["attention_mask"].repeat_interleave(g, 0), completion_mask], 1),
        "input_features": prompts["input_features"].repeat_interleave(g, 0),
        "feature_attention_mask": prompts["feature_attention_mask"].repeat_interleave(g, 0),
    }
    # Generation derives positions from the attention mask; scoring must use the same positions.
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    labels = torch.full_like(sequences, IGNORE_INDEX)
    labels[:, prompt_len:] = completion_ids.masked_fill(completion_mask == 0, IGNORE_INDEX)
    unwrapped.train()

    # Clipped surrogate + k3 KL, normalised over the completion tokens of every process. Rows are
    # scored micro_batch_rows at a time; each chunk's loss has the step's denominator, so the
    # accumulated gradient is the whole step's.
    mask = completion_mask.float()
    n_tokens = _reduce_sum(accelerator, mask.sum()).clamp(min=1)
    world = accelerator.num_processes if accelerator is not None else 1
    rows = sequences.shape[0]
    chunk = min(cfg.micro_batch_rows or rows, rows)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, kl_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    for begin in range(0, rows, chunk):
        part = slice(begin, begin + chunk)
        part_inputs = {k: v[part] for k, v in inputs.items()}
        ref_logp = None
        if cfg.beta > 0:
            with torch.no_grad():
                if reference is not None:
                    ref_logp = _token_logps(reference, part_inputs, labels[part], prompt_len)
                else:
                    with unwrapped.disable_adapter():
                        ref_logp = _token_logps(unwrapped, part_inputs, labels[part], prompt_len)
        last = begin + chunk >= rows
        # Gradients are averaged across processes once, on the last chunk.
        sync = contextlib.nullcontext() if last or accelerator is None else accelerator.no_sync(policy)
        with sync:
            logp = _token_logps(policy, part_inputs, labels[part], prompt_len)
            loss, kl = grpo_loss(
                logp, ref_logp, advantages[part], mask[part], cfg.beta, cfg.epsilon, n_tokens, world
            )
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        loss_sum += loss.detach()
        kl_sum += (kl.detach() * mask[part]).sum()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    if accelerator is not None:
        accelerator.clip_grad_norm_(trainable, MAX_GRAD_NORM)
    else:
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
    optimizer.step()
    _synchronize(device)
    finished = time.perf_counter()

    everyone = _gather(accelerator, {
        "reward": grouped.reshape(-1),
        "reward_std": grouped.std(1),
        "accuracy": scores["accuracy"],
        "format": scores["format"],
        "completion_length": completion_mask.sum(1).float().cpu(),
    }, device)  # fmt: skip
    return {
        "prompts": float(len(everyone["reward_std"])),
        "reward": float(everyone["reward"].mean()),
        "reward_std": float(everyone["reward_std"].mean()),
        "accuracy": float(everyone["accuracy"].mean()),
        "format": float(everyone["format"].mean()),
        "kl": float(_reduce_sum(accelerator, kl_sum) / n_tokens),
        "loss": float(_reduce_sum(accelerator, loss_sum) / world),
        "completion_length": float(everyone["completion_length"].mean()),
        "generate_s": generated - started,
        "train_s": finished - generated,
        "step_s": finished - started,
    }


def grpo_loss(
    logp: Any,
    ref_logp: Any,
    advantages: Any,
    mask: Any,
    beta: float,
    epsilon: float,
    n_tokens: Any,
    world: int = 1,
) -> tuple[Any, Any]:
    """This process's loss and per-token KL.

    The sum over this process's completion tokens is divided by ``n_tokens``, the count over all
    ``world`` processes, and multiplied by ``world`` because DDP averages gradients: the update
    is the gradient of the whole batch's token mean, however the batch is split.
    """
    import torch

    ratio = torch.exp(logp - logp.detach())
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    return (per_token * mask).sum() / n_tokens * world, kl


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reduce_sum(accelerator: Any, value: Any) -> Any:
    if accelerator is None or accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.to(accelerator.device), reduction="sum").to(value.device)


def _gather(accelerator: Any, values: dict[str, Any], device: Any) -> dict[str, Any]:
    """Per-row values of every process (padded gathers, so shares may differ in size)."""
    if accelerator is None or accelerator.num_processes == 1:
        return values
    return {k: accelerator.gather_for_metrics(v.to(device)).cpu() for k, v in values.items()}


def _completion_mask(completion_ids: Any, stop_ids: list[int]) -> Any:
    """1 up to and including the first stop token of each row, 0 after it (generate pads there)."""
    import torch

    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))
    length = completion_ids.shape[1]
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1), torch.full_like(is_stop[:, 0], length, dtype=torch.long))
    positions = torch.arange(length, device=completion_ids.device)[None, :]
    return (positions <= first[:, None]).long()


def _token_logps(model: Any, inputs: dict[str, Any], labels: Any, prompt_len: int) -> Any:
    """Log-probabilities of the completion tokens under ``model`` (logits / temperature, the
    temperature given to ``add_fused_lm_head``); zero where ``labels`` is ``IGNORE_INDEX``."""
    out = model(**inputs, labels=labels, fused_lm_head=True, use_cache=False)
    return out.log_probs[:, prompt_len - 1 :]


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(output_dir: str, step: int, history: list[dict], policy: Any, optimizer: Any) -> None:
    """Write ``checkpoint-{step}`` atomically and keep only the newest few."""
    import torch

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=root))
    torch.save(_trainable_state(policy), tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "history": history}))
    final = root / f"checkpoint-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    olds = sorted(
        (p for p in root.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1])
    )
    for old in olds[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, policy: Any, optimizer: Any) -> tuple[int, list[dict]]:
    import torch

    state = torch.load(path / "trainable.pt", map_location="cpu")
    expected = set(_trainable_state(policy))
    if set(state) != expected:
        raise ValueError(f"checkpoint {path} does not match the model's trainable parameters")
    policy.load_state_dict(state, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    meta = json.loads((path / "state.json").read_text())
    return int(meta["step"]), list(meta["history"])
