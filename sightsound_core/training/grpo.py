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

Checkpoints hold the trainable weights, the optimizer and the step. The batch and the sampling
seed of a step are functions of ``(cfg.seed, step)``, so a resumed run repeats exactly what the
uninterrupted run would have done.
"""

from __future__ import annotations

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
from sightsound_core.training.inputs import encode_prompts, load_student, resolve_device, stop_token_ids
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
    checkpoint's folder once written. Returns ``{"merged", "steps",
    "history": [per-step metrics], "wall_s", "resumed_from"}``; each step's metrics are
    ``step, reward, reward_std, accuracy, format, kl, loss, completion_length, step_s``.
    """
    import torch

    if not examples:
        raise ValueError("train_grpo needs at least one example")
    unknown = set(cfg.reward_weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"unknown rewards {sorted(unknown)}; known: {sorted(REWARDS)}")
    started = time.perf_counter()
    device = resolve_device(device)

    # Model: the policy, its frozen reference, the optimizer
    model, processor = load_student(model_path, device)
    reference = None
    if cfg.lora is None and cfg.beta > 0:
        reference, _ = load_student(model_path, device)
        reference.requires_grad_(False)
    policy = apply_lora(model, cfg.lora)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)

    # Resume
    start_step, history = 0, []
    resume = last_checkpoint(output_dir)
    if resume is not None:
        start_step, history = _load_checkpoint(resume, policy, optimizer)
        log.info("resuming GRPO from %s (step %d)", resume, start_step)

    # Train
    waveforms: dict[str, np.ndarray] = {}
    for step in range(start_step, cfg.max_steps):
        batch = [examples[i] for i in step_indices(len(examples), step, cfg.prompts_per_step, cfg.seed)]
        for e in batch:
            if e.audio_uri not in waveforms:
                waveforms[e.audio_uri] = audio_loader(e.audio_uri)
        metrics = grpo_step(
            policy, reference, processor, optimizer, batch, waveforms, cfg, seed=cfg.seed * 1_000_003 + step
        )
        metrics["step"] = step + 1
        history.append(metrics)
        log.info(
            "grpo step %d/%d reward=%.3f acc=%.3f fmt=%.3f kl=%.4f loss=%.4f (%.2f s)",
            step + 1, cfg.max_steps, metrics["reward"], metrics["accuracy"], metrics["format"],
            metrics["kl"], metrics["loss"], metrics["step_s"],
        )  # fmt: skip
        if (step + 1) % cfg.save_steps == 0 or step + 1 == cfg.max_steps:
            _save_checkpoint(output_dir, step + 1, history, policy, optimizer)
            if on_checkpoint is not None:
                on_checkpoint(f"{output_dir}/checkpoint-{step + 1}")

    # Export
    merged = save_merged(policy, processor, f"{output_dir}/merged")
    wall = time.perf_counter() - started
    log.info("GRPO done: %d steps in %.1f s -> %s", len(history), wall, merged)
    return {
        "merged": merged,
        "steps": len(history),
        "history": history,
        "wall_s": wall,
        "resumed_from": str(resume) if resume else None,
    }


def grpo_step(
    policy: Any,
    reference: Any,
    processor: Any,
    optimizer: Any,
    batch: list[GRPOExample],
    waveforms: dict[str, np.ndarray],
    cfg: GRPOConfig,
    seed: int,
) -> dict[str, float]:
    """One generation round and one optimizer step on it; returns the step's metrics."""
    import torch

    from sightsound_core.backends.hf_student import generate_ids

    started = time.perf_counter()
    g = cfg.num_generations
    tokenizer = processor.tokenizer
    device = next(policy.parameters()).device

    # Sample G completions per prompt
    prompts = encode_prompts(
        processor,
        waveforms=[waveforms[e.audio_uri] for e in batch],
        questions=[e.question for e in batch],
        options=[list(e.options) for e in batch],
    )
    prompts = {k: v.to(device) for k, v in prompts.items()}
    policy.eval()
    sequences = generate_ids(
        policy,
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

    # Rewards and group-normalised advantages
    columns = {
        "label": [e.label for e in batch for _ in range(g)],
        "options": [list(e.options) for e in batch for _ in range(g)],
    }
    scores = {name: REWARDS[name](texts, **columns) for name in REWARDS}
    rewards = sum(w * torch.tensor(scores[name]) for name, w in cfg.reward_weights.items())
    grouped = torch.as_tensor(rewards, dtype=torch.float32).view(len(batch), g)
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
    policy.train()
    logp = _token_logps(policy, inputs, completion_ids, prompt_len, cfg.temperature)
    ref_logp = None
    if cfg.beta > 0:
        with torch.no_grad():
            if reference is not None:
                ref_logp = _token_logps(reference, inputs, completion_ids, prompt_len, cfg.temperature)
            else:
                with policy.disable_adapter():
                    ref_logp = _token_logps(policy, inputs, completion_ids, prompt_len, cfg.temperature)

    # Clipped surrogate + k3 KL, normalised over all completion tokens
    mask = completion_mask.to(logp.dtype)
    ratio = torch.exp(logp - logp.detach())
    clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + cfg.epsilon)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + cfg.beta * kl
    n_tokens = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / n_tokens
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], MAX_GRAD_NORM)
    optimizer.step()

    return {
        "reward": float(grouped.mean()),
        "reward_std": float(grouped.std(1).mean()),
        "accuracy": float(np.mean(scores["accuracy"])),
        "format": float(np.mean(scores["format"])),
        "kl": float((kl.detach() * mask).sum() / n_tokens),
        "loss": float(loss.detach()),
        "completion_length": float(completion_mask.sum(1).float().mean()),
        "step_s": time.perf_counter() - started,
    }


def _completion_mask(completion_ids: Any, stop_ids: list[int]) -> Any:
    """1 up to and including the first stop token of each row, 0 after it (generate pads there)."""
    import torch

    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))
    length = completion_ids.shape[1]
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1), torch.full_like(is_stop[:, 0], length, dtype=torch.long))
    positions = torch.arange(length, device=completion_ids.device)[None, :]
    return (positions <= first[:, None]).long()


def _token_logps(model: Any, inputs: dict[str, Any], completion_ids: Any, prompt_len: int, temperature: float) -> Any:
    """Log-probabilities of the completion tokens under ``model`` (logits / temperature)."""
    import torch

    logits = model(**inputs, use_cache=False).logits
    logits = logits[:, prompt_len - 1 : -1, :].float() / temperature
    return torch.gather(torch.log_softmax(logits, -1), 2, completion_ids[..., None]).squeeze(-1)


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
