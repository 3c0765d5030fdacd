"""A temporary Prefect server that dies with the command that started it.

Without ``PREFECT_API_URL``, Prefect 3.8.8 starts a temporary server for each script
(``prefect.server.api.server.SubprocessASGIServer``: a plain ``subprocess.Popen`` of uvicorn,
stopped by an ``atexit`` hook). A SIGKILLed ``sightsound run`` never runs that hook, so the server
is left running. ``temporary_server`` starts the same uvicorn command itself, as a child that the
kernel signals when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``, see prctl(2); the
documented race, a parent that dies before the call, is closed by checking ``getppid`` after it),
and points Prefect at it. A server named by ``PREFECT_API_URL`` is used as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The environment Prefect gives its own temporary server (SubprocessASGIServer._run_uvicorn_command).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when this process dies (Linux);
    None elsewhere. libc is resolved here, before the fork, not in the forked child."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call: no signal would come
            os._exit(1)

    return preexec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def temporary_server(log_dir: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """Start a Prefect API server bound to this process's life; yield its API URL.

    Its output goes to ``log_dir/prefect-server.log``. Stopped (SIGTERM, then SIGKILL) on exit;
    if this process is killed first, the kernel sends it SIGTERM.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    import prefect

    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(log_dir / "prefect-server.log", "ab") as log:
        while True:
            port = _free_port()
            cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                   "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "error", "--lifespan", "on"]
            proc = subprocess.Popen(cmd, env={**os.environ, **SERVER_ENV}, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent())
            url = f"http://127.0.0.1:{port}/api"
            while proc.poll() is None and not _healthy(url):
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"the Prefect server did not start in {timeout_s:.0f} s; see {log.name}")
                time.sleep(0.2)
            if proc.poll() is None:
                break
            if time.monotonic() > deadline:  # exited at once (a port taken in between): try another
                raise RuntimeError(f"the Prefect server exited with code {proc.returncode}; see {log.name}")
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            os.environ["PREFECT_API_URL"] = url
            try:
                yield url
            finally:
                del os.environ["PREFECT_API_URL"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
