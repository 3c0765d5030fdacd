"""The teacher-throughput benchmark's CPU smoke: what the shared-prefill path saves over stock
``generate(num_return_sequences=K)``, and the tokens each path generated, counted on the model
itself."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke() -> dict:
    out = subprocess.run(
        [sys.executable, "benchmarks/teacher_throughput.py", "--smoke", "--repeats", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def test_shared_prefill_encodes_and_prefills_each_clip_once(smoke):
    clips, k = smoke["clips"], smoke["k"]
    ours, stock = smoke["shared_prefill_eager"], smoke["stock_generate"]
    assert ours["vision_clips_encoded"] == clips and ours["prompt_rows_prefilled"] == clips
    # Stock generate encodes each video once but prefills the prompt once per returned sample.
    assert stock["vision_clips_encoded"] == clips and stock["prompt_rows_prefilled"] == clips * k


def test_rates_count_the_tokens_the_model_generated(smoke):
    """Each path's token count is checked against what its language model decoded: every row
    returns its first token from the prefill and each later one from a one-token forward."""
    rows, new_tokens = smoke["rows_per_step"], smoke["new_tokens"]
    assert rows == smoke["clips"] * smoke["k"]
    for name in ("shared_prefill_eager", "stock_generate"):
        entry = smoke[name]
        # EOS is ignored, so every row decodes the whole budget.
        assert entry["decode_rows_forwarded"] == rows * (new_tokens - 1), name
        assert entry["generated_tokens"] == rows * new_tokens, name
        # The rate is the measured tokens over the measured time (rounded in the report).
        assert entry["tok_s"] == pytest.approx(entry["generated_tokens"] / entry["seconds"], rel=1e-2), name
