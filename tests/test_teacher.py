"""Teacher stage and the vote: backends dispatch, every policy, pseudo-labels, per-family reporting."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest

import sightsound_core.teacher as teacher_mod
from sightsound_core.answers import parse_response
from sightsound_core.backends.base import TeacherRequest
from sightsound_core.backends.sim import SimTeacher
from sightsound_core.config import ConfigError, PipelineConfig, SyntheticConfig, TeacherConfig, VoteConfig, parse_config
from sightsound_core.datasets.synthetic import synthesize
from sightsound_core.media.decode import sample_times
from sightsound_core.prompts import template_digest
from sightsound_core.schemas import Clip, TeacherSample, Vote
from sightsound_core.stage import plan_sources, read_all, run_plan
from sightsound_core.teacher import decide, make_teacher, vote_shard, vote_summary

UNANIMOUS = VoteConfig()
MAJORITY = VoteConfig(policy="majority", min_agreement=0.6)


def test_doctests():
    assert doctest.testmod(teacher_mod).failed == 0


def test_prompt_texts_are_pinned_to_their_versions():
    # Editing a template must come with a version bump (the version is in the stage hash).
    assert template_digest()["teacher-v1"] == "cf0bf6e925f65e47"
    assert template_digest()["questions-v1"] == "0653d119d318d218"


def test_config_backends_and_prompt_versions():
    for backend in ("sim", "hf", "openai", "vllm"):
        TeacherConfig(backend=backend)
    with pytest.raises(ConfigError, match="teacher.backend"):
        parse_config({"teacher": {"backend": "llamacpp"}})
    with pytest.raises(ConfigError, match="teacher-v0"):
        parse_config({"teacher": {"prompt_version": "teacher-v0"}})
    base = TeacherConfig().content_hash()
    # Runtime knobs never move the stage; the prompt and the media format do.
    assert TeacherConfig(compile=True, batch_size=2, device="cuda", concurrency=64).content_hash() == base
    assert TeacherConfig(media="frames").content_hash() != base


def test_make_teacher_dispatches_lazily():
    assert make_teacher(TeacherConfig()).name == "sim"
    with pytest.raises(ImportError, match=r"\[vllm\]"):
        make_teacher(TeacherConfig(backend="vllm", model="/nowhere"))


# -- the policies ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answers, label, cfg, expected",
    [
        (["a"] * 5, "a", UNANIMOUS, ("a", 1.0, True, "kept")),
        (["a"] * 4 + ["b"], "a", UNANIMOUS, ("a", 0.8, False, "disagree")),
        # A sample that did not parse breaks unanimity: it is not agreement.
        (["a"] * 4 + [None], "a", UNANIMOUS, ("a", 0.8, False, "disagree")),
        ([None] * 5, "a", UNANIMOUS, (None, 0.0, False, "no_parse")),
        (["b"] * 5, "a", UNANIMOUS, ("b", 1.0, False, "label_mismatch")),
        (["b"] * 5, "a", VoteConfig(require_label_match=False), ("b", 1.0, True, "kept")),
        (["b"] * 5, None, UNANIMOUS, ("b", 1.0, True, "kept")),
        (["a", "a", "a", "b", "c"], "a", MAJORITY, ("a", 0.6, True, "kept")),
        (["a", "a", "b", "b", "c"], "a", MAJORITY, ("a", 0.4, False, "disagree")),
        (["a", "a", "b", "b"], "a", VoteConfig(policy="majority", min_agreement=0.5), ("a", 0.5, False, "tie")),
        (["a", "a", "a", None, None], "a", MAJORITY, ("a", 0.6, True, "kept")),
        (["b", "b", "b", "a", "a"], "a", MAJORITY, ("b", 0.6, False, "label_mismatch")),
        (["b", "b", "b", "a", "a"], None, MAJORITY, ("b", 0.6, True, "kept")),
    ],
)
def test_vote_policies(answers, label, cfg, expected):
    assert decide(answers, label, cfg) == expected


def _clip(cid: str, label: str | None, family: str = "visual") -> Clip:
    return Clip(cid, "test", "train", "v.mp4", "v.mp4", 1.0, "q?", ["a", "b"], label, family, "c")


def _samples(cid: str, texts: list[str], finish: str = "stop") -> list[TeacherSample]:
    rows = []
    for i, text in enumerate(texts):
        p = parse_response(text, ["a", "b"])
        status = p.status if finish != "error" else "error"
        rows.append(TeacherSample(cid, i, text, p.think, p.option, status, finish, 10, 5, 0.1, "sim", "m"))
    return rows


def test_vote_stage_pseudo_labels_and_reasons(file_store):
    ok = "<think>x</think><answer>a</answer>"
    clips = [
        _clip("labeled", "a"),
        _clip("unlabeled", None, "acoustic"),
        _clip("split", None),
        _clip("broken", "a"),
        _clip("truncated", "a"),
    ]
    samples = (
        _samples("labeled", [ok] * 3)
        + _samples("unlabeled", [ok] * 3)
        + _samples("split", [ok, ok, "<think>x</think><answer>b</answer>"])
        + _samples("broken", [""] * 3, finish="error")
        + _samples("truncated", [ok, ok, "<think>x</think><answer>"], finish="length")
    )
    clip_ref = run_plan(file_store, plan_sources(file_store, "r", "ingest", {"x": 1}, [{"i": 0}]),
                        lambda job: (Clip.to_table(clips), None))
    sample_ref = run_plan(file_store, plan_sources(file_store, "r", "teacher", {"x": 1}, [{"i": 0}]),
                          lambda job: (TeacherSample.to_table(samples), None))
    votes_ref = teacher_mod.run_vote(UNANIMOUS, file_store, "r", clip_ref, sample_ref)
    votes = {v.clip_id: v for v in Vote.from_table(read_all(file_store, votes_ref))}
    assert (votes["labeled"].kept, votes["labeled"].pseudo_label, votes["labeled"].label) == (True, False, "a")
    assert (votes["unlabeled"].kept, votes["unlabeled"].pseudo_label, votes["unlabeled"].label) == (True, True, "a")
    assert (votes["split"].kept, votes["split"].pseudo_label, votes["split"].label) == (False, False, None)
    assert (votes["broken"].reason, votes["broken"].answers) == ("teacher_error", ["", "", ""])
    assert (votes["truncated"].reason, votes["truncated"].answers) == ("disagree", ["a", "a", ""])
    summary = votes_ref.manifest["summary"]
    assert summary["acoustic"]["kept_fraction"] == 1.0
    assert summary["visual"] == {"clips": 4, "kept": 1, "kept_fraction": 0.25, "pseudo_labels": 0,
                                 "reason_disagree": 2, "reason_kept": 1, "reason_teacher_error": 1}
    assert summary["all"]["pseudo_labels"] == 1


# -- 200 synthetic clips, the sim teacher ----------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_200():
    cfg = SyntheticConfig(seed=0)
    requests = []
    for i in range(200):
        scene = synthesize(cfg, i)
        times = sample_times(scene.clip.duration_s, 2.0, 16)
        index = np.floor(times * cfg.fps + 1e-9).astype(int)
        requests.append(TeacherRequest(scene.clip, scene.frames[index], index / cfg.fps))
    return requests, SimTeacher(temperature=0.7, seed=0).sample(requests, k=5, seed=0)


def _votes(requests, results, cfg) -> list[Vote]:
    votes = []
    for req, res in zip(requests, results):
        answers = [parse_response(g.text, req.clip.options).option for g in res.samples]
        winner, agreement, kept, reason = decide(answers, req.clip.label, cfg)
        votes.append(Vote(req.clip.clip_id, [a or "" for a in answers], winner, agreement, kept, False,
                          req.clip.label, reason, req.clip.family))
    return votes


@pytest.mark.parametrize("cfg", [UNANIMOUS, MAJORITY], ids=["unanimous", "majority"])
def test_invisible_properties_are_kept_less_often_than_visible_ones(sim_200, cfg):
    summary = vote_summary(_votes(*sim_200, cfg))
    print(json.dumps({f: {k: summary[f][k] for k in ("clips", "kept", "kept_fraction")} for f in summary}))
    assert summary["all"]["clips"] == 200
    assert summary["visible"]["clips"] >= 80 and summary["invisible"]["clips"] >= 25
    assert summary["invisible"]["kept_fraction"] < summary["visible"]["kept_fraction"] - 0.5
    # Size predicts pitch in 80% of sources: partial-correlate questions fall in between.
    assert summary["invisible"]["kept_fraction"] < summary["partial"]["kept_fraction"] < summary["visible"]["kept_fraction"]
    if cfg.policy == "unanimous":
        assert summary["visible"]["kept_fraction"] >= 0.75 and summary["invisible"]["kept_fraction"] <= 0.1


def test_teacher_and_vote_stages_end_to_end(file_store):
    from sightsound_core.datasets.ingest import run_ingest

    cfg = PipelineConfig.model_validate({"run": "t", "ingest": {"synthetic": {"n_clips": 12}, "shard_size": 6}})
    clips = run_ingest(cfg.ingest, file_store, cfg.run)
    samples = teacher_mod.run_teacher(cfg.teacher, file_store, cfg.run, clips)
    rows = TeacherSample.from_table(read_all(file_store, samples))
    assert len(rows) == 12 * cfg.teacher.k
    assert len({(r.clip_id, r.sample_idx) for r in rows}) == len(rows)
    votes = teacher_mod.run_vote(cfg.vote, file_store, cfg.run, clips, samples)
    summary = votes.manifest["summary"]
    assert summary["all"]["clips"] == 12
    assert set(summary) >= {"all", "visible"}
    # Re-running reuses every committed shard: same stage directories, same manifest.
    again = teacher_mod.run_vote(cfg.vote, file_store, cfg.run, clips, samples)
    assert again.manifest["committed_at"] == votes.manifest["committed_at"]


def test_backend_errors_become_error_rows_and_quarantine(file_store, monkeypatch):
    from sightsound_core.backends.base import TeacherResult
    from sightsound_core.datasets.ingest import run_ingest
    from sightsound_core.schemas import Quarantine

    class Flaky(SimTeacher):
        def sample(self, requests, k, seed):
            out = super().sample(requests, k, seed)
            return [TeacherResult(r.clip_id, [], 0.0, error="http_500: gave up") if i == 0 else r
                    for i, r in enumerate(out)]

    monkeypatch.setattr(teacher_mod, "make_teacher", lambda cfg: Flaky())
    cfg = PipelineConfig.model_validate({"run": "e", "ingest": {"synthetic": {"n_clips": 3}}})
    clips = run_ingest(cfg.ingest, file_store, cfg.run)
    samples = teacher_mod.run_teacher(cfg.teacher, file_store, cfg.run, clips)
    rows = TeacherSample.from_table(read_all(file_store, samples))
    assert len(rows) == 3 * cfg.teacher.k
    failed = [r for r in rows if r.finish_reason == "error"]
    assert len(failed) == cfg.teacher.k and {r.parse_status for r in failed} == {"error"}
    job = teacher_mod.plan_teacher(cfg.teacher, file_store, cfg.run, clips).jobs[0]
    q = Quarantine.from_table(file_store.read_table(job.quarantine_uri))
    assert [(x.input, x.reason) for x in q] == [(failed[0].clip_id, "teacher_error")]


def test_vote_shard_skips_clips_the_teacher_quarantined(file_store):
    clip_ref = run_plan(file_store, plan_sources(file_store, "q", "ingest", {"x": 2}, [{"i": 0}]),
                        lambda job: (Clip.to_table([_clip("gone", "a")]), None))
    sample_ref = run_plan(file_store, plan_sources(file_store, "q", "teacher", {"x": 2}, [{"i": 0}]),
                          lambda job: (TeacherSample.empty_table(), None))
    plan = teacher_mod.plan_vote(UNANIMOUS, file_store, "q", clip_ref, sample_ref)
    table, _ = vote_shard(UNANIMOUS, file_store, plan.jobs[0])
    assert table.num_rows == 0


MALFORMED = [
    ("the drum", "stop", "no_answer_tag", None),
    ("<think>x</think><answer><answer>a</answer></answer>", "stop", "nested_tags", None),
    ("<think>x</think><answer>a</answer><answer>b</answer>", "stop", "multiple_answers", None),
    ("<think>x</think><answer>the flute</answer>", "stop", "not_an_option", None),
    ("<think></think><answer>b</answer>", "stop", "ok", "b"),  # empty think: still a vote
    ("<think>a long thought that ran out of tok", "length", "no_answer_tag", None),
    ("<think>x</think><answer>a", "length", "truncated", None),
]


def test_teacher_rows_carry_the_shared_parsers_verdict(file_store, monkeypatch):
    from sightsound_core.backends.base import Generation, TeacherResult

    class Scripted:
        name, model = "scripted", "scripted://m"

        def sample(self, requests, k, seed):
            return [TeacherResult(r.clip.clip_id, [Generation(t, f, 50, 9) for t, f, _, _ in MALFORMED], 0.5)
                    for r in requests]

    monkeypatch.setattr(teacher_mod, "make_teacher", lambda cfg: Scripted())
    monkeypatch.setattr(teacher_mod, "load_requests",
                        lambda clips, cfg, store, stage: ([TeacherRequest(c, np.zeros((1, 2, 2, 3), np.uint8),
                                                                          np.zeros(1)) for c in clips], []))
    clip_ref = run_plan(file_store, plan_sources(file_store, "m", "ingest", {"x": 3}, [{"i": 0}]),
                        lambda job: (Clip.to_table([_clip("c", "a")]), None))
    cfg = TeacherConfig(k=len(MALFORMED))
    rows = TeacherSample.from_table(read_all(file_store, teacher_mod.run_teacher(cfg, file_store, "m", clip_ref)))
    assert [(r.parse_status, r.answer, r.finish_reason) for r in rows] == [(s, a, f) for _, f, s, a in MALFORMED]
    assert rows[4].think is None or rows[4].think == ""
    vote = decide([r.answer if r.parse_status == "ok" else None for r in rows], "a", UNANIMOUS)
    assert vote == ("b", round(1 / 7, 3), False, "disagree")


def test_window_clips_give_the_teacher_and_verifier_their_window_only(tmp_path, file_store):
    """Every stage reads a window clip's media through its URI: frames and audio of the window."""
    from fakes.longvideo import grey_level, write_long_av

    from sightsound_core.config import IngestConfig
    from sightsound_core.datasets.ingest import run_ingest
    from sightsound_core.media.decode import load_audio

    write_long_av(tmp_path / "v" / "long.mp4", 60.0, [(0, 5), (42, 44)])
    clips = Clip.from_table(read_all(file_store, run_ingest(IngestConfig(dataset="folder", path=str(tmp_path / "v")), file_store, "r")))
    assert [c.clip_id for c in clips] == ["folder:long.mp4#t=0,10", "folder:long.mp4#t=40,50"]
    requests, bad = teacher_mod.load_requests(clips, TeacherConfig(), file_store, "teacher")
    assert not bad
    for req, start in zip(requests, (0, 40)):
        assert np.all(np.abs(req.frames.astype(float) - grey_level(start)) <= 2)
        assert req.frame_times.max() < 10
    audio = load_audio(clips[1].audio_uri)
    loud = [s for s in range(10) if np.abs(audio[s * 16000 : (s + 1) * 16000]).max() > 0.1]
    assert len(audio) == 160_000 and loud == [2, 3]
