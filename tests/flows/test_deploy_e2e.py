"""prefect deploy -> process worker -> deployment run -> the flow run's page in headless Chromium.

Runs a real local Prefect server and worker as subprocesses, exactly as deployments/README.md
tells a user to; the screenshot lands in test-artifacts/ for a person to look at.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from prefect_procs import ROOT, alive, prefect_cli, stop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
# Flow runs on the server, with their flow name, state and deployment.
_LIST_RUNS = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    flows = {f.id: f.name for f in c.read_flows()}
    print(json.dumps([{"flow": flows[r.flow_id], "state": r.state_name,
                       "deployment": str(r.deployment_id or "")} for r in c.read_flow_runs()]))
"""


def test_stop_kills_a_group_that_ignores_sigterm():
    # A leader and a child that both ignore SIGTERM, and a grandchild in its own session.
    script = "trap '' TERM; setsid sleep 300 & sleep 300 & wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.time() + 10
    while len(psutil.Process(proc.pid).children(recursive=True)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) == 3
    began = time.time()
    assert stop(proc, grace=1.0) == []
    assert alive(family) == [] and time.time() - began < 15


def test_deploy_worker_run_and_ui(prefect_server, tmp_path):
    assert Path(CHROMIUM).exists(), "Debian chromium is required: apt-get install -y chromium"
    env = dict(prefect_server, SIGHTSOUND_REPO=str(ROOT))
    prefect_cli(env, "work-pool", "create", "sightsound-local", "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
             "--name", "pipeline/demo", "--name", "train-recipe/local")

    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "sightsound-local"],
        env=env, cwd=ROOT, stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        overrides = {
            "store.root": f"file://{tmp_path}/store", "ingest.synthetic.n_clips": 8,
            # The random-init student: the world-pretrained one costs minutes to build once.
            "models.student": "tiny://qwen2-audio",
            "ingest.shard_size": 8, "sft.max_steps": 1, "sft.variants": ["cot"],
            "grpo.max_steps": 1, "grpo.num_generations": 2, "grpo.prompts_per_step": 1,
            "grpo.max_completion_length": 4, "evaluate.models": ["pretrained", "cot"],
            "evaluate.max_new_tokens": 4,
            "evaluate.benchmarks": [{"name": "t", "ingest": {"synthetic": {"n_clips": 2, "seed": 1}}}],
            # Training runs as its own flow run of another deployment, as on a GPU pool.
            "orchestration.dispatch_train": "train-recipe/local",
        }
        out = prefect_cli(env, "deployment", "run", "pipeline/demo", "--param",
                       f"overrides={json.dumps(overrides)}", "--watch", "--watch-timeout", "600",
                       timeout=700).stdout
        assert "Completed" in out, out[-2000:]
        run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    finally:
        left = stop(worker)
    assert not left, f"prefect worker processes left running: {left}"
    assert (tmp_path / "store" / "demo" / "_index" / "report.json").exists()
    runs = json.loads(subprocess.run(
        [sys.executable, "-c", _LIST_RUNS], env=env, text=True, capture_output=True, check=True
    ).stdout)
    dispatched = [r for r in runs if r["flow"] == "train-recipe"]
    assert dispatched and all(r["state"] == "Completed" and r["deployment"] for r in dispatched), runs

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "flow-run.png"
    url = env["PREFECT_API_URL"].removesuffix("/api") + f"/runs/flow-run/{run_id}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,900",
             "--virtual-time-budget=15000"]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], check=True, timeout=120,
                   capture_output=True)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    assert shot.stat().st_size > 10_000
    assert "pipeline" in dom and "Completed" in dom
