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
        ("a small bell rang", ["small", "small bell"], "small bell"),
        # A marked letter whose text names another option contradicts itself.
        ("B. the flute", FLUTE_DRUM, None),
        ("(B) the flute", FLUTE_DRUM, None),
        ("B: the flute", FLUTE_DRUM, None),
        ("B. the drum", FLUTE_DRUM, "the drum"),
        ("B) it is the drum", FLUTE_DRUM, "the drum"),
        # The first option has a letter too.
        ("A", FLUTE_DRUM, "the flute"),
        ("(a)", FLUTE_DRUM, "the flute"),
        # Punctuation after a letter names nothing, so it is the letter alone.
        ("(B) .", FLUTE_DRUM, "the drum"),
        ("B: ?!", FLUTE_DRUM, "the drum"),
        # A bare letter before words may be an article: the words decide.
        ("A low tone", ["high tone", "low tone"], "low tone"),
    ],
)
def test_match_option_cases(text, options, option):
    assert match_option(text, options) == option


@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("", OPTS, ("empty", None, None, None, False)),
        ("<think>hm</think> high", OPTS, ("no_answer_tag", "hm", None, None, False)),
        # Tags are read whatever their case.
        ("<think>hm</think><ANSWER>hig", OPTS, ("truncated", "hm", None, None, False)),
        ("<think>hm</think><answer>high</answer><answer>low</answer>", OPTS, ("multiple_answers", "hm", None, None, False)),
        ("<think>hm</think><answer>high <THINK>y</THINK></answer>", OPTS, ("nested_tags", "hm", None, None, False)),
        ("<think>a <THINK>b</think></think><answer>high</answer>", OPTS, ("nested_tags", "a <THINK>b", None, None, False)),
        ("<think>hm</think><answer> </answer>", OPTS, ("empty_answer", "hm", "", None, False)),
        ("<think>hm</think><answer>purple</answer>", OPTS, ("not_an_option", "hm", "purple", None, True)),
        ("<think>hm</think><answer>C. high</answer>", OPTS, ("ok", "hm", "C. high", "high", True)),
        # Without options any answer text is an answer (scoring reads it so), mapped to no option.
        ("<think>hm</think><answer>a violin</answer>", None, ("ok", "hm", "a violin", None, True)),
    ],
)
def test_every_status_keeps_what_the_text_said(text, options, expected):
    """The teacher stage stores ``think`` for every sample and scoring reads ``answer_text``, so
    both survive an unusable answer; ``well_formed`` is a plain bool, never None."""
    p = parse_response(text, options)
    assert (p.status, p.think, p.answer_text, p.option, p.well_formed) == expected
