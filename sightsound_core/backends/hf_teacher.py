"""The Qwen2.5-VL teacher on transformers: each video encoded once for its K samples, clips batched.

Stock ``generate(num_return_sequences=K)`` copies every prompt K times before its first forward.
Transformers 5.23 runs the vision encoder before that copy (``mm_encoder_outputs``), but the
language-model prefill over each ~600-token video prompt still runs K times, and its decode loop
spends more time in Python than in kernels (docs/ARCHITECTURE.md, measured baselines: 14% of the
memory-bandwidth bound on an H100, 4.7% on the H200; earlier releases re-encoded the video K times
too). Here:

1. **Encode.** Frames become Qwen2.5-VL video patches with the checkpoint's own image processor
   (resize, rescale, normalize), frames paired in time as Qwen's video processor pairs them; the
   chat prompt's ``<|video_pad|>`` is expanded to the video's merged-patch count. (Qwen's video
   processor needs torchvision, which cannot live next to CPU torch; see docs/ARCHITECTURE.md.)
2. **Prefill once.** One forward over the B left-padded prompts of a batch: the vision encoder
   sees each clip once. Multimodal RoPE positions come from the model's ``get_rope_index``.
3. **Expand.** The prompt KV cache is copied K times along the batch (``repeat_interleave``) into a
   static cache of B*K rows sized prompt + max_new_tokens; each row's next position is its
   prompt's largest position + 1 (what ``generate`` derives from ``rope_deltas``).
4. **Decode.** Single-token forwards with explicit 3-D positions and a preallocated additive mask,
   sampling by temperature and top-p with an exponential race (no host sync per token). With
   ``compile=True`` the step is compiled with CUDA graphs (``mode="reduce-overhead"``), the
   static cache making every step the same shapes.

``sample_shared_prefill`` is the engine, shared with ``benchmarks/teacher_throughput.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from sightsound_core.backends.base import Generation, TeacherRequest, TeacherResult
from sightsound_core.config import TeacherConfig
from sightsound_core.prompts import (
    QUESTIONS_SYSTEM,
    TEACHER_SYSTEM,
    questions_user_text,
    teacher_user_text,
)

log = logging.getLogger(__name__)

VIDEO_TOKEN = "<|video_pad|>"
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# Frames are never upscaled past what the decoder gave; this floor is Qwen's own (2x2 merged patches).
MIN_PIXELS = 56 * 56
# Static cache lengths are rounded up to this, so prompts of similar length reuse one compiled graph.
CACHE_BUCKET = 64


def teacher_messages(question: str, options: list[str]) -> list[dict[str, Any]]:
    """The teacher's chat: the system prompt, then the silent video and the question."""
    return [
        {"role": "system", "content": TEACHER_SYSTEM},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": teacher_user_text(question, options)}]},
    ]


def questions_messages(n: int) -> list[dict[str, Any]]:
    """The question-synthesis chat: the silent video and a request for ``n`` questions."""
    return [
        {"role": "system", "content": QUESTIONS_SYSTEM},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": questions_user_text(n)}]},
    ]


def video_patches(frames: np.ndarray, image_processor: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Qwen2-VL video patches of ``frames`` (T, H, W, 3) uint8: (t*h*w, C*tp*p*p) and (t, h, w).

    The image processor turns each frame into patches whose ``tp`` temporal slots all hold that
    frame; a video patch holds ``tp`` consecutive frames instead, in the same (C, tp, p, p) layout
    and the same spatial order, so slot 0 of each frame's patches is regrouped in time. The last
    frame is repeated to fill the final group, as Qwen's video processor does.
    """
    tp = image_processor.temporal_patch_size
    p = image_processor.patch_size
    frames = list(frames)
    frames += [frames[-1]] * (-len(frames) % tp)
    out = image_processor(images=frames, return_tensors="np")
    pixels, grid = out["pixel_values"], out["image_grid_thw"]
    _, gh, gw = (int(x) for x in grid[0])
    n_frames, n_patches = len(frames), gh * gw
    channels = pixels.shape[-1] // (tp * p * p)
    own = pixels.reshape(n_frames, n_patches, channels, tp, p, p)[:, :, :, 0]
    video = own.reshape(n_frames // tp, tp, n_patches, channels, p, p).transpose(0, 2, 3, 1, 4, 5)
    return np.ascontiguousarray(video.reshape(-1, channels * tp * p * p)), (n_frames // tp, gh, gw)


def _seconds_per_grid(times: np.ndarray, temporal_patch_size: int) -> float:
    """Seconds one temporal patch spans: ``tp`` frame intervals (1 s a frame without timing)."""
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return temporal_patch_size * (step if step > 0 else 1.0)


def build_inputs(
    tokenizer: Any,
    image_processor: Any,
    items: list[tuple[list[dict[str, Any]], np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """A left-padded batch for ``Qwen2_5_VLForConditionalGeneration`` from (messages, frames, times).

    Returns input_ids, attention_mask, pixel_values_videos, video_grid_thw, second_per_grid_ts.
    """
    import torch

    from sightsound_core.tiny import expand_image_tokens

    merge = image_processor.merge_size
    texts, pixels, grids, seconds = [], [], [], []
    for messages, frames, times in items:
        patches, thw = video_patches(frames, image_processor)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        texts.append(expand_image_tokens(text, [thw], merge, image_token=VIDEO_TOKEN))
        pixels.append(patches)
        grids.append(thw)
        seconds.append(_seconds_per_grid(np.asarray(times), image_processor.temporal_patch_size))
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values_videos": torch.from_numpy(np.concatenate(pixels)),
        "video_grid_thw": torch.tensor(grids, dtype=torch.long),
        "second_per_grid_ts": torch.tensor(seconds, dtype=torch.float32),
    }


def stop_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


@dataclasses.dataclass
class Sampled:
    """What ``sample_shared_prefill`` returns: K rows per prompt, prompt-major.

    Attributes:
        tokens: (B*K, max_new_tokens) generated ids on the CPU (pad after a stop token).
        lengths: (B*K,) tokens generated, the stop token included.
        stopped: (B*K,) whether the row ended on a stop token (else it hit max_new_tokens).
        prompt_tokens: (B,) non-pad prompt tokens per prompt.
        prefill_s, decode_s: wall time of the two phases (synchronized).
    """

    tokens: Any
    lengths: Any
    stopped: Any
    prompt_tokens: Any
    prefill_s: float
    decode_s: float


def _sample_next(logits: Any, temperature: float, top_p: float, generator: Any) -> Any:
    """Next token per row: greedy at temperature 0, else temperature + nucleus sampling.

    The draw is an exponential race (argmax of p / E with E ~ Exp(1)), which samples from p
    exactly without the host sync of ``torch.multinomial``.
    """
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(-1)


class DecodeStep:
    """One decode forward over the static cache: (tokens, positions, mask) -> last logits.

    With ``compile=True`` the forward is compiled once per shape with CUDA graphs; the cache's
    tensors are static addresses, so each step replays the graph.
    """

    def __init__(self, model: Any, compile: bool = False):
        import torch

        self.model = model
        self.compiled = compile
        self._fn = torch.compile(self._forward, mode="reduce-overhead", dynamic=False) if compile else self._forward

    def _forward(self, tokens: Any, positions: Any, mask: Any, cache: Any) -> Any:
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            attention_mask={"full_attention": mask},
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1, :]

    def __call__(self, tokens: Any, positions: Any, mask: Any, cache: Any) -> Any:
        import torch

        if self.compiled:
            # Tell CUDA-graph trees the previous step's outputs are consumed and may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        return self._fn(tokens, positions, mask, cache)


def sample_shared_prefill(
    model: Any,
    inputs: dict[str, Any],
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_token_ids: list[int],
    pad_token_id: int,
    seed: int,
    step: DecodeStep | None = None,
    ignore_eos: bool = False,
) -> Sampled:
    """K samples per prompt of a left-padded batch, the prompts (and videos) encoded once.

    See the module docstring for the four phases. ``ignore_eos`` decodes all ``max_new_tokens``
    (for benchmarks). ``step`` carries a compiled decode step across calls.
    """
    import torch
    from transformers import DynamicCache, StaticCache

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    step = step or DecodeStep(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ids = inputs["input_ids"].to(device)
    prompt_mask = inputs["attention_mask"].to(device)
    batch, prompt_len = ids.shape
    n = batch * k

    # Prefill: the vision encoder and the prompt forward run once per clip.
    began = time.perf_counter()
    video_token = model.config.video_token_id
    positions, _ = model.model.get_rope_index(
        ids,
        mm_token_type_ids=(ids == video_token).to(torch.int32) * 2,
        video_grid_thw=inputs["video_grid_thw"].to(device),
        second_per_grid_ts=inputs["second_per_grid_ts"].to(device),
        attention_mask=prompt_mask,
    )
    prefix = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=prompt_mask,
            position_ids=positions,
            pixel_values_videos=inputs["pixel_values_videos"].to(device, dtype),
            video_grid_thw=inputs["video_grid_thw"].to(device),
            past_key_values=prefix,
            use_cache=True,
            logits_to_keep=1,
        )
    logits = out.logits[:, -1, :].repeat_interleave(k, 0)

    # Expand: K copies of each prompt's cache in a static cache that holds the whole sample.
    cache_len = -(-(prompt_len + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET
    cache = StaticCache(config=model.config, max_cache_len=cache_len)
    for layer_idx, layer in enumerate(prefix.layers):
        cache.update(layer.keys.repeat_interleave(k, 0), layer.values.repeat_interleave(k, 0), layer_idx)
    del prefix, out
    next_pos = (positions.amax(dim=(0, 2)) + 1).repeat_interleave(k, 0)
    mask = torch.full((n, 1, 1, cache_len), torch.finfo(dtype).min, dtype=dtype, device=device)
    mask[:, 0, 0, :prompt_len].masked_fill_(prompt_mask.repeat_interleave(k, 0).bool(), 0.0)
    sync()
    prefill_s = time.perf_counter() - began

    # Decode: sample, feed back, until every row has stopped or the budget is spent.
    began = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(seed)
    stops = torch.tensor(stop_token_ids, device=device)
    tokens = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.zeros((n,), dtype=torch.long, device=device)
    taken = 0
    pos_buf = torch.empty((3, n, 1), dtype=torch.long, device=device)
    with torch.inference_mode():
        for t in range(max_new_tokens):
            nxt = _sample_next(logits, temperature, top_p, generator)
            if not ignore_eos:
                nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
                hit = torch.isin(nxt, stops) & ~finished
                lengths = torch.where(hit, t + 1, lengths)
                finished |= hit
            tokens[:, t] = nxt
            taken = t + 1
            if t == max_new_tokens - 1 or (not ignore_eos and t % 16 == 15 and bool(finished.all())):
                break
            mask[:, 0, 0, prompt_len + t] = 0.0
            pos_buf.copy_((next_pos + t).view(1, n, 1).expand(3, n, 1))
            logits = step(nxt.view(n, 1), pos_buf, mask, cache)
    # A row that never stopped holds every token the loop sampled.
    lengths = torch.where(finished, lengths, taken)
    sync()
    decode_s = time.perf_counter() - began
    return Sampled(
        tokens=tokens.cpu(),
        lengths=lengths.cpu(),
        stopped=finished.cpu(),
        prompt_tokens=prompt_mask.sum(-1).cpu(),
        prefill_s=prefill_s,
        decode_s=decode_s,
    )


def stock_generate(
    model: Any,
    inputs: dict[str, Any],
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_token_ids: list[int],
    pad_token_id: int,
    seed: int,
    ignore_eos: bool = False,
) -> Any:
    """The baseline: ``generate(num_return_sequences=k)``, which prefills each prompt k times.

    Returns the generated ids (B*k, <= max_new_tokens), prompt-major.
    """
    import torch

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = {key: v.to(device) for key, v in inputs.items()}
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(dtype)
    batch["mm_token_type_ids"] = (batch["input_ids"] == model.config.video_token_id).to(torch.int32) * 2
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if ignore_eos else 0,
            num_return_sequences=k,
            eos_token_id=stop_token_ids,
            pad_token_id=pad_token_id,
            **sampling,
        )
    return out[:, batch["input_ids"].shape[1] :]


class HFTeacher:
    """Qwen2.5-VL on transformers (implements ``TeacherBackend`` and ``QuestionProposer``).

    Args:
        model: a local checkpoint folder, a hub id in the local cache, or ``tiny://qwen2.5-vl``.
        device: ``auto``, ``cpu`` or ``cuda``. dtype: ``auto`` is bfloat16 on GPU, float32 on CPU.
        max_pixels: frame area bound handed to the image processor (``FrameConfig.max_pixels``).
        compile: CUDA-graph the decode step (GPU; the first batch of each shape pays the compile).
    """

    name = "hf"

    def __init__(
        self,
        model: str,
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        max_pixels: int = 224 * 224,
        device: str = "auto",
        dtype: str = "auto",
        compile: bool = False,
    ):
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self.device = device
        self.dtype = dtype
        self.compile = compile
        self.net: Any = None
        self.tokenizer: Any = None
        self.image_processor: Any = None
        self.step: DecodeStep | None = None

    @classmethod
    def from_config(cls, cfg: TeacherConfig) -> "HFTeacher":
        return cls(cfg.model, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.frames.max_pixels,
                   cfg.device, cfg.dtype, cfg.compile)

    def load(self) -> None:
        if self.net is not None:
            return
        try:
            import torch
            from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        except ImportError as exc:
            raise ImportError(f"the hf teacher needs torch and transformers: pip install -e . ({exc})") from exc
        from sightsound_core.tiny import resolve_model

        path = resolve_model(self.model)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        dtype_name = self.dtype if self.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(
            path, min_pixels=MIN_PIXELS, max_pixels=self.max_pixels
        )
        net = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=getattr(torch, dtype_name), attn_implementation="sdpa"
        )
        self.net = net.to(device).eval()
        self.step = DecodeStep(self.net, compile=self.compile)
        log.info("hf teacher %s on %s (%s, compile=%s)", self.model, device, dtype_name, self.compile)

    def sample(self, requests: list[TeacherRequest], k: int, seed: int) -> list[TeacherResult]:
        items = [(teacher_messages(r.clip.question, r.clip.options), r.frames, r.frame_times) for r in requests]
        return self._run([r.clip.clip_id for r in requests], items, k, seed, self.max_new_tokens)

    def propose(self, requests: list[TeacherRequest], n: int, seed: int) -> list[TeacherResult]:
        """One question-synthesis reply per clip (JSON text, parsed by ``questions.parse_proposals``)."""
        items = [(questions_messages(n), r.frames, r.frame_times) for r in requests]
        # A JSON list of questions is longer than one reasoning trace.
        return self._run([r.clip.clip_id for r in requests], items, 1, seed, 2 * self.max_new_tokens)

    def _run(
        self,
        clip_ids: list[str],
        items: list[tuple[list[dict[str, Any]], np.ndarray, np.ndarray]],
        k: int,
        seed: int,
        max_new_tokens: int,
    ) -> list[TeacherResult]:
        self.load()
        if not items:
            return []
        began = time.perf_counter()
        inputs = build_inputs(self.tokenizer, self.image_processor, items)
        out = sample_shared_prefill(
            self.net,
            inputs,
            k=k,
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop_token_ids=stop_ids(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id,
            seed=seed,
            step=self.step,
        )
        latency = time.perf_counter() - began
        results = []
        for b, clip_id in enumerate(clip_ids):
            samples = []
            for row in range(b * k, (b + 1) * k):
                length = int(out.lengths[row])
                stopped = bool(out.stopped[row])
                # The stop token ends the text; it is counted as generated but not decoded.
                text_ids = out.tokens[row, : length - 1 if stopped else length]
                text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
                samples.append(
                    Generation(text, "stop" if stopped else "length", int(out.prompt_tokens[b]), length)
                )
            results.append(TeacherResult(clip_id, samples, latency))
        return results
