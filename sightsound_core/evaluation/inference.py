"""Batched inference for evaluation, through the same student backends and the student's prompt.

A generator (``backends.base.StudentGenerator``) is anything with ``StudentModel``'s ``load()``
and ``generate(items, max_new_tokens, temperature, num_return_sequences, seed)``: ``hf`` is
``backends.hf_student.StudentModel``, ``vllm`` is ``evaluation.vllm_student.VLLMStudent``. Both build the prompt with
``training.inputs``, so a model is evaluated on exactly the prompt it was trained on.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any, Callable

import numpy as np

from sightsound_core.backends.base import StudentGenerator, StudentItem
from sightsound_core.schemas import Clip

log = logging.getLogger(__name__)


def load_generator(backend: str, path: str, device: str = "auto") -> StudentGenerator:
    """The evaluation model for ``backend`` (heavy imports happen in its ``load()``)."""
    if backend == "vllm":
        from sightsound_core.evaluation.vllm_student import VLLMStudent

        return VLLMStudent(path)
    if backend == "hf":
        from sightsound_core.backends.hf_student import StudentModel

        return StudentModel(path, device=device)
    raise ValueError(f"unknown evaluation backend {backend!r}")


def silenced(load_audio: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
    """A loader giving each clip silence in place of its audio: zeros, as many samples as the
    clip's waveform (the silent-audio probe).

    >>> silenced(lambda uri: np.ones(3, np.float32))("a.wav")
    array([0., 0., 0.], dtype=float32)
    """
    return lambda uri: np.zeros_like(load_audio(uri))


def generate_answers(
    model: StudentGenerator,
    clips: list[Clip],
    load_audio: Callable[[str], np.ndarray],
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """One greedy completion per clip, in clip order.

    Batches are cut from the clips sorted by prompt length, so a batch pads little; the next
    batch's audio is decoded in a background thread while the current batch generates.
    """
    order = sorted(range(len(clips)), key=lambda i: len(clips[i].question) + sum(map(len, clips[i].options)))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

    def items(batch: list[int]) -> list[StudentItem]:
        return [(load_audio(clips[i].audio_uri or ""), clips[i].question, list(clips[i].options)) for i in batch]

    texts: list[str | None] = [None] * len(clips)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending: Any = pool.submit(items, batches[0]) if batches else None
        for n, batch in enumerate(batches):
            ready = pending.result()
            pending = pool.submit(items, batches[n + 1]) if n + 1 < len(batches) else None
            outputs = model.generate(ready, max_new_tokens=max_new_tokens, temperature=0.0)
            for i, out in zip(batch, outputs, strict=True):
                texts[i] = out[0]
            log.debug("generated batch %d/%d", n + 1, len(batches))
    elapsed = time.perf_counter() - began
    log.info("%d items in %.1f s (%.1f items/s)", len(clips), elapsed, len(clips) / max(elapsed, 1e-9))
    return [t or "" for t in texts]
