"""The simulated teacher (eyes only) and verifier (ears only) on the synthetic world."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from sightsound_core.answers import parse_response
from sightsound_core.backends.base import (
    TeacherBackend,
    TeacherRequest,
    VerifierBackend,
    VerifyRequest,
)
from sightsound_core.backends.sim import SimTeacher, SimVerifier, perceive
from sightsound_core.claims import analyse_audio, extract_claims, planted_hallucination
from sightsound_core.config import SyntheticConfig
from sightsound_core.datasets.synthetic import generate_clips, synthesize
from sightsound_core.media.decode import load_audio, load_frames, sample_times
from sightsound_core.schemas import Clip
from sightsound_core.verdicts import parse_verdict

CFG = SyntheticConfig(seed=3, world="v1")
TEACHER_FPS, MAX_FRAMES = 2.0, 16  # the FrameConfig defaults


def _view(scene) -> tuple[np.ndarray, np.ndarray]:
    """What load_frames would hand the teacher, taken from the in-memory render (no codec)."""
    times = sample_times(scene.clip.duration_s, TEACHER_FPS, MAX_FRAMES)
    index = np.floor(times * CFG.fps + 1e-9).astype(int)
    return scene.frames[index], index / CFG.fps


@pytest.fixture(scope="module")
def scenes():
    return [synthesize(CFG, i) for i in range(100)]


@pytest.fixture(scope="module")
def teacher_run(scenes):
    requests = [TeacherRequest(s.clip, *_view(s)) for s in scenes]
    return requests, SimTeacher(temperature=0.7, seed=0).sample(requests, k=5, seed=1)


def test_backends_satisfy_the_protocols():
    assert isinstance(SimTeacher(), TeacherBackend)
    assert isinstance(SimVerifier(), VerifierBackend)
    assert (SimTeacher().name, SimTeacher().model) == ("sim", "sim://vision-teacher")
    assert (SimVerifier().name, SimVerifier().model) == ("sim", "sim://waveform-verifier")


def test_perception_finds_the_objects(scenes):
    right = 0
    for scene in scenes[:50]:
        truth = sorted(s["name"] for s in json.loads(scene.clip.meta)["sources"])
        seen = perceive(*_view(scene), scene.clip.duration_s)
        right += sorted(o.name for o in seen) == truth
    assert right >= 48


def test_audio_analysis_recovers_every_property(scenes):
    checked = wrong = 0
    for scene in scenes[:50]:
        sources = json.loads(scene.clip.meta)["sources"]
        events = analyse_audio(scene.audio)
        assert len(events) == len(sources)
        for src, ev in zip(sources, events):
            assert abs(ev.onset - src["onset"]) < 0.05
            pairs = [(src["kind"], ev.kind), (src["loudness"], ev.loudness), (src["pitch"], ev.pitch), (src["tempo"], ev.tempo)]
            checked += len(pairs)
            wrong += sum(a != b for a, b in pairs)
    assert wrong <= 0.02 * checked


def test_teacher_never_reads_ground_truth(teacher_run):
    requests, results = teacher_run
    blind = [dataclasses.replace(r, clip=dataclasses.replace(r.clip, meta="{}")) for r in requests[:30]]
    again = SimTeacher(temperature=0.7, seed=0).sample(blind, k=5, seed=1)
    assert [[g.text for g in r.samples] for r in again] == [[g.text for g in r.samples] for r in results[:30]]


def test_teacher_is_seeded_and_temperature_zero_is_greedy(teacher_run):
    requests, results = teacher_run
    same = SimTeacher(temperature=0.7, seed=0).sample(requests[:10], k=5, seed=1)
    assert [[g.text for g in r.samples] for r in same] == [[g.text for g in r.samples] for r in results[:10]]
    other = SimTeacher(temperature=0.7, seed=0).sample(requests[:30], k=5, seed=2)
    assert [[g.text for g in r.samples] for r in other] != [[g.text for g in r.samples] for r in results[:30]]
    greedy = SimTeacher(temperature=0.0).sample(requests[:30], k=5, seed=1)
    assert all(len({g.text for g in r.samples}) == 1 for r in greedy)


def test_teacher_traces_are_well_formed(teacher_run):
    requests, results = teacher_run
    for req, res in zip(requests, results):
        assert res.clip_id == req.clip.clip_id and len(res.samples) == 5 and res.error is None
        for g in res.samples:
            parsed = parse_response(g.text, req.clip.options)
            assert parsed.status == "ok" and parsed.well_formed, g.text
            assert g.finish_reason == "stop" and g.completion_tokens > 0


def _by_family(requests, results):
    stats: dict[str, Counter] = {"visual": Counter(), "acoustic": Counter()}
    for req, res in zip(requests, results):
        answers = [parse_response(g.text, req.clip.options).option for g in res.samples]
        s = stats[req.clip.family]
        s["clips"] += 1
        s["unanimous"] += len(set(answers)) == 1
        s["correct"] += sum(a == req.clip.label for a in answers)
    return {
        fam: {"unanimity": s["unanimous"] / s["clips"], "accuracy": s["correct"] / (5 * s["clips"])}
        for fam, s in stats.items()
    }


def test_teacher_agrees_on_what_it_sees_and_not_on_what_it_cannot_hear(teacher_run):
    rates = _by_family(*teacher_run)
    assert rates["visual"]["accuracy"] >= 0.9
    assert rates["visual"]["unanimity"] >= 0.7
    assert rates["acoustic"]["unanimity"] <= 0.3
    assert rates["visual"]["unanimity"] - rates["acoustic"]["unanimity"] >= 0.5
    # Acoustic answers are guesses: near chance (1/4 to 1/3 among plausible options).
    assert rates["acoustic"]["accuracy"] <= 0.5


def _verify_all(requests, results, audio_of):
    verify_requests = [
        VerifyRequest(req.clip, j, g.text, audio_of(req.clip))
        for req, res in zip(requests, results)
        for j, g in enumerate(res.samples)
    ]
    verdicts = SimVerifier().verify(verify_requests)
    confusion = Counter()
    for vr, v in zip(verify_requests, verdicts):
        confusion[(planted_hallucination(vr.trace, vr.clip), v.status)] += 1
    tp, fp = confusion[(True, "rejected")], confusion[(False, "rejected")]
    fn, tn = confusion[(True, "accepted")], confusion[(False, "accepted")]
    return confusion, tp / max(1, tp + fp), tp / max(1, tp + fn), fp / max(1, fp + tn)


def test_verifier_rejects_planted_false_claims(scenes, teacher_run):
    audio = {s.clip.clip_id: s.audio for s in scenes}
    confusion, precision, recall, false_alarm = _verify_all(*teacher_run, lambda c: audio[c.clip_id])
    assert sum(confusion.values()) == 500 and set(s for _, s in confusion) <= {"accepted", "rejected"}
    assert confusion[(True, "rejected")] >= 100  # the teacher does hallucinate
    assert precision >= 0.95 and recall >= 0.95 and false_alarm <= 0.05, confusion


def test_verifier_does_not_read_ground_truth(scenes, teacher_run):
    requests, results = teacher_run
    items = [VerifyRequest(r.clip, j, g.text, scenes[i].audio) for i, (r, res) in enumerate(zip(requests[:20], results[:20])) for j, g in enumerate(res.samples)]
    blind = [dataclasses.replace(v, clip=dataclasses.replace(v.clip, meta="{}")) for v in items]
    assert [v.raw for v in SimVerifier().verify(items)] == [v.raw for v in SimVerifier().verify(blind)]


def test_verifier_reply_goes_through_the_verdict_parser(scenes):
    scene = scenes[0]
    sources = json.loads(scene.clip.meta)["sources"]
    true_trace = f"<think>I expect {len(sources)} distinct sounds.</think><answer>x</answer>"
    false_trace = f"<think>I expect {len(sources) + 1} distinct sounds.</think><answer>x</answer>"
    ok, bad = SimVerifier().verify(
        [VerifyRequest(scene.clip, 0, true_trace, scene.audio), VerifyRequest(scene.clip, 1, false_trace, scene.audio)]
    )
    assert (ok.status, ok.unsupported_claims) == ("accepted", [])
    assert parse_verdict(ok.raw) == ("accepted", [], "ok")
    assert bad.status == "rejected" and bad.unsupported_claims == [f"I expect {len(sources) + 1} distinct sounds"]
    assert parse_verdict(bad.raw)[0] == "rejected"


def test_verifier_turns_a_bad_item_into_an_error_row(scenes):
    good = VerifyRequest(scenes[0].clip, 0, "<think>x</think><answer>y</answer>", scenes[0].audio)
    broken = VerifyRequest(scenes[0].clip, 1, "<think>x</think><answer>y</answer>", np.array(["not audio"]))
    ok, err = SimVerifier().verify([good, broken])
    assert ok.status == "accepted" and err.status == "error" and err.raw == ""


def test_claims_and_ground_truth_check():
    scene = synthesize(CFG, 0)
    src = json.loads(scene.clip.meta)["sources"][0]
    trace = f"<think>{src['name']} sounds like a chirp. The first sound starts at about {src['onset']:.1f} s.</think>"
    claims = extract_claims(trace)
    assert [(c.kind, c.obj, c.value) for c in claims] == [
        ("timbre", src["name"], "chirp"),
        ("first_onset", None, f"{src['onset']:.1f}"),
    ]
    assert planted_hallucination(trace, scene.clip) is (src["kind"] != "chirp")
    assert planted_hallucination("<think>I see things.</think>", scene.clip) is False
    assert planted_hallucination("the pitch of the red circle is low", Clip("x", "avqa", "test", None, "a.wav", 1.0, "q", ["a", "b"], "a", "unknown", "c")) is None


@pytest.mark.slow
def test_whole_loop_through_real_mp4_files(tmp_path):
    """Same claims as above, but through H.264/AAC encoding and PyAV decoding."""
    clips = generate_clips(CFG, str(tmp_path), 0, 100)
    requests = [TeacherRequest(c, *load_frames(c.video_uri, TEACHER_FPS, MAX_FRAMES, 224 * 224)) for c in clips]
    results = SimTeacher(temperature=0.7, seed=0).sample(requests, k=5, seed=1)
    rates = _by_family(requests, results)
    assert rates["visual"]["accuracy"] >= 0.9
    assert rates["visual"]["unanimity"] - rates["acoustic"]["unanimity"] >= 0.5
    audio = {c.clip_id: load_audio(c.audio_uri) for c in clips}
    _, precision, recall, false_alarm = _verify_all(requests, results, lambda c: audio[c.clip_id])
    assert precision >= 0.95 and recall >= 0.95 and false_alarm <= 0.05
