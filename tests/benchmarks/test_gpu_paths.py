"""The throughput benchmarks' GPU paths (7B shapes, bf16, CUDA), kept short: run by
``pytest -m gpu tests/benchmarks`` on a machine with a CUDA device, skipped elsewhere.

The full-size runs are ``benchmarks/gpu/run.sh`` (benchmarks/README.md, "GPU suite"); these check
that each GPU path runs and reports what the CPU smoke cannot: a device, a measured bandwidth
bound, an MFU against the peak, peak memory.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def _run(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


def test_teacher_gpu_path_counts_its_work_against_the_bandwidth_bound(cuda):
    report = _run("teacher_throughput.py", "--clips", "2", "--new-tokens", "32", "--repeats", "1")
    clips, k, rows = report["clips"], report["k"], report["rows_per_step"]
    assert report["device"] != "cpu" and report["model"].startswith("Qwen2.5-VL-7B-shaped")
    assert report["copy_bandwidth_GBps"] > 100 and report["bound_tok_s"] > 0
    ours = report.get("shared_prefill_compiled") or report["shared_prefill_eager"]
    assert "error" not in ours, ours
    assert ours["vision_clips_encoded"] == clips and ours["prompt_rows_prefilled"] == clips
    assert ours["generated_tokens"] == rows * 32 and 0 < ours["ratio_to_bound"] <= 1
    stock = report["stock_generate"]
    assert stock["prompt_rows_prefilled"] == clips * k and stock["generated_tokens"] == rows * 32
    assert report["speedup_vs_stock"] > 0


def test_train_gpu_path_reports_mfu_and_memory(cuda, tmp_path):
    report = _run(
        "train_throughput.py", "--batch-sizes", "2", "--warmup", "1", "--steps", "2",
        "--grpo-generations", "2", "--grpo-tokens", "16", "--workdir", str(tmp_path),
    )  # fmt: skip
    assert report["device"] != "cpu" and report["dtype"] == "bfloat16"
    assert report["audio_tokens_per_seq"] == 750  # 30 s of audio
    entry = report["batch_sizes"]["2"]
    for path in ("baseline", "ours"):
        assert not entry[path].get("oom"), path
        assert entry[path]["tokens_per_step"] == 2 * report["tokens_per_seq"]
        assert 0 < entry[path]["mfu"] < 1 and entry[path]["max_memory_gb"] > 0
    grpo = report["grpo"]
    assert not grpo.get("oom") and grpo["generate_s"] > 0 and grpo["train_s"] > 0
    assert grpo["max_memory_gb"] > 0
