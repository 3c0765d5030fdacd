"""TRL silently drops ``input_features``; these tests hook the model's forward and check that the
audio reaches every forward of our training paths: SFT, GRPO generation, policy and reference.
"""

from __future__ import annotations

import pytest
from toyworld import grpo_examples, load_audio, sft_examples

from sightsound_core.config import GRPOConfig, SFTConfig


@pytest.fixture()
def forward_calls(monkeypatch):
    import torch
    from transformers.models.qwen2_audio import modeling_qwen2_audio

    calls: list[dict] = []
    original = modeling_qwen2_audio.Qwen2AudioModel.forward

    def recording_forward(self, input_ids=None, input_features=None, *args, **kwargs):
        calls.append(
            {
                "audio": input_features is not None,
                "new_tokens": 0 if input_ids is None else input_ids.shape[1],
                "cached": kwargs.get("past_key_values") is not None
                and kwargs["past_key_values"].get_seq_length() > 0,
                "grad": torch.is_grad_enabled(),
                "use_cache": kwargs.get("use_cache"),
            }
        )
        return original(self, input_ids, input_features, *args, **kwargs)

    monkeypatch.setattr(modeling_qwen2_audio.Qwen2AudioModel, "forward", recording_forward)
    return calls


def test_sft_forwards_carry_audio(tiny_student, clips, tmp_path, forward_calls):
    from sightsound_core.training.sft import train_sft

    cfg = SFTConfig(max_steps=2, per_device_batch_size=2, learning_rate=1e-3, save_steps=100)
    train_sft(tiny_student, sft_examples(clips[:4]), cfg, str(tmp_path / "sft"), load_audio, device="cpu")
    training = [c for c in forward_calls if c["grad"]]
    assert len(training) == 2
    assert all(c["audio"] for c in training)


def test_grpo_generation_policy_and_reference_carry_audio(tiny_student, clips, tmp_path, forward_calls):
    from sightsound_core.training.grpo import train_grpo

    cfg = GRPOConfig(
        max_steps=2, num_generations=2, prompts_per_step=1, max_completion_length=6, beta=0.1, save_steps=100
    )
    train_grpo(tiny_student, grpo_examples(clips[:2]), cfg, str(tmp_path / "grpo"), load_audio, device="cpu")
    prefill = [c for c in forward_calls if not c["cached"]]
    policy = [c for c in prefill if c["use_cache"] is False and c["grad"]]
    reference = [c for c in prefill if c["use_cache"] is False and not c["grad"]]
    generation = [c for c in prefill if c["use_cache"] is not False]
    assert len(policy) == 2 and len(reference) == 2 and len(generation) == 2
    assert all(c["audio"] for c in policy + reference + generation)
