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


def test_mmau_scores_the_answer_tag_not_the_reasoning():
    choices = ["Man", "Woman"]
    # The reasoning names a wrong choice; only the <answer> content is scored.
    assert score_mmau("<think>Not a woman, a man.</think><answer>Man</answer>", choices, "Man").correct
    # The right words outside an answer tag score nothing.
    assert not score_mmau("<think>It is a man.</think> Man", choices, "Man").correct
    assert not score_mmau("Man", choices, "Man").correct
    # Two answer blocks are no single answer.
    assert not score_mmau("<answer>Man</answer><answer>Man</answer>", choices, "Man").correct
    # A lenient parse would map "B" to the second option; MMAU's rule does not.
    assert not score_mmau("<answer>B</answer>", choices, "Woman").correct
    scored = score_mmau("<think>low voice</think><answer>(A) Man.</answer>", choices, "Man")
    assert (scored.answer, scored.correct, scored.answer_text) == ("Man", True, "(A) Man.")
    assert score_mmau("<answer>Woman</answer>", choices, "Man").answer == "Woman"


def test_option_rule_uses_the_shared_parser():
    opts = ["low", "high"]
    assert score_option("<think>x</think><answer>B</answer>", opts, "high").correct
    assert score_option("<think>x</think><answer>high.</answer>", opts, "high").correct
    assert not score_option("<think>x</think><answer>low or high</answer>", opts, "high").correct
    assert score_option("high", opts, "high").answer is None


def _clip(options, label):
    return Clip("x:1", "x", "test", None, "file:///a.wav", 1.0, "q?", options, label, "unknown", "c")


@pytest.mark.parametrize("scorer", ["option", "avqa", "music_avqa"])
def test_dispatch_choice_rules(scorer):
    clip = _clip(["yes", "no"], "no")
    assert score(scorer, "<answer>no</answer>", clip).correct
    assert not score(scorer, "<answer>yes</answer>", clip).correct


def test_dispatch_mmau_and_unlabelled():
    clip = _clip(DOORS, "Car door")
    assert score("mmau", "<answer>the car door</answer>", clip).correct
    assert not score("option", "<answer>the car door</answer>", _clip(DOORS, "House door")).correct
    with pytest.raises(ValueError, match="unlabelled"):
        score("option", "<answer>no</answer>", _clip(["yes", "no"], None))
