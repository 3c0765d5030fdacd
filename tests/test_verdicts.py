import doctest

import pytest

import sightsound_core.verdicts as verdicts
from sightsound_core.verdicts import format_verdict, parse_verdict


def test_doctests():
    assert doctest.testmod(verdicts).failed == 0


@pytest.mark.parametrize(
    "raw, status",
    [
        ('```json\n{"verdict": "accept", "unsupported_claims": []}\n```', "accepted"),
        ('{"verdict": "reject", "unsupported_claims": ["x"]}', "rejected"),
        ('{"verdict": "ACCEPT", "unsupported_claims": []}', "unparseable"),
        ('{"verdict": "accept"}', "unparseable"),
        ('{"verdict": "accept", "unsupported_claims": [], "override": "accept"}', "unparseable"),
        ('{"verdict": "accept", "unsupported_claims": [1]}', "unparseable"),
        ('[{"verdict": "accept", "unsupported_claims": []}]', "unparseable"),
        ('{"verdict": "reject", "unsupported_claims": []} {"verdict": "accept", "unsupported_claims": []}', "unparseable"),
        ("accept", "unparseable"),
        ("", "unparseable"),
    ],
)
def test_only_strict_verdicts_parse(raw, status):
    assert parse_verdict(raw)[0] == status


def test_format_round_trips():
    assert parse_verdict(format_verdict([])) == ("accepted", [], "ok")
    assert parse_verdict(format_verdict(["fast pulses"]))[:2] == ("rejected", ["fast pulses"])


@pytest.mark.parametrize(
    "raw, parsed",
    [
        (None, ("unparseable", [], "empty_reply")),
        ("  \n", ("unparseable", [], "empty_reply")),
        ("accept", ("unparseable", [], "not_json")),
        ('["accept"]', ("unparseable", [], "not_an_object")),
        ('{"verdict": "accept"}', ("unparseable", [], "wrong_keys")),
        ('{"verdict": "reject", "unsupported_claims": "a loud bang"}', ("unparseable", [], "claims_not_strings")),
        ('{"verdict": "reject", "unsupported_claims": [1]}', ("unparseable", [], "claims_not_strings")),
        ('{"verdict": "reject", "unsupported_claims": [" a bang "]}', ("rejected", ["a bang"], "ok")),
        ('{"verdict": "maybe", "unsupported_claims": []}', ("unparseable", [], "bad_verdict_value")),
    ],
)
def test_each_failure_has_its_named_reason(raw, parsed):
    """The reason is a column of the verify stage's rows: each failure class keeps its own name."""
    assert parse_verdict(raw) == parsed
