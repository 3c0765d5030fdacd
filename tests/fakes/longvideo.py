"""A long, small video for window tests and benchmarks: mostly silence, a tone where asked.

Low resolution and frame rate keep a 5-minute file to a few hundred kilobytes and a second or two
to write. Frames are flat grey at level ``8 * (t // 10)``, so a decoded frame tells which 10 s
window it came from; a keyframe every ``gop`` frames bounds what a seek has to decode.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

RATE = 16000
TONE_HZ = 440.0


def grey_level(t: float) -> int:
    """The grey level of the frame shown at ``t`` seconds."""
    return int(8 * (t // 10)) % 256


def write_long_av(
    path: Path,
    seconds: float = 300.0,
    tones: list[tuple[float, float]] = (),
    width: int = 32,
    height: int = 24,
    fps: int = 2,
    gop: int = 10,
) -> Path:
    """An mp4 (H.264 + AAC 16 kHz mono), interleaved second by second, silent except a 440 Hz
    tone at 0.3 amplitude over each ``(start, end)`` in ``tones``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    wave = np.zeros(n, np.float32)
    for start, end in tones:
        on = (t >= start) & (t < end)
        wave[on] = 0.3 * np.sin(2 * np.pi * TONE_HZ * t[on])
    with av.open(str(path), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(gop)})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=RATE, layout="mono")
        for second in range(int(np.ceil(seconds))):
            for i in range(second * fps, min(int(seconds * fps), (second + 1) * fps)):
                rgb = np.full((height, width, 3), grey_level(i / fps), dtype=np.uint8)
                for p in vs.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(p)
            chunk = wave[second * RATE : (second + 1) * RATE]
            frame = av.AudioFrame.from_ndarray(chunk[None].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = RATE, second * RATE
            for p in sound.encode(frame):
                out.mux(p)
        for stream in (vs, sound):
            for p in stream.encode():
                out.mux(p)
    return path
