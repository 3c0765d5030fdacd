"""prefect deploy -> process worker -> deployment run -> the flow run's page in headless Chromium.

Runs a real local Prefect server and worker as subprocesses, exactly as deployments/README.md
tells a user to; the screenshot lands in test-artifacts/ for a person to look at.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc, grace=20.0):
    """Stop a process started with ``start_new_session``: SIGTERM to its process group, SIGKILL
    to what is left after ``grace`` seconds, its descendants in other groups too (a flow run the
    worker started). Returns the pids still alive after that (none, unless even SIGKILL failed)."""
    family = [psutil.Process(proc.pid)] if proc.poll() is None else []
    with contextlib.suppress(psutil.NoSuchProcess):
        family += psutil.Process(proc.pid).children(recursive=True)
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pid]
    family = list({p.pid: p for p in family + group}.values())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return _alive([p.pid for p in family] + [pid for pid in psutil.pids() if _pgid(pid) == proc.pid])


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _alive(pids):
    """The pids of ``pids`` that are running (a zombie has finished)."""
    alive = []
    for pid in set(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return sorted(alive)


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
    assert _stop(proc, grace=1.0) == []
    assert _alive(family) == [] and time.time() - began < 15


def _wait_healthy(url, proc, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "prefect server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


@pytest.fixture
def prefect_server(tmp_path):
    port = _port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_LOGGING_LEVEL="WARNING")
    Path(env["PREFECT_HOME"]).mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_healthy(env["PREFECT_API_URL"], server)
        yield env
    finally:
        left = _stop(server)
    assert not left, f"prefect server processes left running: {left}"


def _prefect(env, *args, **kw):
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, check=True, **kw)


def test_deploy_worker_run_and_ui(prefect_server, tmp_path):
    assert Path(CHROMIUM).exists(), "Debian chromium is required: apt-get install -y chromium"
    env = dict(prefect_server, SIGHTSOUND_REPO=str(ROOT))
    _prefect(env, "work-pool", "create", "sightsound-local", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
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
        out = _prefect(env, "deployment", "run", "pipeline/demo", "--param",
                       f"overrides={json.dumps(overrides)}", "--watch", "--watch-timeout", "600",
                       timeout=700).stdout
        assert "Completed" in out, out[-2000:]
        run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    finally:
        left = _stop(worker)
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
