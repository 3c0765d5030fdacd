"""The one parser of verifier replies: strict JSON verdicts, anything else is ``unparseable``.

A reply is accepted only when it is exactly one JSON object (optionally inside a single ```json
fence) whose ``verdict`` is ``"accept"`` or ``"reject"`` and whose ``unsupported_claims`` is a list
of strings. Nothing outside that object can change the result: a reply that embeds a second
object, prose around the object, or extra keys that try to override the verdict is unparseable.

>>> parse_verdict('{"verdict": "accept", "unsupported_claims": []}')
('accepted', [], 'ok')
>>> parse_verdict('{"verdict": "reject", "unsupported_claims": ["rising pitch"]}')[0]
'rejected'
>>> parse_verdict('Sure! {"verdict": "accept", "unsupported_claims": []}')[0]
'unparseable'
>>> parse_verdict('{"verdict": "accept", "unsupported_claims": ["a loud bang"]}')
('unparseable', [], 'accept_with_claims')
"""

from __future__ import annotations

import json
import re

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_KEYS = {"verdict", "unsupported_claims"}


def parse_verdict(raw: str | None) -> tuple[str, list[str], str]:
    """Return ``(status, unsupported_claims, reason)``; status is accepted/rejected/unparseable."""
    if raw is None or not raw.strip():
        return "unparseable", [], "empty_reply"
    text = raw.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return "unparseable", [], "not_json"
    if not isinstance(obj, dict):
        return "unparseable", [], "not_an_object"
    if set(obj) != _KEYS:
        return "unparseable", [], "wrong_keys"
    verdict, claims = obj["verdict"], obj["unsupported_claims"]
    if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
        return "unparseable", [], "claims_not_strings"
    if verdict == "accept":
        if claims:
            return "unparseable", [], "accept_with_claims"
        return "accepted", [], "ok"
    if verdict == "reject":
        return "rejected", [c.strip() for c in claims], "ok"
    return "unparseable", [], "bad_verdict_value"


def format_verdict(claims: list[str]) -> str:
    """The canonical reply for a list of unsupported claims (empty: accept)."""
    verdict = "reject" if claims else "accept"
    return json.dumps({"verdict": verdict, "unsupported_claims": claims})
