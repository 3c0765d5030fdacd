"""The small Protocols every teacher and verifier backend implements.

Backends are composed, never subclassed: a backend is any object with these methods. Heavy
libraries (torch, vllm, openai) are imported inside ``load()``, never at module import.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np

from sightsound_core.schemas import Clip


@dataclasses.dataclass
class TeacherRequest:
    """One clip for the teacher: its record and its *silent* frames (T, H, W, 3) uint8 RGB."""

    clip: Clip
    frames: np.ndarray
    frame_times: np.ndarray  # seconds, one per frame


@dataclasses.dataclass
class Generation:
    text: str
    finish_reason: str  # stop | length | error
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass
class TeacherResult:
    """The K samples for one request, or an error that left none."""

    clip_id: str
    samples: list[Generation]
    latency_s: float
    error: str | None = None


@runtime_checkable
class TeacherBackend(Protocol):
    name: str
    model: str

    def load(self) -> None: ...

    def sample(self, requests: list[TeacherRequest], k: int, seed: int) -> list[TeacherResult]:
        """K samples per request, one result per request in request order."""
        ...


@dataclasses.dataclass
class VerifyRequest:
    """One trace to check against the clip's real audio (16 kHz mono float32)."""

    clip: Clip
    sample_idx: int
    trace: str
    audio: np.ndarray
    sample_rate: int = 16000


@dataclasses.dataclass
class VerifyResult:
    status: str  # accepted | rejected | unparseable | error
    unsupported_claims: list[str]
    reason: str
    raw: str
    attempts: int = 1
    latency_s: float = 0.0


@runtime_checkable
class VerifierBackend(Protocol):
    name: str
    model: str

    def load(self) -> None: ...

    def verify(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        """One result per request, in request order; never raises for a single bad item."""
        ...
