"""Smoke of benchmarks/fidelity.py: two seeds of a shrunk miniature, and the JSON's accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fidelity_smoke_reports_every_row_and_claim_per_seed(tmp_path):
    sets = ["models.student=tiny://qwen2-audio", "ingest.synthetic.n_clips=24", "ingest.shard_size=24",
            "sft.max_steps=2", "grpo.max_steps=1", "grpo.num_generations=2", "grpo.prompts_per_step=1",
            "grpo.max_completion_length=8", "evaluate.max_new_tokens=8"]
    cmd = [sys.executable, str(ROOT / "benchmarks/fidelity.py"), "--seeds", "0", "1", "--held-out", "8",
           *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"))
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    runs = result["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["items"] == 8 for r in runs)
    assert set(result["rows"]) == {"pretrained", "label_only", "cot_noagfv", "cot", "grpo"}
    for tag, columns in result["rows"].items():
        assert "all" in columns and "hallucination" in columns
        seeds = [r["accuracy"][tag]["all"] for r in runs]
        assert columns["all"]["seeds"] == [round(v, 1) for v in seeds]
        assert abs(columns["all"]["mean"] - sum(seeds) / 2) < 0.06
    for claim, entry in result["claims"].items():
        assert entry["seeds"] == 2 and len(entry["verdicts"]) == 2
        assert entry["reproduced"] == sum(v == "reproduced" for v in entry["verdicts"])
