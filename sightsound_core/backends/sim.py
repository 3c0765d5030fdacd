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

Neither reads ``Clip.meta``. Claims are written in one controlled phrasing (``CLAIM_PATTERNS``) so
that the verifier and ``planted_hallucination`` (the ground-truth check used to measure the
verifier) find exactly the claims the teacher wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time

import numpy as np
from scipy import ndimage, signal

from sightsound_core.answers import match_option
from sightsound_core.backends.base import (
    Generation,
    TeacherRequest,
    TeacherResult,
    VerifyRequest,
    VerifyResult,
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
from sightsound_core.prompts import teacher_user_text
from sightsound_core.schemas import Clip
from sightsound_core.verdicts import format_verdict, parse_verdict

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The claim language shared by the teacher (writes it), the verifier and the ground-truth check.

_INSTRUMENT_NAMES = "|".join(INSTRUMENTS)
_OBJ = r"(the (?:{}) (?:{})|the (?:{}))".format("|".join(COLOURS), "|".join(SHAPES), _INSTRUMENT_NAMES)
# v2: an instrument of the world (its name after "the") -> the sound kind it makes.
INSTRUMENT_KIND = {f"the {name}": kind for name, (_, _, kind) in INSTRUMENTS.items()}
_BANDS = "|".join(sorted(PITCH_BANDS, key=len, reverse=True))  # "very low" before "low"
LOUDNESS_PHRASE = {
    "rising": "gets louder toward the end",
    "falling": "is louder at the start",
    "steady": "stays at the same loudness",
}
_PHRASE_TREND = {v: k for k, v in LOUDNESS_PHRASE.items()}
_TIMBRE_KIND = {v: k for k, v in TIMBRE_TEXT.items()}

CLAIM_PATTERNS: dict[str, re.Pattern[str]] = {
    "count": re.compile(r"\bI expect (\d+) distinct sounds?", re.IGNORECASE),
    "first_onset": re.compile(r"\bthe first sound starts at about (\d+(?:\.\d+)?) s\b", re.IGNORECASE),
    "pitch": re.compile(rf"\bthe pitch of {_OBJ} is ({_BANDS})\b", re.IGNORECASE),
    "tempo": re.compile(rf"\bthe pulses of {_OBJ} are (slow|fast)\b", re.IGNORECASE),
    "loudness": re.compile(rf"\b{_OBJ} ({'|'.join(LOUDNESS_PHRASE.values())})", re.IGNORECASE),
    "timbre": re.compile(rf"\b{_OBJ} sounds like an? ({'|'.join(TIMBRE_TEXT.values())})\b", re.IGNORECASE),
    # v2: naming an instrument with the time it is visible claims its sound is heard then.
    "presence": re.compile(
        rf"\b(the (?:{_INSTRUMENT_NAMES})) (\(visible from about \d+(?:\.\d+)? s to \d+(?:\.\d+)? s\))",
        re.IGNORECASE,
    ),
}
_WINDOW = re.compile(rf"{_OBJ} \(visible from about (\d+(?:\.\d+)?) s to (\d+(?:\.\d+)?) s\)", re.IGNORECASE)
_QUESTION_OBJ = re.compile(_OBJ, re.IGNORECASE)

# A claimed first onset within this many seconds of the truth counts as true (frames are coarse).
ONSET_TOLERANCE_S = 0.35


@dataclasses.dataclass(frozen=True)
class Claim:
    """One checkable statement about the sound.

    Attributes:
        kind: count | first_onset | pitch | tempo | loudness | timbre | presence (v2: the
            instrument's own sound is heard while it is visible).
        text: the exact words in the trace (what the verifier lists when unsupported).
        obj: the object it is about (``the red circle``), None for count / first_onset.
        value: count (int as str), onset seconds (as str), pitch band (v2: low/high), slow/fast,
            loudness trend (rising/falling/steady) or sound kind (tone/chord/noise/chirp/pulses;
            for presence, the instrument's kind).
    """

    kind: str
    text: str
    obj: str | None
    value: str


def extract_claims(trace: str) -> list[Claim]:
    """Every sound claim in a trace, in the order written.

    >>> [c.value for c in extract_claims("I expect 2 distinct sounds; the pitch of the red circle is very low.")]
    ['2', 'very low']
    """
    found: list[tuple[int, Claim]] = []
    for kind, pattern in CLAIM_PATTERNS.items():
        for m in pattern.finditer(trace):
            if kind in ("count", "first_onset"):
                obj, value = None, m.group(1)
            else:
                obj, value = m.group(1).lower(), m.group(2).lower()
                if kind == "loudness":
                    value = _PHRASE_TREND[value]
                elif kind == "timbre":
                    value = _TIMBRE_KIND[value]
                elif kind == "presence":
                    value = INSTRUMENT_KIND[obj]
            found.append((m.start(), Claim(kind, m.group(0), obj, value)))
    return [c for _, c in sorted(found, key=lambda x: x[0])]


def extract_windows(trace: str) -> dict[str, tuple[float, float]]:
    """Object -> (start, end) seconds where the trace says it was visible."""
    return {m.group(1).lower(): (float(m.group(2)), float(m.group(3))) for m in _WINDOW.finditer(trace)}


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


def claim_text(kind: str, obj: str, value: str) -> str:
    """The controlled phrasing of a claim about one object (inverse of ``extract_claims``).

    >>> claim_text("loudness", "the red circle", "rising")
    'the red circle gets louder toward the end'
    """
    if kind == "pitch":
        return f"the pitch of {obj} is {value}"
    if kind == "tempo":
        return f"the pulses of {obj} are {value}"
    if kind == "loudness":
        return f"{obj} {LOUDNESS_PHRASE[value]}"
    article = "an" if TIMBRE_TEXT[value][0] in "aeiou" else "a"
    return f"{obj} sounds like {article} {TIMBRE_TEXT[value]}"


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
_INSTRUMENT_WORDS = re.compile(rf"\b(?:instruments?|{_INSTRUMENT_NAMES})\b", re.IGNORECASE)
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
        belief = [dataclasses.replace(o) for o in seen]
        extra = 0
        notes: list[str] = []

        # Sometimes the frames are misread, as a real model misreads them.
        if belief and rng.random() < slip:
            error = str(rng.choice(["miss", "extra", "order", "shape"]))
            if error == "miss" and len(belief) > 1:
                belief.pop(int(rng.integers(len(belief))))
            elif error == "extra":
                extra = 1
                notes.append("One more object seems to flicker briefly at the edge of the frame.")
            elif error == "order" and len(belief) > 1:
                belief[0].onset, belief[1].onset = belief[1].onset, belief[0].onset
                belief.sort(key=lambda o: o.onset)
            else:
                victim = belief[int(rng.integers(len(belief)))]
                victim.shape = str(rng.choice([s for s in SHAPES if s != victim.shape]))

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
            named = _QUESTION_OBJ.search(clip.question)
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
        belief = [o for o in seen if o.colour in _INSTRUMENT_BY_COLOUR]
        extra = 0
        notes: list[str] = []
        if belief and rng.random() < slip:
            error = str(rng.choice(["miss", "extra", "order"]))
            if error == "miss" and len(belief) > 1:
                belief.pop(int(rng.integers(len(belief))))
            elif error == "extra":
                extra = 1
                notes.append("One more instrument seems to flicker briefly at the edge of the frame.")
            elif error == "order" and len(belief) > 1:
                belief = [dataclasses.replace(o) for o in belief]
                belief[0].onset, belief[1].onset = belief[1].onset, belief[0].onset
                belief.sort(key=lambda o: o.onset)

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
        named = _QUESTION_OBJ.search(clip.question)
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


# ---------------------------------------------------------------------------------------------
# Hearing: segment the waveform into sound events and describe each.

_HOP_S = 0.005
_ACTIVE_DB = 30.0  # below the loudest moment by more than this is silence
_CLOSE_GAP_S = 0.1  # gaps shorter than this are inside one sound (fast pulses)
_PULSE_GAP_S = 0.45  # short blips closer than this, at one pitch, are one pulse train
# Pitch band boundaries: geometric midpoints between neighbouring bands.
_BAND_EDGES = [
    float(np.sqrt(PITCH_BANDS[a][1] * PITCH_BANDS[b][0]))
    for a, b in zip(list(PITCH_BANDS)[:-1], list(PITCH_BANDS)[1:])
]


@dataclasses.dataclass
class HeardEvent:
    """One sound event as the verifier hears it.

    Attributes:
        onset, offset: seconds.
        kind: tone | chord | noise | chirp | pulses.
        pitch: pitch band of the lowest spectral peak for tonal kinds, else None.
        tempo: slow | fast for pulses, else None; pulse_hz: measured pulse rate.
        loudness: rising | falling | steady (level change from first to last third).
    """

    onset: float
    offset: float
    kind: str
    pitch: str | None
    tempo: str | None
    pulse_hz: float | None
    loudness: str


def _envelope_db(audio: np.ndarray, sr: int) -> np.ndarray:
    hop = int(_HOP_S * sr)
    n = len(audio) // hop
    frames = audio[: n * hop].reshape(n, hop).astype(np.float64)
    return 10 * np.log10((frames**2).mean(1) + 1e-12)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))


def _peak_hz(audio: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=max(4096, len(audio))))
    freqs = np.fft.rfftfreq(max(4096, len(audio)), 1 / sr)
    return float(freqs[int(spec.argmax())])


def _band(hz: float) -> str:
    return list(PITCH_BANDS)[int(np.searchsorted(_BAND_EDGES, hz))]


def _trend(levels_db: np.ndarray) -> str:
    n = len(levels_db)
    third = max(1, n // 3)
    change = float(np.mean(levels_db[-third:]) - np.mean(levels_db[:third]))
    return "rising" if change > 5 else "falling" if change < -5 else "steady"


def analyse_audio(audio: np.ndarray, sr: int = 16000) -> list[HeardEvent]:
    """Sound events in a mono waveform, in time order.

    Pipeline: 5 ms energy envelope; active where within 30 dB of the loudest moment; runs joined
    across gaps under 0.1 s; neighbouring short blips at one pitch joined into a pulse train;
    then per event: spectral flatness (noise), peak-frequency drift (chirp), spectral peaks
    (chord vs tone, pitch), envelope peaks (pulse rate), level change (loudness trend).
    """
    env = _envelope_db(audio, sr)
    hop = int(_HOP_S * sr)
    if env.size == 0 or env.max() < -80:
        return []
    active = env > env.max() - _ACTIVE_DB
    # Pad before closing: scipy erodes from a zero border, which would split a run at the clip edge.
    width = int(_CLOSE_GAP_S / _HOP_S) + 1
    padded = np.pad(active, width)
    active = ndimage.binary_closing(padded, structure=np.ones(width))[width:-width] | active
    blobs = [(a, b) for a, b in _runs(active) if (b - a) * _HOP_S >= 0.02]

    # Join slow pulse trains: short blips, close together, at the same pitch.
    groups: list[list[tuple[int, int]]] = []
    for a, b in blobs:
        if groups:
            pa, pb = groups[-1][-1]
            short = (b - a) * _HOP_S < 0.15 and (pb - pa) * _HOP_S < 0.15
            close = (a - pb) * _HOP_S < _PULSE_GAP_S
            if short and close:
                f_prev = _peak_hz(audio[pa * hop : pb * hop], sr)
                f_this = _peak_hz(audio[a * hop : b * hop], sr)
                if abs(np.log(f_this / max(f_prev, 1.0))) < 0.08:
                    groups[-1].append((a, b))
                    continue
        groups.append([(a, b)])

    events = []
    for group in groups:
        start, stop = group[0][0], group[-1][1]
        events.append(_describe(audio, sr, env, hop, group, start, stop))
    return events


def _describe(
    audio: np.ndarray, sr: int, env: np.ndarray, hop: int, group: list[tuple[int, int]], start: int, stop: int
) -> HeardEvent:
    segment = audio[start * hop : stop * hop].astype(np.float64)
    seg_env = env[start:stop]

    # Pulses: several blips joined, or several clear envelope peaks inside one run.
    if len(group) >= 2:
        pulse_times = np.array([a for a, _ in group]) * _HOP_S
        pulse_levels = np.array([env[a:b].max() for a, b in group])
    else:
        # A 20 ms power average hides the beating of chord notes (period <= 40 ms) but keeps the
        # silent gaps of even the fastest pulses (>= 50 ms).
        power = np.convolve(10 ** (seg_env / 10), np.ones(4) / 4, mode="same")
        smooth = 10 * np.log10(power + 1e-12)
        peaks, _ = signal.find_peaks(smooth, prominence=15.0, distance=max(1, int(0.07 / _HOP_S)))
        pulse_times = (start + peaks) * _HOP_S
        pulse_levels = smooth[peaks]
    is_pulses = len(pulse_times) >= (2 if len(group) >= 2 else 3)

    freqs, psd = signal.welch(segment, sr, nperseg=min(4096, len(segment)))
    band = (freqs >= 150) & (freqs <= 5000)
    flatness = float(np.exp(np.mean(np.log(psd[band] + 1e-20))) / (np.mean(psd[band]) + 1e-20))

    # Peak-frequency drift between the first and last quarters of the event.
    nperseg = min(1024, len(segment))
    f, _, z = signal.stft(segment, sr, nperseg=nperseg, noverlap=nperseg * 3 // 4)
    mag = np.abs(z)
    loud = mag.max(0) > mag.max() * 0.1
    track = f[mag.argmax(0)][loud]
    quarter = max(1, len(track) // 4)
    drift = 0.0
    if len(track) >= 4:
        drift = float(np.log2((np.median(track[-quarter:]) + 1) / (np.median(track[:quarter]) + 1)))

    psd_db = 10 * np.log10(psd + 1e-20)
    in_range = (freqs >= 80) & (freqs <= 4000)
    peak_idx, _ = signal.find_peaks(
        np.where(in_range, psd_db, -400), prominence=12.0, height=psd_db[in_range].max() - 15.0
    )

    pitch = tempo = None
    pulse_hz = None
    if is_pulses:
        kind = "pulses"
        span = pulse_times[-1] - pulse_times[0]
        pulse_hz = (len(pulse_times) - 1) / span if span > 0 else 0.0
        tempo = "fast" if pulse_hz > 5.5 else "slow"
    elif flatness > 0.3:
        kind = "noise"
    elif abs(drift) > 0.6:
        kind = "chirp"
    elif len(peak_idx) >= 3:
        kind = "chord"
    else:
        kind = "tone"
    if kind in ("tone", "chord", "pulses") and len(peak_idx):
        pitch = _band(float(freqs[peak_idx[0]]))

    # Loudness trend: pulse peak levels for pulses, the envelope away from the fades otherwise.
    edge = int(0.02 / _HOP_S)
    levels = pulse_levels if is_pulses else (seg_env[edge:-edge] if len(seg_env) > 4 * edge else seg_env)
    return HeardEvent(
        onset=start * _HOP_S,
        offset=stop * _HOP_S,
        kind=kind,
        pitch=pitch,
        tempo=tempo,
        pulse_hz=pulse_hz,
        loudness=_trend(np.asarray(levels)),
    )


# ---------------------------------------------------------------------------------------------
# The simulated audio verifier.


def _event_for(obj: str, windows: dict[str, tuple[float, float]], events: list[HeardEvent]) -> HeardEvent | None:
    """The heard event that overlaps the object's on-screen window most (None if none does)."""
    if obj not in windows:
        return None
    a, b = windows[obj]
    a, b = a - 0.25, b + 0.25
    overlaps = [max(0.0, min(b, e.offset) - max(a, e.onset)) for e in events]
    if not overlaps or max(overlaps) <= 0:
        return None
    return events[int(np.argmax(overlaps))]


def coarse_pitch(band: str | None) -> str | None:
    """The instrument world's two pitch classes from a heard band.

    >>> coarse_pitch("very low"), coarse_pitch("high"), coarse_pitch(None)
    ('low', 'high', None)
    """
    return None if band is None else ("low" if band.endswith("low") else "high")


def _property(event: HeardEvent, kind: str, obj: str | None = None) -> str | None:
    if kind == "pitch" and obj in INSTRUMENT_KIND:
        return coarse_pitch(event.pitch)
    if kind in ("timbre", "presence"):
        return event.kind
    return {"pitch": event.pitch, "tempo": event.tempo, "loudness": event.loudness}[kind]


def check_claims(trace: str, events: list[HeardEvent]) -> list[str]:
    """The claims in ``trace`` that the heard events do not support, as written in the trace."""
    windows = extract_windows(trace)
    unsupported = []
    for claim in extract_claims(trace):
        if claim.kind == "count":
            ok = int(claim.value) == len(events)
        elif claim.kind == "first_onset":
            ok = bool(events) and abs(float(claim.value) - events[0].onset) <= ONSET_TOLERANCE_S
        else:
            event = _event_for(claim.obj, windows, events)
            if event is None and claim.obj not in windows:
                # Not tied to a time: supported if any sound has the property.
                ok = any(_property(e, claim.kind, claim.obj) == claim.value for e in events)
            else:
                ok = event is not None and _property(event, claim.kind, claim.obj) == claim.value
        if not ok:
            unsupported.append(claim.text)
    return unsupported


def claim_support(text: str, audio: np.ndarray, sample_rate: int = 16000) -> tuple[int, int]:
    """(sound claims in ``text``, claims the waveform contradicts), by the verifier's analysis.

    The report's student hallucination rate: the same check AGFV applies to the teacher's
    traces, applied to what a trained student writes about a held-out clip.
    """
    claims = extract_claims(text)
    if not claims:
        return 0, 0
    return len(claims), len(check_claims(text, analyse_audio(np.asarray(audio, np.float32), sample_rate)))


class SimVerifier:
    """Waveform-analysing verifier (implements ``VerifierBackend``)."""

    name = "sim"
    model = "sim://waveform-verifier"

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


# ---------------------------------------------------------------------------------------------
# Ground truth, for measuring the verifier (never used by the teacher or the verifier).


def planted_hallucination(trace: str, clip: Clip) -> bool | None:
    """Whether the trace states a sound fact that the clip's ground truth contradicts.

    None when the clip is not synthetic (no ground truth). Claims about an object that is not in
    the clip are false; timing claims are judged with ``ONSET_TOLERANCE_S``.
    """
    if clip.source != "synthetic":
        return None
    sources = clip.meta_dict().get("sources")
    if sources is None:
        return None
    by_name = {s["name"]: s for s in sources}
    windows = extract_windows(trace)
    for claim in extract_claims(trace):
        if claim.kind == "count":
            ok = int(claim.value) == len(sources)
        elif claim.kind == "first_onset":
            ok = bool(sources) and abs(float(claim.value) - min(s["onset"] for s in sources)) <= ONSET_TOLERANCE_S
        elif claim.kind == "presence":
            src = by_name.get(claim.obj)
            a, b = windows[claim.obj]
            ok = src is not None and min(b + 0.25, src["offset"]) > max(a - 0.25, src["onset"])
        else:
            src = by_name.get(claim.obj)
            truth = None
            if src is not None:
                field = {"pitch": "pitch", "tempo": "tempo", "loudness": "loudness", "timbre": "kind"}
                truth = src[field[claim.kind]]
            ok = truth == claim.value
        if not ok:
            return True
    return False
