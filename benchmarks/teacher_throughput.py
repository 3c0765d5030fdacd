"""Teacher sampling throughput: shared-prefill K sampling vs stock ``generate(num_return_sequences=K)``.

A Qwen2.5-VL-7B-shaped model with random bf16 weights on one GPU; a batch of clips of 16 frames at
224x224; K=5 samples of 256 new tokens each, EOS ignored. Reports generated tokens/s for both paths
in the same run and their ratio to the memory-bandwidth bound: one decode step must read every
language-model weight once (input embeddings excluded: a step reads N rows of them), so a step
takes at least ``weight_bytes / copy_bandwidth``, where the bandwidth is measured here with a
device-to-device copy (bytes read + written per second). At N = clips*K rows per step, the bound
is ``N / step_bound`` tokens/s. Goal (issue 5): the shared-prefill path at >= 35% of it; stock
measured 14% (docs/ARCHITECTURE.md, "Measured baselines").

    python benchmarks/teacher_throughput.py                 # GPU: 7B shape, compiled decode
    python benchmarks/teacher_throughput.py --smoke         # CPU: the tiny model, seconds

Prints one JSON object. Rates count the tokens each path returned (up to and including a stop),
never ``rows * new_tokens``. ``vision_clips_encoded`` counts the videos each path's vision encoder
saw, ``prompt_rows_prefilled`` the prompts its language model prefilled (stock: clips*K), and
``decode_rows_forwarded`` the one-token rows it decoded: a row that returns L tokens was fed L - 1
of them back, so ``prompt rows * K + decode rows`` (stock: ``prompt rows + decode rows``) is the
token count measured on the model itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

log = logging.getLogger("teacher_throughput")

# Qwen2.5-VL-7B-Instruct's shapes (config.json of the public checkpoint).
TEXT_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
VISION_7B = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)


def build(smoke: bool, device: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image_processor). Smoke: the tiny model; else 7B shapes, random weights."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from sightsound_core.tiny import resolve_model

    tiny = resolve_model("tiny://qwen2.5-vl")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(tiny, min_pixels=56 * 56, max_pixels=224 * 224)
    if smoke:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32, attn_implementation="sdpa")
        return model.to(device).eval(), tokenizer, image_processor
    # The tiny tokenizer's ids (all < 1100) index the 7B vocabulary; only the special ids must agree.
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    config = Qwen2_5_VLConfig(
        text_config={**TEXT_7B, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config=VISION_7B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return model.eval(), tokenizer, image_processor


def copy_bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Bytes read + written per second by a device-to-device copy of ``nbytes``."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    began = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync()
    return 2 * nbytes * repeats / (time.perf_counter() - began)


def decode_weight_bytes(model: Any) -> int:
    """Bytes of the weights one decode step reads: language model and LM head, not input embeddings."""
    lm = model.model.language_model
    skip = {id(p) for p in lm.embed_tokens.parameters()}
    params = [p for p in lm.parameters() if id(p) not in skip] + list(model.lm_head.parameters())
    return sum(p.numel() * p.element_size() for p in params)


class EncoderCounter:
    """Counts the videos the vision encoder sees (rows of ``grid_thw``), the prompt rows the
    language model prefills (forwards of more than one token) and the rows it decodes (forwards
    of one token)."""

    def __init__(self, model: Any):
        self.clips = 0
        self.prefill_rows = 0
        self.decode_rows = 0
        import torch

        # Outside the compiled graph: dynamo treats the counters as constants of the module, so a
        # counting hook traced into the decode step recompiles it every step until the recompile
        # limit (8) sends decode back to eager (seen on the H200, 2026-11-29: 36 ms a step).
        model.model.visual.register_forward_hook(torch.compiler.disable(self._vision), with_kwargs=True)
        model.model.language_model.register_forward_hook(torch.compiler.disable(self._lm), with_kwargs=True)

    def reset(self) -> None:
        self.clips = self.prefill_rows = self.decode_rows = 0

    def _vision(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self.clips += int(grid.shape[0])

    def _lm(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            self.prefill_rows += int(embeds.shape[0])
        elif embeds is not None:
            self.decode_rows += int(embeds.shape[0])


def returned_tokens(ids: Any, stop_token_ids: list[int]) -> int:
    """Tokens in generated rows ``ids`` (B, T), each row up to and including its first stop token
    (what follows a stop is padding).

    >>> import torch
    >>> returned_tokens(torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8]]), [2])
    7
    """
    import torch

    stops = torch.isin(ids, torch.tensor(stop_token_ids, device=ids.device))
    first = torch.where(stops.any(1), stops.int().argmax(1) + 1, ids.shape[1])
    return int(first.sum())


def make_inputs(tokenizer: Any, image_processor: Any, clips: int, frames: int, size: int) -> dict[str, Any]:
    from sightsound_core.backends.hf_teacher import build_inputs, teacher_messages

    rng = np.random.default_rng(0)
    items = []
    for i in range(clips):
        video = rng.integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)
        times = (np.arange(frames) + 0.5) / 2.0
        question = f"Which object makes the sound number {i}?"
        items.append((teacher_messages(question, ["the drum", "the bell", "the flute", "the violin"]), video, times))
    return build_inputs(tokenizer, image_processor, items)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, small sizes")
    parser.add_argument("--clips", type=int, default=None, help="clips per batch (default 8; smoke 2)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--frames", type=int, default=None, help="default 16; smoke 4")
    parser.add_argument("--size", type=int, default=None, help="frame side, default 224; smoke 56")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 256; smoke 16")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--no-compile", action="store_true", help="eager decode step only")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock generate baseline")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of the shared-prefill path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    import torch

    from sightsound_core.backends.hf_teacher import DecodeStep, sample_shared_prefill, stock_generate, stop_ids

    os.environ.setdefault("SIGHTSOUND_CACHE", str(Path(__file__).resolve().parent.parent / "data" / ".cache"))
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    clips = args.clips or (2 if args.smoke else 8)
    frames = args.frames or (4 if args.smoke else 16)
    size = args.size or (56 if args.smoke else 224)
    new_tokens = args.new_tokens or (16 if args.smoke else 256)
    compile_step = device == "cuda" and not args.no_compile

    began = time.perf_counter()
    model, tokenizer, image_processor = build(args.smoke, device)
    log.info("model built in %.1f s", time.perf_counter() - began)
    counter = EncoderCounter(model)
    inputs = make_inputs(tokenizer, image_processor, clips, frames, size)
    rows = clips * args.k
    common = dict(
        k=args.k,
        max_new_tokens=new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stop_token_ids=stop_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
        ignore_eos=True,
    )

    bandwidth = copy_bandwidth(device, nbytes=(1 << 30) if device == "cuda" else (1 << 26))
    weight_bytes = decode_weight_bytes(model)
    step_bound_s = weight_bytes / bandwidth
    bound_tok_s = rows / step_bound_s
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "model": "tiny://qwen2.5-vl" if args.smoke else "Qwen2.5-VL-7B-shaped, random bf16",
        "clips": clips,
        "k": args.k,
        "rows_per_step": rows,
        "frames": frames,
        "frame_size": size,
        "prompt_tokens_per_clip": int(inputs["attention_mask"].sum(-1).max()),
        "video_tokens_per_clip": int(inputs["video_grid_thw"][0].prod()) // image_processor.merge_size**2,
        "new_tokens": new_tokens,
        "copy_bandwidth_GBps": round(bandwidth / 1e9, 1),
        "decode_weight_GB": round(weight_bytes / 1e9, 3),
        "bound_step_ms": round(step_bound_s * 1e3, 3),
        "bound_tok_s": round(bound_tok_s, 1),
    }

    # Shared prefill: first run compiles (timed separately), then the timed runs.
    for compiled in ([True, False] if compile_step else [False]):
        name = "shared_prefill_compiled" if compiled else "shared_prefill_eager"
        try:
            step = DecodeStep(model, compile=compiled)
            t0 = time.perf_counter()
            sample_shared_prefill(model, inputs, step=step, **common)
            warmup_s = time.perf_counter() - t0
            counter.reset()
            runs = [sample_shared_prefill(model, inputs, step=step, **common) for _ in range(args.repeats)]
        except Exception as exc:  # a failed compile must not cost the eager and stock numbers
            log.exception("%s failed", name)
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        best = min(runs, key=lambda r: r.prefill_s + r.decode_s)
        total = best.prefill_s + best.decode_s
        generated = int(best.lengths.sum())
        tok_s = generated / total
        report[name] = {
            "tok_s": round(tok_s, 1),
            "ratio_to_bound": round(tok_s / bound_tok_s, 4),
            "generated_tokens": generated,
            "seconds": round(total, 4),
            "decode_only_tok_s": round(generated / best.decode_s, 1),
            "decode_ms_per_step": round(best.decode_s / max(int(best.lengths.max()), 1) * 1e3, 3),
            "prefill_s": round(best.prefill_s, 4),
            "warmup_s": round(warmup_s, 2),
            "vision_clips_encoded": counter.clips // args.repeats,
            "prompt_rows_prefilled": counter.prefill_rows // args.repeats,
            "decode_rows_forwarded": counter.decode_rows // args.repeats,
        }
        log.info("%s: %s", name, report[name])
        if compiled:
            break  # the compiled path worked: the eager one is only its fallback

    if not args.no_stock:
        stock_generate(model, inputs, **{**common, "max_new_tokens": 2})  # kernels and allocator warm
        counter.reset()
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        out = stock_generate(model, inputs, **common)
        sync()
        wall = time.perf_counter() - t0
        generated = returned_tokens(out, common["stop_token_ids"])
        tok_s = generated / wall
        report["stock_generate"] = {
            "tok_s": round(tok_s, 1),
            "ratio_to_bound": round(tok_s / bound_tok_s, 4),
            "generated_tokens": generated,
            "seconds": round(wall, 4),
            "vision_clips_encoded": counter.clips,
            "prompt_rows_prefilled": counter.prefill_rows,
            "decode_rows_forwarded": counter.decode_rows,
        }
    ours = next((report[n] for n in ("shared_prefill_compiled", "shared_prefill_eager") if "tok_s" in report.get(n, {})), None)
    if ours and "stock_generate" in report:
        report["speedup_vs_stock"] = round(ours["tok_s"] / report["stock_generate"]["tok_s"], 2)
    report["goal_ratio"] = 0.35
    report["goal_met"] = bool(ours and ours["ratio_to_bound"] >= 0.35)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
