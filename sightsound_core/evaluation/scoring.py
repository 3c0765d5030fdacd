"""Scoring rules and accuracy statistics, every rule reading model text through the shared parser.

One rule per benchmark, chosen by ``BenchmarkConfig.scorer`` and dispatched in ``score``:

    option      the parsed option equals the label (the synthetic world, folder data)
    avqa        AVQA's 4-way multiple choice: the parsed option equals the label
    music_avqa  MUSIC-AVQA as the ingest adapter documents it: each open answer became a choice
                among answers of the same answer kind, so the parsed option equals the label
    mmau        MMAU's official string match on the scored text

Which text is scored is the benchmark's answer rule (``BenchmarkConfig.answer_rule``), the same for
every scorer so that baselines are compared fairly:

    answer_block_or_raw  the ``<answer>`` content when the output has an ``<answer>`` tag, the whole
                         raw output when it has none (as R1-AQA scores: a pretrained model that never
                         learnt the tags is still read); the default
    answer_block         the ``<answer>`` content only: an output without an answer block scores 0

An output that opens an ``<answer>`` tag but holds no single well-formed block (two blocks, nested
tags, cut off before ``</answer>``) scores nothing under either rule: it tried to use the format
and failed, and the raw text would let the reasoning be scored.

Every rule returns a ``Scored``: the option the answer stands for (None when none), whether it is
correct, and the text that was scored.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

from sightsound_core.answers import NO_ANSWER_TAG, match_option, parse_response
from sightsound_core.config import AnswerRule
from sightsound_core.schemas import Clip

_WORD_RE = re.compile(r"\b\w+\b")


@dataclasses.dataclass(frozen=True)
class Scored:
    """One scored answer.

    Attributes:
        answer: the option the answer stands for under the benchmark's rule, None when none.
        correct: the benchmark's verdict.
        answer_text: the text that was scored under the answer rule ('' when none).
    """

    answer: str | None
    correct: bool
    answer_text: str


def answer_text(raw: str | None, rule: AnswerRule) -> str:
    """The text the benchmark scores under ``rule`` ('' when there is none; see module docstring).

    >>> answer_text("<think>not a woman</think><answer> Man </answer>", "answer_block")
    'Man'
    >>> answer_text(" Man ", "answer_block_or_raw")
    'Man'
    >>> answer_text("Man", "answer_block")
    ''
    >>> answer_text("<answer>Man</answer><answer>Woman</answer>", "answer_block_or_raw")
    ''
    """
    parsed = parse_response(raw)
    if parsed.answer_text is not None:
        return parsed.answer_text
    if rule == "answer_block_or_raw" and parsed.status == NO_ANSWER_TAG and raw is not None:
        return raw.strip()
    return ""


# -- option / AVQA ---------------------------------------------------------------------------------
def score_option(raw: str, options: list[str], label: str, rule: AnswerRule) -> Scored:
    """The option the scored text names (the shared parser's ``match_option``), correct when it
    equals the label (synthetic world, AVQA, MUSIC-AVQA).

    >>> score_option("<think>high</think><answer>B</answer>", ["low", "high"], "high", "answer_block")
    Scored(answer='high', correct=True, answer_text='B')
    >>> score_option("high", ["low", "high"], "high", "answer_block_or_raw").correct
    True
    >>> score_option("high", ["low", "high"], "high", "answer_block").correct
    False
    """
    text = answer_text(raw, rule)
    option = match_option(text, options) if text else None
    return Scored(option, option == label, text)


# -- MMAU ------------------------------------------------------------------------------------------
def word_tokens(text: str) -> set[str]:
    """Lowercased word tokens, as a set (MMAU's tokenisation).

    >>> sorted(word_tokens("(A) Man, man!"))
    ['a', 'man']
    """
    return set(_WORD_RE.findall(text.lower()))


def mmau_match(prediction: str, answer: str, choices: list[str]) -> bool:
    """MMAU's official rule: the prediction has every token of the answer and no token that
    belongs only to a wrong choice. A choice with exactly the answer's tokens is not wrong, and a
    token a wrong choice shares with the answer does not count against the prediction.

    >>> mmau_match("car door", "Car door", ["Car door", "House door"])
    True
    >>> mmau_match("door", "Car door", ["Car door", "House door"])
    False
    >>> mmau_match("car or house door", "Car door", ["Car door", "House door"])
    False
    """
    predicted = word_tokens(prediction)
    if not predicted:
        return False
    wanted = word_tokens(answer)
    only_wrong: set[str] = set()
    for choice in choices:
        tokens = word_tokens(choice)
        if tokens != wanted:
            only_wrong |= tokens - wanted
    return wanted <= predicted and predicted.isdisjoint(only_wrong)


def score_mmau(raw: str, choices: list[str], label: str, rule: AnswerRule) -> Scored:
    """MMAU: the official rule on the scored text. When the output has an answer block, the
    reasoning outside it is never scored.

    ``answer`` is the first choice the rule accepts for the same text (None when it accepts none).
    ``choices`` may repeat a string (some test-mini items do): the rule works on token sets, so a
    repeat changes nothing.

    >>> score_mmau("<think>Not a woman.</think><answer>Man</answer>", ["Man", "Woman"], "Man", "answer_block")
    Scored(answer='Man', correct=True, answer_text='Man')
    """
    text = answer_text(raw, rule)
    accepted = next((c for c in choices if mmau_match(text, c, choices)), None)
    return Scored(accepted, mmau_match(text, label, choices), text)


RULES: dict[str, Callable[[str, list[str], str, AnswerRule], Scored]] = {
    "option": score_option,
    "avqa": score_option,
    "music_avqa": score_option,
    "mmau": score_mmau,
}


def score(scorer: str, raw: str, clip: Clip, rule: AnswerRule) -> Scored:
    """Score one generated text on one labelled item with the benchmark's scorer and answer rule."""
    if clip.label is None:
        raise ValueError(f"{clip.clip_id}: cannot score an unlabelled item")
    return RULES[scorer](raw, list(clip.options), clip.label, rule)


# -- statistics ------------------------------------------------------------------------------------
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
    # At 0/n and n/n the bound is exactly 0 or 1; computed, rounding can leave the accuracy outside.
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def accuracy(flags: list[bool]) -> dict[str, float | int]:
    """n, correct, accuracy and its 95% Wilson interval.

    >>> accuracy([True, False])["accuracy"]
    0.5
    """
    n, k = len(flags), sum(flags)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi}
