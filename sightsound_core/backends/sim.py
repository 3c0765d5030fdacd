"""Simulated teacher and verifier for the synthetic world.

``SimTeacher`` is a vision-only model: it segments the coloured shapes in the silent frames it is
given, works out which objects appear, how many and which first, and reasons about the sounds they
would make. What it sees is usually right; what it says about pitch, tempo, loudness or timbre is
a guess from visual priors (big shapes sound low, triangles chirp...) or plain chance, because in
this world acoustics are independent of looks. So across K samples it agrees with itself on
visual questions and not on acoustic ones, and it states false sound facts with confidence.

``SimVerifier`` is an audio model: it hears the waveform (energy envelope, onsets, spectrum,
spectral flatness, pulse rate), finds the sound claims in a trace and lists those the recording
does not support. Its reply goes through ``parse_verdict`` like any real backend's.

In the instrument world (synthetic v2) the same two simulators speak of instruments: the teacher
recognises each instrument by its look, knows the sound it makes, reads size as a hint of pitch
(right in about 80% of sources, the world's partial correlate) and can only guess loudness and
tempo; its list of what it sees ("the drum (visible from about 0.2 s to 0.9 s)") is itself a
sound claim, that a drum sounds then, which the verifier checks against the heard event's timbre.
The teacher tells the worlds apart by the question's words (instrument names), as a real model
answers in the terms it is asked in.

Neither reads ``Clip.meta``. Claims are written in one controlled phrasing, the claim language of
``sightsound_core.claims``, so that the verifier and ``claims.planted_hallucination`` (the
ground-truth check used to measure the verifier) find exactly the claims the teacher wrote; the
waveform analysis the verifier hears with lives there too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time

import numpy as np
from scipy import ndimage

from sightsound_core.answers import match_option
from sightsound_core.backends.base import (
    Generation,
    TeacherRequest,
    TeacherResult,
    VerifyRequest,
    VerifyResult,
)
from sightsound_core.claims import (
    INSTRUMENT_KIND,
    LOUDNESS_PHRASE,
    OBJECT_PATTERN,
    HeardEvent,
    analyse_audio,
    check_claims,
    claim_text,
)
from sightsound_core.datasets.synthetic import (
    BACKGROUND,
    COLOURS,
    INSTRUMENTS,
    LARGE_RADIUS,
    LOUDNESS_TEXT,
    PITCH_BANDS,
    SHAPES,
    TIMBRE_TEXT,
    TONAL,
    object_name,
)
from sightsound_core.config import TeacherConfig, VerifyConfig
from sightsound_core.prompts import teacher_user_text
from sightsound_core.schemas import Clip
from sightsound_core.verdicts import format_verdict, parse_verdict

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Vision: segment coloured shapes in frames.

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_BG = np.array(BACKGROUND, dtype=np.float32)
_FG_DIST2 = 60.0**2


@dataclasses.dataclass
class SeenObject:
    """An object as the teacher perceives it.

    Attributes:
        colour, shape: names from the world's vocabulary.
        onset, offset: estimated seconds it is on screen (midpoints between sampled frames).
        area: largest area seen, as a fraction of the frame.
        cy: vertical centre, 0 (top) .. 1 (bottom).
    """

    colour: str
    shape: str
    onset: float
    offset: float
    area: float
    cy: float

    @property
    def name(self) -> str:
        return object_name(self.colour, self.shape)


def _shape_of(mask: np.ndarray) -> str:
    """Shape from how a blob fills its bounding box, and how wide it is near its top vs bottom."""
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = mask.sum() / float(h * w)
    if fill > 0.9:
        return "square"
    if fill > 0.68:
        return "circle"
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    top = box[int(0.25 * h)].sum()
    bottom = box[int(0.75 * h)].sum()
    return "triangle" if top < 0.6 * max(bottom, 1) else "diamond"


def perceive(frames: np.ndarray, frame_times: np.ndarray, duration_s: float) -> list[SeenObject]:
    """Objects in the frames, ordered by estimated onset.

    Args:
        frames: (T, H, W, 3) uint8 RGB.
        frame_times: (T,) seconds.
        duration_s: clip length, bounds the last object's offset.
    """
    n_frames, height, width, _ = frames.shape
    min_area = max(6, int(0.002 * height * width))
    seen: dict[str, list[tuple[int, np.ndarray]]] = {}
    for i in range(n_frames):
        img = frames[i].astype(np.float32)
        foreground = ((img - _BG) ** 2).sum(-1) > _FG_DIST2
        labels, n = ndimage.label(foreground)
        for j in range(1, n + 1):
            blob = labels == j
            if blob.sum() < min_area:
                continue
            # Blob edges mix with the background after chroma subsampling: judge colour on the core.
            core = ndimage.binary_erosion(blob)
            pixels = img[core if core.sum() >= 4 else blob]
            colour = _PALETTE_NAMES[int(((_PALETTE - np.median(pixels, 0)) ** 2).sum(-1).argmin())]
            seen.setdefault(colour, []).append((i, blob))

    objects: list[SeenObject] = []
    times = np.asarray(frame_times, dtype=np.float64)
    for colour, sightings in seen.items():
        idx = sorted({i for i, _ in sightings})
        first, last = idx[0], idx[-1]
        onset = (times[first - 1] + times[first]) / 2 if first > 0 else times[0] / 2
        offset = (times[last] + times[last + 1]) / 2 if last < n_frames - 1 else (times[last] + duration_s) / 2
        biggest = max((b for _, b in sightings), key=lambda b: int(b.sum()))
        ys, _ = np.nonzero(biggest)
        objects.append(
            SeenObject(
                colour=colour,
                shape=_shape_of(biggest),
                onset=float(onset),
                offset=float(offset),
                area=float(biggest.sum()) / (height * width),
                cy=float(ys.mean()) / height,
            )
        )
    return sorted(objects, key=lambda o: (o.onset, o.colour))


# ---------------------------------------------------------------------------------------------
# The simulated vision-only teacher.


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _prior(kind: str, obj: SeenObject | None) -> str:
    """What a vision-only model would guess from looks alone (uninformative in this world)."""
    area = obj.area if obj is not None else 0.07
    if kind == "pitch":
        return "very low" if area > 0.12 else "low" if area > 0.07 else "high" if area > 0.04 else "very high"
    if kind == "tempo":
        return "fast" if area < 0.07 else "slow"
    if kind == "loudness":
        cy = obj.cy if obj is not None else 0.5
        return "rising" if cy < 0.4 else "falling" if cy > 0.6 else "steady"
    shape = obj.shape if obj is not None else "circle"
    return {"circle": "tone", "square": "chord", "triangle": "chirp", "diamond": "noise"}[shape]


_GUESSES = {
    "pitch": list(PITCH_BANDS),
    "tempo": ["slow", "fast"],
    "loudness": list(LOUDNESS_PHRASE),
    "timbre": ["tone", "chord", "noise", "chirp"],
}



def _option_text(kind: str, value: str) -> str:
    if kind == "loudness":
        return LOUDNESS_TEXT[value]
    if kind == "timbre":
        return TIMBRE_TEXT[value]
    return value


def _why(kind: str, name: str, obj: SeenObject | None, value: str, guessed: bool) -> str:
    """A line of reasoning that ends in a claim, the way a vision model justifies a sound."""
    claim = claim_text(kind, name, value)
    if guessed:
        return f"Nothing in the picture settles this, but I am fairly sure {claim}."
    if kind == "pitch":
        big = obj is not None and obj.area > 0.07
        size, sound = ("large", "low") if big else ("small", "high")
        return f"{name.capitalize()} looks {size}, and {size} things sound {sound}, so {claim}."
    if kind == "tempo":
        size, beat = ("small", "quickly") if value == "fast" else ("large", "slowly")
        return f"{name.capitalize()} is {size}, so it should beat {beat}: {claim}."
    if kind == "loudness":
        return f"From where {name} sits in the frame, I think {claim}."
    shape = obj.shape if obj is not None else "shape"
    return f"A {shape} like this usually makes that kind of sound: {claim}."


_INSTRUMENT_BY_COLOUR = {colour: name for name, (colour, _, _) in INSTRUMENTS.items()}
_INSTRUMENT_WORDS = re.compile(rf"\b(?:instruments?|{'|'.join(INSTRUMENTS)})\b", re.IGNORECASE)
# Area of each instrument's shape as a multiple of radius squared (see synthetic._mask).
_SHAPE_AREA = {"circle": float(np.pi), "square": 1.7**2, "triangle": 1.8, "diamond": 2.0}
_V2_GUESSES = {"pitch": ["low", "high"], "tempo": ["slow", "fast"], "loudness": list(LOUDNESS_PHRASE)}


def asks_about_instruments(clip: Clip) -> bool:
    """Whether a question is in the instrument world's terms (synthetic v2)."""
    return bool(_INSTRUMENT_WORDS.search(" ".join([clip.question, *clip.options])))


def _instrument_name(obj: SeenObject) -> str:
    return f"the {_INSTRUMENT_BY_COLOUR[obj.colour]}"


def _looks_large(obj: SeenObject) -> bool:
    """Size from the seen area and the instrument's known shape."""
    shape = INSTRUMENTS[_INSTRUMENT_BY_COLOUR[obj.colour]][1]
    return float(np.sqrt(obj.area / _SHAPE_AREA[shape])) >= LARGE_RADIUS


def _instrument_prior(kind: str, obj: SeenObject | None) -> str:
    """What the look suggests: large sounds low (right in about 80% of sources); loudness from
    where it sits and tempo from its size (no better than chance)."""
    if obj is None:
        return {"pitch": "low", "tempo": "slow", "loudness": "steady"}[kind]
    if kind == "pitch":
        return "low" if _looks_large(obj) else "high"
    if kind == "tempo":
        return "slow" if _looks_large(obj) else "fast"
    return "rising" if obj.cy < 0.4 else "falling" if obj.cy > 0.6 else "steady"


def _instrument_why(kind: str, name: str, obj: SeenObject | None, value: str, guessed: bool) -> str:
    claim = claim_text(kind, name, value)
    if guessed or obj is None:
        return f"Nothing in the picture settles this, but I am fairly sure {claim}."
    size = "large" if _looks_large(obj) else "small"
    if kind == "pitch":
        return f"{name.capitalize()} looks {size}, and {size} instruments sound {'low' if size == 'large' else 'high'}, so {claim}."
    if kind == "tempo":
        return f"{name.capitalize()} looks {size}, so it should tick {'slowly' if size == 'large' else 'quickly'}: {claim}."
    return f"From where {name} sits in the frame, I think {claim}."


def _instrument_answer(clip: Clip, seen: list[str], count: int, rng: np.random.Generator) -> str:
    if clip.category == "count":
        candidates = [o for o in clip.options if o == str(count)]
    elif clip.category == "first_onset":
        candidates = [o for o in clip.options if seen and o == seen[0]]
    else:
        candidates = [o for o in clip.options if o in seen]
    pool = candidates if candidates else clip.options
    return str(pool[int(rng.integers(len(pool)))])


def _misread(
    seen: list[SeenObject], rng: np.random.Generator, slip: float, noun: str, shapes: bool
) -> tuple[list[SeenObject], int, list[str]]:
    """Sometimes the frames are misread, as a real model misreads them: an object missed, an
    extra one imagined, two onsets swapped, or (where shapes name objects, world v1) a shape
    mistaken. Returns (belief, extra objects, narrated notes); ``seen`` is left untouched."""
    belief = [dataclasses.replace(o) for o in seen]
    extra, notes = 0, []
    if belief and rng.random() < slip:
        error = str(rng.choice(["miss", "extra", "order", *(["shape"] if shapes else [])]))
        if error == "miss" and len(belief) > 1:
            belief.pop(int(rng.integers(len(belief))))
        elif error == "extra":
            extra = 1
            notes.append(f"One more {noun} seems to flicker briefly at the edge of the frame.")
        elif error == "order" and len(belief) > 1:
            belief[0].onset, belief[1].onset = belief[1].onset, belief[0].onset
            belief.sort(key=lambda o: o.onset)
        elif shapes:
            victim = belief[int(rng.integers(len(belief)))]
            victim.shape = str(rng.choice([s for s in SHAPES if s != victim.shape]))
    return belief, extra, notes


class SimTeacher:
    """Vision-only teacher over silent frames (implements ``TeacherBackend``).

    Args:
        temperature: 0 gives K identical samples; higher values make samples deviate more often
            (misperceived frames on visual questions, random guesses on acoustic ones, extra
            speculative sound claims).
        seed: folded into every sample's random stream with the call's seed.
    """

    name = "sim"
    model = "sim://vision-teacher"

    def __init__(self, temperature: float = 0.7, seed: int = 0):
        self.temperature = float(temperature)
        self.seed = int(seed)

    @classmethod
    def from_config(cls, cfg: TeacherConfig) -> "SimTeacher":
        return cls(cfg.temperature, cfg.seed)

    def load(self) -> None:
        """Nothing to load: the simulator is pure numpy."""

    def _rates(self) -> tuple[float, float, float]:
        t = self.temperature
        slip = min(0.5, 0.1 * t)  # visual misperception per sample
        guess = min(1.0, 0.2 + 0.6 * t) if t > 0 else 0.0  # acoustic: random guess instead of prior
        side = min(0.9, 0.15 + 0.2 * t) if t > 0 else 0.15  # speculative claim on a visual question
        return slip, guess, side

    def sample(self, requests: list[TeacherRequest], k: int, seed: int) -> list[TeacherResult]:
        results = []
        for req in requests:
            began = time.perf_counter()
            seen = perceive(req.frames, req.frame_times, req.clip.duration_s)
            prompt_text = teacher_user_text(req.clip.question, req.clip.options)
            prompt_tokens = len(prompt_text.split()) + 64 * len(req.frames)  # ~64 visual tokens a frame
            samples = []
            for j in range(k):
                # At temperature 0 every sample draws from the same stream: K identical samples.
                stream = [self.seed % (1 << 32), seed % (1 << 32), _stable_int(req.clip.clip_id)]
                rng = np.random.default_rng(stream + ([j] if self.temperature > 0 else []))
                text = self._trace(req, seen, rng)
                samples.append(Generation(text, "stop", prompt_tokens, len(text.split())))
            results.append(TeacherResult(req.clip.clip_id, samples, time.perf_counter() - began))
        return results

    def _trace(self, req: TeacherRequest, seen: list[SeenObject], rng: np.random.Generator) -> str:
        if asks_about_instruments(req.clip):
            return self._instrument_trace(req, seen, rng)
        clip = req.clip
        slip, guess, side = self._rates()
        belief, extra, notes = _misread(seen, rng, slip, "object", shapes=True)

        # Narrate what is visible: objects with the times they are on screen.
        lines = [f"I look at the {len(req.frames)} frames without sound."]
        if belief:
            listed = ", ".join(
                f"{o.name} (visible from about {o.onset:.1f} s to {o.offset:.1f} s)" for o in belief
            )
            lines.append(f"I see {len(belief)} object{'s' if len(belief) != 1 else ''}: {listed}.")
        else:
            lines.append("I cannot make out any object.")
        lines.extend(notes)
        count = len(belief) + extra
        plural = "s" if count != 1 else ""
        lines.append(
            f"Each object appears only while it makes a sound, so I expect {count} distinct sound{plural}."
        )
        first = belief[0] if belief else None
        if first is not None and (clip.category == "first_onset" or rng.random() < 0.5):
            lines.append(f"The first sound starts at about {first.onset:.1f} s, when {first.name} appears.")

        # Answer: visual questions from what was seen; acoustic ones from priors or chance.
        category = clip.category
        if category in _GUESSES:
            named = OBJECT_PATTERN.search(clip.question)
            target_name = named.group(1).lower() if named else None
            target = next((o for o in belief if o.name == target_name), None)
            guessed = rng.random() < guess
            value = str(rng.choice(_GUESSES[category])) if guessed else _prior(category, target)
            lines.append(_why(category, target_name or "the object", target, value, guessed))
            answer = match_option(_option_text(category, value), clip.options) or str(rng.choice(clip.options))
        else:
            if belief and rng.random() < side:
                obj = belief[int(rng.integers(len(belief)))]
                kind = str(rng.choice(["pitch", "loudness", "timbre"]))
                value = str(rng.choice(_GUESSES[kind])) if rng.random() < 0.5 else _prior(kind, obj)
                lines.append(f"Judging by its look, {claim_text(kind, obj.name, value)}.")
            answer = self._visual_answer(clip, belief, count, rng)
        think = " ".join(lines)
        return f"<think>{think}</think><answer>{answer}</answer>"

    def _instrument_trace(self, req: TeacherRequest, seen: list[SeenObject], rng: np.random.Generator) -> str:
        """A trace about the instrument world: what is seen, the sounds that implies, and a
        visual prior or a guess for what cannot be seen."""
        clip = req.clip
        slip, guess, side = self._rates()
        instruments = [o for o in seen if o.colour in _INSTRUMENT_BY_COLOUR]
        belief, extra, notes = _misread(instruments, rng, slip, "instrument", shapes=False)

        # What is visible, and the sounds it implies
        names = [_instrument_name(o) for o in belief]
        if belief:
            listed = " and ".join(
                f"{n} (visible from about {o.onset:.1f} s to {o.offset:.1f} s)" for n, o in zip(names, belief)
            )
            lines = [f"I see {listed}."]
        else:
            lines = ["I cannot make out any instrument."]
        lines.extend(notes)
        count = len(belief) + extra
        plural = "s" if count != 1 else ""
        lines.append(f"Each instrument sounds only while it is visible, so I expect {count} distinct sound{plural}.")
        if belief and (clip.category == "first_onset" or rng.random() < 0.5):
            lines.append(f"The first sound starts at about {belief[0].onset:.1f} s, when {names[0]} appears.")

        # Answer: visible questions from the frames, pitch from size, the rest by a guess
        category = clip.category
        named = OBJECT_PATTERN.search(clip.question)
        target_name = named.group(1).lower() if named else None
        target = next((o for n, o in zip(names, belief) if n == target_name), None)
        if category in ("pitch", "loudness", "tempo"):
            # Size is a strong cue for pitch: the prior is used unless the sample wanders off.
            guessed = rng.random() < (slip if category == "pitch" else guess)
            value = str(rng.choice(_V2_GUESSES[category])) if guessed else _instrument_prior(category, target)
            lines.append(_instrument_why(category, target_name or "the instrument", target, value, guessed))
            answer = match_option(_option_text(category, value), clip.options) or str(rng.choice(clip.options))
        else:
            if belief and rng.random() < side:
                i = int(rng.integers(len(belief)))
                kinds = ["loudness"] + (["pitch"] if INSTRUMENT_KIND[names[i]] in TONAL else [])
                kinds += ["tempo"] if INSTRUMENT_KIND[names[i]] == "pulses" else []
                kind = str(rng.choice(kinds))
                value = _instrument_prior(kind, belief[i]) if kind == "pitch" else str(rng.choice(_V2_GUESSES[kind]))
                lines.append(f"Judging by its look, {claim_text(kind, names[i], value)}.")
            answer = _instrument_answer(clip, [n.removeprefix("the ") for n in names], count, rng)
        return f"<think>{' '.join(lines)}</think><answer>{answer}</answer>"

    @staticmethod
    def _visual_answer(clip: Clip, belief: list[SeenObject], count: int, rng: np.random.Generator) -> str:
        names = {o.name for o in belief}
        if clip.category == "count":
            candidates = [o for o in clip.options if o == str(count)]
        elif clip.category == "first_onset":
            candidates = [o for o in clip.options if belief and o == belief[0].name]
        else:
            candidates = [o for o in clip.options if o in names]
        pool = candidates if candidates else clip.options
        return str(pool[int(rng.integers(len(pool)))])

    def propose(self, requests: list[TeacherRequest], n: int, seed: int) -> list[TeacherResult]:
        """Visual-correlate questions from what it sees in the frames (implements
        ``QuestionProposer``). Kinds, in order: which object sounds, how many sounds, which sounds
        first (two or more objects seen), then acoustic ones (pitch, timbre of a seen object) when
        more are asked for. The answer is what it saw (visual) or a guess (acoustic), as a
        vision-only model's would be."""
        results = []
        for req in requests:
            began = time.perf_counter()
            digest = int.from_bytes(hashlib.sha256(req.clip.clip_id.encode()).digest()[:4], "little")
            rng = np.random.default_rng([self.seed % (1 << 32), seed % (1 << 32), digest])
            seen = perceive(req.frames, req.frame_times, req.clip.duration_s)
            text = json.dumps({"questions": _sim_questions(seen, n, rng)})
            results.append(
                TeacherResult(req.clip.clip_id, [Generation(text, "stop", 0, len(text.split()))],
                              time.perf_counter() - began)
            )
        return results


def _sim_questions(seen: list[SeenObject], n: int, rng: np.random.Generator) -> list[dict[str, object]]:
    if not seen:
        return []
    names = [o.name for o in seen]
    absent = [object_name(c, s) for c in COLOURS for s in SHAPES if object_name(c, s) not in names]

    def shuffled(options: list[str]) -> list[str]:
        return [options[i] for i in rng.permutation(len(options))]

    def fill(options: list[str]) -> list[str]:
        extra = [str(x) for x in rng.choice(absent, size=4 - len(options), replace=False)]
        return shuffled(options + extra)

    target = seen[int(rng.integers(len(seen)))]
    out = [
        {"question": "Which of these objects makes a sound in the clip?", "options": fill([target.name]),
         "answer": target.name, "family": "visual", "category": "which_object"},
        {"question": "How many distinct sounds can be heard in the clip?",
         "options": [str(v) for v in range(max(1, len(seen) - 1), max(1, len(seen) - 1) + 4)],
         "answer": str(len(seen)), "family": "visual", "category": "count"},
    ]
    if len(seen) >= 2:
        out.append({"question": "Which object's sound starts first?", "options": fill(names[:4]),
                    "answer": seen[0].name, "family": "visual", "category": "first_onset"})
    pitches = list(PITCH_BANDS)
    out.append({"question": f"What is the pitch of the sound made by {target.name}?", "options": pitches,
                "answer": str(rng.choice(pitches)), "family": "acoustic", "category": "pitch"})
    timbres = [TIMBRE_TEXT[k] for k in ("tone", "chord", "noise", "chirp")]
    out.append({"question": f"What kind of sound does {target.name} make?", "options": timbres,
                "answer": str(rng.choice(timbres)), "family": "acoustic", "category": "timbre"})
    return out[:n]


# ---------------------------------------------------------------------------------------------
# The simulated audio verifier.


class SimVerifier:
    """Waveform-analysing verifier (implements ``VerifierBackend``)."""

    name = "sim"
    model = "sim://waveform-verifier"

    @classmethod
    def from_config(cls, cfg: VerifyConfig) -> "SimVerifier":
        return cls()

    def load(self) -> None:
        """Nothing to load: the simulator is numpy and scipy."""

    def verify(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        results = []
        heard: dict[int, list[HeardEvent]] = {}
        for req in requests:
            began = time.perf_counter()
            try:
                # Traces of one clip share its audio array: analyse it once.
                key = id(req.audio)
                if key not in heard:
                    heard[key] = analyse_audio(np.asarray(req.audio, dtype=np.float32), req.sample_rate)
                raw = format_verdict(check_claims(req.trace, heard[key]))
            except Exception as exc:  # one bad item must not sink the batch
                log.warning("sim verifier failed on %s/%d: %r", req.clip.clip_id, req.sample_idx, exc)
                results.append(VerifyResult("error", [], type(exc).__name__, "", 1, time.perf_counter() - began))
                continue
            status, claims, reason = parse_verdict(raw)
            results.append(VerifyResult(status, claims, reason, raw, 1, time.perf_counter() - began))
        return results
