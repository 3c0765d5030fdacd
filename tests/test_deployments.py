"""Static checks of what cannot run here (no Docker engine, no cluster): the image and the pools."""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile():
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_copies_only_what_exists():
    for line in _dockerfile().splitlines():
        if line.startswith("COPY"):
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_dockerfile_installs_dependencies_before_code_and_uses_cuda():
    text = _dockerfile()
    assert re.search(r"^FROM nvidia/cuda:\S+", text, re.M)
    deps = text.index('pip install ".[vllm]"')
    assert deps < text.index("COPY sightsound_core"), "code copied before the dependency layer"
    assert "torch==" in text  # the CPU wheel pin is the same as the README's


def test_dockerfile_entrypoint_resolves():
    text = _dockerfile()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entry == ["prefect"] and cmd[:2] == ["worker", "start"]
    pool = cmd[cmd.index("--pool") + 1]
    assert pool in {d["work_pool"]["name"] for d in _deployments()} | {"sightsound-gpu"}


def _deployments():
    return yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]


def test_every_deployment_entrypoint_is_a_flow_in_the_repo():
    for d in _deployments():
        path, name = d["entrypoint"].split(":")
        tree = ast.parse((ROOT / path).read_text())
        flows = {
            f.name for f in tree.body
            if isinstance(f, ast.FunctionDef)
            and any("flow" in ast.unparse(dec) for dec in f.decorator_list)
        }
        assert name in flows, d["entrypoint"]
        recipe = (d.get("parameters") or {}).get("recipe")
        if recipe:
            assert (ROOT / recipe).exists(), recipe


def test_gpu_pools_request_gpus_and_schedule_exists():
    docker = json.loads((ROOT / "deployments/pools/docker-gpu.json").read_text())
    kwargs = docker["variables"]["properties"]["container_create_kwargs"]["default"]
    assert kwargs["device_requests"][0]["Capabilities"] == [["gpu"]]
    assert "{{ container_create_kwargs }}" in json.dumps(docker["job_configuration"])
    k8s = json.loads((ROOT / "deployments/pools/kubernetes-gpu.json").read_text())
    container = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert "gpu_count" in k8s["variables"]["properties"]
    assert any(s.get("cron") for d in _deployments() for s in d.get("schedules", []))


def test_accelerate_configs_load_and_name_what_exists():
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(ROOT / "deployments/accelerate/ddp.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and ddp.mixed_precision == "no"
    zero3 = load_config_from_file(str(ROOT / "deployments/accelerate/zero3.yaml"))
    assert zero3.distributed_type == "DEEPSPEED"
    ds_file = ROOT / zero3.deepspeed_config["deepspeed_config_file"]
    ds = json.loads(ds_file.read_text())
    assert ds["zero_optimization"]["stage"] == 3
    # The merged export gathers 16-bit weights when saving; without this flag it saves nothing usable.
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_the_unresponsive_batch_automation_never_crashes_a_run_at_default_heartbeats():
    from prefect.events.schemas.automations import AutomationCore, Posture
    from prefect.settings.models.flows import FlowsSettings

    from flows.fanout import stage_batch

    path = ROOT / "deployments" / "automations" / "crash-unresponsive-runs.yaml"
    automation = AutomationCore.model_validate(yaml.safe_load(path.read_text()))
    trigger = automation.trigger
    assert trigger.posture == Posture.Proactive and trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"} <= trigger.expect
    # Only the batch flow's runs, and a window of at least three default heartbeats: a healthy
    # run must never be marked Crashed (its batch would then run twice).
    assert trigger.match_related.root == {"prefect.resource.role": "flow", "prefect.resource.name": stage_batch.name}
    default = FlowsSettings.model_fields["heartbeat_frequency"].default
    assert trigger.within.total_seconds() >= 3 * default
    assert [a.type for a in automation.actions] == ["change-flow-run-state"]
    assert automation.actions[0].state.value == "CRASHED"
