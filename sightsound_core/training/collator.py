"""The audio SFT collator: rows of ``SFTExample`` fields in, a student training batch out.

TRL's own collators drop ``input_features``; this one builds the whole batch (processor on text and
16 kHz waveforms, prompt and padding labels set to -100) so the trainer only has to pass it on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sightsound_core.training.inputs import encode_sft


class AudioSFTCollator:
    """Collate dataset rows with ``audio_uri``, ``question``, ``options`` and ``completion``.

    ``audio_loader`` maps an ``audio_uri`` to a mono float32 waveform at 16 kHz.
    """

    def __init__(
        self, processor: Any, audio_loader: Callable[[str], np.ndarray], max_length: int
    ) -> None:
        self.processor = processor
        self.audio_loader = audio_loader
        self.max_length = max_length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return encode_sft(
            self.processor,
            waveforms=[self.audio_loader(r["audio_uri"]) for r in rows],
            questions=[r["question"] for r in rows],
            options=[list(r["options"]) for r in rows],
            completions=[r["completion"] for r in rows],
            max_length=self.max_length,
        )
