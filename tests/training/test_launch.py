"""Multi-process training under ``accelerate launch``: two CPU processes over gloo stand in for two
GPUs. The DDP code paths (batch split, gathered metrics, main-process checkpoints) are the same."""

from __future__ import annotations

import json
import os

import pytest
from toyworld import grpo_examples, sft_examples

from sightsound_core.config import GRPOConfig, LaunchConfig, SFTConfig
from sightsound_core.training.launch import launch_command, launch_training


def test_launch_command_is_ddp_unless_a_config_file_says_otherwise():
    default = launch_command("/tmp/spec.json", LaunchConfig(num_processes=4), 29500)
    assert default[default.index("--num_processes") + 1] == "4"
    assert "--multi_gpu" in default and default[-3:] == ["-m", "sightsound_core.training.launch", "/tmp/spec.json"]
    zero3 = launch_command("/tmp/spec.json", LaunchConfig(num_processes=8, accelerate_config="z.yaml"), 1)
    assert zero3[zero3.index("--config_file") + 1] == "z.yaml" and "--multi_gpu" not in zero3


def test_grpo_on_two_processes_splits_the_prompts_and_keeps_replicas_equal(
    tiny_student, clips, file_store, tmp_path, monkeypatch
):
    import tempfile

    made = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    cfg = GRPOConfig(
        max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=6, beta=0.1,
        learning_rate=1e-3, temperature=1.0, save_steps=1, micro_batch_rows=1,
    )  # fmt: skip
    out = tmp_path / "grpo"
    uploaded = file_store.uri("uploads")
    result = launch_training(
        "grpo", tiny_student, grpo_examples(clips[:4]), cfg, str(out), file_store.root, {}, "cpu",
        LaunchConfig(num_processes=2), upload_base=uploaded,
    )  # fmt: skip
    assert result["num_processes"] == 2 and result["steps"] == 2
    # Each process sampled one prompt and scored its two completions one at a time (gradients
    # synchronised on the last); the logged metrics cover both processes.
    assert [h["prompts"] for h in result["history"]] == [2.0, 2.0]
    first, second = result["replica_fingerprints"]
    assert first == second
    # Written once, by the main process: the last two checkpoints, their uploads and the merge.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((out / "checkpoint-2" / "state.json").read_text())["step"] == 2
    assert file_store.exists(f"{uploaded}/checkpoint-2/_UPLOADED")
    assert os.path.exists(out / "merged" / "config.json")
    # No spec (it holds the store's options) outlives the job.
    private = [d for d in made if os.path.basename(d).startswith("sightsound-launch-")]
    assert len(private) == 1 and not os.path.exists(private[0])


@pytest.mark.slow
def test_sft_on_two_processes_trains_and_exports_once(tiny_student, clips, file_store, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    cfg = SFTConfig(max_steps=3, per_device_batch_size=1, learning_rate=1e-3, save_steps=2, warmup_ratio=0.0)
    out = tmp_path / "sft"
    result = launch_training(
        "sft", tiny_student, sft_examples(clips[:4]), cfg, str(out), file_store.root, {}, "cpu",
        LaunchConfig(num_processes=2),
    )  # fmt: skip
    assert result["num_processes"] == 2 and result["steps"] == 3
    assert [h["step"] for h in result["loss_history"]] == [1, 2, 3]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    Qwen2AudioForConditionalGeneration.from_pretrained(out / "merged")


def test_a_failed_job_raises_with_its_output(tiny_student, clips, file_store, tmp_path):
    cfg = GRPOConfig(max_steps=1, num_generations=2, prompts_per_step=3)
    with pytest.raises(RuntimeError, match="multiple of the 2 processes"):
        launch_training(
            "grpo", tiny_student, grpo_examples(clips[:4]), cfg, str(tmp_path), file_store.root, {}, "cpu",
            LaunchConfig(num_processes=2),
        )  # fmt: skip


def test_a_launched_process_out_of_gpu_memory_is_a_transient_out_of_memory_error():
    import sys

    from sightsound_core.errors import OutOfMemoryError, is_out_of_memory, is_transient
    from sightsound_core.training.launch import _run

    oom = "print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'); raise SystemExit(1)"
    with pytest.raises(OutOfMemoryError) as caught:
        _run([sys.executable, "-c", oom], "sft")
    assert is_out_of_memory(caught.value) and is_transient(caught.value)
    with pytest.raises(RuntimeError) as other:
        _run([sys.executable, "-c", "raise SystemExit(3)"], "sft")
    assert not is_out_of_memory(other.value) and "exited with 3" in str(other.value)
