import doctest

import pytest

import sightsound_core.answers as answers
from sightsound_core.answers import match_option, parse_response

OPTS = ["the red circle", "the blue square", "high", "low"]


def test_doctests():
    assert doctest.testmod(answers).failed == 0


@pytest.mark.parametrize(
    "text, status, option",
    [
        ("<think>It is red.</think><answer>the red circle</answer>", "ok", "the red circle"),
        ("<think>x</think><answer>(B)</answer>", "ok", "the blue square"),
        ("<think>x</think><answer>C. high</answer>", "ok", "high"),
        ("<think>x</think>\n<answer> LOW </answer>\n", "ok", "low"),
        ("the red circle", "no_answer_tag", None),
        ("", "empty", None),
        (None, "empty", None),
        ("<think>x</think><answer>high</answer><answer>low</answer>", "multiple_answers", None),
        ("<think>x</think><answer><answer>high</answer></answer>", "nested_tags", None),
        ("<think>x</think><answer>high <think>y</think></answer>", "nested_tags", None),
        ("<think>a <think>b</think></think><answer>high</answer>", "nested_tags", None),
        ("<think>x</think><answer>purple</answer>", "not_an_option", None),
        ("<think>x</think><answer>high or low</answer>", "not_an_option", None),
        ("<think>x</think><answer></answer>", "empty_answer", None),
        ("<think>the pitch is hi", "no_answer_tag", None),
        ("<think>x</think><answer>hig", "truncated", None),
        ("<think>x</think><answer>E</answer>", "not_an_option", None),
    ],
)
def test_parser_cases(text, status, option):
    p = parse_response(text, OPTS)
    assert (p.status, p.option) == (status, option)


def test_well_formed_needs_nonempty_think_and_nothing_else():
    assert parse_response("<think>a</think><answer>high</answer>", OPTS).well_formed
    assert not parse_response("<think></think><answer>high</answer>", OPTS).well_formed
    assert not parse_response("<answer>high</answer>", OPTS).well_formed
    assert not parse_response("pre <think>a</think><answer>high</answer>", OPTS).well_formed
    # Empty think still parses to an answer (voting uses it) but is not well formed.
    assert parse_response("<think></think><answer>high</answer>", OPTS).option == "high"


BELLS = ["bell", "small bell"]
FLUTE_DRUM = ["the flute", "the drum"]


@pytest.mark.parametrize(
    "text, options, option",
    [
        # An option inside a longer one is no second answer; named apart, it is.
        ("the small bell", BELLS, "small bell"),
        ("a bell rang", BELLS, "bell"),
        ("the bell, then the small bell", BELLS, None),
        ("low and yellow", ["low", "yellow"], None),
        # A marked letter whose text names another option contradicts itself.
        ("B. the flute", FLUTE_DRUM, None),
        ("(B) the flute", FLUTE_DRUM, None),
        ("B: the flute", FLUTE_DRUM, None),
        ("B. the drum", FLUTE_DRUM, "the drum"),
        ("B) it is the drum", FLUTE_DRUM, "the drum"),
        # Punctuation after a letter names nothing, so it is the letter alone.
        ("(B) .", FLUTE_DRUM, "the drum"),
        ("B: ?!", FLUTE_DRUM, "the drum"),
        # A bare letter before words may be an article: the words decide.
        ("A low tone", ["high tone", "low tone"], "low tone"),
    ],
)
def test_match_option_cases(text, options, option):
    assert match_option(text, options) == option
