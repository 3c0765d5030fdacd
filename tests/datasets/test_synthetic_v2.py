"""The instrument world (synthetic v2): each tier of visual evidence holds at its documented rate.

- every instrument's sound is told apart by the verifier's waveform analysis (>= 99% of clips);
- size predicts pitch at the configured partial-correlate rate;
- loudness and tempo are independent of the pixels (a pixel-only guess is at chance);
- questions name instruments, never colours.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from sightsound_core.claims import analyse_audio, coarse_pitch
from sightsound_core.config import SyntheticConfig
from sightsound_core.datasets.synthetic import (
    COLOURS,
    INSTRUMENTS,
    LARGE_RADIUS,
    TIER_KINDS,
    WORLD_V2,
    _draw_instruments,
    _rng,
    generate_clips,
    synthesize,
)
from sightsound_core.media.decode import load_audio

CFG = SyntheticConfig(seed=21)


def _metas(cfg: SyntheticConfig, n: int) -> list[dict]:
    return [json.loads(synthesize(cfg, i).clip.meta) for i in range(n)]


def test_v2_is_the_default_and_clips_are_well_formed():
    assert SyntheticConfig().world == "v2"
    tiers = set()
    for i in range(60):
        clip = synthesize(CFG, i).clip
        meta = json.loads(clip.meta)
        assert meta["world"] == WORLD_V2
        assert clip.family in TIER_KINDS and clip.category in TIER_KINDS[clip.family]
        assert clip.label in clip.options and len(set(clip.options)) == len(clip.options) >= 2
        names = [s["instrument"] for s in meta["sources"]]
        assert len(set(names)) == len(names) and set(names) <= set(INSTRUMENTS)
        tiers.add(clip.family)
    assert tiers == {"visible", "partial", "invisible"}


def test_questions_name_instruments_never_colours():
    for i in range(200):
        clip = synthesize(CFG, i).clip
        words = " ".join([clip.question, *clip.options]).lower().split()
        assert not set(words) & set(COLOURS), clip.question


def test_each_instrument_is_heard_as_its_own_sound_on_99_percent_of_clips():
    ok = total = 0
    for i in range(300):
        scene = synthesize(CFG, i)
        sources = json.loads(scene.clip.meta)["sources"]
        events = analyse_audio(scene.audio)
        total += 1
        ok += len(events) == len(sources) and all(
            e.kind == INSTRUMENTS[s["instrument"]][2] for s, e in zip(sources, events)
        )
    assert ok / total >= 0.99, (ok, total)


def test_instruments_are_told_apart_after_aac_encoding(tmp_path):
    """The files the pipeline reads (AAC) keep the instruments apart too."""
    clips = generate_clips(CFG, str(tmp_path), 0, 24)
    for clip in clips:
        sources = json.loads(clip.meta)["sources"]
        events = analyse_audio(load_audio(clip.audio_uri))
        assert [e.kind for e in events] == [INSTRUMENTS[s["instrument"]][2] for s in sources], clip.clip_id
        for s, e in zip(sources, events):
            if s["pitch"]:
                assert coarse_pitch(e.pitch) == s["pitch"]


@pytest.mark.parametrize("rate", [0.8, 0.5, 1.0])
def test_size_predicts_pitch_at_the_configured_rate(rate):
    cfg = SyntheticConfig(seed=5, partial_rate=rate)
    tonal = [s for i in range(2500) for s in _draw_instruments(cfg, _rng(cfg.seed, i)) if s.pitch]
    follows = sum((s.pitch == "low") == (s.radius >= LARGE_RADIUS) for s in tonal)
    assert len(tonal) > 2000
    # Two-sided binomial test at the configured rate; at 1.0 every source must follow.
    if rate == 1.0:
        assert follows == len(tonal)
    else:
        assert stats.binomtest(follows, len(tonal), rate).pvalue > 1e-3, follows / len(tonal)


def test_invisible_properties_are_independent_of_the_pixels():
    """A pixel-only guess of loudness or tempo is at chance: a classifier fit on what the frames
    show (instrument, size, position) scores no better than chance on held-out sources."""
    rows = [s for i in range(4000) for s in _draw_instruments(CFG, _rng(CFG.seed, i))]

    def visual(s):
        return (s.instrument, s.radius >= LARGE_RADIUS, int(s.cx * 3), int(s.cy * 3))

    for prop, chance in (("loudness", 1 / 3), ("tempo", 1 / 2)):
        data = [(visual(s), getattr(s, prop)) for s in rows if getattr(s, prop) is not None]
        train, test = data[: len(data) // 2], data[len(data) // 2 :]
        # The best pixel-only rule: the most common value among training sources that look alike.
        table: dict = {}
        for x, y in train:
            table.setdefault(x, []).append(y)
        rule = {x: max(set(ys), key=ys.count) for x, ys in table.items()}
        fallback = max(set(y for _, y in train), key=[y for _, y in train].count)
        hits = sum(rule.get(x, fallback) == y for x, y in test)
        lo, hi = stats.binomtest(hits, len(test)).proportion_ci(0.999)
        assert lo <= chance + 0.02 and hits / len(test) < chance + 0.05, (prop, hits / len(test))


def test_tier_weights_set_the_family():
    only_visible = SyntheticConfig(seed=3, tiers={"visible": 1.0})
    assert {synthesize(only_visible, i).clip.family for i in range(30)} == {"visible"}
    invisible = SyntheticConfig(seed=3, tiers={"invisible": 1.0})
    assert {synthesize(invisible, i).clip.family for i in range(30)} == {"invisible"}
