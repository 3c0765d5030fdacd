from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from toyworld import OPTIONS, grpo_examples, keep_checkpoint, load_audio, sft_examples

from sightsound_core.config import GRPOConfig, LoraConfig, SFTConfig
from sightsound_core.training.grpo import _completion_mask, step_indices, train_grpo


def test_step_indices_cover_each_epoch_and_are_reproducible():
    seen = [i for step in range(5) for i in step_indices(10, step, 2, seed=3)]
    assert sorted(seen) == list(range(10))
    assert step_indices(10, 7, 3, seed=3) == step_indices(10, 7, 3, seed=3)
    assert step_indices(10, 0, 10, seed=3) != step_indices(10, 0, 10, seed=4)


def test_completion_mask_stops_after_the_first_stop_token():
    import torch

    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 2, 0, 0], [5, 6, 7, 8, 9]])
    assert _completion_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_unknown_reward_names_fail_fast(tiny_student, clips, tmp_path):
    cfg = GRPOConfig(max_steps=1, reward_weights={"accuracy": 1.0, "length": 0.5})
    with pytest.raises(ValueError, match="length"):
        train_grpo(tiny_student, grpo_examples(clips), cfg, str(tmp_path), load_audio, device="cpu")


@pytest.fixture(scope="module")
def undecided_student(tiny_student, clips, tmp_path_factory) -> str:
    """A warm start that writes the format but picks low or high at random: every clip is trained
    with both answers, so sampled groups disagree and the accuracy reward has something to teach.
    """
    from sightsound_core.training.sft import train_sft

    both = [
        dataclasses.replace(e, completion=e.completion.replace(e.label, option), label=option)
        for e in sft_examples(clips[:4])
        for option in OPTIONS
    ]
    cfg = SFTConfig(max_steps=80, learning_rate=3e-3, per_device_batch_size=4, warmup_ratio=0.0, save_steps=1000)
    out = tmp_path_factory.mktemp("sft")
    return train_sft(tiny_student, both, cfg, str(out), load_audio, device="cpu")["merged"]


def _always_high(clips):
    return [dataclasses.replace(e, label="high") for e in grpo_examples(clips[:4])]


def test_a_few_grpo_steps_raise_the_reward(short_student, clips, tmp_path):
    """Fast version of the slow test below (about 50 s here): a short-window student warm-started
    to write the format with either answer, then 8 GRPO steps on clips labelled high."""
    from sightsound_core.training.sft import train_sft

    both = [
        dataclasses.replace(e, completion=e.completion.replace(e.label, option), label=option)
        for e in sft_examples(clips[:4])
        for option in OPTIONS
    ]
    warm = SFTConfig(max_steps=30, learning_rate=2e-3, per_device_batch_size=8, warmup_ratio=0.0, save_steps=1000,
                     lora=None)  # fmt: skip
    undecided = train_sft(short_student, both, warm, str(tmp_path / "sft"), load_audio, device="cpu")["merged"]
    cfg = GRPOConfig(
        max_steps=8, learning_rate=1e-4, num_generations=8, prompts_per_step=2, max_completion_length=16,
        temperature=1.0, beta=0.04, save_steps=100, lora=None,
    )  # fmt: skip
    history = train_grpo(undecided, _always_high(clips), cfg, str(tmp_path / "grpo"), load_audio, "cpu")["history"]
    # The warm start answers either way (accuracy about 0.5); a rising reward is answering high.
    rewards, accuracy = [h["reward"] for h in history], [h["accuracy"] for h in history]
    assert np.mean(rewards[-3:]) > rewards[0] + 0.2, rewards
    assert np.mean(accuracy[-3:]) > accuracy[0] + 0.25, accuracy


@pytest.mark.slow
def test_grpo_raises_the_reward(undecided_student, clips, tmp_path):
    cfg = GRPOConfig(
        max_steps=16, learning_rate=1e-3, num_generations=8, prompts_per_step=2,
        max_completion_length=24, temperature=0.7, beta=0.04, save_steps=100,
    )  # fmt: skip
    result = train_grpo(undecided_student, _always_high(clips), cfg, str(tmp_path), load_audio, "cpu")
    history = result["history"]
    assert [h["step"] for h in history] == list(range(1, 17))
    first = np.mean([h["reward"] for h in history[:3]])
    last = np.mean([h["reward"] for h in history[-5:]])
    assert last > first + 0.2, (first, last)
    assert np.mean([h["accuracy"] for h in history[-5:]]) > 0.8
    assert all(h["kl"] >= 0 for h in history) and history[-1]["kl"] > 0


@pytest.mark.slow
def test_grpo_resumes_from_its_last_checkpoint(undecided_student, clips, tmp_path, monkeypatch):
    import json

    import torch

    from sightsound_core.training import grpo

    cfg = GRPOConfig(
        max_steps=4, learning_rate=1e-3, num_generations=4, prompts_per_step=1,
        max_completion_length=16, temperature=0.7, save_steps=2,
    )  # fmt: skip
    examples = _always_high(clips)
    out = tmp_path / "run"
    # The interrupted run stops after its step-2 checkpoint; a second call must finish the job.
    first = train_grpo(undecided_student, examples, cfg.model_copy(update={"max_steps": 2}), str(out), load_audio, "cpu")
    saved = torch.load(out / "checkpoint-2" / "trainable.pt")
    assert json.loads((out / "checkpoint-2" / "state.json").read_text())["step"] == 2

    calls = []
    real_step = grpo.grpo_step

    def counting_step(policy, *args, **kwargs):
        if not calls:  # the first step after resuming starts from the checkpoint's weights
            state = {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}
            assert all(torch.equal(state[k], v) for k, v in saved.items())
        calls.append(kwargs["seed"])
        return real_step(policy, *args, **kwargs)

    monkeypatch.setattr(grpo, "grpo_step", counting_step)
    resumed = train_grpo(undecided_student, examples, cfg, str(out), load_audio, "cpu")
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert calls == [cfg.seed * 1_000_003 + 2, cfg.seed * 1_000_003 + 3]
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"][:2] == first["history"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_killed_after_a_checkpoint_resumes_the_same_training(short_student, clips, tmp_path, monkeypatch, lora):
    """A kill after checkpoint-2 leaves that folder; training again in a folder holding only it
    must take the uninterrupted run's step 3: the same metrics and the same final weights. The
    untrained student never earns the real rewards, so a reward that tells its samples apart (their
    number of distinct characters) makes every step move the weights."""
    import torch
    from safetensors.torch import load_file

    from sightsound_core.training import grpo

    monkeypatch.setitem(grpo.REWARDS, "accuracy", lambda completions, **kw: [float(len(set(c))) for c in completions])
    cfg = GRPOConfig(
        max_steps=3, learning_rate=1e-3, num_generations=4, prompts_per_step=1, max_completion_length=8,
        beta=0.04, save_steps=1, lora=LoraConfig() if lora else None,
    )  # fmt: skip
    examples = grpo_examples(clips[:4])
    killed = tmp_path / "killed"

    clean = train_grpo(short_student, examples, cfg, str(tmp_path / "clean"), load_audio, "cpu",
                       on_checkpoint=keep_checkpoint("checkpoint-2", killed))  # fmt: skip
    saved = []
    resumed = train_grpo(short_student, examples, cfg, str(killed), load_audio, "cpu", on_checkpoint=saved.append)

    assert resumed["resumed_from"].endswith("checkpoint-2") and saved == [f"{killed}/checkpoint-3"]
    def metrics(result):  # all but the timings, step by step
        return [[v for k, v in sorted(h.items()) if not k.endswith("_s")] for h in result["history"]]

    assert len(metrics(resumed)) == 3
    for got_step, want_step in zip(metrics(resumed), metrics(clean)):
        assert got_step == pytest.approx(want_step, rel=1e-5)
    assert all(h["reward_std"] > 0 for h in clean["history"])  # every step has something to learn
    want, got = load_file(f"{clean['merged']}/model.safetensors"), load_file(f"{resumed['merged']}/model.safetensors")
    base = load_file(f"{short_student}/model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(want[n], base[n]) for n in want if n in base)


def test_fused_log_probs_equal_the_full_logits_ones(tiny_student, clips):
    """The fused LM head scores only completion positions; the values must be the log-softmax of
    the full logits divided by the temperature, and zero where the completion has ended."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from sightsound_core.training.grpo import IGNORE_INDEX, _token_logps
    from sightsound_core.training.inputs import encode_prompts, load_student

    model, processor = load_student(tiny_student, "cpu")
    batch = encode_prompts(
        processor, [load_audio(clips[i][0]) for i in range(2)], ["What is heard?"] * 2, [list(OPTIONS)] * 2
    )
    prompt_len = batch["input_ids"].shape[1]
    completion = torch.randint(10, 200, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    inputs = {
        "input_ids": torch.cat([batch["input_ids"], completion], 1),
        "attention_mask": torch.cat([batch["attention_mask"], mask], 1),
        "input_features": batch["input_features"],
        "feature_attention_mask": batch["feature_attention_mask"],
    }
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits[:, prompt_len - 1 : -1].float() / 0.7
    expected = torch.gather(torch.log_softmax(logits, -1), 2, completion[..., None]).squeeze(-1) * mask

    add_fused_lm_head(model, temperature=0.7)
    labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
    labels[:, prompt_len:] = completion.masked_fill(mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        fused = _token_logps(model, inputs, labels, prompt_len)
    assert fused.shape == expected.shape
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)


def test_a_batch_split_across_processes_gets_the_single_process_update():
    """DDP averages gradients; with the token count of every process in the denominator and the
    world size as factor, two halves average to the whole batch's gradient."""
    import torch

    from sightsound_core.training.grpo import grpo_loss

    torch.manual_seed(0)
    rows, length = 4, 6
    logits = torch.randn(rows, length, requires_grad=True)
    ref = torch.randn(rows, length)
    adv = torch.randn(rows, 1)
    mask = torch.ones(rows, length)
    mask[0, 2:] = 0  # the first half has fewer completion tokens than the second

    def grad(part: slice, n_tokens, world):
        logits.grad = None
        loss, _ = grpo_loss(logits[part], ref[part], adv[part], mask[part], 0.04, 0.2, n_tokens, world)
        loss.backward()
        return logits.grad.clone()

    whole = grad(slice(None), mask.sum(), 1)
    halves = (grad(slice(0, 2), mask.sum(), 2) + grad(slice(2, 4), mask.sum(), 2)) / 2
    torch.testing.assert_close(halves, whole)
    # Normalising each half by its own tokens (the naive split) would not be the same update.
    naive = (grad(slice(0, 2), mask[:2].sum(), 1) + grad(slice(2, 4), mask[2:].sum(), 1)) / 2
    assert not torch.allclose(naive, whole)


def test_micro_batches_take_the_same_update_as_one_batch(tiny_student, clips):
    """Scoring a step's completions a few rows at a time (less GPU memory) must not change it."""
    import torch

    from sightsound_core.training.grpo import build_grpo_policy, grpo_step, make_accelerator

    examples = grpo_examples(clips[:2])
    waveforms = {e.audio_uri: load_audio(e.audio_uri) for e in examples}
    results = {}
    for rows in (None, 3):
        cfg = GRPOConfig(
            num_generations=4, prompts_per_step=2, max_completion_length=8, beta=0.1,
            learning_rate=1e-2, micro_batch_rows=rows,
        )  # fmt: skip
        accelerator = make_accelerator("cpu", bf16=False)
        policy, reference, processor, optimizer, *_ = build_grpo_policy(tiny_student, cfg, accelerator)
        metrics = grpo_step(policy, reference, processor, optimizer, examples, waveforms, cfg, seed=7,
                            accelerator=accelerator)  # fmt: skip
        weights = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
        results[rows] = (metrics, weights)
    (whole, w_whole), (chunked, w_chunked) = results[None], results[3]
    assert whole["completion_length"] == chunked["completion_length"]  # the same samples
    assert whole["loss"] == pytest.approx(chunked["loss"], rel=1e-4, abs=1e-6)
    assert whole["kl"] == pytest.approx(chunked["kl"], rel=1e-4, abs=1e-7)
    for name in w_whole:
        torch.testing.assert_close(w_chunked[name], w_whole[name], rtol=1e-4, atol=1e-6)
