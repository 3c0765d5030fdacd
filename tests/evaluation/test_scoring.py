"""Scoring rules on hand-made cases; each MMAU case pins one clause of the official rule."""

import doctest

import pytest

import sightsound_core.evaluation.mmau as mmau_module
import sightsound_core.evaluation.scoring as scoring
from sightsound_core.evaluation.scoring import mmau_match, score, score_mmau, score_option
from sightsound_core.schemas import Clip

SPEAKERS = ["A child", "A woman", "An adult man", "A teenager"]
DOORS = ["Car door", "House door", "Cabinet door", "Elevator door"]


def test_doctests():
    assert doctest.testmod(scoring).failed == 0
    assert doctest.testmod(mmau_module).failed == 0


@pytest.mark.parametrize(
    "clause, prediction, answer, choices, correct",
    [
        # Case does not matter: both sides are lowercased.
        ("lowercase", "CAR DOOR", "Car door", DOORS, True),
        # Word tokens: punctuation and letter brackets are not tokens of their own.
        ("word tokens", "car-door!", "Car door", DOORS, True),
        ("word tokens", "(A) Car door.", "Car door", DOORS, True),
        # Token sets: order and repetition do not matter.
        ("token set", "door car door", "Car door", DOORS, True),
        # Every token of the answer must be in the prediction.
        ("all answer tokens", "car", "Car door", DOORS, False),
        ("all answer tokens", "child", "A child", SPEAKERS, False),
        # A token shared with the answer is not held against the prediction, though wrong choices
        # have it too ("door", "a").
        ("shared tokens allowed", "it is the car door", "Car door", DOORS, True),
        ("shared tokens allowed", "a child", "A child", SPEAKERS, True),
        # No token that belongs only to a wrong choice.
        ("no wrong-only token", "car door, not the house door", "Car door", DOORS, False),
        ("no wrong-only token", "a child or a woman", "A child", SPEAKERS, False),
        ("no wrong-only token", "a child, not an adult", "A child", SPEAKERS, False),
        # Tokens that belong to no choice at all are fine.
        ("extra tokens allowed", "surely a child speaking", "A child", SPEAKERS, True),
        # A choice with exactly the answer's tokens is not a wrong choice.
        ("same-token choice", "Man", "man", ["Man.", "man", "Woman"], True),
        # An empty prediction is never correct.
        ("empty prediction", "", "A child", SPEAKERS, False),
        ("empty prediction", "?!", "A child", SPEAKERS, False),
        # The letter alone is not the answer: the rule reads words, not option letters.
        ("letters are words", "A", "Car door", DOORS, False),
    ],
)
def test_mmau_rule(clause, prediction, answer, choices, correct):
    assert mmau_match(prediction, answer, choices) is correct, clause


@pytest.mark.parametrize("rule", ["answer_block_or_raw", "answer_block"])
def test_mmau_scores_the_answer_tag_not_the_reasoning(rule):
    choices = ["Man", "Woman"]
    # The reasoning names a wrong choice; only the <answer> content is scored, under either rule.
    assert score_mmau("<think>Not a woman, a man.</think><answer>Man</answer>", choices, "Man", rule).correct
    # Two answer blocks are no single answer, and the raw text is not read in their place.
    assert not score_mmau("<answer>Man</answer><answer>Man</answer>", choices, "Man", rule).correct
    # Nor is an answer block cut off before its closing tag.
    assert not score_mmau("<think>x</think><answer>Man", choices, "Man", rule).correct
    # A lenient parse would map "B" to the second option; MMAU's rule does not.
    assert not score_mmau("<answer>B</answer>", choices, "Woman", rule).correct
    scored = score_mmau("<think>low voice</think><answer>(A) Man.</answer>", choices, "Man", rule)
    assert (scored.answer, scored.correct, scored.answer_text) == ("Man", True, "(A) Man.")
    assert score_mmau("<answer>Woman</answer>", choices, "Man", rule).answer == "Woman"


@pytest.mark.parametrize("rule", ["answer_block_or_raw", "answer_block"])
def test_option_rule_uses_the_shared_parser(rule):
    opts = ["low", "high"]
    assert score_option("<think>x</think><answer>B</answer>", opts, "high", rule).correct
    assert score_option("<think>x</think><answer>high.</answer>", opts, "high", rule).correct
    assert not score_option("<think>x</think><answer>low or high</answer>", opts, "high", rule).correct
    assert not score_option("<think>x</think><answer>high</answer><answer>high</answer>", opts, "high", rule).correct


@pytest.mark.parametrize(
    "scorer, raw, options, label",
    [
        ("option", "high", ["low", "high"], "high"),
        ("option", "<think>A rising pitch.</think> high", ["low", "high"], "high"),
        ("avqa", "(B)", ["a dog", "a car"], "a car"),
        ("music_avqa", "two", ["one", "two", "three"], "two"),
        ("mmau", "Man", ["Man", "Woman"], "Man"),
        ("mmau", "<think>It is a man.</think> Man", ["Man", "Woman"], "Man"),
    ],
)
def test_an_untagged_right_answer_counts_only_under_the_default_rule(scorer, raw, options, label):
    clip = Clip("c", "s", "test", None, "file:///a.wav", 1.0, "q?", options, label, "acoustic", "k", "{}")
    lenient = score(scorer, raw, clip, "answer_block_or_raw")
    assert lenient.correct and lenient.answer == label and lenient.answer_text == raw.strip()
    strict = score(scorer, raw, clip, "answer_block")
    assert not strict.correct and strict.answer is None and strict.answer_text == ""


@pytest.mark.parametrize("rule", ["answer_block_or_raw", "answer_block"])
def test_an_empty_output_is_wrong_under_either_rule(rule):
    assert not score_option("", ["low", "high"], "high", rule).correct
    assert not score_mmau("   ", ["Man", "Woman"], "Man", rule).correct


def test_wilson_interval_holds_the_accuracy_inside_the_unit_range():
    # Computed, the upper bound of 5/5 rounds above 1, that of 6/6 below the accuracy itself.
    for n in range(1, 31):
        for k in range(n + 1):
            lo, hi = scoring.wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n)


def test_score_names_the_unlabelled_item_it_refuses():
    clip = Clip("clip-7", "s", "test", None, "file:///a.wav", 1.0, "q?", ["low", "high"], None, "acoustic", "k", "{}")
    with pytest.raises(ValueError, match="clip-7: cannot score an unlabelled item"):
        score("option", "<answer>high</answer>", clip, "answer_block")


def test_accuracy_reports_every_field_and_an_empty_set():
    lo, hi = scoring.wilson_interval(2, 3)
    assert scoring.accuracy([True, False, True]) == {"n": 3, "correct": 2, "accuracy": 2 / 3, "ci_low": lo, "ci_high": hi}
    assert scoring.accuracy([]) == {"n": 0, "correct": 0, "accuracy": 0.0, "ci_low": 0.0, "ci_high": 1.0}
