"""Which class serves each backend name, and the loaded backend a stage config asks for.

The one place that names every backend: stages ask for ``make_teacher(cfg)`` or
``make_verifier(cfg)`` and never import a backend module (the simulator included) themselves.
Importing this module is cheap: each backend imports its heavy libraries in ``load()``.
"""

from __future__ import annotations

import functools

from sightsound_core.backends.base import TeacherBackend, VerifierBackend
from sightsound_core.backends.hf_teacher import HFTeacher
from sightsound_core.backends.hf_verifier import HFVerifier
from sightsound_core.backends.openai_teacher import OpenAITeacher
from sightsound_core.backends.openai_verifier import OpenAIVerifier
from sightsound_core.backends.sim import SimTeacher, SimVerifier
from sightsound_core.backends.vllm_teacher import VLLMTeacher
from sightsound_core.backends.vllm_verifier import VLLMVerifier
from sightsound_core.config import TeacherConfig, VerifyConfig

# Every teacher also proposes questions (``QuestionProposer``) for the questions stage.
TEACHERS = {"sim": SimTeacher, "hf": HFTeacher, "vllm": VLLMTeacher, "openai": OpenAITeacher}
VERIFIERS = {"sim": SimVerifier, "hf": HFVerifier, "vllm": VLLMVerifier, "openai": OpenAIVerifier}


@functools.lru_cache(maxsize=4)
def make_teacher(cfg: TeacherConfig) -> TeacherBackend:
    """The backend ``cfg.backend`` names, built from ``cfg`` and loaded once per process and config."""
    backend = TEACHERS[cfg.backend].from_config(cfg)
    backend.load()
    return backend


@functools.lru_cache(maxsize=4)
def make_verifier(cfg: VerifyConfig) -> VerifierBackend:
    """The backend ``cfg.backend`` names, built from ``cfg`` and loaded once per process and config."""
    backend = VERIFIERS[cfg.backend].from_config(cfg)
    backend.load()
    return backend
