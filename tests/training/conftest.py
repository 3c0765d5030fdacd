from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from toyworld import write_clips  # noqa: E402


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> str:
    from sightsound_core.tiny import TINY_AUDIO, resolve_model

    return resolve_model(TINY_AUDIO, str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def short_student(tiny_student, tmp_path_factory) -> str:
    """The tiny student hearing a 2 s window: the default tier's training checks run in seconds."""
    from toyworld import short_window_student

    return short_window_student(tiny_student, tmp_path_factory.mktemp("short"))


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[tuple[str, str]]:
    return write_clips(tmp_path_factory.mktemp("clips"), 8)
