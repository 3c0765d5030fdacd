"""Question synthesis for unlabeled clips: proposals, drops with reasons, the stage, the vote after."""

from __future__ import annotations

import dataclasses
import doctest
import json

import numpy as np
import pytest

import sightsound_core.questions as questions
from sightsound_core.backends.base import Generation, QuestionProposer, TeacherRequest, TeacherResult
from sightsound_core.backends.sim import SimTeacher
from sightsound_core.config import PipelineConfig, SyntheticConfig
from sightsound_core.datasets.synthetic import synthesize
from sightsound_core.media.decode import sample_times
from sightsound_core.questions import (
    parse_proposals,
    run_questions,
    synthesize_questions,
)
from sightsound_core.schemas import Clip, Quarantine, Vote
from sightsound_core.stage import plan_sources, read_all, run_plan

CFG = SyntheticConfig(seed=5)


def test_doctests():
    assert doctest.testmod(questions).failed == 0


def _q(question="Which object sounds?", options=("the drum", "the bell"), answer="the drum", **extra):
    return {"question": question, "options": list(options), "answer": answer, **extra}


@pytest.mark.parametrize(
    "text, reasons",
    [
        ("not json at all", ["not_json"]),
        ('{"questions": [', ["not_json"]),
        ('["a list", "not an object"]', ["not_json"]),
        ('{"questions": []}', ["no_questions"]),
        ('{"items": [1]}', ["no_questions"]),
        (json.dumps({"questions": ["just a string"]}), ["bad_question"]),
        (json.dumps({"questions": [_q(question="  ")]}), ["bad_question"]),
        (json.dumps({"questions": [_q(options=["the drum"])]}), ["too_few_options"]),
        (json.dumps({"questions": [_q(options=["the drum", "The Drum!"])]}), ["duplicate_options"]),
        (json.dumps({"questions": [_q(answer="the flute")]}), ["answer_not_in_options"]),
        (json.dumps({"questions": [_q(answer=2)]}), ["answer_not_in_options"]),
        (json.dumps({"questions": [_q(), _q(question="which object SOUNDS")]}), ["duplicate_question"]),
        (json.dumps({"questions": [_q(), _q(question="How many?", options=["1", "2"], answer="2"),
                                   _q(question="Loud?", options=["yes", "no"], answer="no")]}), ["extra_question"]),
    ],
)
def test_malformed_proposals_are_dropped_with_a_reason(text, reasons):
    kept, dropped = parse_proposals(text, n=2)
    assert [r for r, _ in dropped] == reasons
    assert all(detail for _, detail in dropped)
    assert len(kept) <= 2


def test_good_proposals_parse_through_the_shared_option_matcher():
    text = "```json\n" + json.dumps({"questions": [
        _q(answer="A", family="visual", category="which_object"),
        _q(question="Is it high?", options=["high", "low"], answer="(b)", family="sonic"),
    ]}) + "\n```"
    kept, dropped = parse_proposals(text, n=3)
    assert dropped == []
    assert [(p.answer, p.family, p.category) for p in kept] == [
        ("the drum", "visual", "which_object"), ("low", "unknown", "synthesized")]


def _requests(n: int, flag: bool = True) -> list[TeacherRequest]:
    out = []
    for i in range(n):
        scene = synthesize(CFG, i)
        times = sample_times(scene.clip.duration_s, 2.0, 16)
        index = np.floor(times * CFG.fps + 1e-9).astype(int)
        clip = scene.clip
        if flag:
            meta = {"needs_questions": True, "path": f"v{i}.mp4"}
            clip = dataclasses.replace(clip, clip_id=f"folder:v{i}.mp4", source="folder", label=None,
                                       family="unknown", meta=json.dumps(meta))
        out.append(TeacherRequest(clip, scene.frames[index], index / CFG.fps))
    return out


def test_sim_proposer_writes_valid_visual_questions():
    proposer = SimTeacher()
    assert isinstance(proposer, QuestionProposer)
    requests = _requests(20)
    clips, bad = synthesize_questions(requests, proposer, n=2, seed=0)
    assert bad == []
    assert len(clips) == 2 * 20
    for c in clips:
        meta = c.meta_dict()
        assert c.clip_id.startswith(meta["synthesized_from"] + "#q")
        assert c.label is None and "needs_questions" not in meta and meta["path"].endswith(".mp4")
        assert meta["proposed_answer"] in c.options and c.family == "visual"
        assert c.video_uri == next(r.clip.video_uri for r in requests if r.clip.clip_id == meta["synthesized_from"])
    # Asked for more, it adds acoustic questions (which it can only guess).
    more, _ = synthesize_questions(requests[:5], proposer, n=5, seed=0)
    assert {c.family for c in more} == {"visual", "acoustic"}


class ScriptedProposer:
    name = "scripted"
    model = "scripted://m"

    def __init__(self, replies):
        self.replies = replies

    def load(self):
        pass

    def propose(self, requests, n, seed):
        out = []
        for req, reply in zip(requests, self.replies):
            if reply is None:
                out.append(TeacherResult(req.clip.clip_id, [], 0.0, error="http_500: gave up"))
            else:
                out.append(TeacherResult(req.clip.clip_id, [Generation(reply, "stop")], 0.0))
        return out


def test_every_clip_yields_questions_or_quarantine_rows():
    good = json.dumps({"questions": [_q(), _q(question="Count?", options=["1", "2"], answer="1", family="visual")]})
    half = json.dumps({"questions": [_q(), _q(question="Loud?", options=["yes"], answer="yes")]})
    requests = _requests(4)
    clips, bad = synthesize_questions(requests, ScriptedProposer([good, half, "oops", None]), n=3, seed=0)
    ids = [r.clip.clip_id for r in requests]
    assert [c.clip_id for c in clips] == [f"{ids[0]}#q0", f"{ids[0]}#q1", f"{ids[1]}#q0"]
    assert [(q.input, q.reason) for q in bad] == [
        (ids[1], "too_few_options"), (ids[2], "not_json"), (ids[3], "proposer_error")]
    assert all(q.stage == "questions" for q in bad)


def _clip_ref(store, clips):
    plan = plan_sources(store, "u", "ingest", {"clips": [c.clip_id for c in clips]}, [{"i": 0}])
    return run_plan(store, plan, lambda job: (Clip.to_table(clips), None))


def test_questions_stage_then_teacher_and_vote_give_pseudo_labels(tmp_path, file_store):
    from sightsound_core.datasets.synthetic import generate_clips
    from sightsound_core.teacher import run_teacher, run_vote

    written = generate_clips(CFG, str(tmp_path), 0, 8)
    flagged = [dataclasses.replace(c, clip_id=f"folder:v{i}.mp4", source="folder", label=None, family="unknown",
                                   meta=json.dumps({"needs_questions": True}))
               for i, c in enumerate(written[:6])]
    clips = flagged + written[6:]  # two labeled clips pass through untouched
    cfg = PipelineConfig.model_validate({"run": "u", "teacher": {"questions_per_clip": 4}})
    ref = run_questions(cfg.teacher, file_store, cfg.run, _clip_ref(file_store, clips))
    out = Clip.from_table(read_all(file_store, ref))
    assert [c for c in out if c.source == "synthetic"] == written[6:]
    made = [c for c in out if c.source == "folder"]
    assert len(made) == 6 * 4 and all(c.label is None for c in made)
    assert not any(c.meta_dict().get("needs_questions") for c in out)

    samples = run_teacher(cfg.teacher, file_store, cfg.run, ref)
    votes = Vote.from_table(read_all(file_store, run_vote(cfg.vote, file_store, cfg.run, ref, samples)))
    synthetic = [v for v in votes if v.clip_id.startswith("folder:")]
    assert len(synthetic) == 24
    assert all(v.pseudo_label == v.kept and (v.label == v.winner if v.kept else v.label is None) for v in synthetic)
    kept = {f: np.mean([v.kept for v in synthetic if v.family == f]) for f in ("visual", "acoustic")}
    assert kept["visual"] > kept["acoustic"]


def test_questions_stage_quarantines_unreadable_video(file_store, tmp_path):
    bad = tmp_path / "empty.mp4"
    bad.write_bytes(b"")
    clip = Clip("folder:empty.mp4", "folder", "train", str(bad), str(bad), 1.0, "q?", ["yes", "no"], None,
                "unknown", "placeholder", json.dumps({"needs_questions": True}))
    cfg = PipelineConfig.model_validate({"run": "u2"})
    ref = run_questions(cfg.teacher, file_store, cfg.run, _clip_ref(file_store, [clip]))
    assert Clip.from_table(read_all(file_store, ref)) == []
    job = questions.plan_questions(cfg.teacher, file_store, cfg.run, _clip_ref(file_store, [clip])).jobs[0]
    q = Quarantine.from_table(file_store.read_table(job.quarantine_uri))
    assert [(x.input, x.reason) for x in q] == [("folder:empty.mp4", "zero_byte_file")]


def test_questions_stage_hash_ignores_k():
    from sightsound_core.config import TeacherConfig

    assert questions.questions_payload(TeacherConfig(k=9)) == questions.questions_payload(TeacherConfig())
    assert questions.questions_payload(TeacherConfig(questions_per_clip=5)) != questions.questions_payload(TeacherConfig())
