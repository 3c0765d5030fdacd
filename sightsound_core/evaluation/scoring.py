"""Scoring rules and accuracy statistics, all reading answers through the shared parser."""

from __future__ import annotations

import math

from sightsound_core.answers import parse_response


def score_option(raw: str, options: list[str], label: str) -> tuple[str | None, bool]:
    """The parsed option and whether it equals the label (synthetic world, AVQA-style items).

    >>> score_option("<think>high</think><answer>B</answer>", ["low", "high"], "high")
    ('high', True)
    >>> score_option("high", ["low", "high"], "high")
    (None, False)
    """
    option = parse_response(raw, options).option
    return option, option == label


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy.

    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(flags: list[bool]) -> dict[str, float | int]:
    n, k = len(flags), sum(flags)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi}
