"""The hand-made MMAU items (tests/fixtures/mmau) as a dataset root with real audio files.

``FIXTURE`` is the main set; ``RELEASES`` holds one file per annotation release (the 2024 original and
the v05.15.25 relabel), each with items whose choices repeat a string, as test-mini has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mmau"
FIXTURE = FIXTURES / "mmau-test-mini.json"
RELEASES = {name: FIXTURES / "releases" / name / "mmau-test-mini.json" for name in ("original", "v05.15.25")}


def records(fixture: Path = FIXTURE) -> list[dict]:
    return json.loads(fixture.read_text())


def write_mmau_root(root: Path, seconds: float = 1.0, fixture: Path = FIXTURE) -> Path:
    """``root`` holding ``fixture`` as ``mmau-test-mini.json`` and one short tone per item at its
    ``audio_id``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixture, root / "mmau-test-mini.json")
    t = np.arange(int(16000 * seconds)) / 16000
    for i, record in enumerate(records(fixture)):
        path = root / record["audio_id"]
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32), 16000)
    return root


class Scripted:
    """A generator with ``StudentModel``'s interface whose text is ``answer(question, options)``."""

    def __init__(self, answer):
        self.answer = answer
        self.batches: list[int] = []

    def load(self) -> None:
        pass

    def generate(self, items, max_new_tokens, temperature=0.0, num_return_sequences=1, seed=0):
        self.batches.append(len(items))
        return [[self.answer(question, list(options))] for _, question, options in items]
