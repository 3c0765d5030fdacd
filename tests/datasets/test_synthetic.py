"""The synthetic world v1: determinism, honest rendering, acoustics independent of looks, real mp4 files."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import av
import numpy as np
import pytest
from scipy import stats

from sightsound_core.config import SyntheticConfig
from sightsound_core.datasets.synthetic import (
    ACOUSTIC_KINDS,
    AUDIO_RATE,
    BACKGROUND,
    COLOURS,
    VISUAL_KINDS,
    _draw_sources,
    _rng,
    generate_clips,
    synthesize,
)
from sightsound_core.media.decode import load_audio, load_frames, probe

CFG = SyntheticConfig(n_clips=64, seed=7, world="v1")


def test_same_seed_same_clip_other_seed_other_clip():
    a, b = synthesize(CFG, 3), synthesize(CFG, 3)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.clip == b.clip
    c = synthesize(CFG.model_copy(update={"seed": 8}), 3)
    assert c.clip.meta != a.clip.meta


def test_clip_records_are_well_formed():
    families = set()
    for i in range(40):
        clip = synthesize(CFG, i).clip
        assert clip.clip_id == f"synthetic:7:{i:06d}"
        assert (clip.source, clip.split) == ("synthetic", "train")
        assert len(clip.options) == 4 and len(set(clip.options)) == 4
        assert clip.label in clip.options
        assert clip.family in ("visual", "acoustic")
        kinds = VISUAL_KINDS if clip.family == "visual" else ACOUSTIC_KINDS
        assert clip.category in kinds
        meta = json.loads(clip.meta)
        assert 1 <= len(meta["sources"]) <= CFG.max_sources
        families.add(clip.family)
    assert families == {"visual", "acoustic"}


def test_acoustic_fraction_sets_the_family():
    assert {synthesize(CFG.model_copy(update={"acoustic_fraction": 0.0}), i).clip.family for i in range(15)} == {"visual"}
    assert {synthesize(CFG.model_copy(update={"acoustic_fraction": 1.0}), i).clip.family for i in range(15)} == {"acoustic"}


def test_shapes_are_visible_exactly_while_they_sound():
    for i in range(10):
        scene = synthesize(CFG, i)
        meta = json.loads(scene.clip.meta)
        for src in meta["sources"]:
            colour = np.array(COLOURS[src["colour"]], dtype=np.uint8)
            for f, frame in enumerate(scene.frames):
                t = f / CFG.fps
                shown = np.all(frame == colour, axis=-1).any()
                assert shown == (src["onset"] <= t < src["offset"]), (i, src["name"], t)
            a, b = int(src["onset"] * AUDIO_RATE), int(src["offset"] * AUDIO_RATE)
            assert np.abs(scene.audio[a:b]).max() > 0.01
        # Outside every source: silence and an empty frame.
        active = np.zeros(len(scene.audio), bool)
        for src in meta["sources"]:
            active[int(src["onset"] * AUDIO_RATE) : int(src["offset"] * AUDIO_RATE) + 1] = True
        assert np.abs(scene.audio[~active]).max(initial=0.0) == 0.0
        blank = [f for f in range(len(scene.frames)) if not any(s["onset"] <= f / CFG.fps < s["offset"] for s in meta["sources"])]
        for f in blank:
            assert np.all(scene.frames[f] == np.array(BACKGROUND, np.uint8))


def test_acoustics_are_independent_of_looks():
    """Contingency tests over many draws: no visual attribute predicts an acoustic one."""
    cfg = SyntheticConfig(seed=11, world="v1")
    rows = []
    for i in range(3000):
        rows.extend(_draw_sources(cfg, _rng(cfg.seed, i)))
    shapes = sorted({s.shape for s in rows})
    colours = sorted({s.colour for s in rows})
    kinds = sorted({s.kind for s in rows})
    trends = sorted({s.loudness for s in rows})

    def table(xs, ys, xf, yf):
        return np.array([[sum(1 for s in rows if xf(s) == x and yf(s) == y) for y in ys] for x in xs])

    assert stats.chi2_contingency(table(shapes, kinds, lambda s: s.shape, lambda s: s.kind)).pvalue > 1e-3
    assert stats.chi2_contingency(table(colours, trends, lambda s: s.colour, lambda s: s.loudness)).pvalue > 1e-3
    tonal = [s for s in rows if s.f0 is not None]
    assert abs(stats.spearmanr([s.radius for s in tonal], [s.f0 for s in tonal]).statistic) < 0.05
    pulses = [s for s in rows if s.tempo_hz is not None]
    assert abs(stats.spearmanr([s.radius for s in pulses], [s.tempo_hz for s in pulses]).statistic) < 0.08


def test_generate_clips_writes_h264_aac_mp4s(tmp_path):
    clips = generate_clips(CFG, f"file://{tmp_path}/media", 0, 4)
    assert [c.clip_id for c in clips] == [f"synthetic:7:{i:06d}" for i in range(4)]
    assert sorted(os.listdir(tmp_path / "media")) == [f"clip-{i:06d}.mp4" for i in range(4)]  # no temp files
    for i, clip in enumerate(clips):
        assert clip.video_uri == clip.audio_uri == f"file://{tmp_path}/media/clip-{i:06d}.mp4"
        with av.open(str(tmp_path / "media" / f"clip-{i:06d}.mp4")) as c:
            video, audio = c.streams.video[0], c.streams.audio[0]
            assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
            assert audio.codec_context.name == "aac"
        info = probe(clip.video_uri)
        assert abs(info.duration_s - CFG.duration_s) < 0.1 and (info.width, info.height) == (96, 96)
        assert abs(len(load_audio(clip.audio_uri)) / 16000 - CFG.duration_s) < 0.1
        # Same clip as the in-memory render, apart from where the file lives.
        assert dataclasses.replace(clip, video_uri="", audio_uri="") == synthesize(CFG, i).clip


def test_shards_are_independent_and_files_reproducible(tmp_path):
    whole = generate_clips(CFG, str(tmp_path / "a"), 0, 5)
    tail = generate_clips(CFG, str(tmp_path / "b"), 3, 5)
    assert [dataclasses.replace(c, video_uri="", audio_uri="") for c in whole[3:]] == [
        dataclasses.replace(c, video_uri="", audio_uri="") for c in tail
    ]
    for i in (3, 4):
        name = f"clip-{i:06d}.mp4"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_decoded_frames_still_show_the_objects(tmp_path):
    clip = generate_clips(CFG, str(tmp_path), 0, 1)[0]
    frames, times = load_frames(clip.video_uri, fps=CFG.fps, max_frames=64, max_pixels=96 * 96)
    meta = json.loads(clip.meta)
    for frame, t in zip(frames, times):
        for src in meta["sources"]:
            colour = np.array(COLOURS[src["colour"]], float)
            near = (np.abs(frame.astype(float) - colour).sum(-1) < 60).sum()
            assert (near > 20) == (src["onset"] <= t < src["offset"] - 1e-6), (src["name"], t)


def test_generate_clips_uploads_to_s3(s3_endpoint):
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    bucket = f"synth-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    clips = generate_clips(CFG, f"s3://{bucket}/run/media", 0, 2, storage_options=options)
    assert clips[0].video_uri == f"s3://{bucket}/run/media/clip-000000.mp4"
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/run/media")) == ["clip-000000.mp4", "clip-000001.mp4"]
    audio = load_audio(clips[1].audio_uri, storage_options=options)
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - CFG.duration_s) < 0.1


@pytest.mark.slow
def test_generation_throughput(tmp_path):
    """Thousands of clips in minutes: at least 20 clips/s for 2 s, 96x96, 8 fps clips."""
    import time

    began = time.perf_counter()
    generate_clips(SyntheticConfig(), str(tmp_path), 0, 200)
    assert 200 / (time.perf_counter() - began) > 20
