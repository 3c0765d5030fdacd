"""The small Protocols every teacher, question-proposer, verifier and student backend implements.

Backends are composed, never subclassed: a backend is any object with these methods, built from
its stage config by ``from_config(cfg)`` (``backends.registry`` picks the class). Heavy libraries
(torch, vllm, openai) are imported inside ``load()`` or when a client opens, never at module
import. A backend that can hand over each result as it arrives also implements the streaming
variant (``StreamingTeacher``, ``StreamingVerifier``); a stage saves each result before the next
request goes out.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, runtime_checkable

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


@runtime_checkable
class StreamingTeacher(TeacherBackend, Protocol):
    def sample_stream(
        self,
        requests: list[TeacherRequest],
        k: int,
        seed: int,
        on_result: Callable[[int, TeacherResult], None] | None = None,
    ) -> list[TeacherResult]:
        """As ``sample``, calling ``on_result(i, result)`` as each finishes, before any further
        request is sent."""
        ...


@runtime_checkable
class QuestionProposer(Protocol):
    name: str
    model: str

    def load(self) -> None: ...

    def propose(self, requests: list[TeacherRequest], n: int, seed: int) -> list[TeacherResult]:
        """One reply per request, in request order: JSON text proposing up to ``n`` questions."""
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


@runtime_checkable
class StreamingVerifier(VerifierBackend, Protocol):
    def verify_stream(
        self,
        requests: list[VerifyRequest],
        on_result: Callable[[int, VerifyResult], None] | None = None,
    ) -> list[VerifyResult]:
        """As ``verify``, calling ``on_result(i, result)`` as each finishes, before any further
        request is sent."""
        ...


StudentItem = tuple[np.ndarray, str, list[str]]
"""(16 kHz mono waveform, question, options)."""


class StudentGenerator(Protocol):
    """The student as evaluation and GRPO use it: ``hf`` (``backends.hf_student.StudentModel``) or
    ``vllm`` (``evaluation.vllm_student.VLLMStudent``), picked by ``evaluation.inference.load_generator``."""

    def load(self) -> None: ...

    def generate(
        self,
        items: list[StudentItem],
        max_new_tokens: int,
        temperature: float = 0.0,
        num_return_sequences: int = 1,
        seed: int = 0,
    ) -> list[list[str]]:
        """``num_return_sequences`` texts per item, in item order."""
        ...
