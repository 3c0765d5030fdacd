"""Tiny real media files for dataset tests, written with PyAV and soundfile."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf

RATE = 16000
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "datasets"


def tone(seconds: float, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_av(
    path: Path, seconds: float = 1.0, width: int = 32, height: int = 24, fps: int = 8,
    video: bool = True, audio: bool = True,
) -> Path:
    """An mp4 (H.264 + AAC), a video-only mp4, or (``video=False``) an audio-only file whose
    container follows the suffix (.wav, .flac, .mp3; AAC in .m4a or .mp4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not video:
        sf.write(path, tone(seconds), RATE) if path.suffix in (".wav", ".flac") else _encode_audio(path, seconds)
        return path
    with av.open(str(path), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=RATE, layout="mono") if audio else None
        for i in range(int(seconds * fps)):
            rgb = np.full((height, width, 3), (i * 20) % 256, dtype=np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if sound is not None:
            _mux_audio(out, sound, seconds)
    return path


def _encode_audio(path: Path, seconds: float) -> None:
    codec = "libmp3lame" if path.suffix == ".mp3" else "aac"
    with av.open(str(path), mode="w", format="mp3" if path.suffix == ".mp3" else "mp4") as out:
        _mux_audio(out, out.add_stream(codec, rate=44100 if codec == "libmp3lame" else RATE, layout="mono"), seconds)


def _mux_audio(out, stream, seconds: float) -> None:
    rate = stream.rate
    frame = av.AudioFrame.from_ndarray(tone(seconds, rate)[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    for p in stream.encode(frame):
        out.mux(p)
    for p in stream.encode():
        out.mux(p)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """A float32 wav holding exactly ``samples`` (NaN and empty included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples.reshape(-1, 1), rate, subtype="FLOAT")
    return path
