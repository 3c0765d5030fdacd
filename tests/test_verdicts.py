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
