"""Question synthesis for unlabeled corpora (beyond the paper: YouTube-style folders of videos).

A folder of videos has no questions. Its adapter marks each clip ``meta["needs_questions"]`` and
gives it a placeholder yes/no question. Here the teacher watches the silent frames and proposes
audio-focused multiple-choice questions (``prompts.QUESTIONS_SYSTEM``, one JSON object); each
valid proposal becomes a Clip that replaces the placeholder, with ``label=None``: its answer is
decided by the same K-sample vote as any question, and a kept answer becomes a pseudo-label. The
proposer's own answer is kept in ``meta["proposed_answer"]`` for reports, never as a label.

Malformed proposals are dropped with a reason, as Quarantine rows: ``not_json``, ``no_questions``,
``bad_question``, ``too_few_options``, ``duplicate_options``, ``answer_not_in_options``,
``duplicate_question``, ``extra_question`` (more than asked for), ``proposer_error``.

``questions_shard`` is the stage form (shard i of clips -> shard i of clips, unflagged clips passed
through unchanged), so it slots between ingest and teacher without changing any other stage.
The simulated teacher (``backends.sim.SimTeacher.propose``) proposes from the synthetic world's
pixels, so all of this runs offline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pyarrow as pa

from sightsound_core.answers import match_option, normalize
from sightsound_core.backends.base import QuestionProposer, TeacherRequest, TeacherResult
from sightsound_core.backends.registry import make_teacher
from sightsound_core.config import TeacherConfig
from sightsound_core.schemas import Clip, Quarantine
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_map, run_plan
from sightsound_core.storage import ObjectStore

log = logging.getLogger(__name__)

STAGE = "questions"
FAMILIES = ("visual", "acoustic")


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One valid proposed question."""

    question: str
    options: list[str]
    answer: str
    family: str
    category: str


def _json_object(text: str) -> Any:
    """The JSON object in a reply, tolerating a code fence or words around it; None if none."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        return json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None


def parse_proposals(text: str, n: int) -> tuple[list[Proposal], list[tuple[str, str]]]:
    """Valid proposals (at most ``n``) and (reason, detail) for each dropped one.

    >>> ok, bad = parse_proposals('{"questions": [{"question": "Which sounds?", '
    ...     '"options": ["the drum", "the bell"], "answer": "B", "family": "visual"}]}', 3)
    >>> (ok[0].answer, ok[0].category, bad)
    ('the bell', 'synthesized', [])
    >>> parse_proposals("Sure! Here are some questions.", 3)[1]
    [('not_json', 'Sure! Here are some questions.')]
    """
    data = _json_object(text)
    if not isinstance(data, dict):
        return [], [("not_json", text[:200])]
    items = data.get("questions")
    if not isinstance(items, list) or not items:
        return [], [("no_questions", text[:200])]
    kept: list[Proposal] = []
    dropped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        problem = _problem(item)
        if problem:
            dropped.append((problem, f"question {i}: {json.dumps(item)[:200]}"))
            continue
        question = item["question"].strip()
        options = [o.strip() for o in item["options"]]
        if normalize(question) in seen:
            dropped.append(("duplicate_question", f"question {i}: {question}"))
            continue
        if len(kept) == n:
            dropped.append(("extra_question", f"question {i}: {n} asked for"))
            continue
        seen.add(normalize(question))
        family = item.get("family") if item.get("family") in FAMILIES else "unknown"
        category = item.get("category") if isinstance(item.get("category"), str) and item.get("category") else "synthesized"
        answer = match_option(str(item["answer"]), options)
        kept.append(Proposal(question, options, answer, family, category.strip()))
    return kept, dropped


def _problem(item: Any) -> str | None:
    """Why a proposed question is unusable, or None."""
    if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
        return "bad_question"
    options = item.get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        return "bad_question"
    if len(options) < 2:
        return "too_few_options"
    if len({normalize(o) for o in options}) != len(options):
        return "duplicate_options"
    if not isinstance(item.get("answer"), str) or match_option(item["answer"], [o.strip() for o in options]) is None:
        return "answer_not_in_options"
    return None


def needs_questions(clip: Clip) -> bool:
    return bool(clip.meta_dict().get("needs_questions"))


def synthesize_questions(
    requests: list[TeacherRequest], proposer: QuestionProposer, n: int, seed: int, stage: str = STAGE
) -> tuple[list[Clip], list[Quarantine]]:
    """Proposed questions for each request's clip as new Clips, and quarantine rows for the rest.

    Question ``j`` of clip ``c`` is ``{c}#q{j}``; it keeps the clip's media, source and split,
    has ``label=None``, and its meta carries the clip's meta without ``needs_questions`` plus
    ``synthesized_from``, ``proposed_answer`` and ``proposer``. A clip whose proposals are all
    dropped yields no Clip, only its quarantine rows.
    """
    if not requests:
        return [], []
    results = proposer.propose(requests, n, seed)
    clips: list[Clip] = []
    quarantine: list[Quarantine] = []
    for req, res in zip(requests, results, strict=True):
        source = req.clip
        if res.error is not None or not res.samples:
            quarantine.append(Quarantine(stage, source.clip_id, "proposer_error", res.error or "no reply"))
            continue
        proposals, dropped = parse_proposals(res.samples[0].text, n)
        quarantine += [Quarantine(stage, source.clip_id, reason, detail) for reason, detail in dropped]
        meta = {k: v for k, v in source.meta_dict().items() if k != "needs_questions"}
        for j, p in enumerate(proposals):
            clip_meta = {**meta, "synthesized_from": source.clip_id, "proposed_answer": p.answer,
                         "proposer": proposer.model}
            clips.append(
                dataclasses.replace(
                    source,
                    clip_id=f"{source.clip_id}#q{j}",
                    question=p.question,
                    options=p.options,
                    label=None,
                    family=p.family,
                    category=p.category,
                    meta=json.dumps(clip_meta, sort_keys=True),
                )
            )
    return clips, quarantine


# -- the stage -------------------------------------------------------------------------------------
def questions_payload(cfg: TeacherConfig) -> dict[str, Any]:
    """What changes the proposed questions (not K, the vote's business)."""
    keys = ("backend", "model", "temperature", "top_p", "max_new_tokens", "seed", "frames",
            "media", "questions_per_clip", "questions_prompt_version")
    payload = cfg.hash_payload()
    return {k: payload[k] for k in keys}


def plan_questions(cfg: TeacherConfig, store: ObjectStore, run: str, clips: StageRef) -> StagePlan:
    return plan_map(store, run, STAGE, questions_payload(cfg), {"clips": clips}, primary="clips")


def questions_shard(
    cfg: TeacherConfig, store: ObjectStore, job: ShardJob
) -> tuple[pa.Table, pa.Table | None]:
    """Shard i of clips with every flagged clip replaced by its synthesized questions."""
    from sightsound_core.teacher import load_requests

    clips = Clip.from_table(store.read_table(job.inputs["clips"]))
    flagged = [c for c in clips if needs_questions(c)]
    requests, quarantine = load_requests(flagged, cfg, store, job.stage)
    made: list[Clip] = []
    if requests:
        proposer = make_teacher(cfg)
        for start in range(0, len(requests), cfg.batch_size):
            batch = requests[start : start + cfg.batch_size]
            new, bad = synthesize_questions(batch, proposer, cfg.questions_per_clip, cfg.seed, job.stage)
            made += new
            quarantine += bad
    by_source: dict[str, list[Clip]] = {}
    for c in made:
        by_source.setdefault(c.meta_dict()["synthesized_from"], []).append(c)
    out = [q for c in clips for q in (by_source.get(c.clip_id, []) if needs_questions(c) else [c])]
    return Clip.to_table(out), Quarantine.to_table(quarantine)


def run_questions(cfg: TeacherConfig, store: ObjectStore, run: str, clips: StageRef) -> StageRef:
    """Between ingest and teacher: every downstream stage then reads these clips."""
    plan = plan_questions(cfg, store, run, clips)
    return run_plan(store, plan, lambda job: questions_shard(cfg, store, job))
