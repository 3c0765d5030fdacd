"""A learnable toy task for training tests: is a pure tone high or low?"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from sightsound_core.answers import format_response
from sightsound_core.schemas import GRPOExample, SFTExample

SR = 16000
QUESTION = "Is the pitch high or low?"
OPTIONS = ["low", "high"]
FREQS = {"low": 200.0, "high": 3000.0}


def write_clips(root: Path, n: int, seconds: float = 2.0, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` wav files alternating low/high with random phase and level; (uri, label) pairs."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    clips = []
    for i in range(n):
        label = OPTIONS[i % 2]
        wave = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * FREQS[label] * t + rng.uniform(0, 6.28))
        path = root / f"clip{i:03d}.wav"
        sf.write(path, wave.astype(np.float32), SR)
        clips.append((str(path), label))
    return clips


def load_audio(uri: str) -> np.ndarray:
    wave, sr = sf.read(uri, dtype="float32")
    assert sr == SR
    return wave


def sft_examples(clips: list[tuple[str, str]]) -> list[SFTExample]:
    return [
        SFTExample(
            example_id=f"cot:c{i}:0",
            variant="cot",
            clip_id=f"c{i}",
            audio_uri=uri,
            question=QUESTION,
            options=OPTIONS,
            completion=format_response(f"The tone is {label}.", label),
            label=label,
        )
        for i, (uri, label) in enumerate(clips)
    ]


def grpo_examples(clips: list[tuple[str, str]]) -> list[GRPOExample]:
    return [
        GRPOExample(
            example_id=f"grpo:c{i}",
            clip_id=f"c{i}",
            audio_uri=uri,
            question=QUESTION,
            options=OPTIONS,
            label=label,
            family="acoustic",
        )
        for i, (uri, label) in enumerate(clips)
    ]


def short_window_student(path: str, out: Path, seconds: int = 2) -> str:
    """``path``'s model hearing a ``seconds``-long window instead of Whisper's 30 s.

    The same weights, the encoder's position table cut to the window: a clip costs 50 encoder
    positions per second instead of 1,500 in all, so a few training steps take seconds.
    """
    from transformers import (
        AutoProcessor,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path)
    features = WhisperFeatureExtractor(feature_size=processor.feature_extractor.feature_size, chunk_length=seconds)
    positions = features.nb_max_frames // 2
    config = model.config
    config.audio_config.max_source_positions = positions
    state = model.state_dict()
    key = "model.audio_tower.embed_positions.weight"
    state[key] = state[key][:positions]
    short = Qwen2AudioForConditionalGeneration(config)
    short.load_state_dict(state)
    short.save_pretrained(out)
    Qwen2AudioProcessor(features, processor.tokenizer, chat_template=processor.chat_template).save_pretrained(out)
    return str(out)


def keep_checkpoint(name: str, into: Path) -> Callable[[str], None]:
    """An ``on_checkpoint`` callback that copies checkpoint ``name`` into ``into`` as it is saved:
    the folder a run killed right after that save leaves (the run itself later replaces or
    deletes it)."""

    def keep(path: str) -> None:
        if Path(path).name == name:
            shutil.copytree(path, Path(into) / name)

    return keep
