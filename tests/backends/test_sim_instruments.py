"""The simulated teacher and verifier in the instrument world (synthetic v2), and the student
hallucination metric that reuses the verifier's waveform analysis."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from sightsound_core.answers import parse_response
from sightsound_core.backends.base import TeacherRequest, VerifyRequest
from sightsound_core.backends.sim import SimTeacher, SimVerifier, asks_about_instruments
from sightsound_core.claims import claim_support, extract_claims, planted_hallucination
from sightsound_core.config import SyntheticConfig
from sightsound_core.datasets.synthetic import INSTRUMENTS, LOUDNESS_TEXT, synthesize
from sightsound_core.media.decode import sample_times

CFG = SyntheticConfig(seed=13)


def _request(scene) -> TeacherRequest:
    times = sample_times(scene.clip.duration_s, 2.0, 16)
    index = np.floor(times * CFG.fps + 1e-9).astype(int)
    return TeacherRequest(scene.clip, scene.frames[index], index / CFG.fps)


@pytest.fixture(scope="module")
def run():
    scenes = [synthesize(CFG, i) for i in range(240)]
    requests = [_request(s) for s in scenes]
    return scenes, SimTeacher(temperature=0.7, seed=0).sample(requests, k=5, seed=1)


def test_teacher_sees_visible_answers_guesses_pitch_from_size_and_cannot_hear_loudness(run):
    scenes, results = run
    stats: dict[str, Counter] = {}
    for scene, result in zip(scenes, results):
        assert asks_about_instruments(scene.clip)
        answers = [parse_response(g.text, scene.clip.options).option for g in result.samples]
        s = stats.setdefault(scene.clip.family, Counter())
        s["n"] += 1
        s["unanimous"] += len(set(answers)) == 1
        s["right"] += answers[0] == scene.clip.label
    rate = {f: {k: v / s["n"] for k, v in s.items()} for f, s in stats.items()}
    assert rate["visible"]["right"] >= 0.9 and rate["visible"]["unanimous"] >= 0.8
    # Size predicts pitch in 80% of sources: the teacher is usually, not always, right.
    assert 0.6 <= rate["partial"]["right"] <= 0.95 and rate["partial"]["unanimous"] >= 0.6
    assert rate["invisible"]["unanimous"] <= 0.2 and rate["invisible"]["right"] <= 0.55


def test_verifier_catches_the_teachers_false_sound_claims(run):
    scenes, results = run
    confusion = Counter()
    for scene, result in zip(scenes, results):
        trace = result.samples[0].text
        verdict = SimVerifier().verify([VerifyRequest(scene.clip, 0, trace, scene.audio)])[0]
        confusion[(planted_hallucination(trace, scene.clip), verdict.status)] += 1
    planted = confusion[(True, "rejected")] + confusion[(True, "accepted")]
    assert planted >= 20
    assert confusion[(True, "rejected")] / planted >= 0.95
    assert confusion[(True, "rejected")] / (confusion[(True, "rejected")] + confusion[(False, "rejected")]) >= 0.9


def _true_trace(meta: dict) -> str:
    sources = sorted(meta["sources"], key=lambda s: s["onset"])
    seen = " and ".join(f"{s['name']} (visible from about {s['onset']:.1f} s to {s['offset']:.1f} s)" for s in sources)
    return (f"<think>I see {seen}. So I expect {len(sources)} distinct sound{'s' if len(sources) > 1 else ''}. "
            f"The first sound starts at about {sources[0]['onset']:.1f} s.</think><answer>x</answer>")


def test_hallucination_metric_counts_planted_false_claims():
    checked = 0
    for i in range(40):
        scene = synthesize(CFG, i)
        meta = json.loads(scene.clip.meta)
        truth = _true_trace(meta)
        n, bad = claim_support(truth, scene.audio)
        assert n == len(meta["sources"]) + 2 and bad == 0, truth
        tonal = next((s for s in meta["sources"] if s["pitch"]), None)
        if tonal is None:
            continue
        wrong = "low" if tonal["pitch"] == "high" else "high"
        planted = truth.replace("</think>", f" The pitch of {tonal['name']} is {wrong}.</think>")
        assert claim_support(planted, scene.audio) == (n + 1, 1)
        # An instrument claimed where nothing sounds, and a false loudness trend: two more.
        other = next(t for t in LOUDNESS_TEXT if t != tonal["loudness"])
        phrase = {"rising": "gets louder toward the end", "falling": "is louder at the start",
                  "steady": "stays at the same loudness"}[other]
        absent = next(n for n in INSTRUMENTS if f"the {n}" not in {s["name"] for s in meta["sources"]})
        worse = planted.replace(
            "</think>", f" {tonal['name']} {phrase}. I see the {absent} (visible from about 0.5 s to 1.5 s).</think>"
        )
        total, contradicted = claim_support(worse, scene.audio)
        assert (total, contradicted) == (n + 3, 3), worse
        checked += 1
    assert checked >= 20
    assert claim_support("<answer>drum</answer>", np.zeros(32000, np.float32)) == (0, 0)


def test_claims_about_instruments_parse():
    trace = ("I see the drum (visible from about 0.2 s to 0.8 s). The pitch of the organ is low. "
             "The pulses of the metronome are fast. The flute is louder at the start.")
    assert [(c.kind, c.obj, c.value) for c in extract_claims(trace)] == [
        ("presence", "the drum", "noise"),
        ("pitch", "the organ", "low"),
        ("tempo", "the metronome", "fast"),
        ("loudness", "the flute", "falling"),
    ]
