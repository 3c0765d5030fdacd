"""The student hallucination rate on real clips: the run's own verifier judges each reasoned answer.

On the synthetic world every sound claim is written in the verifier's claim language and checked
one by one against the waveform (``claims.claim_support``). Real benchmarks (MMAU, MUSIC-AVQA,
AVQA) have no such language, so the judge there is the verifier the run already trusts for AGFV
(``verify.backend``: GPT-4o-audio, a vLLM or HF audio model, or the simulator): it hears the clip
and accepts or rejects the answer's reasoning exactly as it accepts or rejects a teacher trace.
The unit is then the answer, not the claim: ``claims`` = 1 for every answer the judge accepted or
rejected, ``contradicted`` = 1 when it rejected it. Answers without a ``<think>`` section are not
judged (nothing to check), and neither are the judge's own failures (``unparseable``, ``error``):
the prediction row keeps the judge's status in ``judge`` so they can be counted.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Callable

import numpy as np

from sightsound_core.backends.base import VerifierBackend, VerifyRequest
from sightsound_core.schemas import Clip, Prediction

log = logging.getLogger(__name__)

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def reasoning(text: str) -> str | None:
    """The answer's ``<think>`` section, stripped, or None when it has none or an empty one.

    >>> reasoning("<think> the drum is loud </think><answer>drum</answer>")
    'the drum is loud'
    >>> reasoning("<answer>drum</answer>") is None, reasoning("<think> </think>x") is None
    (True, True)
    """
    m = _THINK.search(text)
    return (m.group(1).strip() or None) if m else None


def judge_predictions(
    verifier: VerifierBackend,
    clips: list[Clip],
    rows: list[Prediction],
    load_audio: Callable[[str], np.ndarray],
) -> list[Prediction]:
    """``rows`` (one per clip, same order) with the verifier's judgment of each reasoned answer on
    a real clip; synthetic items and answers without reasoning come back unchanged."""
    todo = [
        i for i, (clip, row) in enumerate(zip(clips, rows, strict=True))
        if clip.source != "synthetic" and reasoning(row.raw) is not None
    ]  # fmt: skip
    if not todo:
        return rows
    requests = [VerifyRequest(clips[i], 0, rows[i].raw, load_audio(clips[i].audio_uri or "")) for i in todo]
    results = verifier.verify(requests)
    if len(results) != len(requests):
        raise RuntimeError(f"verifier {verifier.name} returned {len(results)} results for {len(requests)} answers")
    out = list(rows)
    for i, result in zip(todo, results):
        judged = result.status in ("accepted", "rejected")
        out[i] = dataclasses.replace(
            rows[i], claims=int(judged), contradicted=int(result.status == "rejected"), judge=result.status
        )
    log.info(
        "judge %s: %d reasoned answers, %d rejected, %d not judged",
        verifier.name, len(todo), sum(r.status == "rejected" for r in results),
        sum(r.status not in ("accepted", "rejected") for r in results),
    )  # fmt: skip
    return out
