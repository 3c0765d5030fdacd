"""Smoke of benchmarks/corpus_scale.py: two tiny corpus sizes on moto S3, and its accounting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_corpus_scale_smoke_counts_every_clip_and_request(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks/corpus_scale.py"), "--sizes", "20,40", "--shard-size", "10",
           "--skip", "windows", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    sizes = result["cost_per_clip"]["sizes"]
    assert set(sizes) == {"20", "40"}
    for n, entry in sizes.items():
        assert entry["clips"] == entry["votes"] == int(n) and entry["shards"] == int(n) // 10
        assert entry["s3_requests"] > 0
        assert abs(entry["s3_requests_per_clip"] - entry["s3_requests"] / int(n)) < 0.01
        assert abs(entry["wall_s_per_clip"] - entry["wall_s"] / int(n)) < 0.01
    ratio = result["cost_per_clip"]["ratio_largest_to_smallest"]
    assert abs(ratio["s3_requests_per_clip"] - sizes["40"]["s3_requests_per_clip"] / sizes["20"]["s3_requests_per_clip"]) < 0.01
