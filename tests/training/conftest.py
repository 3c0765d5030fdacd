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
def clips(tmp_path_factory) -> list[tuple[str, str]]:
    return write_clips(tmp_path_factory.mktemp("clips"), 8)
