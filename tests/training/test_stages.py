"""Training on a remote store: checkpoints are uploaded as written, and another machine resumes."""

import os

import pytest
from toyworld import load_audio, sft_examples

from sightsound_core.config import SFTConfig
from sightsound_core.stage import ShardJob
from sightsound_core.training.sft import train_sft
from sightsound_core.training.stages import UPLOADED, checkpoint_uploader, workdir


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
    upload = checkpoint_uploader(s3_store, job, name)

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
    assert checkpoint_uploader(file_store, _job(file_store), "cot-fp") is None
