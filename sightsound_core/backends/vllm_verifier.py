"""The AGFV verifier on vLLM's offline engine: Qwen2-Audio hears each clip, greedy JSON verdicts.

Thin by design: one ``LLM.generate`` per call over every request, each prompt rendered by the
model's own processor chat template with the audio passed as ``multi_modal_data``. vLLM is imported
in ``load()`` (``pip install -e ".[vllm]"``, a CUDA machine); it does not run on the project's CPU
machines, so this module is exercised only where vLLM is installed. For a served model, use the
``openai`` backend against ``vllm serve`` instead: same model, plus the client's retries and limits.

>>> VLLMVerifier("Qwen/Qwen2-Audio-7B-Instruct").name
'vllm'
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from sightsound_core.backends.base import VerifyRequest, VerifyResult
from sightsound_core.backends.hf_verifier import SAMPLE_RATE, _resample, verifier_messages
from sightsound_core.config import VerifyConfig
from sightsound_core.verdicts import parse_verdict

log = logging.getLogger(__name__)


class VLLMVerifier:
    """Implements ``VerifierBackend`` with ``vllm.LLM``.

    Args:
        model: checkpoint folder or hub id of a Qwen2-Audio-class model.
        max_new_tokens: budget for the verdict.
        batch_size: the engine's ``max_num_seqs`` (it schedules the batch itself).
        tensor_parallel_size: GPUs per model replica.
    """

    name = "vllm"

    def __init__(self, model: str, max_new_tokens: int = 256, batch_size: int = 8, tensor_parallel_size: int = 1):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.tensor_parallel_size = tensor_parallel_size
        self._llm: Any = None
        self._processor: Any = None
        self._params: Any = None

    @classmethod
    def from_config(cls, cfg: VerifyConfig) -> "VLLMVerifier":
        return cls(cfg.model, cfg.max_new_tokens, cfg.batch_size, cfg.tensor_parallel_size)

    def load(self) -> None:
        if self._llm is not None:
            return
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ImportError(
                "the vllm verifier needs vLLM: pip install -e '.[vllm]' (CUDA machines only)"
            ) from exc
        from transformers import AutoProcessor

        self._processor = AutoProcessor.from_pretrained(self.model)
        self._llm = LLM(
            model=self.model,
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=self.batch_size,
            limit_mm_per_prompt={"audio": 1},
        )
        self._params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)

    def verify(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        self.load()
        prompts = [
            {
                "prompt": self._processor.apply_chat_template(
                    verifier_messages(r), tokenize=False, add_generation_prompt=True
                ),
                "multi_modal_data": {
                    "audio": (_resample(np.asarray(r.audio, dtype=np.float32), r.sample_rate), SAMPLE_RATE)
                },
            }
            for r in requests
        ]
        began = time.perf_counter()
        try:
            outputs = self._llm.generate(prompts, self._params, use_tqdm=False)
        except Exception as exc:  # the engine failed the whole call: every item is an error
            log.warning("vllm verifier failed: %r", exc)
            elapsed = time.perf_counter() - began
            return [VerifyResult("error", [], type(exc).__name__, "", 1, elapsed) for _ in requests]
        each = (time.perf_counter() - began) / max(1, len(requests))
        results = []
        for out in outputs:
            raw = out.outputs[0].text if out.outputs else ""
            status, claims, reason = parse_verdict(raw)
            results.append(VerifyResult(status, claims, reason, raw, 1, each))
        return results
