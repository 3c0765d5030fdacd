"""The student on vLLM's offline engine, for evaluation on a GPU host (``evaluate.backend: vllm``).

vLLM cannot run on this project's CPU machines nor be installed on its GPU test machine
(docs/ARCHITECTURE.md), so this class is kept thin and is never exercised by the default tests. It has
``StudentModel``'s ``generate`` signature and builds the same prompt text with the checkpoint's
processor (``training.inputs.prompt_texts``); the waveform goes in as
``multi_modal_data={"audio": (waveform, 16000)}`` and vLLM's Qwen2-Audio processor expands the
audio placeholder. Install with ``pip install -e .[vllm]``.

Known behaviour relied on (vLLM 0.22-0.30): ``LLM.generate`` returns one ``RequestOutput`` per
prompt in prompt order, each with ``n`` ``CompletionOutput`` carrying ``text`` and ``index``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sightsound_core.backends.base import StudentItem
from sightsound_core.training.inputs import SAMPLE_RATE, prompt_texts, stop_token_ids


class VLLMStudent:
    """A Qwen2-Audio checkpoint (a merged model folder) served by ``vllm.LLM``."""

    def __init__(self, path: str, gpu_memory_utilization: float = 0.85, dtype: str = "auto"):
        self.path = path
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.llm: Any = None
        self.processor: Any = None

    def load(self) -> None:
        if self.llm is not None:
            return
        try:
            from transformers import AutoProcessor
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("evaluate.backend=vllm needs vLLM on a GPU host: pip install -e .[vllm]") from exc
        self.processor = AutoProcessor.from_pretrained(self.path)
        self.llm = LLM(
            model=self.path,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            limit_mm_per_prompt={"audio": 1},
        )

    def generate(
        self,
        items: list[StudentItem],
        max_new_tokens: int,
        temperature: float = 0.0,
        num_return_sequences: int = 1,
        seed: int = 0,
    ) -> list[list[str]]:
        """``num_return_sequences`` completions per item, in item order; greedy at temperature 0."""
        from vllm import SamplingParams

        self.load()
        if temperature == 0 and num_return_sequences > 1:
            raise ValueError("greedy decoding returns one sequence per prompt; set temperature > 0")
        params = SamplingParams(
            n=num_return_sequences,
            temperature=temperature,
            max_tokens=max_new_tokens,
            seed=seed,
            stop_token_ids=stop_token_ids(self.processor.tokenizer),
        )
        texts = prompt_texts(self.processor, [q for _, q, _ in items], [list(o) for _, _, o in items])
        prompts = [
            {"prompt": text, "multi_modal_data": {"audio": (np.asarray(w, dtype=np.float32), SAMPLE_RATE)}}
            for text, (w, _, _) in zip(texts, items)
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[c.text for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]
