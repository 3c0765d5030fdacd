"""Real Prefect servers and workers as subprocesses for the deployment tests, and stopping them
so that nothing they started is left running."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, grace=20.0):
    """Stop a process started with ``start_new_session``: SIGTERM to its process group, SIGKILL
    to what is left after ``grace`` seconds, its descendants in other groups too (a flow run the
    worker started). Returns the pids still alive after that (none, unless even SIGKILL failed)."""
    family = [psutil.Process(proc.pid)] if proc.poll() is None else []
    with contextlib.suppress(psutil.NoSuchProcess):
        family += psutil.Process(proc.pid).children(recursive=True)
    group = [p for p in psutil.process_iter() if pgid(p.pid) == proc.pid]
    family = list({p.pid: p for p in family + group}.values())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, lingering = psutil.wait_procs(family, timeout=grace)
    for p in lingering:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    psutil.wait_procs(lingering, timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return alive([p.pid for p in family] + [pid for pid in psutil.pids() if pgid(pid) == proc.pid])


def pgid(pid):
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def alive(pids):
    """The pids of ``pids`` that are running (a zombie has finished)."""
    alive = []
    for pid in set(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return sorted(alive)


def wait_healthy(url, proc, timeout=90):
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


def prefect_cli(env, *args, **kw):
    """``prefect ARGS`` in the repository root with ``env``; raises on a non-zero exit."""
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, check=True, **kw)


@contextlib.contextmanager
def prefect_server_env(home):
    """A ``prefect server start`` on a free port with its home under ``home``; yields the
    environment that points clients at it, then stops it and checks nothing of it is left."""
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_LOGGING_LEVEL="WARNING")
    Path(home).mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_healthy(env["PREFECT_API_URL"], server)
        yield env
    finally:
        left = stop(server)
    assert not left, f"prefect server processes left running: {left}"
