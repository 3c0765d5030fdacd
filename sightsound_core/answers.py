"""The one parser of model output. Voting, verification, rewards and scoring all call it.

Model text is expected as ``<think>reasoning</think><answer>option</answer>``. Parsing never raises:
malformed text parses to a ``Parsed`` whose ``status`` names what is wrong, so every consumer sees
the same verdict on the same text.

>>> p = parse_response("<think>A low hum.</think><answer>B. the drum</answer>", ["the flute", "the drum"])
>>> (p.status, p.option)
('ok', 'the drum')
>>> parse_response("the drum", ["the flute", "the drum"]).status
'no_answer_tag'
"""

from __future__ import annotations

import dataclasses
import re
import string

OK = "ok"
EMPTY = "empty"
NO_ANSWER_TAG = "no_answer_tag"
TRUNCATED = "truncated"
MULTIPLE_ANSWERS = "multiple_answers"
NESTED_TAGS = "nested_tags"
EMPTY_ANSWER = "empty_answer"
NOT_AN_OPTION = "not_an_option"

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_STRICT_RE = re.compile(
    r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$",
    re.DOTALL | re.IGNORECASE,
)
_LETTER_RE = re.compile(
    r"^(?P<open>\()?(?P<letter>[A-Za-z])(?P<mark>[\).:])?(?:\s+(?P<rest>.*))?$", re.DOTALL
)
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


@dataclasses.dataclass(frozen=True)
class Parsed:
    """What a piece of model text says.

    Attributes:
        think: content of the first ``<think>`` block (stripped), None when absent.
        answer_text: content of the ``<answer>`` block (stripped), None when absent.
        option: the option ``answer_text`` maps to, None when it maps to none (or no options given).
        status: ``ok`` or the reason the text is not a usable answer.
        well_formed: exactly ``<think>non-empty</think><answer>non-empty</answer>`` and nothing else.
    """

    think: str | None
    answer_text: str | None
    option: str | None
    status: str
    well_formed: bool


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed.

    >>> normalize("  The  Violin! ")
    'the violin'
    """
    return " ".join(text.lower().translate(_PUNCT).split())


def match_option(answer_text: str, options: list[str]) -> str | None:
    """Map free answer text to one of ``options``, or None when it names none or several.

    Accepts the option itself (case and punctuation ignored), its letter (``B``, ``(B)``, ``B.``,
    ``B. the drum``), or text that contains exactly one option as a whole phrase.

    A marked letter (``B.``, ``(B)``, ``B)``, ``B:``) followed by text counts only when the text
    names the letter's own option. When it names another (``B. the flute`` where B is the drum)
    the answer contradicts itself and maps to None, neither option: a reward or a score must not
    pick one half of a contradiction. A bare letter followed by words (``A low tone``) is read as
    plain text, since it may be an article. Punctuation alone after a letter is no text
    (``(B) .`` is ``B``).

    >>> match_option("(b)", ["tone", "chirp"])
    'chirp'
    >>> match_option("It is the chirp.", ["tone", "chirp"])
    'chirp'
    >>> match_option("tone or chirp", ["tone", "chirp"]) is None
    True
    >>> match_option("B. the flute", ["the flute", "the drum"]) is None
    True
    """
    if not options:
        return None
    norm_options = [normalize(o) for o in options]
    text = normalize(answer_text)
    if not text:
        return None
    for option, norm in zip(options, norm_options):
        if text == norm:
            return option
    letter = _LETTER_RE.match(answer_text.strip())
    if letter:
        index = ord(letter.group("letter").upper()) - ord("A")
        if 0 <= index < len(options):
            rest = normalize(letter.group("rest") or "")
            named = _named_option(rest, options, norm_options) if rest else options[index]
            if named == options[index]:
                return named
            if letter.group("open") or letter.group("mark"):
                return None
    return _named_option(text, options, norm_options)


def _named_option(text: str, options: list[str], norm_options: list[str]) -> str | None:
    """The one option that normalized ``text`` contains as a whole phrase, or None."""
    padded = f" {text} "
    spans: dict[str, list[tuple[int, int]]] = {}
    for option, norm in zip(options, norm_options):
        starts = [m.start() + 1 for m in re.finditer(f"(?= {re.escape(norm)} )", padded)] if norm else []
        if starts:
            spans[option] = [(s, s + len(norm)) for s in starts]
    hits = list(spans)
    # An occurrence inside a longer option's occurrence ("bell" in "small bell") is not a second answer.
    hits = [h for h in hits if not all(_covered(span, h, spans) for span in spans[h])]
    return hits[0] if len(hits) == 1 else None


def _covered(span: tuple[int, int], option: str, spans: dict[str, list[tuple[int, int]]]) -> bool:
    start, end = span
    return any(o != option and a <= start and end <= b for o in spans for a, b in spans[o])


def parse_response(text: str | None, options: list[str] | None = None) -> Parsed:
    """Parse model text into think / answer / option with a status (see module docstring).

    >>> parse_response("<think>x</think><answer>A</answer><answer>B</answer>", ["p", "q"]).status
    'multiple_answers'
    >>> parse_response("<think>x</think><answer>maybe", ["p", "q"]).status
    'truncated'
    >>> parse_response("<think>x</think><answer>r</answer>", ["p", "q"]).status
    'not_an_option'
    """
    if text is None or not text.strip():
        return Parsed(None, None, None, EMPTY, False)
    thinks = _THINK_RE.findall(text)
    think = thinks[0].strip() if thinks else None
    strict = _STRICT_RE.match(text)
    answers = _ANSWER_RE.findall(text)
    if not answers:
        status = TRUNCATED if re.search(r"<answer>", text, re.IGNORECASE) else NO_ANSWER_TAG
        return Parsed(think, None, None, status, False)
    if len(answers) > 1:
        return Parsed(think, None, None, MULTIPLE_ANSWERS, False)
    answer_text = answers[0].strip()
    if re.search(r"</?(think|answer)>", answer_text, re.IGNORECASE) or (
        think is not None and re.search(r"<think>", thinks[0], re.IGNORECASE)
    ):
        return Parsed(think, None, None, NESTED_TAGS, False)
    well_formed = bool(strict) and bool(think) and bool(answer_text)
    if not answer_text:
        return Parsed(think, answer_text, None, EMPTY_ANSWER, False)
    if options is None:
        return Parsed(think, answer_text, None, OK, well_formed)
    option = match_option(answer_text, options)
    if option is None:
        return Parsed(think, answer_text, None, NOT_AN_OPTION, well_formed)
    return Parsed(think, answer_text, option, OK, well_formed)


def format_response(think: str | None, answer: str) -> str:
    """The canonical target text: what the student is trained to write.

    >>> format_response("A rising whistle.", "chirp")
    '<think>A rising whistle.</think><answer>chirp</answer>'
    >>> format_response(None, "chirp")
    '<answer>chirp</answer>'
    """
    if think is None:
        return f"<answer>{answer}</answer>"
    return f"<think>{think}</think><answer>{answer}</answer>"
