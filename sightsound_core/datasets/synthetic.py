"""The synthetic audio-visual world: procedural clips with one multiple-choice question each.

Two worlds share the renderer. **v2** (the default, ``synthetic-v2``) is the instrument world,
built to have the structure the paper relies on; **v1** (``synthetic-v1``) is kept selectable.

World v2. Five instruments, each with its own look and its own sound (``INSTRUMENTS``):

    drum       red circle       noise burst
    flute      cyan triangle    pure tone
    organ      green square     chord (major triad)
    whistle    yellow diamond   chirp (frequency sweep up or down)
    metronome  orange square    pulse train (slow 3.5-4.5 or fast 9-11 pulses a second)

A clip holds 1..max_sources distinct instruments that play one after another (each on screen
exactly while it sounds). Its question comes from one of three evidence tiers, drawn with
``SyntheticConfig.tiers`` (default 0.5 / 0.25 / 0.25):

- *visible correlates* (family ``visible``): which instrument is heard, how many, which first.
  The frames answer them; so does the audio.
- *partial correlates* (family ``partial``): whether a tonal instrument (flute, organ, metronome)
  sounds high (700-1400 Hz) or low (150-300 Hz). Size predicts pitch in ``partial_rate`` of
  sources (default 0.8: large, radius >= 0.19 of the frame, sounds low; small sounds high), and
  the other way round in the rest. A clip with no tonal instrument asks a visible question.
- *invisible properties* (family ``invisible``): the loudness trend of any instrument (rising,
  falling, steady) and the metronome's tempo, drawn independently of every pixel.

Questions name instruments, never colours. These parameters were fixed before any measurement
was made on this world, and are not tuned to make a result appear.

World v1. A clip holds 1..max_sources sound sources that play one after another, separated by short
silences. Each source is drawn as a coloured shape that is on screen exactly while it sounds, so
*which* objects sound, *how many* and *which first* can be seen; *how* they sound (pitch, pulse
tempo, loudness trend, timbre) is drawn independently of every visual attribute (shape, colour,
size, position), so vision alone cannot answer those questions better than chance.

Everything is deterministic in ``(config seed, clip index)``: the same pair gives the same
pixels, samples, question and options, whichever shard or process produces it.

The ground truth goes into ``Clip.meta`` (JSON) for labels and for measuring the verifier:

    meta = {
      "world": "synthetic-v1" | "synthetic-v2", "index": int, "size": px, "fps": video fps, "sample_rate": Hz,
      "target": index into sources of the object the question is about, or null,
      "sources": [{
        "name": "the red circle", "colour", "shape",
        "bbox": [x0, y0, x1, y1] pixels, "radius_px": float,
        "onset", "offset": seconds (visible and audible on [onset, offset)),
        "kind": tone | chord | noise | chirp | pulses,
        "f0": Hz (tone, chord root, pulse carrier; null otherwise),
        "pitch": very low | low | high | very high | null,
        "chirp_hz": [start, end] (chirp only), "tempo_hz": pulses per second (pulses only),
        "tempo": slow | fast | null, "loudness": rising | falling | steady, "gain": linear peak,
        v2 only: "instrument": name, "large": bool (radius >= 0.19 of the side),
      }, ...]
    }

In v2, ``name`` is ``the {instrument}`` and ``pitch`` is ``low`` or ``high``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from typing import Any

import av
import fsspec
import numpy as np

from sightsound_core.config import SyntheticConfig
from sightsound_core.schemas import Clip

log = logging.getLogger(__name__)

WORLD = "synthetic-v1"
AUDIO_RATE = 16000

# The world's vocabulary. Public knowledge (what a model may know about the world), not truth.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "magenta": (215, 60, 215),
    "cyan": (40, 210, 225),
    "orange": (245, 135, 20),
    "white": (240, 240, 240),
}
BACKGROUND = (24, 24, 28)
SHAPES = ("circle", "square", "triangle", "diamond")
KINDS = ("tone", "chord", "noise", "chirp", "pulses")
PITCH_BANDS: dict[str, tuple[float, float]] = {
    "very low": (110.0, 170.0),
    "low": (260.0, 400.0),
    "high": (650.0, 1000.0),
    "very high": (1600.0, 2500.0),
}
TEMPO_BANDS: dict[str, tuple[float, float]] = {"slow": (2.5, 3.5), "fast": (8.0, 11.0)}
LOUDNESS_TRENDS = ("rising", "falling", "steady")
# Option text for each acoustic value; the sim teacher and verifier phrase claims with them.
LOUDNESS_TEXT = {
    "falling": "louder at the start",
    "rising": "louder at the end",
    "steady": "the same loudness throughout",
}
TIMBRE_TEXT = {
    "tone": "pure tone",
    "chord": "chord",
    "noise": "noise burst",
    "chirp": "chirp",
    "pulses": "pulse train",
}
CHORD_RATIOS = (1.0, 1.26, 1.5)  # major triad
PULSE_S = 0.04
LOUDNESS_RANGE_DB = 15.0
TONAL = ("tone", "chord", "pulses")

# Sources last at least DUR_MIN seconds (so a 2 fps viewer sees each at least once) and are
# separated by at least GAP_MIN seconds of silence (so a listener can tell them apart).
DUR_MIN = 0.5
GAP_MIN = 0.2

VISUAL_KINDS = ("which_object", "count", "first_onset")
ACOUSTIC_KINDS = ("pitch", "tempo", "loudness", "timbre")

# World v2: instrument -> (colour, shape, sound kind). Public knowledge: what an instrument looks
# and sounds like, as a vision-language model knows it.
WORLD_V2 = "synthetic-v2"
INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "drum": ("red", "circle", "noise"),
    "flute": ("cyan", "triangle", "tone"),
    "organ": ("green", "square", "chord"),
    "whistle": ("yellow", "diamond", "chirp"),
    "metronome": ("orange", "square", "pulses"),
}
TIERS = ("visible", "partial", "invisible")
TIER_KINDS = {
    "visible": ("which_instrument", "count", "first_onset"),
    "partial": ("pitch",),
    "invisible": ("loudness", "tempo"),
}
V2_PITCH: dict[str, tuple[float, float]] = {"low": (150.0, 300.0), "high": (700.0, 1400.0)}
V2_TEMPO: dict[str, tuple[float, float]] = {"slow": (3.5, 4.5), "fast": (9.0, 11.0)}
LARGE_RADIUS = 0.19  # radii are uniform on [0.12, 0.26]: half the instruments are large


@dataclasses.dataclass
class Source:
    """One sound source and the shape that shows it (positions as fractions of the frame side)."""

    colour: str
    shape: str
    cx: float
    cy: float
    radius: float
    onset: float
    offset: float
    kind: str
    gain: float
    loudness: str
    f0: float | None = None
    pitch: str | None = None
    chirp_hz: tuple[float, float] | None = None
    tempo_hz: float | None = None
    tempo: str | None = None
    instrument: str | None = None

    @property
    def name(self) -> str:
        return f"the {self.instrument}" if self.instrument else object_name(self.colour, self.shape)

    @property
    def large(self) -> bool:
        return self.radius >= LARGE_RADIUS


@dataclasses.dataclass
class Scene:
    """One rendered clip before encoding.

    Attributes:
        frames: (T, S, S, 3) uint8 RGB at ``cfg.fps``; frame i shows time i / fps.
        audio: (N,) float32 mono at AUDIO_RATE.
        clip: the Clip record (its URIs empty until the file is written).
    """

    frames: np.ndarray
    audio: np.ndarray
    clip: Clip


def object_name(colour: str, shape: str) -> str:
    return f"the {colour} {shape}"


def clip_id(seed: int, index: int) -> str:
    return f"synthetic:{seed}:{index:06d}"


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([index, seed % (1 << 32), 0x5157])


def _timeline(cfg: SyntheticConfig, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(onset, offset) of each source: lead silence, sources, gaps, tail, slack split at random."""
    duration = cfg.duration_s
    dur_min = min(DUR_MIN, 0.8 * duration)
    n_max = max(1, min(cfg.max_sources, int((duration + GAP_MIN) // (dur_min + GAP_MIN))))
    n = int(rng.integers(1, n_max + 1))

    # Timeline: lead silence, n sources, n-1 gaps, tail silence; the slack is split at random.
    slack = max(0.0, duration - n * dur_min - (n - 1) * GAP_MIN)
    parts = rng.dirichlet(np.ones(2 * n + 1)) * slack
    spans: list[tuple[float, float]] = []
    t = float(parts[0])
    for i in range(n):
        length = dur_min + float(parts[1 + i])
        spans.append((t, min(duration, t + length)))
        t += length + (GAP_MIN + float(parts[n + 1 + i]) if i < n - 1 else 0.0)
    return spans


def _draw_sources(cfg: SyntheticConfig, rng: np.random.Generator) -> list[Source]:
    spans = _timeline(cfg, rng)
    n = len(spans)

    # Visual attributes: unique colours (one object per colour), shapes, sizes, positions.
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    sources: list[Source] = []
    for i in range(n):
        radius = float(rng.uniform(0.12, 0.26))
        sources.append(
            Source(
                colour=str(colours[i]),
                shape=str(rng.choice(SHAPES)),
                cx=float(rng.uniform(radius, 1 - radius)),
                cy=float(rng.uniform(radius, 1 - radius)),
                radius=radius,
                onset=round(spans[i][0], 4),
                offset=round(spans[i][1], 4),
                kind="tone",
                gain=1.0,
                loudness="steady",
            )
        )

    # Acoustic attributes, drawn without looking at anything visual.
    for i, src in enumerate(sources):
        src.kind = str(rng.choice(KINDS))
        src.gain = float(rng.uniform(0.3, 0.5))
        src.loudness = str(rng.choice(LOUDNESS_TRENDS))
        if src.kind in TONAL:
            band = str(rng.choice(list(PITCH_BANDS)))
            prev = sources[i - 1] if i else None
            # Two neighbouring pulse trains at one pitch would sound like one: keep them apart.
            while src.kind == "pulses" and prev is not None and prev.kind == "pulses" and prev.pitch == band:
                band = str(rng.choice(list(PITCH_BANDS)))
            lo, hi = PITCH_BANDS[band]
            src.pitch = band
            src.f0 = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 2)
        if src.kind == "pulses":
            src.tempo = str(rng.choice(list(TEMPO_BANDS)))
            src.tempo_hz = round(float(rng.uniform(*TEMPO_BANDS[src.tempo])), 3)
        if src.kind == "chirp":
            low = float(rng.uniform(250.0, 450.0))
            high = low * float(rng.uniform(3.0, 5.0))
            ends = (round(low, 2), round(high, 2))
            src.chirp_hz = ends if rng.random() < 0.5 else ends[::-1]
    return sources


def _draw_instruments(cfg: SyntheticConfig, rng: np.random.Generator) -> list[Source]:
    """World v2: distinct instruments on a timeline; pitch follows size in ``partial_rate``."""
    spans = _timeline(cfg, rng)
    names = rng.choice(list(INSTRUMENTS), size=min(len(spans), len(INSTRUMENTS)), replace=False)
    sources = []
    for (onset, offset), name in zip(spans, names):
        colour, shape, kind = INSTRUMENTS[str(name)]
        radius = float(rng.uniform(0.12, 0.26))
        src = Source(
            colour=colour,
            shape=shape,
            cx=float(rng.uniform(radius, 1 - radius)),
            cy=float(rng.uniform(radius, 1 - radius)),
            radius=radius,
            onset=round(onset, 4),
            offset=round(offset, 4),
            kind=kind,
            gain=float(rng.uniform(0.3, 0.5)),
            loudness=str(rng.choice(LOUDNESS_TRENDS)),
            instrument=str(name),
        )
        if kind in TONAL:
            follows = rng.random() < cfg.partial_rate
            src.pitch = ("low" if src.large else "high") if follows else ("high" if src.large else "low")
            lo, hi = V2_PITCH[src.pitch]
            src.f0 = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 2)
        if kind == "pulses":
            src.tempo = str(rng.choice(list(V2_TEMPO)))
            src.tempo_hz = round(float(rng.uniform(*V2_TEMPO[src.tempo])), 3)
        if kind == "chirp":
            low = float(rng.uniform(250.0, 450.0))
            ends = (round(low, 2), round(low * float(rng.uniform(3.0, 5.0)), 2))
            src.chirp_hz = ends if rng.random() < 0.5 else ends[::-1]
        sources.append(src)
    return sources


def _instrument_question(
    sources: list[Source], tier: str, rng: np.random.Generator, max_sources: int
) -> tuple[str, list[str], str, str, str, int | None]:
    """(question, options, label, family, category, target index) for one v2 clip."""
    n = len(sources)
    tonal = [i for i, s in enumerate(sources) if s.kind in TONAL]
    if tier == "partial" and not tonal:
        tier = "visible"  # no tonal instrument to ask about: documented in the module docstring
    present = [s.instrument for s in sources]
    absent = [name for name in INSTRUMENTS if name not in present]
    if tier == "visible":
        kind = str(rng.choice([k for k in TIER_KINDS["visible"] if k != "first_onset" or n >= 2]))
        if kind == "which_instrument":
            target = int(rng.integers(n))
            picked = [str(x) for x in rng.choice(absent, size=min(3, len(absent)), replace=False)]
            options = _shuffled([present[target], *picked], rng)
            return ("Which of these instruments can be heard in the clip?", options, present[target],
                    tier, kind, target)  # fmt: skip
        if kind == "count":
            options = [str(v) for v in range(1, max(4, max_sources) + 1)]
            return "How many instruments can be heard in the clip?", options, str(n), tier, kind, None
        first = min(range(n), key=lambda i: sources[i].onset)
        fill = [str(x) for x in rng.choice(absent, size=max(0, min(4 - n, len(absent))), replace=False)]
        options = _shuffled([*present, *fill], rng)
        return "Which instrument is heard first?", options, present[first], tier, kind, first
    if tier == "partial":
        target = int(rng.choice(tonal))
        src = sources[target]
        question = f"Does the {src.instrument} sound high or low?"
        return question, _shuffled(["high", "low"], rng), src.pitch, tier, "pitch", target
    metronome = [i for i, s in enumerate(sources) if s.kind == "pulses"]
    kind = str(rng.choice(["loudness", "tempo"] if metronome else ["loudness"]))
    if kind == "tempo":
        target = metronome[0]
        options = _shuffled(list(V2_TEMPO), rng)
        return "Are the ticks of the metronome slow or fast?", options, sources[target].tempo, tier, kind, target
    target = int(rng.integers(n))
    src = sources[target]
    options = _shuffled(list(LOUDNESS_TEXT.values()), rng)
    question = f"How does the loudness of the {src.instrument} change?"
    return question, options, LOUDNESS_TEXT[src.loudness], tier, kind, target


def _mask(src: Source, size: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    yy, xx = grid
    cx, cy, r = src.cx * size, src.cy * size, src.radius * size
    dx, dy = xx - cx, yy - cy
    if src.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if src.shape == "square":
        # Same area as the circle would be too small to tell apart at 96 px; 0.85 r keeps it close.
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if src.shape == "triangle":
        # Apex up at cy - r, base at cy + 0.8 r; half-width grows linearly to r at the base.
        frac = (dy + r) / (1.8 * r)
        return (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * r)
    return np.abs(dx) + np.abs(dy) <= r  # diamond


def _render_frames(cfg: SyntheticConfig, sources: list[Source]) -> tuple[np.ndarray, list[np.ndarray]]:
    size = cfg.size - cfg.size % 2  # yuv420p needs even sides
    n_frames = max(1, int(round(cfg.duration_s * cfg.fps)))
    grid = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    masks = [_mask(s, size, (grid[0], grid[1])) for s in sources]
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    for i in range(n_frames):
        t = i / cfg.fps
        for src, mask in zip(sources, masks):
            if src.onset <= t < src.offset:
                frames[i][mask] = COLOURS[src.colour]
    return frames, masks


def _envelope(n: int, trend: str) -> np.ndarray:
    """Linear-in-dB loudness trend with 10 ms fades at both ends (no clicks)."""
    if trend == "rising":
        db = np.linspace(-LOUDNESS_RANGE_DB, 0.0, n)
    elif trend == "falling":
        db = np.linspace(0.0, -LOUDNESS_RANGE_DB, n)
    else:
        db = np.zeros(n)
    env = 10.0 ** (db / 20.0)
    fade = min(n // 2, int(0.01 * AUDIO_RATE))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        env[:fade] *= ramp
        env[n - fade :] *= ramp[::-1]
    return env


def _source_wave(src: Source, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / AUDIO_RATE
    phase = float(rng.uniform(0, 2 * np.pi))
    if src.kind == "tone":
        wave = np.sin(2 * np.pi * src.f0 * t + phase)
    elif src.kind == "chord":
        wave = sum(np.sin(2 * np.pi * src.f0 * k * t + phase * k) for k in CHORD_RATIOS) / 2.0
    elif src.kind == "noise":
        wave = rng.standard_normal(n) * 0.45
    elif src.kind == "chirp":
        f_a, f_b = src.chirp_hz
        span = n / AUDIO_RATE
        k = np.log(f_b / f_a) / span
        wave = np.sin(2 * np.pi * f_a * (np.expm1(k * t) / k) + phase)
    else:
        carrier = np.sin(2 * np.pi * src.f0 * t + phase)
        gate = np.zeros(n)
        width = int(PULSE_S * AUDIO_RATE)
        bump = np.hanning(width)
        for start in np.arange(0.0, n / AUDIO_RATE, 1.0 / src.tempo_hz):
            a = int(start * AUDIO_RATE)
            b = min(n, a + width)
            gate[a:b] = bump[: b - a]
        wave = carrier * gate
    return (src.gain * wave * _envelope(n, src.loudness)).astype(np.float32)


def _render_audio(cfg: SyntheticConfig, sources: list[Source], rng: np.random.Generator) -> np.ndarray:
    audio = np.zeros(int(round(cfg.duration_s * AUDIO_RATE)), dtype=np.float32)
    for src in sources:
        a = int(round(src.onset * AUDIO_RATE))
        b = min(len(audio), int(round(src.offset * AUDIO_RATE)))
        audio[a:b] += _source_wave(src, b - a, rng)
    return audio


def _absent_names(sources: list[Source], rng: np.random.Generator, count: int) -> list[str]:
    present = {s.name for s in sources}
    pool = [object_name(c, s) for c in COLOURS for s in SHAPES if object_name(c, s) not in present]
    return [str(x) for x in rng.choice(pool, size=count, replace=False)]


def _question(
    sources: list[Source], family: str, rng: np.random.Generator, max_sources: int
) -> tuple[str, list[str], str, str, int | None]:
    """(question, options, label, category, target index) for one clip."""
    n = len(sources)
    if family == "visual":
        kinds = [k for k in VISUAL_KINDS if k != "first_onset" or n >= 2]
        kind = str(rng.choice(kinds))
        if kind == "which_object":
            target = int(rng.integers(n))
            options = [sources[target].name, *_absent_names(sources, rng, 3)]
            question = "Which of these objects makes a sound in the clip?"
            return question, _shuffled(options, rng), sources[target].name, kind, target
        if kind == "count":
            start = int(rng.integers(max(1, n - 3), n + 1))
            options = [str(v) for v in range(start, start + 4)]
            return "How many distinct sounds can be heard in the clip?", options, str(n), kind, None
        first = min(range(n), key=lambda i: sources[i].onset)
        others = [s.name for i, s in enumerate(sources) if i != first]
        others = [str(x) for x in rng.choice(others, size=min(3, len(others)), replace=False)]
        options = [sources[first].name, *others]
        options += _absent_names(sources, rng, 4 - len(options))
        return "Which object's sound starts first?", _shuffled(options, rng), sources[first].name, kind, first

    eligible = {
        "pitch": [i for i, s in enumerate(sources) if s.kind in TONAL],
        "tempo": [i for i, s in enumerate(sources) if s.kind == "pulses"],
        "loudness": list(range(n)),
        "timbre": [i for i, s in enumerate(sources) if s.kind != "pulses"],
    }
    kinds = [k for k in ACOUSTIC_KINDS if eligible[k]]
    kind = str(rng.choice(kinds))
    target = int(rng.choice(eligible[kind]))
    src = sources[target]
    if kind == "pitch":
        question = f"What is the pitch of the sound made by {src.name}?"
        options, label = list(PITCH_BANDS), src.pitch
    elif kind == "tempo":
        question = f"How fast are the pulses of the sound made by {src.name}?"
        options, label = ["slow", "fast", "there are no pulses", "irregular"], src.tempo
    elif kind == "loudness":
        question = f"How does the loudness of the sound made by {src.name} change?"
        options, label = [*LOUDNESS_TEXT.values(), "it is silent"], LOUDNESS_TEXT[src.loudness]
    else:
        question = f"What kind of sound does {src.name} make?"
        options, label = [TIMBRE_TEXT[k] for k in ("tone", "chord", "noise", "chirp")], TIMBRE_TEXT[src.kind]
    return question, _shuffled(options, rng), label, kind, target


def _shuffled(options: list[str], rng: np.random.Generator) -> list[str]:
    return [options[i] for i in rng.permutation(len(options))]


def _source_meta(src: Source, size: int, mask: np.ndarray) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else [0, 0, 0, 0]
    extra = {"instrument": src.instrument, "large": src.large} if src.instrument else {}
    return {
        **extra,
        "name": src.name,
        "colour": src.colour,
        "shape": src.shape,
        "bbox": bbox,
        "radius_px": round(src.radius * size, 2),
        "onset": src.onset,
        "offset": src.offset,
        "kind": src.kind,
        "f0": src.f0,
        "pitch": src.pitch,
        "chirp_hz": list(src.chirp_hz) if src.chirp_hz else None,
        "tempo_hz": src.tempo_hz,
        "tempo": src.tempo,
        "loudness": src.loudness,
        "gain": round(src.gain, 4),
    }


def synthesize(cfg: SyntheticConfig, index: int) -> Scene:
    """Render clip ``index`` of the world ``cfg`` in memory (no file written, URIs empty)."""
    rng = _rng(cfg.seed, index)
    if cfg.world == "v2":
        sources = _draw_instruments(cfg, rng)
        weights = np.array([cfg.tiers.get(t, 0.0) for t in TIERS])
        tier = str(rng.choice(TIERS, p=weights / weights.sum()))
        question, options, label, family, category, target = _instrument_question(
            sources, tier, rng, cfg.max_sources
        )
    else:
        sources = _draw_sources(cfg, rng)
        family = "acoustic" if rng.random() < cfg.acoustic_fraction else "visual"
        question, options, label, category, target = _question(sources, family, rng, cfg.max_sources)
    frames, masks = _render_frames(cfg, sources)
    audio = _render_audio(cfg, sources, rng)
    size = frames.shape[1]
    meta = {
        "world": WORLD_V2 if cfg.world == "v2" else WORLD,
        "index": index,
        "size": size,
        "fps": cfg.fps,
        "sample_rate": AUDIO_RATE,
        "target": target,
        "sources": [_source_meta(s, size, m) for s, m in zip(sources, masks)],
    }
    clip = Clip(
        clip_id=clip_id(cfg.seed, index),
        source="synthetic",
        split=cfg.split,
        video_uri="",
        audio_uri="",
        duration_s=float(cfg.duration_s),
        question=question,
        options=options,
        label=label,
        family=family,
        category=category,
        meta=json.dumps(meta, sort_keys=True),
    )
    return Scene(frames=frames, audio=audio, clip=clip)


def write_mp4(path: str, frames: np.ndarray, fps: int, audio: np.ndarray, sample_rate: int) -> None:
    """Encode frames (T, H, W, 3) uint8 RGB as H.264 yuv420p and audio (N,) float32 as AAC mono."""
    with av.open(path, mode="w", format="mp4") as out:
        # One thread: clips are tiny, and thread start-up would cost more than it saves.
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.codec_context.thread_count = 1
        sound = out.add_stream("aac", rate=sample_rate, layout="mono")
        sound.bit_rate = 96000
        for rgb in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        chunk = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="fltp", layout="mono")
        chunk.sample_rate = sample_rate
        chunk.pts = 0
        for packet in sound.encode(chunk):
            out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)


def generate_clips(
    cfg: SyntheticConfig,
    media_dir: str,
    start: int,
    stop: int,
    storage_options: dict[str, Any] | None = None,
) -> list[Clip]:
    """Clips ``start..stop-1`` of the world, each with its mp4 written under ``media_dir``.

    Each file is encoded to a local temporary file first and then moved (local) or uploaded
    (object store) to ``clip-{index:06d}.mp4``, so a crash never leaves a partial file under the
    final name. Returns the clips with ``video_uri == audio_uri ==`` the file's full URI.
    """
    fs, root = fsspec.core.url_to_fs(media_dir, **(storage_options or {}))
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    fs.makedirs(root, exist_ok=True)
    scratch = root if local else tempfile.mkdtemp(prefix="sightsound-synth-")

    clips: list[Clip] = []
    began = time.perf_counter()
    for index in range(start, stop):
        scene = synthesize(cfg, index)
        final = f"{root.rstrip('/')}/clip-{index:06d}.mp4"
        fd, tmp = tempfile.mkstemp(prefix=f".clip-{index:06d}-", suffix=".mp4.tmp", dir=scratch)
        os.close(fd)
        try:
            write_mp4(tmp, scene.frames, cfg.fps, scene.audio, AUDIO_RATE)
            if local:
                os.replace(tmp, final)
            else:
                fs.put_file(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        uri = fs.unstrip_protocol(final)
        clips.append(dataclasses.replace(scene.clip, video_uri=uri, audio_uri=uri))
    if not local:
        os.rmdir(scratch)
    log.info(
        "synthetic clips %d..%d written to %s in %.2f s", start, stop, media_dir, time.perf_counter() - began
    )
    return clips
