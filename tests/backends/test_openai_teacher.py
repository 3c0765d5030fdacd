"""The OpenAI-compatible teacher against the local fake server: n=K, faults, no sample lost."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter

import av
import numpy as np
import pytest

from sightsound_core.answers import parse_response
from sightsound_core.backends.base import QuestionProposer, TeacherBackend, TeacherRequest
from sightsound_core.backends.openai_client import ChatChoice, ChatResult
from sightsound_core.backends.openai_teacher import OpenAITeacher, media_parts
from sightsound_core.config import ClientConfig, PipelineConfig, SyntheticConfig
from sightsound_core.datasets.synthetic import synthesize
from sightsound_core.media.decode import sample_times
from sightsound_core.questions import synthesize_questions
from sightsound_core.schemas import Quarantine, TeacherSample
from sightsound_core.stage import read_all

CFG = SyntheticConfig(seed=4)
K = 5


@pytest.fixture(scope="module")
def requests():
    out = []
    for i in range(12):
        scene = synthesize(CFG, i)
        times = sample_times(scene.clip.duration_s, 2.0, 16)
        index = np.floor(times * CFG.fps + 1e-9).astype(int)
        out.append(TeacherRequest(scene.clip, scene.frames[index], index / CFG.fps))
    return out


def _teacher(server, media="frames", **settings) -> OpenAITeacher:
    fast = dict(backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=2.0, concurrency=4)
    return OpenAITeacher(ClientConfig(base_url=server.url, api_key_env=None, **{**fast, **settings}), "fake",
                         max_new_tokens=64, media=media)


def _check_complete(requests, results):
    assert [r.clip_id for r in results] == [q.clip.clip_id for q in requests]
    for req, res in zip(requests, results):
        assert res.error is None and len(res.samples) == K
        for g in res.samples:
            p = parse_response(g.text, req.clip.options)
            assert p.status == "ok" and g.finish_reason == "stop"


def test_k_samples_per_clip_in_one_request_each(openai_server, requests):
    teacher = _teacher(openai_server)
    assert isinstance(teacher, TeacherBackend) and isinstance(teacher, QuestionProposer)
    results = teacher.sample(requests, K, seed=3)
    _check_complete(requests, results)
    assert sorted(openai_server.requests) == sorted(f"teacher:{r.clip.clip_id}:3" for r in requests)
    assert set(openai_server.requests.values()) == {1}
    # Sampled choices differ (the fake server varies them by index at temperature > 0).
    assert any(len({g.text for g in r.samples}) > 1 for r in results)


def test_streamed_results_are_the_returned_ones(openai_server, requests):
    """Each reply becomes one TeacherResult: the one ``on_result`` saw is the one returned (so a
    short reply's warning is logged once, not once per copy)."""
    streamed = {}
    results = _teacher(openai_server).sample_stream(requests, K, seed=3, on_result=streamed.__setitem__)
    _check_complete(requests, results)
    assert sorted(streamed) == list(range(len(requests)))
    assert all(streamed[i] is r for i, r in enumerate(results))


def test_429_500_timeouts_and_malformed_bodies_lose_and_duplicate_nothing(openai_server, requests):
    openai_server.configure(p429=0.2, p500=0.2, p_timeout=0.1, p_malformed=0.2, hang_s=5.0, retry_after_s=0.01)
    teacher = _teacher(openai_server, timeout_s=0.5, max_retries=30)
    results = teacher.sample(requests, K, seed=0)
    _check_complete(requests, results)
    faults = openai_server.outcomes
    assert all(faults[kind] > 0 for kind in ("429", "500", "timeout", "malformed")), faults
    # Every clip succeeded exactly once: one ok reply per clip, however many attempts it took.
    assert faults["ok"] == len(requests)
    ok_items = Counter(item for item, _, fate in openai_server.log if fate == "ok")
    assert set(ok_items.values()) == {1} and len(ok_items) == len(requests)


def test_the_teacher_stage_keeps_exactly_k_rows_per_clip_under_faults(openai_server, file_store):
    from sightsound_core.datasets.ingest import run_ingest
    from sightsound_core.teacher import make_teacher, run_teacher

    openai_server.configure(p429=0.15, p500=0.15, p_malformed=0.15, retry_after_s=0.01)
    cfg = PipelineConfig.model_validate({
        "run": "oai", "ingest": {"synthetic": {"n_clips": 6, "seed": 4}, "shard_size": 3},
        "teacher": {"backend": "openai", "model": "fake", "base_url": openai_server.url, "api_key_env": None,
                    "k": K, "max_retries": 30, "timeout_s": 5.0, "media": "video"},
    })
    assert make_teacher(cfg.teacher).name == "openai"
    clips = run_ingest(cfg.ingest, file_store, cfg.run)
    rows = TeacherSample.from_table(read_all(file_store, run_teacher(cfg.teacher, file_store, cfg.run, clips)))
    keys = [(r.clip_id, r.sample_idx) for r in rows]
    assert len(keys) == len(set(keys)) == 6 * K
    assert {r.parse_status for r in rows} == {"ok"} and {r.backend for r in rows} == {"openai"}
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in rows)


def test_requests_that_exhaust_their_retries_become_error_rows(openai_server, file_store):
    from sightsound_core.datasets.ingest import run_ingest
    from sightsound_core.teacher import plan_teacher, run_teacher

    openai_server.configure(p500=1.0)
    cfg = PipelineConfig.model_validate({
        "run": "oai-down", "ingest": {"synthetic": {"n_clips": 2, "seed": 4}},
        "teacher": {"backend": "openai", "model": "fake", "base_url": openai_server.url, "api_key_env": None,
                    "k": K, "max_retries": 1, "media": "frames"},
    })
    clips = run_ingest(cfg.ingest, file_store, cfg.run)
    rows = TeacherSample.from_table(read_all(file_store, run_teacher(cfg.teacher, file_store, cfg.run, clips)))
    assert len(rows) == 2 * K and {(r.finish_reason, r.parse_status) for r in rows} == {("error", "error")}
    job = plan_teacher(cfg.teacher, file_store, cfg.run, clips).jobs[0]
    q = Quarantine.from_table(file_store.read_table(job.quarantine_uri))
    assert [x.reason for x in q] == ["teacher_error"] * 2 and all(x.detail.startswith("http_500") for x in q)
    assert set(openai_server.requests.values()) == {2}  # one try and one retry per clip


def test_short_replies_leave_error_rows_and_extra_choices_are_dropped(requests):
    req = requests[0]
    ok = "<think>x</think><answer>%s</answer>" % req.clip.options[0]
    short = OpenAITeacher._result(req, ChatResult([ChatChoice(ok, "stop")] * 2, 100, 40, 1, 0.1), K)
    assert len(short.samples) == 2 and short.samples[0].completion_tokens == 20
    extra = OpenAITeacher._result(req, ChatResult([ChatChoice(ok, "length")] * 7, 100, 70, 1, 0.1), K)
    assert len(extra.samples) == K and extra.samples[0].finish_reason == "length"
    failed = OpenAITeacher._result(req, ChatResult([], 0, 0, 3, 0.2, "timeout", "TimeoutError"), K)
    assert failed.samples == [] and failed.error == "timeout: TimeoutError"


def test_media_is_silent_video_or_timestamped_frames(requests):
    req = requests[0]
    (video,) = media_parts(req.frames, req.frame_times, "video")
    url = video["video_url"]["url"]
    assert url.startswith("data:video/mp4;base64,")
    with av.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as container:
        assert not container.streams.audio
        assert len(list(container.decode(video=0))) == len(req.frames)
    parts = media_parts(req.frames, req.frame_times, "frames")
    assert [p["type"] for p in parts] == ["text", "image_url"] * len(req.frames)
    assert parts[0]["text"] == f"Frame at {req.frame_times[0]:.2f} s:"


def test_question_synthesis_over_the_api(requests):
    from fakes.openai_server import FakeOpenAIServer

    def responder(body, index):
        assert "JSON" in body["messages"][0]["content"]
        return json.dumps({"questions": [
            {"question": "Which object sounds?", "options": ["the red circle", "the blue square"],
             "answer": "A", "family": "visual", "category": "which_object"},
            {"question": "Bad one", "options": ["x"], "answer": "x"},
        ]})

    with FakeOpenAIServer(seed=0, responder=responder) as server:
        clips, bad = synthesize_questions(requests[:3], _teacher(server), n=2, seed=0)
    assert len(clips) == 3 and all(c.meta_dict()["proposed_answer"] == "the red circle" for c in clips)
    assert [q.reason for q in bad] == ["too_few_options"] * 3
