"""Training on a remote store: checkpoints are uploaded as written, and another machine resumes."""

import os

import pytest
from toyworld import load_audio, sft_examples

from sightsound_core.config import SFTConfig
from sightsound_core.stage import ShardJob
from sightsound_core.training.sft import train_sft
from sightsound_core.training.stages import checkpoint_base, workdir
from sightsound_core.training.store_io import UPLOADED, make_uploader


class Interrupted(Exception):
    pass


def _job(store):
    d = store.uri("r", "sft", "h")
    return ShardJob("sft", "h", 0, f"{d}/shard-00000.parquet", f"{d}/quarantine-00000.parquet", {}, "fp")


def test_killed_training_resumes_on_another_machine_from_the_store(
    s3_store, tiny_student, clips, tmp_path, monkeypatch
):
    job, name = _job(s3_store), "cot-fp"
    cfg = SFTConfig(max_steps=4, learning_rate=1e-3, per_device_batch_size=2, save_steps=2)
    upload = make_uploader(s3_store, checkpoint_base(s3_store, job, name))

    def upload_then_die(path):
        upload(path)
        raise Interrupted(path)

    monkeypatch.setenv("SIGHTSOUND_CACHE", str(tmp_path / "machine-1"))
    with pytest.raises(Interrupted):
        train_sft(tiny_student, sft_examples(clips), cfg, workdir(s3_store, job, name), load_audio, "cpu",
                  on_checkpoint=upload_then_die)
    remote = s3_store.uri("r", "sft", "h", name)
    assert s3_store.exists(f"{remote}/checkpoint-2/{UPLOADED}")
    # An upload cut short: files but no marker. It must not be resumed from.
    s3_store.write_bytes(f"{remote}/checkpoint-3/adapter_model.safetensors", b"partial")

    monkeypatch.setenv("SIGHTSOUND_CACHE", str(tmp_path / "machine-2"))
    scratch = workdir(s3_store, job, name)
    assert sorted(e for e in os.listdir(scratch) if e.startswith("checkpoint-")) == ["checkpoint-2"]
    result = train_sft(tiny_student, sft_examples(clips), cfg, scratch, load_audio, "cpu", on_checkpoint=upload)
    assert result["resumed_from"].endswith("checkpoint-2")
    assert result["steps"] == 4
    assert s3_store.exists(f"{remote}/checkpoint-4/{UPLOADED}")


def test_local_store_needs_no_upload(file_store):
    assert checkpoint_base(file_store, _job(file_store), "cot-fp") is None


def test_process_count_changes_the_sft_hash_only_where_it_changes_the_model():
    from sightsound_core.config import PipelineConfig
    from sightsound_core.training.stages import sft_payload

    one = PipelineConfig()
    eight = PipelineConfig.model_validate({"launch": {"num_processes": 8}})
    port = PipelineConfig.model_validate({"launch": {"main_process_port": 29501}})
    assert sft_payload(one) == sft_payload(port) != sft_payload(eight)
    # GRPO splits a step's prompts across processes: the same update, the same hash.
    assert one.grpo.hash_payload() == eight.grpo.hash_payload()


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``, which a CPU cannot raise."""


def test_sft_out_of_memory_retries_with_the_same_global_batch(file_store, monkeypatch):
    from sightsound_core.config import PipelineConfig
    from sightsound_core.training import sft
    from sightsound_core.training.stages import train_job

    cfg = PipelineConfig.model_validate({"sft": {"per_device_batch_size": 4, "gradient_accumulation_steps": 1}})
    seen = []

    def fake_train(model_path, examples, phase_cfg, out, *args, **kwargs):
        seen.append((phase_cfg.per_device_batch_size, phase_cfg.gradient_accumulation_steps))
        if phase_cfg.per_device_batch_size > 1:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"loss_history": [{"step": 1, "loss": 1.0}]}

    monkeypatch.setattr(sft, "train_sft", fake_train)
    metrics = train_job(cfg, file_store, _job(file_store), "cot-fp", "sft", "model", [])
    assert seen == [(4, 1), (2, 2), (1, 4)]
    assert metrics["loss_history"][0]["loss"] == 1.0
    assert cfg.sft.per_device_batch_size == 4  # the recipe itself is untouched


def test_out_of_memory_at_one_row_and_other_errors_are_raised(file_store, monkeypatch):
    from sightsound_core.config import PipelineConfig
    from sightsound_core.training import sft
    from sightsound_core.training.stages import train_job

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(sft, "train_sft", failing)
    one_row = PipelineConfig.model_validate({"sft": {"per_device_batch_size": 1}})
    with pytest.raises(OutOfMemoryError):
        train_job(one_row, file_store, _job(file_store), "cot-fp", "sft", "model", [])
    assert len(calls) == 1

    def bug(*args, **kwargs):
        calls.append(1)
        raise ValueError("a bug is not retried")

    monkeypatch.setattr(sft, "train_sft", bug)
    with pytest.raises(ValueError):
        train_job(PipelineConfig(), file_store, _job(file_store), "cot-fp", "sft", "model", [])
    assert len(calls) == 2


def test_grpo_out_of_memory_scores_fewer_completions_per_forward(file_store, monkeypatch):
    from sightsound_core.config import PipelineConfig
    from sightsound_core.training import grpo
    from sightsound_core.training.stages import train_job

    cfg = PipelineConfig.model_validate({"grpo": {"prompts_per_step": 2, "num_generations": 8}})
    seen = []

    def fake_train(model_path, examples, phase_cfg, out, *args, **kwargs):
        seen.append(phase_cfg.micro_batch_rows)
        if phase_cfg.micro_batch_rows is None or phase_cfg.micro_batch_rows > 4:
            raise OutOfMemoryError("CUDA out of memory")
        return {"history": []}

    monkeypatch.setattr(grpo, "train_grpo", fake_train)
    train_job(cfg, file_store, _job(file_store), "policy-fp", "grpo", "model", [])
    assert seen == [None, 8, 4]  # 2 prompts x 8 completions, then halves


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_sft_out_of_memory_after_a_checkpoint_resumes_from_it_with_the_same_update(
    file_store, short_student, clips, monkeypatch, lora
):
    """The first attempt writes checkpoint-2, then runs out of memory; the retry starts at step 3
    with half the rows per device and twice the accumulation, and its steps take the update the
    uninterrupted run takes (a full fine-tune too: the demo's recipe trains every weight)."""
    from sightsound_core.config import PipelineConfig
    from sightsound_core.errors import OutOfMemoryError as LaunchedOutOfMemory
    from sightsound_core.training import sft
    from sightsound_core.training.stages import train_job

    sft_cfg = {"max_steps": 4, "learning_rate": 1e-3, "per_device_batch_size": 4,
               "gradient_accumulation_steps": 1, "save_steps": 2, "warmup_ratio": 0.0,
               **({} if lora else {"lora": None})}
    cfg = PipelineConfig.model_validate({"sft": sft_cfg, "models": {"device": "cpu"}})
    examples = sft_examples(clips)
    real_train = sft.train_sft
    attempts = []

    def out_of_memory_after_the_first_checkpoint(path):
        raise LaunchedOutOfMemory(f"rank 0: CUDA out of memory after {path}")

    def train(model_path, examples, phase_cfg, out, loader, device, on_checkpoint=None):
        attempts.append((phase_cfg.per_device_batch_size, phase_cfg.gradient_accumulation_steps))
        hook = out_of_memory_after_the_first_checkpoint if len(attempts) == 1 else on_checkpoint
        return real_train(model_path, examples, phase_cfg, out, loader, device, on_checkpoint=hook)

    monkeypatch.setattr(sft, "train_sft", train)
    metrics = train_job(cfg, file_store, _job(file_store), "cot-fp", "sft", short_student, examples)

    assert attempts == [(4, 1), (2, 2)]
    assert metrics["resumed_from"].endswith("checkpoint-2")
    assert metrics["steps"] == 4 and [h["step"] for h in metrics["loss_history"]] == [1, 2, 3, 4]

    # The uninterrupted run, on the recipe's batch: the same losses at every step.
    monkeypatch.undo()
    clean = sft.train_sft(short_student, examples, cfg.sft, str(file_store.local_path(file_store.uri("clean"))),
                          load_audio, "cpu")
    assert [h["loss"] for h in metrics["loss_history"]] == pytest.approx(
        [h["loss"] for h in clean["loss_history"]], rel=1e-3)
