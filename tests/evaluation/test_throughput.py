"""1,000 synthetic items with the tiny student on CPU, batched, in under three minutes (slow tier)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_thousand_items_under_three_minutes(tmp_path):
    out = subprocess.run(
        [sys.executable, "benchmarks/eval_throughput.py", "--items", "1000", "--device", "cpu",
         "--root", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=1200, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["items"] == 1000
    assert result["evaluate_s"] < 180, result
