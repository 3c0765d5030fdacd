"""The demo's student learns the instrument world from what it hears (slow tier: minutes on 2 cores).

The world-pretrained tiny student (``tiny://qwen2-audio-world``, built once into the test cache) is
tuned as the demo tunes it (SFT of every weight: LoRA learns too slowly at this size, see the demo
recipe), on answer-only targets of visible-tier questions, then asked held-out questions of the
same tier.
"""

from __future__ import annotations

import pytest

from sightsound_core.answers import format_response
from sightsound_core.backends.hf_student import StudentModel
from sightsound_core.config import SFTConfig, SyntheticConfig
from sightsound_core.datasets.synthetic import synthesize
from sightsound_core.evaluation.scoring import score_option
from sightsound_core.schemas import SFTExample
from sightsound_core.tiny import TINY_AUDIO_WORLD, resolve_model
from sightsound_core.training.sft import train_sft


@pytest.mark.slow
def test_short_sft_lifts_held_out_accuracy_well_above_chance(tmp_path):
    world = {"tiers": {"visible": 1.0}}
    train = [synthesize(SyntheticConfig(seed=50, **world), i) for i in range(256)]
    test = [synthesize(SyntheticConfig(seed=51, split="test", **world), i) for i in range(96)]
    audio = {f"mem://train/{i}": s.audio for i, s in enumerate(train)}
    audio.update({f"mem://test/{i}": s.audio for i, s in enumerate(test)})
    examples = [
        SFTExample(f"label_only:{s.clip.clip_id}:0", "label_only", s.clip.clip_id, f"mem://train/{i}",
                   s.clip.question, list(s.clip.options), format_response(None, s.clip.label), s.clip.label)
        for i, s in enumerate(train)
    ]
    cfg = SFTConfig(max_steps=150, learning_rate=1e-3, per_device_batch_size=16, save_steps=1000, lora=None)
    metrics = train_sft(resolve_model(TINY_AUDIO_WORLD), examples, cfg, str(tmp_path / "sft"), audio.__getitem__, "cpu")

    model = StudentModel(metrics["merged"], device="cpu")
    outputs = model.generate([(s.audio, s.clip.question, list(s.clip.options)) for s in test], max_new_tokens=16)
    correct = [score_option(out[0], s.clip.options, s.clip.label, "answer_block").correct for out, s in zip(outputs, test)]
    chance = sum(1 / len(s.clip.options) for s in test) / len(test)
    accuracy = sum(correct) / len(correct)
    assert accuracy >= chance + 0.3, (accuracy, chance)
