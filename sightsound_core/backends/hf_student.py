"""The student (Qwen2-Audio) on transformers: batched generation for evaluation and GRPO.

>>> StudentModel("tiny://qwen2-audio").path
'tiny://qwen2-audio'
"""

from __future__ import annotations

import logging
from typing import Any

from sightsound_core.backends.base import StudentItem
from sightsound_core.training.inputs import (
    banned_token_ids,
    encode_prompts,
    load_student,
    resolve_device,
    stop_token_ids,
)

log = logging.getLogger(__name__)



class StudentModel:
    """A Qwen2-Audio checkpoint (local folder or cached hub id) that answers audio questions.

    ``path`` must already be resolved (``tiny.resolve_model``); heavy imports happen in ``load()``.
    """

    def __init__(self, path: str, device: str = "auto", dtype: Any = None) -> None:
        self.path = path
        self.device = device
        self.dtype = dtype
        self.model: Any = None
        self.processor: Any = None

    def load(self) -> None:
        if self.model is None:
            self.device = resolve_device(self.device)
            self.model, self.processor = load_student(self.path, self.device, self.dtype)

    def generate(
        self,
        items: list[StudentItem],
        max_new_tokens: int,
        temperature: float = 0.0,
        num_return_sequences: int = 1,
        seed: int = 0,
    ) -> list[list[str]]:
        """``num_return_sequences`` completions per item, in item order; greedy at temperature 0."""
        self.load()
        batch = encode_prompts(
            self.processor,
            waveforms=[w for w, _, _ in items],
            questions=[q for _, q, _ in items],
            options=[list(o) for _, _, o in items],
        )
        sequences = generate_ids(
            self.model,
            self.processor.tokenizer,
            batch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            num_return_sequences=num_return_sequences,
            seed=seed,
        )
        prompt_len = batch["input_ids"].shape[1]
        texts = self.processor.tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
        n = num_return_sequences
        return [texts[i * n : (i + 1) * n] for i in range(len(items))]


def generate_ids(
    model: Any,
    tokenizer: Any,
    batch: dict[str, Any],
    max_new_tokens: int,
    temperature: float,
    num_return_sequences: int,
    seed: int,
) -> Any:
    """Sequences (prompt included) for a left-padded prompt batch from ``encode_prompts``:
    ``num_return_sequences`` rows per prompt, prompt-major. Shared by evaluation and GRPO.
    """
    import torch

    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items()}
    inputs["input_features"] = inputs["input_features"].to(next(model.parameters()).dtype)
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
    elif num_return_sequences > 1:
        raise ValueError("greedy decoding returns one sequence per prompt; set temperature > 0")
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=banned_token_ids(tokenizer),
            **sampling,
        )
