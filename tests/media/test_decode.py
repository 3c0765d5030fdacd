"""Decoding real files of every supported container, and every MediaError reason from a real bad file."""

from __future__ import annotations

import uuid

import av
import fsspec
import numpy as np
import pytest
import soundfile as sf

from sightsound_core.config import MediaLimits
from sightsound_core.media.decode import (
    DecodeCounter,
    MediaError,
    audio_levels,
    check_limits,
    load_audio,
    load_frames,
    probe,
    sample_times,
    window_uri,
)

FPS = 8
SECONDS = 2.0
TONE_HZ = 440.0


def _grey_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """Frame i is a flat grey of level 15 * i, so a decoded frame tells which frame it was."""
    return [np.full((height, width, 3), 15 * i, dtype=np.uint8) for i in range(n)]


def _tone(rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(SECONDS * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def _write(path, fmt, vcodec=None, acodec=None, rate=16000, channels=1, width=64, height=48, pix="yuv420p"):
    """Write a real file with PyAV: optional video (grey ramp) and optional 440 Hz tone."""
    with av.open(str(path), mode="w", format=fmt) as out:
        video = audio = None
        if vcodec:
            video = out.add_stream(vcodec, rate=FPS)
            video.width, video.height, video.pix_fmt = width, height, pix
        if acodec:
            audio = out.add_stream(acodec, rate=rate, layout="mono" if channels == 1 else "stereo")
        if video is not None:
            for rgb in _grey_frames(int(SECONDS * FPS), width, height):
                for p in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(p)
            for p in video.encode():
                out.mux(p)
        if audio is not None:
            wave = _tone(rate, channels)
            fmt_name = "fltp" if acodec in ("aac", "libopus", "libmp3lame", "libvorbis") else "flt"
            samples = wave if fmt_name == "fltp" else np.ascontiguousarray(wave.T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format=fmt_name, layout=audio.layout.name)
            frame.sample_rate, frame.pts = rate, 0
            for p in audio.encode(frame):
                out.mux(p)
            for p in audio.encode():
                out.mux(p)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    files = {
        "mp4": d / "av.mp4",
        "webm": d / "av.webm",
        "mkv": d / "av.mkv",
        "video_only": d / "silent.mp4",
        "wav": d / "tone.wav",
        "flac": d / "tone.flac",
        "mp3": d / "tone.mp3",
        "big": d / "big.mp4",
    }
    _write(files["mp4"], "mp4", "libx264", "aac")
    _write(files["webm"], "webm", "libvpx", "libopus", rate=48000, channels=2)
    _write(files["mkv"], "matroska", "libx264", "flac", rate=44100)
    _write(files["video_only"], "mp4", "libx264")
    sf.write(files["wav"], _tone(22050, 2).T, 22050, subtype="PCM_16")
    sf.write(files["flac"], _tone(16000, 1).T, 16000)
    _write(files["mp3"], "mp3", acodec="libmp3lame", rate=44100, channels=2)
    _write(files["big"], "mp4", "libx264", width=320, height=240)
    return files


@pytest.mark.parametrize("name", ["mp4", "webm", "mkv", "wav", "flac", "mp3"])
def test_audio_is_16k_mono_finite_and_right(media, name):
    audio = load_audio(str(media[name]))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all()
    # Codec priming/padding adds a little; resampling must not change the length by much.
    assert abs(len(audio) / 16000 - SECONDS) < 0.15
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.fft.rfftfreq(len(audio), 1 / 16000)[spectrum.argmax()]
    assert abs(peak_hz - TONE_HZ) < 5


@pytest.mark.parametrize("name", ["mp4", "webm", "mkv", "video_only"])
def test_frames_are_sampled_uniformly_and_show_the_right_moment(media, name):
    frames, times = load_frames(str(media[name]), fps=2.0, max_frames=16, max_pixels=224 * 224)
    assert frames.dtype == np.uint8 and frames.shape == (4, 48, 64, 3)
    np.testing.assert_allclose(times, [0.25, 0.75, 1.25, 1.75], atol=1e-6)
    # Frame i is grey 15*i: the frame on screen at t is number floor(t * FPS).
    expected = 15 * np.floor(times * FPS + 1e-9)
    np.testing.assert_allclose(frames.reshape(4, -1).mean(1), expected, atol=4)


def test_frames_ignore_the_audio_track(media):
    with_audio = load_frames(str(media["mp4"]), 2.0, 16, 224 * 224)
    silent = load_frames(str(media["video_only"]), 2.0, 16, 224 * 224)
    assert len(with_audio) == 2  # frames and times, nothing audible
    np.testing.assert_array_equal(with_audio[0], silent[0])
    np.testing.assert_array_equal(with_audio[1], silent[1])


def test_frames_downscale_keeps_aspect_and_caps_count(media):
    frames, times = load_frames(str(media["big"]), fps=8.0, max_frames=5, max_pixels=100 * 100)
    t, h, w, _ = frames.shape
    assert t == 5 and h * w <= 100 * 100
    assert abs(w / h - 320 / 240) < 0.05
    assert np.all(np.diff(times) > 0)


def test_probe(media):
    info = probe(str(media["mp4"]))
    assert (info.has_video, info.has_audio, info.width, info.height) == (True, True, 64, 48)
    assert info.fps == FPS and info.audio_rate == 16000
    assert abs(info.duration_s - SECONDS) < 0.1
    audio_only = probe(str(media["flac"]))
    assert (audio_only.has_video, audio_only.has_audio, audio_only.width) == (False, True, 0)


def test_fsspec_uris(media, tmp_path):
    path = str(media["mp4"])
    plain = load_audio(path)
    np.testing.assert_array_equal(load_audio(f"file://{path}"), plain)
    memory_uri = f"memory://decode-{uuid.uuid4().hex}/av.mp4"
    with fsspec.open(memory_uri, "wb") as f:
        f.write(media["mp4"].read_bytes())
    np.testing.assert_array_equal(load_audio(memory_uri), plain)
    assert load_frames(memory_uri, 2.0, 16, 224 * 224)[0].shape[0] == 4


def test_s3_uri(media, s3_endpoint):
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    bucket = f"decode-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    fs.put_file(str(media["mp4"]), f"{bucket}/av.mp4")
    uri = f"s3://{bucket}/av.mp4"
    np.testing.assert_array_equal(load_audio(uri, storage_options=options), load_audio(str(media["mp4"])))
    frames, _ = load_frames(uri, 2.0, 16, 224 * 224, storage_options=options)
    assert frames.shape == (4, 48, 64, 3)
    assert probe(uri, storage_options=options).has_video


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as info:
        fn(*args, **kwargs)
    assert info.value.detail
    return info.value.reason


def test_every_media_error_reason_from_a_real_bad_file(media, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(media["mp4"].read_bytes()[: media["mp4"].stat().st_size // 2])
    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros((0, 1), np.float32), 16000, subtype="FLOAT")
    nan_wav = tmp_path / "nan.wav"
    wave = _tone(16000, 1).T.copy()
    wave[100] = np.nan
    sf.write(nan_wav, wave, 16000, subtype="FLOAT")

    assert _reason(load_audio, str(empty)) == "zero_byte_file"
    assert _reason(load_frames, str(empty), 2.0, 16, 4096) == "zero_byte_file"
    assert _reason(load_audio, str(garbage)) == "not_media"
    assert _reason(probe, str(garbage)) == "not_media"
    assert _reason(load_audio, str(truncated)) == "truncated"
    assert _reason(load_frames, str(truncated), 2.0, 16, 4096) == "truncated"
    assert _reason(load_audio, str(media["video_only"])) == "no_audio_stream"
    assert _reason(load_frames, str(media["wav"]), 2.0, 16, 4096) == "no_video_stream"
    assert _reason(load_frames, str(media["mp3"]), 2.0, 16, 4096) == "no_video_stream"
    assert _reason(load_audio, str(no_samples)) == "zero_length_audio"
    assert _reason(load_audio, str(nan_wav)) == "non_finite_samples"
    assert _reason(load_audio, str(tmp_path / "missing.mp4")) == "not_found"

    info = probe(str(media["big"]))
    check_limits(info, MediaLimits())
    assert _reason(check_limits, info, MediaLimits(max_duration_s=1.0)) == "duration_too_long"
    assert _reason(check_limits, info, MediaLimits(max_width=256)) == "resolution_too_large"


def test_sample_times_uniform_and_capped():
    np.testing.assert_allclose(sample_times(2.0, 2.0, 16), [0.25, 0.75, 1.25, 1.75])
    assert len(sample_times(100.0, 2.0, 16)) == 16
    assert len(sample_times(0.1, 2.0, 16)) == 1


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """Five minutes, silent but for tones at 2-4 s, 35-38 s and 291-299 s."""
    from fakes.longvideo import write_long_av

    return write_long_av(tmp_path_factory.mktemp("long") / "long.mp4", 300.0, [(2, 4), (35, 38), (291, 299)])


def _loud_seconds(audio: np.ndarray) -> list[int]:
    return [s for s in range(len(audio) // 16000) if np.abs(audio[s * 16000 : (s + 1) * 16000]).max() > 0.1]


def test_a_window_decodes_only_itself_at_the_same_cost_anywhere(long_video):
    from fakes.longvideo import grey_level

    uri = str(long_video)
    costs = {}
    for start in (0, 30, 290):
        counter = DecodeCounter()
        frames, times = load_frames(window_uri(uri, start, start + 10), 2.0, 16, 224 * 224, counter=counter)
        audio = load_audio(window_uri(uri, start, start + 10), counter=counter)
        costs[start] = counter
        assert len(audio) == 160_000 and np.all((times >= 0) & (times < 10))
        np.testing.assert_allclose(frames.reshape(len(frames), -1).mean(1), grey_level(start), atol=2)
        if start == 30:  # the tone at 35-38 s lies 5-8 s into the window
            assert _loud_seconds(audio) == [5, 6, 7]
    assert _loud_seconds(load_audio(window_uri(uri, 290, 300))) == list(range(1, 9))
    whole = DecodeCounter()
    load_audio(uri, counter=whole)
    first, last = costs[0], costs[290]
    # Seeking: the last window costs what the first does, a small share of the whole file's audio.
    assert last.frames <= 1.2 * first.frames and last.packets <= 1.2 * first.packets
    assert first.frames < whole.frames / 10


def test_audio_levels_stream_blocks_and_stop_early(long_video):
    levels = audio_levels(str(long_video), block_s=0.5)
    loud = np.flatnonzero(levels.level_db > -50) * 0.5
    assert loud.min() == 2.0 and loud.max() == 298.5 and len(levels.level_db) in (600, 601)
    assert not levels.non_finite.any() and abs(levels.samples.sum() / 16000 - 300) < 0.2
    counter = DecodeCounter()
    head = audio_levels(str(long_video), block_s=0.5, until_s=20, counter=counter)
    assert len(head.level_db) == 40 and counter.packets < 400
