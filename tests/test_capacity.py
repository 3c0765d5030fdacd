import json
import math
import subprocess
import sys

import pytest

from sightsound_core.capacity import CapacityInputs, estimate


def test_teacher_decode_matches_hand_roofline():
    inp = CapacityInputs(clips=1000, k=4, trace_tokens=100, teacher_params_b=10, teacher_prompt_tokens=1,
                         decode_batch=10, decode_efficiency=0.5, gpu_bandwidth_tbs=2.0)
    # 10B bf16 fits one 80 GB GPU; a step reads 20 GB at 2 TB/s at 50% efficiency: 20 ms.
    steps = 1000 * 4 * 100 / 10
    expected_h = steps * 0.020 / 3600
    prefill_h = 2 * 10e9 * 1 * 1000 / (989e12 * 0.257) / 3600
    assert estimate(inp)["teacher"]["gpu_hours"] == pytest.approx(expected_h + prefill_h, abs=0.01)


def test_scaling_and_limits():
    base = estimate(CapacityInputs())
    double = estimate(CapacityInputs(clips=200_000))
    assert double["teacher"]["gpu_hours"] == pytest.approx(2 * base["teacher"]["gpu_hours"], rel=0.01)
    assert double["verify"]["api_cost"] == pytest.approx(2 * base["verify"]["api_cost"], rel=0.01)
    assert estimate(CapacityInputs(lora=False))["sft"]["gpu_hours"] > base["sft"]["gpu_hours"]
    limited = estimate(CapacityInputs(api_rpm=60))
    assert limited["verify"]["wall_hours"] == pytest.approx(40_000 / 1 / 3600, rel=0.01)
    assert estimate(CapacityInputs(gpus=16))["total"]["wall_hours"] < base["total"]["wall_hours"]
    assert base["teacher"]["replica_gpus"] == math.ceil(64 / 56)


def test_cli_plan_json_and_bad_input():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "--set", "clips=10", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["inputs"]["clips"] == 10
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "--set", "clips=-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "clips" in bad.stderr


def test_plan_a_folder_recipe_counts_windows_and_scales_with_workers(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from fakes.longvideo import write_long_av
    from flows.cli import app

    root = tmp_path / "corpus"
    write_long_av(root / "a.mp4", 25.0, [(0, 1)])
    write_long_av(root / "sub" / "b.mp4", 45.0, [(0, 1)])
    write_long_av(root / "c.mp4", 5.0, [(0, 1)])
    (root / "notes.txt").write_text("not a video")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "run": "p", "store": {"root": f"file://{tmp_path}/store"},
        "ingest": {"dataset": "folder", "path": str(root)},
        "teacher": {"k": 4, "questions_per_clip": 2, "model": "Qwen/Qwen2.5-VL-32B-Instruct"},
    }))

    def plan(*args):
        result = CliRunner().invoke(app, ["plan", str(recipe), "--json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    one = plan()
    assert one["corpus"] == {"dataset": "folder", "files": 3, "bytes": one["corpus"]["bytes"], "probed": 3,
                             "refused_in_sample": 0, "exact": True, "seconds": 75.0, "windows": 9, "clips": 9}
    assert one["inputs"]["clips"] == 18 and one["inputs"]["k"] == 4 and one["inputs"]["teacher_params_b"] == 32
    est = one["estimate"]
    assert est["questions"]["gpu_hours"] < est["teacher"]["gpu_hours"]  # one proposal vs K samples each
    assert est["verify"]["api_calls"] == round(18 * 0.4)
    slow = ("--set", "decode_efficiency=0.001")  # hours big enough to survive rounding
    one, four = plan(*slow), plan("--workers", "4", *slow)
    assert one["estimate"]["teacher"]["wall_hours"] > 1 and four["inputs"]["decode_efficiency"] == 0.001
    assert four["estimate"]["teacher"]["wall_hours"] == pytest.approx(one["estimate"]["teacher"]["wall_hours"] / 4, rel=0.02)
    assert four["estimate"]["teacher"]["gpu_hours"] == one["estimate"]["teacher"]["gpu_hours"]
    sampled = plan("--sample", "1")
    assert sampled["corpus"]["probed"] == 1 and not sampled["corpus"]["exact"] and sampled["corpus"]["windows"] > 0


def test_doctests():
    import doctest

    from sightsound_core import capacity

    assert doctest.testmod(capacity).failed == 0
