"""The transformers teacher on the tiny Qwen2.5-VL: encode once for K, batch across clips."""

from __future__ import annotations

import numpy as np
import pytest

from sightsound_core.backends.base import TeacherBackend, TeacherRequest
from sightsound_core.backends.hf_teacher import (
    DecodeStep,
    HFTeacher,
    _sample_next,
    build_inputs,
    sample_shared_prefill,
    stock_generate,
    stop_ids,
    teacher_messages,
    video_patches,
)
from sightsound_core.config import PipelineConfig, SyntheticConfig, TeacherConfig
from sightsound_core.datasets.synthetic import generate_clips, synthesize
from sightsound_core.media.decode import load_frames, sample_times

CFG = SyntheticConfig(seed=3)


def _view(scene):
    times = sample_times(scene.clip.duration_s, 2.0, 16)
    index = np.floor(times * CFG.fps + 1e-9).astype(int)
    return scene.frames[index], index / CFG.fps


@pytest.fixture(scope="module")
def teacher():
    t = HFTeacher("tiny://qwen2.5-vl", temperature=0.7, max_new_tokens=24, device="cpu")
    t.load()
    return t


@pytest.fixture(scope="module")
def items():
    scenes = [synthesize(CFG, i) for i in range(3)]
    return [(teacher_messages(s.clip.question, s.clip.options), *_view(s)) for s in scenes]


def _greedy(teacher, inputs, k=1, n=20):
    tok = teacher.tokenizer
    return sample_shared_prefill(teacher.net, inputs, k, n, 0.0, 1.0, stop_ids(tok), tok.pad_token_id, 0)


def test_video_patches_pair_frames_in_time(teacher):
    # A video whose frames come in equal pairs is, pair by pair, the image of that frame.
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, size=(2, 84, 112, 3), dtype=np.uint8)
    video, (t, h, w) = video_patches(np.stack([a, a, b, b]), teacher.image_processor)
    images = teacher.image_processor(images=[a, b], return_tensors="np")["pixel_values"]
    assert (t, h, w) == (2, 6, 8)
    np.testing.assert_array_equal(video, images)
    # An odd frame count repeats the last frame.
    odd, (t3, _, _) = video_patches(np.stack([a, a, b]), teacher.image_processor)
    assert t3 == 2
    np.testing.assert_array_equal(odd, images)


def test_greedy_matches_stock_generate(teacher, items):
    tok = teacher.tokenizer
    for item in items:
        inputs = build_inputs(tok, teacher.image_processor, [item])
        ours = _greedy(teacher, inputs)
        stock = stock_generate(teacher.net, inputs, 1, 20, 0.0, 1.0, stop_ids(tok), tok.pad_token_id, 0)
        n = int(ours.lengths[0])
        assert ours.tokens[0, :n].tolist() == stock[0, :n].tolist()


def test_batched_left_padded_clips_match_single_clips(teacher, items):
    inputs = build_inputs(teacher.tokenizer, teacher.image_processor, items)
    assert len(set(inputs["attention_mask"].sum(-1).tolist())) > 1  # real padding in the batch
    batched = _greedy(teacher, inputs, k=2)
    for j, item in enumerate(items):
        single = _greedy(teacher, build_inputs(teacher.tokenizer, teacher.image_processor, [item]))
        assert batched.tokens[2 * j].tolist() == single.tokens[0].tolist()
        assert batched.tokens[2 * j + 1].tolist() == single.tokens[0].tolist()


def test_each_video_is_encoded_and_prefilled_once_for_k_samples(teacher, items):
    seen = {"clips": 0, "prefill_rows": 0}

    def vision(module, args, kwargs, out):
        seen["clips"] += int(kwargs["grid_thw"].shape[0])

    def lm(module, args, kwargs, out):
        if kwargs["inputs_embeds"].shape[1] > 1:
            seen["prefill_rows"] += int(kwargs["inputs_embeds"].shape[0])

    handles = [
        teacher.net.model.visual.register_forward_hook(vision, with_kwargs=True),
        teacher.net.model.language_model.register_forward_hook(lm, with_kwargs=True),
    ]
    try:
        requests = [TeacherRequest(_clip(i), f, t) for i, (_, f, t) in enumerate(items)]
        results = teacher.sample(requests, k=4, seed=0)
        assert seen == {"clips": 3, "prefill_rows": 3}
        assert [len(r.samples) for r in results] == [4, 4, 4]
        # Stock generate prefills every prompt K times (and, before transformers 5.23, encoded K times).
        seen.update(clips=0, prefill_rows=0)
        tok = teacher.tokenizer
        inputs = build_inputs(tok, teacher.image_processor, items)
        stock_generate(teacher.net, inputs, 4, 8, 0.7, 1.0, stop_ids(tok), tok.pad_token_id, 0)
        assert seen["prefill_rows"] == 12
    finally:
        for h in handles:
            h.remove()


def _clip(i):
    return synthesize(CFG, i).clip


def test_samples_differ_across_k_and_repeat_with_the_seed(teacher, items):
    requests = [TeacherRequest(_clip(i), f, t) for i, (_, f, t) in enumerate(items[:2])]
    first = teacher.sample(requests, k=4, seed=7)
    again = teacher.sample(requests, k=4, seed=7)
    other = teacher.sample(requests, k=4, seed=8)
    texts = lambda rs: [[g.text for g in r.samples] for r in rs]  # noqa: E731
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)
    assert all(len(set(ts)) > 1 for ts in texts(first))
    for r in first:
        assert r.error is None and r.latency_s > 0
        for g in r.samples:
            assert g.finish_reason in ("stop", "length") and 1 <= g.completion_tokens <= 24
            assert g.prompt_tokens > 100  # the expanded video tokens are counted


def test_top_p_keeps_the_nucleus_only():
    import torch

    logits = torch.tensor([[5.0, 4.0, -2.0, -3.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    picks = _sample_next(logits, 1.0, 0.5, g)
    assert set(picks.tolist()) == {0}  # token 0 alone holds > 50% of the mass
    picks = _sample_next(logits, 1.0, 0.99, g)
    assert set(picks.tolist()) == {0, 1}
    assert _sample_next(logits[:1], 0.0, 1.0, g).tolist() == [0]


def test_end_to_end_on_real_mp4_through_the_teacher_stage(tmp_path, file_store):
    from sightsound_core.datasets.ingest import run_ingest
    from sightsound_core.schemas import TeacherSample
    from sightsound_core.stage import read_all
    from sightsound_core.teacher import make_teacher, run_teacher

    clips = generate_clips(CFG, str(tmp_path), 0, 2)
    frames, times = load_frames(clips[0].video_uri, 2.0, 16, 224 * 224)
    assert frames.shape[0] == 4
    teacher_cfg = TeacherConfig(backend="hf", model="tiny://qwen2.5-vl", k=3, max_new_tokens=16, device="cpu")
    backend = make_teacher(teacher_cfg)
    assert isinstance(backend, TeacherBackend) and backend.name == "hf"
    cfg = PipelineConfig.model_validate(
        {"run": "hf", "ingest": {"synthetic": {"n_clips": 3, "seed": 3}, "shard_size": 2},
         "teacher": teacher_cfg.model_dump()}
    )
    ingested = run_ingest(cfg.ingest, file_store, cfg.run)
    ref = run_teacher(cfg.teacher, file_store, cfg.run, ingested)
    rows = TeacherSample.from_table(read_all(file_store, ref))
    assert sorted((r.clip_id, r.sample_idx) for r in rows) == sorted(
        (f"synthetic:3:{i:06d}", j) for i in range(3) for j in range(3)
    )
    assert {r.backend for r in rows} == {"hf"} and {r.model for r in rows} == {"tiny://qwen2.5-vl"}
    assert all(r.finish_reason in ("stop", "length") and r.completion_tokens >= 1 for r in rows)
    # A random model writes no tags: every sample is recorded with the parser's reason, never lost.
    assert all(r.parse_status != "ok" or r.answer is not None for r in rows)


def test_propose_gives_one_reply_per_clip(teacher, items):
    requests = [TeacherRequest(_clip(i), f, t) for i, (_, f, t) in enumerate(items[:2])]
    results = teacher.propose(requests, n=3, seed=0)
    assert [r.clip_id for r in results] == [r.clip.clip_id for r in requests]
    assert all(len(r.samples) == 1 for r in results)


@pytest.mark.slow
def test_compiled_decode_step_matches_eager(teacher, items):
    inputs = build_inputs(teacher.tokenizer, teacher.image_processor, items[:2])
    tok = teacher.tokenizer
    args = (2, 12, 0.0, 1.0, stop_ids(tok), tok.pad_token_id, 0)
    eager = sample_shared_prefill(teacher.net, inputs, *args)
    compiled = sample_shared_prefill(teacher.net, inputs, *args, step=DecodeStep(teacher.net, compile=True))
    assert eager.tokens.tolist() == compiled.tokens.tolist()
