"""Student training throughput: the product's SFT path vs a plain transformers training step.

Goal (issue): Qwen2-Audio-7B-shaped LoRA SFT (r=8 on the language model only) at >= 45% MFU on
one H100; a plain training step measured 25.7% at batch 4 (docs/ARCHITECTURE.md, "Measured baselines"). Both paths run
in the same process on the same random bf16 weights, batch for batch:

- ``ours``: exactly what ``train_sft`` runs, the TRL ``SFTTrainer`` from ``build_sft_trainer``
  (audio collator in 2 dataloader workers, fused AdamW, logging and checkpoints out of the way).
- ``baseline``: a plain loop: the stock processor on the main thread each step (chat template,
  features, padding; labels -100 on prompt and padding), ``model(**batch, labels=...)`` with
  transformers' own full-logits loss, ``loss.backward()``, torch's default (unfused) AdamW, no
  prefetch, no gradient checkpointing. Same LoRA (``apply_lora``), same bf16 autocast as the
  Trainer's ``bf16=True``, so the ratio measures the loop, not the numerics.

Sequences are 750 audio + 250 text tokens, as in that baseline. transformers' Qwen2-Audio
gives a clip 25 audio tokens a second up to the 30 s window (10 s: 250, 30 s: 750) and its encoder
always runs the full padded 30 s window, so ``--audio-seconds`` defaults to 30: same encoder cost as
any clip, 750 audio tokens. Completions are sized so each sequence has ``--text-tokens`` text
tokens (prompt text + completion + end of turn); the accounting is reported from the collated
batch (``audio_tokens_per_seq`` counts ``<|AUDIO|>``) next to the tokenizer's own count of the
text (``text_tokens_per_seq``).

MFU = 4·N·T / (step_s · 989e12): N the language model's parameters (input embeddings, decoder
layers, final norm, LM head: everything but the audio encoder and projector; 7.75e9 here, which
puts the baseline's 8,132 tok/s at 25.5%), T the batch's tokens (audio + text, padding
excluded). 4·N·T is the frozen-base rule: forward 2·N·T, backward through activations 2·N·T, no
weight gradients. 989e12 is H100 SXM dense bf16. A step is timed end to end, from one step's end
to the next (CUDA synchronized), so data loading, the optimizer and logging all count; ``compute_s``
is the part after the batch is in hand. tokens/s uses the mean step.

GRPO: one ``grpo_step`` (after one warmup step) on the same model, G=8 completions of 256 tokens
per prompt, LoRA r=8, beta 0.04 against the adapters-disabled base; its time split into
generation and training as ``grpo_step`` reports it.

    python benchmarks/train_throughput.py                    # GPU: 7B shapes, batch 4 and 8
    python benchmarks/train_throughput.py --batch-sizes 4    # one batch size
    python benchmarks/train_throughput.py --smoke            # CPU: the tiny model, seconds

Prints one JSON object. A path that runs out of GPU memory is reported as ``{"oom": true}`` and
the run goes on. The 7B checkpoint (about 17 GB) is written to a temporary folder (``--workdir``)
and loaded by ``build_sft_trainer`` like a real one; it is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from sightsound_core.schemas import GRPOExample, SFTExample  # noqa: E402

log = logging.getLogger("train_throughput")

# Qwen/Qwen2-Audio-7B's shapes (config.json of the public checkpoint). The tiny checkpoint's
# tokenizer and special token ids are kept: its ids (all < 1000) index the 7B vocabulary.
AUDIO_7B = dict(
    d_model=1280,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    num_mel_bins=128,
    max_source_positions=1500,
)
# The multi-modal projector is Linear(audio d_model -> text hidden_size): 1280 -> 4096.
TEXT_7B = dict(
    model_type="qwen2",
    vocab_size=156032,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=8192,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    initializer_range=0.02,
)
PEAK_FLOPS = 989e12  # H100 SXM, dense bf16
GOAL_MFU = 0.45
SAMPLE_RATE = 16000
QUESTION = "Which object makes the sound?"
OPTIONS = ["the drum", "the bell", "the flute", "the violin"]
FILLER = "the tone is steady and the pitch is high so the sound comes from the drum".split()


class NoiseAudio:
    """``audio_loader`` for ``noise://{i}`` URIs: ``seconds`` of seeded white noise, float32 16 kHz.

    A class, not a closure, so the Trainer's dataloader workers can receive it.
    """

    def __init__(self, seconds: float) -> None:
        self.samples = int(seconds * SAMPLE_RATE)

    def __call__(self, uri: str) -> np.ndarray:
        rng = np.random.default_rng(int(uri.rsplit("/", 1)[1]))
        return (0.1 * rng.standard_normal(self.samples)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Model


def config_7b(tiny_path: str) -> Any:
    """Qwen2-Audio-7B's config with the tiny checkpoint's special token ids."""
    from transformers import AutoConfig, Qwen2AudioConfig

    tiny = AutoConfig.from_pretrained(tiny_path)
    text = tiny.text_config
    return Qwen2AudioConfig(
        audio_config=AUDIO_7B,
        text_config={
            **TEXT_7B,
            "bos_token_id": text.bos_token_id,
            "eos_token_id": text.eos_token_id,
            "pad_token_id": text.pad_token_id,
        },
        audio_token_index=tiny.audio_token_index,
    )


def lm_param_count(model: Any) -> int:
    """Parameters of the language model: all but the audio encoder and the projector."""
    audio = {id(p) for m in (model.model.audio_tower, model.model.multi_modal_projector) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in audio)


def build_checkpoint(smoke: bool, device: str, dtype: Any, workdir: str) -> tuple[str, int]:
    """(checkpoint folder, language-model parameters). Smoke: the tiny checkpoint as it is; else a
    7B-shaped one with random weights built on ``device`` and saved with the tiny processor."""
    import torch
    from transformers import AutoConfig, AutoProcessor, GenerationConfig, Qwen2AudioForConditionalGeneration

    from sightsound_core.tiny import TINY_AUDIO, resolve_model

    tiny = resolve_model(TINY_AUDIO)
    if smoke:
        with torch.device("meta"):
            shape = Qwen2AudioForConditionalGeneration._from_config(AutoConfig.from_pretrained(tiny))
        return tiny, lm_param_count(shape)

    processor = AutoProcessor.from_pretrained(tiny)
    config = config_7b(tiny)
    if config.text_config.vocab_size < len(processor.tokenizer):
        raise ValueError(f"vocab_size {config.text_config.vocab_size} < tokenizer {len(processor.tokenizer)}")
    began = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(tiny)
    n = lm_param_count(model)
    path = os.path.join(workdir, "qwen2-audio-7b-shaped")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    del model
    free_memory(device)
    log.info("7B-shaped checkpoint (%.2fB LM parameters) written in %.1f s", n / 1e9, time.perf_counter() - began)
    return path, n


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        log.info("GPU memory still allocated: %.2f GiB", torch.cuda.memory_allocated() / 2**30)


# ---------------------------------------------------------------------------------------------
# Data


def token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_completion(tokenizer: Any, n_tokens: int) -> str:
    """A ``<think>..</think><answer>..</answer>`` completion of exactly ``n_tokens`` tokens."""
    head, tail = "<think>", f"</think><answer>{OPTIONS[0]}</answer>"
    if token_count(tokenizer, head + tail) > n_tokens:
        raise ValueError(f"no completion fits in {n_tokens} tokens")
    body = ""
    for word in itertools.cycle(FILLER):
        if token_count(tokenizer, f"{head}{body} {word}{tail}") > n_tokens:
            break
        body += f" {word}"
    one = next(w for w in FILLER if token_count(tokenizer, f" {w}") == 1)
    while token_count(tokenizer, head + body + tail) < n_tokens:
        body += f" {one}"
    completion = head + body + tail
    if token_count(tokenizer, completion) != n_tokens:
        raise ValueError(f"could not fit a completion of {n_tokens} tokens")
    return completion


def sft_examples(processor: Any, n: int, text_tokens: int) -> tuple[list[SFTExample], int]:
    """``n`` identical-length examples on ``noise://i`` audio, each with ``text_tokens`` text tokens
    (prompt text, completion, end of turn); and that count, from the tokenizer alone."""
    from sightsound_core.training.inputs import prompt_texts

    tokenizer = processor.tokenizer
    # The prompt's one <|AUDIO|> placeholder becomes the audio tokens; the rest is text.
    prompt_text = token_count(tokenizer, prompt_texts(processor, [QUESTION], [OPTIONS])[0]) - 1
    completion = fit_completion(tokenizer, text_tokens - prompt_text - 1)
    measured = prompt_text + token_count(tokenizer, completion) + 1
    examples = [
        SFTExample(
            example_id=f"cot:noise{i}:0",
            variant="cot",
            clip_id=f"noise{i}",
            audio_uri=f"noise://{i}",
            question=QUESTION,
            options=OPTIONS,
            completion=completion,
            label=OPTIONS[0],
        )
        for i in range(n)
    ]
    return examples, measured


def grpo_examples(n: int) -> list[GRPOExample]:
    return [
        GRPOExample(
            example_id=f"grpo:noise{i}",
            clip_id=f"noise{i}",
            audio_uri=f"noise://{i}",
            question=QUESTION,
            options=OPTIONS,
            label=OPTIONS[0],
            family="acoustic",
        )
        for i in range(n)
    ]


def prompt_masked_labels(batch: dict[str, Any], target_lengths: list[int]) -> Any:
    """Labels for a processor batch: the last ``target_lengths[i]`` real tokens of row ``i``
    (its completion and end of turn), -100 elsewhere (prompt, padding on either side)."""
    import torch

    labels = torch.full_like(batch["input_ids"], -100)
    for i, m in enumerate(target_lengths):
        real = batch["attention_mask"][i].nonzero().squeeze(-1)[-m:]
        labels[i, real] = batch["input_ids"][i, real]
    return labels


# ---------------------------------------------------------------------------------------------
# Timing


def synchronizer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def summarize(
    begins: list[float], ends: list[float], warmup: int, tokens_per_step: int, lm_params: int, peak: float | None
) -> dict[str, Any]:
    """Step statistics over the steps after ``warmup``; a step runs from the previous step's end."""
    step = np.diff(np.asarray(ends[warmup - 1 :]))
    compute = np.asarray(ends[warmup:]) - np.asarray(begins[warmup:])
    tok_s = tokens_per_step / float(step.mean())
    return {
        "tokens_per_step": tokens_per_step,
        "step_s_median": round(float(np.median(step)), 4),
        "step_s_mean": round(float(step.mean()), 4),
        "compute_s_mean": round(float(compute.mean()), 4),
        "tokens_per_s": round(tok_s, 1),
        "mfu": round(4 * lm_params * tok_s / peak, 4) if peak else None,
    }


def max_memory_gb(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def guarded(device: str, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``, or ``{"oom": True}`` when it runs out of GPU memory; memory freed either way."""
    import torch

    result: dict[str, Any] = {"oom": True}
    try:
        result = fn()
    except torch.cuda.OutOfMemoryError:
        log.warning("%s: out of GPU memory", name)
    # Here the traceback and the frames that held the activations are gone.
    free_memory(device)
    log.info("%s: %s", name, result)
    return result


# ---------------------------------------------------------------------------------------------
# The two SFT paths


def run_baseline(
    model: Any,
    processor: Any,
    examples: list[SFTExample],
    audio: NoiseAudio,
    batch_size: int,
    warmup: int,
    steps: int,
    device: str,
    lm_params: int,
    peak: float | None,
) -> dict[str, Any]:
    """The plain loop on an already LoRA-wrapped ``model``; a fresh optimizer per call."""
    import torch

    from sightsound_core.training.inputs import END_OF_TURN, prompt_texts

    sync = synchronizer(device)
    reset_peak_memory(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    model.train()
    begins: list[float] = []
    ends: list[float] = []
    tokens: list[int] = []
    sync()
    for step in range(warmup + steps):
        rows = examples[step * batch_size : (step + 1) * batch_size]
        prompts = prompt_texts(processor, [e.question for e in rows], [list(e.options) for e in rows])
        batch = processor(
            text=[p + e.completion + END_OF_TURN for p, e in zip(prompts, rows, strict=True)],
            audio=[audio(e.audio_uri) for e in rows],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            padding=True,
        )
        labels = prompt_masked_labels(batch, [token_count(tokenizer, e.completion) + 1 for e in rows])
        tokens.append(int(batch["attention_mask"].sum()))
        begins.append(time.perf_counter())
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            loss = model(**batch, labels=labels.to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        ends.append(time.perf_counter())
    if len(set(tokens)) != 1:
        raise RuntimeError(f"baseline batches differ in size: {tokens}")
    del optimizer
    return {**summarize(begins, ends, warmup, tokens[0], lm_params, peak), "max_memory_gb": max_memory_gb(device)}


def step_clock(sync: Callable[[], None]) -> Any:
    """A TrainerCallback that records each step's begin (batch in hand) and end, synchronized."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.begins: list[float] = []
            self.ends: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.begins.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.ends.append(time.perf_counter())

    return StepClock()


def run_ours(
    path: str,
    examples: list[SFTExample],
    audio: NoiseAudio,
    batch_size: int,
    warmup: int,
    steps: int,
    device: str,
    workdir: str,
    lm_params: int,
    peak: float | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``build_sft_trainer``'s trainer for ``warmup + steps`` steps: (step statistics, the token
    accounting of its first collated batch)."""
    from sightsound_core.config import LoraConfig, SFTConfig
    from sightsound_core.training.sft import build_sft_trainer

    total = warmup + steps
    cfg = SFTConfig(
        max_steps=total,
        per_device_batch_size=batch_size,
        max_length=4096,
        bf16=device == "cuda",
        dataloader_workers=2,
        logging_steps=10**6,
        save_steps=10**6,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
        lora=LoraConfig(r=8),
    )
    reset_peak_memory(device)
    trainer, processor = build_sft_trainer(
        path, examples[: batch_size * total], cfg, os.path.join(workdir, f"sft-b{batch_size}"), audio, device
    )
    # Every row has the same length, so every batch holds what the first one does.
    first = trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)])
    audio_id = trainer.model.config.audio_token_id
    accounting = {
        "tokens_per_seq": float(first["attention_mask"].sum(1).float().mean()),
        "audio_tokens_per_seq": float((first["input_ids"] == audio_id).sum(1).float().mean()),
    }
    clock = step_clock(synchronizer(device))
    trainer.add_callback(clock)
    trainer.train()
    if len(clock.ends) != total:
        raise RuntimeError(f"trainer ran {len(clock.ends)} steps, expected {total}")
    tokens_per_step = int(first["attention_mask"].sum())
    stats = summarize(clock.begins, clock.ends, warmup, tokens_per_step, lm_params, peak)
    return {**stats, "max_memory_gb": max_memory_gb(device)}, accounting


# ---------------------------------------------------------------------------------------------
# GRPO


def run_grpo(
    path: str, audio: NoiseAudio, device: str, generations: int, completion_tokens: int, prompts: int
) -> dict[str, Any]:
    """One warmup and one timed ``grpo_step``; the timed one's split into generation and training.

    The policy is set up by ``build_grpo_policy``, as ``train_grpo`` sets it up: base in bf16 under
    LoRA on GPU, TRL's fused LM head, adapters on the language model, AdamW, bf16 autocast.
    """
    from sightsound_core.config import GRPOConfig, LoraConfig
    from sightsound_core.training.grpo import build_grpo_policy, grpo_step, make_accelerator

    cfg = GRPOConfig(
        num_generations=generations,
        max_completion_length=completion_tokens,
        prompts_per_step=prompts,
        beta=0.04,
        lora=LoraConfig(r=8),
        bf16=device == "cuda",
    )
    accelerator = make_accelerator(device, cfg.bf16)
    policy, _, processor, optimizer, *_ = build_grpo_policy(path, cfg, accelerator)
    examples = grpo_examples(2 * prompts)
    waveforms = {e.audio_uri: audio(e.audio_uri) for e in examples}
    sync = synchronizer(device)

    grpo_step(policy, None, processor, optimizer, examples[:prompts], waveforms, cfg, 0, accelerator)
    sync()
    reset_peak_memory(device)
    began = time.perf_counter()
    metrics = grpo_step(policy, None, processor, optimizer, examples[prompts:], waveforms, cfg, 1, accelerator)
    sync()
    wall = time.perf_counter() - began
    del policy, optimizer, accelerator
    generate_s, train_s = metrics.get("generate_s"), metrics.get("train_s")
    if generate_s is None or train_s is None:
        log.warning("grpo_step reported no generate_s/train_s: %s", sorted(metrics))
    rows = prompts * generations
    return {
        "prompts": prompts,
        "num_generations": generations,
        "max_completion_length": completion_tokens,
        "completion_length": round(metrics["completion_length"], 1),
        "generate_s": None if generate_s is None else round(generate_s, 6),
        "train_s": None if train_s is None else round(train_s, 6),
        "step_s": round(metrics["step_s"], 6),
        "wall_s": round(wall, 6),
        "generated_tokens_per_s": (
            None if not generate_s else round(rows * metrics["completion_length"] / generate_s, 1)
        ),
        "max_memory_gb": max_memory_gb(device),
    }


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, small sizes")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 4 8; smoke 2")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run, >= 1 (default 3; smoke 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10; smoke 3)")
    parser.add_argument("--audio-seconds", type=float, default=None, help="default 30 (750 tokens); smoke 2")
    parser.add_argument("--text-tokens", type=int, default=None, help="text tokens a sequence (default 250; smoke 128)")
    parser.add_argument("--grpo-generations", type=int, default=None, help="G (default 8; smoke 2)")
    parser.add_argument("--grpo-tokens", type=int, default=None, help="completion tokens (default 256; smoke 16)")
    parser.add_argument("--grpo-prompts", type=int, default=1, help="prompts per GRPO step")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoint goes (default: TMPDIR)")
    args = parser.parse_args(argv)
    if args.warmup is not None and args.warmup < 1:
        parser.error("--warmup must be at least 1: the first timed step starts where a warmup step ends")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    import torch
    from transformers import AutoProcessor

    from sightsound_core.config import LoraConfig
    from sightsound_core.training.common import apply_lora
    from sightsound_core.training.inputs import load_student

    os.environ.setdefault("SIGHTSOUND_CACHE", str(Path(__file__).resolve().parent.parent / "data" / ".cache"))
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.smoke:
        log.warning("no GPU: running the 7B shapes on CPU")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = PEAK_FLOPS if device == "cuda" else None
    batch_sizes = args.batch_sizes or ([2] if args.smoke else [4, 8])
    warmup = args.warmup or (2 if args.smoke else 3)
    steps = args.steps or (3 if args.smoke else 10)
    audio_seconds = args.audio_seconds or (2.0 if args.smoke else 30.0)
    text_tokens = args.text_tokens or (128 if args.smoke else 250)
    generations = args.grpo_generations or (2 if args.smoke else 8)
    grpo_tokens = args.grpo_tokens or (16 if args.smoke else 256)
    audio = NoiseAudio(audio_seconds)

    workdir = tempfile.mkdtemp(prefix="train_throughput-", dir=args.workdir)
    try:
        path, lm_params = build_checkpoint(args.smoke, device, dtype, workdir)
        examples, text_per_seq = sft_examples(
            AutoProcessor.from_pretrained(path), max(batch_sizes) * (warmup + steps), text_tokens
        )
        report: dict[str, Any] = {
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "model": "tiny://qwen2-audio" if args.smoke else "Qwen2-Audio-7B-shaped, random weights",
            "dtype": str(dtype).removeprefix("torch."),
            "lora_r": 8,
            "lm_params": lm_params,
            "peak_flops": peak,
            "audio_seconds": audio_seconds,
            "text_tokens_per_seq": text_per_seq,
            "warmup_steps": warmup,
            "timed_steps": steps,
        }
        runs: dict[str, dict[str, Any]] = {str(b): {} for b in batch_sizes}

        # Baseline: one model for every batch size, freed before ours loads its own.
        model, processor = load_student(path, device, dtype=dtype)
        model.config.use_cache = False
        model = apply_lora(model, LoraConfig(r=8))
        for b in batch_sizes:
            runs[str(b)]["baseline"] = guarded(
                device, f"baseline b={b}",
                lambda b=b: run_baseline(model, processor, examples, audio, b, warmup, steps, device, lm_params, peak),
            )  # fmt: skip
        del model, processor
        free_memory(device)

        # Ours: build_sft_trainer loads the checkpoint again for each batch size.
        accounting: dict[str, Any] = {}
        for b in batch_sizes:

            def ours(b: int = b) -> dict[str, Any]:
                stats, seen = run_ours(path, examples, audio, b, warmup, steps, device, workdir, lm_params, peak)
                accounting.update(seen)
                return stats

            runs[str(b)]["ours"] = guarded(device, f"ours b={b}", ours)
        report.update(accounting)

        for entry in runs.values():
            base, ours_ = entry["baseline"].get("tokens_per_s"), entry["ours"].get("tokens_per_s")
            entry["ours_over_baseline"] = round(ours_ / base, 4) if base and ours_ else None
        report["batch_sizes"] = runs
        mfus = [e["ours"]["mfu"] for e in runs.values() if e["ours"].get("mfu") is not None]
        report["best_ours_mfu"] = max(mfus) if mfus else None
        report["goal_mfu"] = GOAL_MFU
        report["meets_goal"] = (max(mfus) >= GOAL_MFU) if mfus else None

        report["grpo"] = guarded(
            device, "grpo",
            lambda: run_grpo(path, audio, device, generations, grpo_tokens, args.grpo_prompts),
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
