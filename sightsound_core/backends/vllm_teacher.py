"""The teacher on vLLM's offline engine: ``SamplingParams(n=K)`` so the K samples share one prefill.

vLLM cannot be installed or run on this project's CPU machines, and its wheels do not fit the GPU
test machine (docs/ARCHITECTURE.md), so this backend is kept thin and is never exercised by the default tests:
prompts are built by the same helpers as the ``hf`` backend (``teacher_messages``), the frames go
in as ``multi_modal_data={"video": frames}`` with the sampled frame rate, and vLLM's Qwen2.5-VL
processor does the patching and M-RoPE. Install with ``pip install -e .[vllm]`` on a GPU host.

Known behaviour relied on (vLLM 0.22-0.30): ``LLM.generate`` returns one ``RequestOutput`` per
prompt in prompt order; each holds ``n`` ``CompletionOutput`` with ``text``, ``token_ids`` and
``finish_reason`` (``stop`` / ``length``); ``prompt_token_ids`` counts the expanded video tokens.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from sightsound_core.backends.base import Generation, TeacherRequest, TeacherResult
from sightsound_core.backends.hf_teacher import questions_messages, stop_ids, teacher_messages
from sightsound_core.config import TeacherConfig

log = logging.getLogger(__name__)


# vLLM's finish reasons onto ours; anything else (an aborted request) is an error.
_FINISH = {"stop": "stop", "length": "length"}


def _fps(times: np.ndarray) -> float:
    """Sampled frames per second (1.0 when a single frame gives no interval)."""
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    return 1.0 / step if step > 0 else 1.0


class VLLMTeacher:
    """Qwen2.5-VL (or any vLLM video-language model) on ``vllm.LLM`` (implements ``TeacherBackend``).

    Args:
        model: checkpoint folder or hub id in the local cache.
        tensor_parallel_size: GPUs per engine (2-4 for the 32B teacher).
        max_pixels: per-frame area bound handed to the model's processor.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        max_pixels: int = 224 * 224,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        seed: int = 0,
    ):
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.seed = seed
        self.llm: Any = None
        self.tokenizer: Any = None

    @classmethod
    def from_config(cls, cfg: TeacherConfig) -> "VLLMTeacher":
        return cls(cfg.model, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.frames.max_pixels,
                   cfg.tensor_parallel_size, cfg.gpu_memory_utilization, cfg.dtype, cfg.seed)

    def load(self) -> None:
        if self.llm is not None:
            return
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("the vllm teacher needs vLLM on a GPU host: pip install -e .[vllm]") from exc
        self.llm = LLM(
            model=self.model,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            dtype=self.dtype,
            seed=self.seed,
            limit_mm_per_prompt={"video": 1},
            mm_processor_kwargs={"min_pixels": 56 * 56, "max_pixels": self.max_pixels},
        )
        self.tokenizer = self.llm.get_tokenizer()

    def sample(self, requests: list[TeacherRequest], k: int, seed: int) -> list[TeacherResult]:
        messages = [teacher_messages(r.clip.question, r.clip.options) for r in requests]
        return self._run(requests, messages, k, seed, self.max_new_tokens)

    def propose(self, requests: list[TeacherRequest], n: int, seed: int) -> list[TeacherResult]:
        """One question-synthesis reply per clip (JSON text, parsed by ``questions.parse_proposals``)."""
        return self._run(requests, [questions_messages(n) for _ in requests], 1, seed, 2 * self.max_new_tokens)

    def _run(
        self,
        requests: list[TeacherRequest],
        messages: list[list[dict[str, Any]]],
        k: int,
        seed: int,
        max_new_tokens: int,
    ) -> list[TeacherResult]:
        from vllm import SamplingParams

        self.load()
        if not requests:
            return []
        params = SamplingParams(
            n=k,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=max_new_tokens,
            seed=seed,
            stop_token_ids=stop_ids(self.tokenizer),
        )
        prompts = [
            {
                "prompt": self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                "multi_modal_data": {"video": np.asarray(r.frames)},
                "mm_processor_kwargs": {"fps": _fps(np.asarray(r.frame_times))},
            }
            for r, m in zip(requests, messages)
        ]
        began = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        latency = time.perf_counter() - began
        results = []
        for req, out in zip(requests, outputs, strict=True):
            samples = [
                Generation(c.text, _FINISH.get(c.finish_reason, "error"), len(out.prompt_token_ids), len(c.token_ids))
                for c in sorted(out.outputs, key=lambda c: c.index)
            ]
            results.append(TeacherResult(req.clip.clip_id, samples, latency))
        return results
