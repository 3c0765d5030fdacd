"""Supervised fine-tuning of the audio student on verified reasoning traces (TRL SFTTrainer + LoRA).

TRL's own data path drops ``input_features``, so dataset preparation is skipped and the audio
collator builds whole batches; ``remove_unused_columns=False`` keeps the columns it reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sightsound_core.config import SFTConfig
from sightsound_core.schemas import SFTExample
from sightsound_core.training.collator import AudioSFTCollator
from sightsound_core.training.common import apply_lora, last_checkpoint, save_merged
from sightsound_core.training.inputs import load_student, resolve_device

log = logging.getLogger(__name__)


def _checkpointing_field() -> str:
    """transformers 5.23 renamed ``gradient_checkpointing`` (5.17, the GPU image's) to
    ``activation_checkpointing`` and keeps the old name as a deprecated alias; pass whichever the
    installed ``TrainingArguments`` defines, newest first."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def trl_sft_config(cfg: SFTConfig, output_dir: str, device: str) -> Any:
    """Our ``SFTConfig`` as ``trl.SFTConfig``: the one place the two meet."""
    import trl

    return trl.SFTConfig(
        output_dir=output_dir,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # transformers 5 reads a warmup_steps below 1 as a fraction of the run.
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="linear",
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        **{_checkpointing_field(): cfg.gradient_checkpointing},
        bf16=cfg.bf16,
        use_cpu=device == "cpu",
        logging_steps=cfg.logging_steps,
        # The NaN/inf filter reads the loss every step, which waits for the GPU every step.
        logging_nan_inf_filter=False,
        optim=cfg.optim,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        dataloader_num_workers=cfg.dataloader_workers,
        dataloader_persistent_workers=cfg.dataloader_workers > 0,
        # LoRA leaves the audio encoder frozen; DDP need not search for unused parameters.
        ddp_find_unused_parameters=False,
    )


def _logging_callback() -> Any:
    """Trainer logs through ``logging`` instead of the PrinterCallback's ``print``."""
    from transformers import TrainerCallback

    class LogToLogging(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs:
                shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
                log.info("sft step %d/%d %s", state.global_step, state.max_steps, shown)

    return LogToLogging()


def _checkpoint_callback(on_checkpoint: Callable[[str], None]) -> Any:
    from transformers import TrainerCallback

    class CheckpointSaved(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Every rank is told; only the main one wrote the checkpoint.
            if state.is_world_process_zero:
                on_checkpoint(f"{args.output_dir}/checkpoint-{state.global_step}")

    return CheckpointSaved()


def build_sft_trainer(
    model_path: str,
    examples: list[SFTExample],
    cfg: SFTConfig,
    output_dir: str,
    audio_loader: Callable[[str], np.ndarray],
    device: str = "auto",
    on_checkpoint: Callable[[str], None] | None = None,
) -> tuple[Any, Any]:
    """The TRL ``SFTTrainer`` that ``train_sft`` runs, and the student's processor.

    Built apart from ``train_sft`` so a benchmark times exactly the product's training path.
    """
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    if not examples:
        raise ValueError("train_sft needs at least one example")
    device = resolve_device(device)

    # Model: a frozen base under LoRA is held in bf16 when training in bf16 (adapters stay fp32);
    # a full fine-tune keeps fp32 master weights under autocast.
    dtype = torch.bfloat16 if cfg.bf16 and cfg.lora is not None else torch.float32
    # A full fine-tune that resumes starts from its checkpoint's weights, loaded here because the
    # Trainer does not: transformers 5.23 resumes with ``load_state_dict(strict=False)`` on the
    # file's keys, which ``save_pretrained`` wrote in Qwen2-Audio's original layout
    # (``audio_tower.*``, ``language_model.model.*``). No key matched, a warning was all, and the
    # run went on from the base weights with the checkpoint's optimizer, schedule and step
    # (huggingface/transformers#43701). ``from_pretrained`` renames the keys back. LoRA
    # checkpoints hold the adapters under PEFT's names, which the Trainer does load.
    resume = last_checkpoint(output_dir)
    weights = str(resume) if resume is not None and cfg.lora is None else None
    model, processor = load_student(model_path, device, dtype=dtype, weights=weights)
    model.config.use_cache = False
    # The adapters' initial weights: the Trainer seeds only after the model is built, so without
    # this two runs of one recipe start from different adapters.
    torch.manual_seed(cfg.seed)
    model = apply_lora(model, cfg.lora)

    # Data
    dataset = Dataset.from_list([e.to_row() for e in examples])
    collator = AudioSFTCollator(processor, audio_loader, cfg.max_length)

    trainer = SFTTrainer(
        model=model,
        args=trl_sft_config(cfg, output_dir, device),
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor.tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_logging_callback())
    if on_checkpoint is not None:
        trainer.add_callback(_checkpoint_callback(on_checkpoint))
    return trainer, processor


def train_sft(
    model_path: str,
    examples: list[SFTExample],
    cfg: SFTConfig,
    output_dir: str,
    audio_loader: Callable[[str], np.ndarray],
    device: str = "auto",
    on_checkpoint: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train LoRA adapters (or all weights) on ``examples``; write ``{output_dir}/merged``.

    Resumes from the last ``checkpoint-N`` in ``output_dir`` (weights, optimizer, scheduler, RNG).
    ``on_checkpoint`` is called with each checkpoint's folder once it is written (the pipeline
    uploads it to a remote store, so another machine can resume). Under ``accelerate launch``
    every process trains its share of each batch (DDP) and only the main process exports.
    Returns ``{"merged": path, "steps", "loss_history": [{"step", "loss"}...], "wall_s",
    "resumed_from", "num_processes"}``.
    """
    started = time.perf_counter()
    trainer, processor = build_sft_trainer(
        model_path, examples, cfg, output_dir, audio_loader, device, on_checkpoint
    )
    resume = last_checkpoint(output_dir)
    if resume is not None:
        log.info("resuming SFT from %s", resume)
        if cfg.lora is None:
            log.info("weights already loaded from %s; the Trainer's warning of missing and unexpected "
                     "keys is about its own load, which matches none of them", resume)  # fmt: skip
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    # Export
    merged = f"{output_dir}/merged"
    if trainer.is_deepspeed_enabled:
        _export_sharded(trainer, processor, model_path, output_dir, merged, cfg)
    elif trainer.is_world_process_zero():
        save_merged(trainer.model, processor, merged)
    trainer.accelerator.wait_for_everyone()
    history = [
        {"step": int(e["step"]), "loss": float(e["loss"])}
        for e in trainer.state.log_history
        if "loss" in e
    ]
    wall = time.perf_counter() - started
    log.info("SFT done: %d steps in %.1f s -> %s", trainer.state.global_step, wall, merged)
    return {
        "merged": merged,
        "steps": int(trainer.state.global_step),
        "loss_history": history,
        "wall_s": wall,
        "resumed_from": str(resume) if resume else None,
        "num_processes": int(trainer.args.world_size),
    }


def _export_sharded(
    trainer: Any, processor: Any, model_path: str, output_dir: str, merged: str, cfg: SFTConfig
) -> None:
    """Export under DeepSpeed ZeRO-3, where no process holds whole weights: every process joins
    ``save_model`` (which gathers 16-bit weights), then the main process merges on the CPU."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    final = f"{output_dir}/final"
    trainer.save_model(final)
    if not trainer.is_world_process_zero():
        return
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    if cfg.lora is None:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(final, dtype=dtype)
    else:
        from peft import PeftModel

        base, _ = load_student(model_path, "cpu", dtype=dtype)
        model = PeftModel.from_pretrained(base, final)
    save_merged(model, processor, merged)
