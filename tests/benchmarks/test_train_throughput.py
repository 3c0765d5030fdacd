"""The training-throughput benchmark's CPU smoke: both SFT paths, the token accounting, GRPO's split."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke() -> dict:
    out = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)  # the whole of stdout is the one JSON object


def test_both_paths_train_the_same_tokens(smoke):
    assert list(smoke["batch_sizes"]) == ["2"]
    per_seq = smoke["tokens_per_seq"]
    for b, entry in smoke["batch_sizes"].items():
        for path in ("baseline", "ours"):
            assert not entry[path].get("oom"), (b, path)
            assert entry[path]["tokens_per_s"] > 0
            assert entry[path]["step_s_median"] > 0 and entry[path]["step_s_mean"] > 0
            # The stock processor's batch and our collator's batch hold the same real tokens.
            assert entry[path]["tokens_per_step"] == int(b) * per_seq
            assert entry[path]["mfu"] is None  # no peak to compare with on CPU


def test_token_accounting(smoke):
    # A 2 s clip is 50 <|AUDIO|> tokens for the tiny processor; the text count comes from the
    # tokenizer alone, the total from the collated batch, so the sum is a real cross-check.
    assert smoke["audio_tokens_per_seq"] == 50
    assert smoke["audio_tokens_per_seq"] + smoke["text_tokens_per_seq"] == smoke["tokens_per_seq"]


def test_ratio_is_ours_over_baseline(smoke):
    for entry in smoke["batch_sizes"].values():
        expected = entry["ours"]["tokens_per_s"] / entry["baseline"]["tokens_per_s"]
        assert entry["ours_over_baseline"] == pytest.approx(expected, abs=1e-4)
    assert smoke["goal_mfu"] == 0.45 and smoke["meets_goal"] is None


def test_grpo_step_splits_into_generation_and_training(smoke):
    grpo = smoke["grpo"]
    assert not grpo.get("oom")
    assert grpo["generate_s"] > 0 and grpo["train_s"] > 0
    assert grpo["generate_s"] + grpo["train_s"] <= grpo["step_s"] + 1e-5
    assert (grpo["num_generations"], grpo["max_completion_length"]) == (2, 16)
    assert 1 <= grpo["completion_length"] <= 16
