"""The AGFV verifier on transformers: Qwen2-Audio (or any checkpoint of that class) hears the
clip and writes the JSON verdict, greedily, a batch at a time.

The chat is the verifier system prompt, then a user turn with the audio part and the fenced trace
(``prompts.verifier_prompt``). The reply goes through ``parse_verdict``; a tiny random model writes
garbage, which is ``unparseable``, never ``accepted``. A batch that raises (out of memory, a bad
waveform) makes each of its items an ``error`` with the exception class, never a crashed shard.

>>> HFVerifier("tiny://qwen2-audio").model
'tiny://qwen2-audio'
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from sightsound_core.backends.base import VerifyRequest, VerifyResult
from sightsound_core.config import VerifyConfig
from sightsound_core.prompts import verifier_prompt
from sightsound_core.verdicts import parse_verdict

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def verifier_messages(req: VerifyRequest) -> list[dict[str, Any]]:
    """System prompt, then the audio part and the fenced trace. The audio part carries ``type``
    and ``audio`` keys, read by our templates and by upstream Qwen2-Audio templates alike."""
    system, user = verifier_prompt(req.clip.question, req.clip.options, req.trace)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": user}]},
    ]


class HFVerifier:
    """Implements ``VerifierBackend`` with ``Qwen2AudioForConditionalGeneration``.

    Args:
        model: checkpoint folder, cached hub id, or ``tiny://qwen2-audio``.
        max_new_tokens: budget for the verdict.
        batch_size: traces per ``generate`` call.
        device: auto, cpu or cuda.
    """

    name = "hf"

    def __init__(self, model: str, max_new_tokens: int = 256, batch_size: int = 8, device: str = "auto"):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._processor: Any = None

    @classmethod
    def from_config(cls, cfg: VerifyConfig) -> "HFVerifier":
        return cls(cfg.model, cfg.max_new_tokens, cfg.batch_size, cfg.device)

    def load(self) -> None:
        if self._model is not None:
            return
        from sightsound_core.tiny import resolve_model
        from sightsound_core.training.inputs import load_student, resolve_device

        self.device = resolve_device(self.device)
        self._model, self._processor = load_student(resolve_model(self.model), self.device)

    def verify(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        self.load()
        results: list[VerifyResult] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            began = time.perf_counter()
            try:
                texts = self._generate(batch)
            except Exception as exc:  # one bad batch must not sink the shard
                log.warning("hf verifier batch at %d failed: %r", start, exc)
                elapsed = time.perf_counter() - began
                results.extend(VerifyResult("error", [], type(exc).__name__, "", 1, elapsed) for _ in batch)
                continue
            each = (time.perf_counter() - began) / len(batch)
            for raw in texts:
                status, claims, reason = parse_verdict(raw)
                results.append(VerifyResult(status, claims, reason, raw, 1, each))
        return results

    def _generate(self, batch: list[VerifyRequest]) -> list[str]:
        import torch

        from sightsound_core.training.inputs import banned_token_ids, stop_token_ids

        processor, model = self._processor, self._model
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        texts = [
            processor.apply_chat_template(verifier_messages(r), tokenize=False, add_generation_prompt=True)
            for r in batch
        ]
        audio = [_resample(np.asarray(r.audio, dtype=np.float32), r.sample_rate) for r in batch]
        inputs = processor(text=texts, audio=audio, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        inputs["input_features"] = inputs["input_features"].to(model.dtype)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                eos_token_id=stop_token_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                suppress_tokens=banned_token_ids(tokenizer),
            )
        return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return audio
    import soxr

    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
