"""MUSIC-AVQA (Li et al., CVPR 2022): open-answer questions on music performance videos.

Annotation files are JSON arrays of records::

    {"video_id": "00006835", "question_id": 41, "type": "[\\"Audio\\", \\"Counting\\"]",
     "question_content": "Is the <Object> in the video always playing?",
     "templ_values": "[\\"suona\\"]", "question_deleted": 0, "anser": "yes"}

Two releases exist (``IngestConfig.music_avqa_release``): ``json_update`` (the default), the
authors' corrected annotations, read from ``json_update/avqa-{split}.json`` under the dataset root,
and ``original``, the first release, read from ``avqa-{split}.json`` at the root (the release
ships it in ``json/``: point ``ingest.annotations`` there or copy it). The release read is the
benchmark's annotation version in the evaluate summary and the report.

``type`` and ``templ_values`` are JSON *strings*; each ``<Placeholder>`` of ``question_content``
is filled, in order, from ``templ_values`` (a count mismatch is refused: ``template_mismatch``).
The answer key is spelled ``anser``. Records flagged ``question_deleted`` were withdrawn by the
dataset's authors and are quarantined (``question_deleted``), not silently skipped. The video is
``{video_id}.mp4`` under the dataset root; clip ids are ``music_avqa:{question_id}``.

A question id given by several records with *different* answers cannot be scored: every one of
those records is quarantined (``conflicting_answers``), none is guessed right. Records that
repeat an id with the same answer keep the usual rule: the first is used, the later ones are
``duplicate_id``.

Open answers become options, because an audio LM is scored here on a choice: the gold answer plus
up to ``n_options - 1`` distractors of the same *answer kind*. A question type mixes kinds (the
counting types also hold yes/no answers; Audio-Visual/Location mixes instruments, sides and yes/no;
Visual/Location mixes instruments and indoor/outdoor), so distractors drawn from the type would
leave the gold answer the only option of its kind, guessable from its form alone. The kinds of the
42 public answers:

    yes_no      yes, no
    number      zero, one, two, three, four, five, six, seven, eight, nine, ten, more than ten
    instrument  accordion, acoustic_guitar, bagpipe, banjo, bassoon, cello, clarinet, congas,
                drum, electric_bass, erhu, flute, guzheng, piano, pipa, saxophone, suona,
                trumpet, tuba, ukulele, violin, xylophone
    position    left, middle, right
    place       indoor, outdoor
    timing      simultaneously
    other       any answer outside this vocabulary

Distractors are the distinct answers of the gold answer's kind among the split's non-deleted
records (whatever their question type). The draw and the order are seeded by the question id
alone: the same file gives the same options in any process, shard or run. A kind with fewer
answers than ``n_options`` gives fewer options (yes/no questions get two, place questions two,
position questions three) rather than a distractor of another kind; an answer that is the only one
of its kind in the split has no distractor and is refused (``too_few_options``, naming the kind).

The one pairing of kinds is ``timing``. ``simultaneously``, the only timing answer, answers the
Audio-Visual/Temporal template "Which <Object> makes the sound <FL>?", and the official scorer
scores those items, so they are not refused. Which kind that template's other answers have
(positions, when several of one instrument play; instruments) is read from the split, not assumed:
a template with a timing answer in the split is *paired* with the kind most of its other answers
have there (ties by kind name), or with ``instrument``, the kind of the other Temporal templates'
answers, when the split holds no other answer to it. A timing label draws its distractors from
the paired kind, and a label of the paired kind under that template may draw ``simultaneously``
too, so that neither is the odd one out of its options. No option list mixes kinds except timing
with its template's paired kind.

Family: Audio -> acoustic, Visual -> visual, Audio-Visual -> unknown.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from sightsound_core.config import IngestConfig
from sightsound_core.datasets.common import Adapter, Refused, field, json_field
from sightsound_core.schemas import Clip

PLACEHOLDER = re.compile(r"<[^<>\s]+>")
FAMILIES = {"Audio": "acoustic", "Visual": "visual"}
ANSWER_KINDS: dict[str, tuple[str, ...]] = {
    "yes_no": ("yes", "no"),
    "number": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
               "ten", "more than ten"),
    "instrument": ("accordion", "acoustic_guitar", "bagpipe", "banjo", "bassoon", "cello",
                   "clarinet", "congas", "drum", "electric_bass", "erhu", "flute", "guzheng",
                   "piano", "pipa", "saxophone", "suona", "trumpet", "tuba", "ukulele", "violin",
                   "xylophone"),
    "position": ("left", "middle", "right"),
    "place": ("indoor", "outdoor"),
    "timing": ("simultaneously",),
}
KIND_OF = {answer: kind for kind, answers in ANSWER_KINDS.items() for answer in answers}
# Context keys naming a template's paired kind (see the module docstring), beside the kind pools.
PAIRED = "paired:"
RELEASE_FILES = {"json_update": "json_update/avqa-{split}.json", "original": "avqa-{split}.json"}


def native_id(record: dict[str, Any]) -> str:
    return str(field(record, "question_id", int))


def media_path(record: dict[str, Any]) -> str:
    return f"{field(record, 'video_id', str)}.mp4"


def question_type(record: dict[str, Any]) -> list[str]:
    kind = json_field(record, "type")
    if not (isinstance(kind, list) and len(kind) == 2 and all(isinstance(k, str) for k in kind)):
        raise Refused("bad_field_type", f"field 'type' must encode two strings, got {kind!r}")
    return kind


def fill_template(content: str, values: list[str]) -> str:
    """Fill each ``<Placeholder>`` in order.

    >>> fill_template("Is the <Object> on the <LR> louder?", ["piano", "left"])
    'Is the piano on the left louder?'
    """
    slots = PLACEHOLDER.findall(content)
    if len(slots) != len(values):
        raise Refused(
            "template_mismatch", f"{len(slots)} placeholder(s) {slots} but {len(values)} value(s) {values}"
        )
    filled = iter(values)
    return PLACEHOLDER.sub(lambda _: next(filled), content)


def answer_kind(answer: str) -> str:
    """The kind of an answer (see the module docstring).

    >>> [answer_kind(a) for a in ("no", "more than ten", "erhu", "middle", "outdoor", "banana")]
    ['yes_no', 'number', 'instrument', 'position', 'place', 'other']
    """
    return KIND_OF.get(answer, "other")


def answer_pools(records: list[Any]) -> dict[str, list[str]]:
    """Distinct answers of each answer kind ("number") among non-deleted records, sorted, and for
    each template with a timing answer its paired kind (``"paired:<template>": [kind]``).

    >>> r = lambda q, a: {"question_content": q, "anser": a}
    >>> answer_pools([r("Which <Object> first?", "simultaneously"), r("Which <Object> first?", "left"),
    ...               r("How many?", "two")])["paired:Which <Object> first?"]
    ['position']
    """
    pools: dict[str, set[str]] = {}
    kinds_of: dict[str, list[str]] = {}
    for record in records:
        try:
            if not isinstance(record, dict) or record.get("question_deleted"):
                continue
            answer = field(record, "anser", str)
            pools.setdefault(answer_kind(answer), set()).add(answer)
            kinds_of.setdefault(field(record, "question_content", str), []).append(answer_kind(answer))
        except Refused:
            continue
    out = {kind: sorted(answers) for kind, answers in sorted(pools.items())}
    for template, kinds in sorted(kinds_of.items()):
        if "timing" in kinds:
            others = sorted(k for k in kinds if k != "timing")
            out[PAIRED + template] = [max(others, key=others.count) if others else "instrument"]
    return out


def option_pool(pools: dict[str, list[str]], template: str, kind: str) -> list[str]:
    """The answers a label of ``kind`` asked by ``template`` draws its distractors from.

    >>> pools = {"timing": ["simultaneously"], "position": ["left", "right"], "paired:T": ["position"]}
    >>> option_pool(pools, "T", "timing"), option_pool(pools, "T", "position")
    (['left', 'right', 'simultaneously'], ['left', 'right', 'simultaneously'])
    >>> option_pool(pools, "U", "position")
    ['left', 'right']
    """
    paired = pools.get(PAIRED + template)
    if paired and kind in ("timing", paired[0]):
        return sorted({*pools.get(paired[0], []), *pools.get("timing", [])})
    return pools.get(kind, [])


def build_options(answer: str, pool: list[str], question_id: int | str, n_options: int) -> list[str]:
    """The gold answer plus up to ``n_options - 1`` distractors from ``pool``, seeded by the id.

    >>> build_options("two", ["one", "two", "three", "four", "five"], 41, 4)
    ['one', 'three', 'two', 'five']
    >>> build_options("yes", ["no", "yes"], 7, 4)
    ['no', 'yes']
    """
    rng = random.Random(f"music_avqa:{question_id}")
    others = sorted(a for a in set(pool) if a != answer)
    options = [answer, *rng.sample(others, min(n_options - 1, len(others)))]
    rng.shuffle(options)
    return options


def to_clip(
    record: dict[str, Any], pools: dict[str, list[str]], cfg: IngestConfig, media_uri: str
) -> Clip:
    qid = field(record, "question_id", int)
    deleted = record.get("question_deleted", 0)
    if deleted not in (0, 1, False, True):
        raise Refused("bad_field_type", f"field 'question_deleted' is {deleted!r}, expected 0 or 1")
    if deleted:
        raise Refused("question_deleted", f"question {qid} is marked deleted by the dataset")
    kind = question_type(record)
    values = json_field(record, "templ_values")
    if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
        raise Refused("bad_field_type", f"field 'templ_values' must encode a list of strings, got {values!r}")
    question = fill_template(field(record, "question_content", str), values)
    answer = field(record, "anser", str)
    category = "/".join(kind)
    answers_kind = answer_kind(answer)
    template = field(record, "question_content", str)
    options = build_options(answer, option_pool(pools, template, answers_kind), qid, cfg.n_options)
    if len(options) < 2:
        raise Refused(
            "too_few_options",
            f"answer {answer!r} is the only {answers_kind} answer in the split: no distractor of its kind",
        )
    meta = {
        "video_id": record["video_id"],
        "question_id": qid,
        "type": kind,
        "question_content": record["question_content"],
        "templ_values": values,
        "answer": answer,
        "answer_kind": answers_kind,
    }
    return Clip(
        clip_id=f"music_avqa:{qid}",
        source="music_avqa",
        split=cfg.split,
        video_uri=media_uri,
        audio_uri=media_uri,
        duration_s=0.0,
        question=question,
        options=options,
        label=answer,
        family=FAMILIES.get(kind[0], "unknown"),
        category=category,
        meta=json.dumps(meta, sort_keys=True),
    )


def answer_of(record: dict[str, Any]) -> str:
    return field(record, "anser", str)


def _pools_for(pools: dict[str, list[str]], records: list[Any]) -> dict[str, list[str]]:
    """The part of the pools the options of ``records`` are drawn from."""
    keys = set()
    for record in records:
        try:
            kind, template = answer_kind(answer_of(record)), field(record, "question_content", str)
        except (Refused, TypeError, AttributeError):
            continue
        keys.add(kind)
        paired = pools.get(PAIRED + template)
        if paired and kind in ("timing", paired[0]):
            keys |= {PAIRED + template, paired[0], "timing"}
    return {k: pools[k] for k in sorted(keys) if k in pools}


ADAPTER = Adapter(
    name="music_avqa",
    default_annotations=lambda cfg: RELEASE_FILES[cfg.music_avqa_release].format(split=cfg.split),
    native_id=native_id,
    media_path=media_path,
    to_clip=to_clip,
    context=answer_pools,
    context_for=_pools_for,
    answer_of=answer_of,
)
