"""The synthetic world's claim language, and the waveform analysis that checks it.

The simulated teacher writes sound claims in one controlled phrasing (``CLAIM_PATTERNS``,
``claim_text``); three readers find exactly the claims it wrote:

- the simulated verifier (``backends.sim.SimVerifier``) hears the waveform (``analyse_audio``:
  energy envelope, onsets, spectrum, spectral flatness, pulse rate) and lists the claims the
  recording does not support (``check_claims``);
- the ground-truth check (``planted_hallucination``), which measures the verifier against the
  synthetic clip's recorded sources (``Clip.meta``), for every verified row;
- the student hallucination metric (``claim_support``): the verifier's check applied to what a
  trained student writes about a held-out clip.

Numpy and scipy only; nothing here simulates a model.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from scipy import ndimage, signal

from sightsound_core.datasets.synthetic import (
    COLOURS,
    INSTRUMENTS,
    PITCH_BANDS,
    SHAPES,
    TIMBRE_TEXT,
)
from sightsound_core.schemas import Clip

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
# An object of either world named anywhere (the teacher finds the one a question is about).
OBJECT_PATTERN = re.compile(_OBJ, re.IGNORECASE)

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
# Checking claims against what is heard.


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
