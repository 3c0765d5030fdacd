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
