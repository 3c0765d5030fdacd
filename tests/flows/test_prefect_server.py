"""The temporary Prefect server dies with the command that started it, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flows.prefect_server import temporary_server
    with temporary_server(Path(sys.argv[1])) as url:
        print(url, flush=True)
        time.sleep(600)
    """
)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_the_server_dies_when_its_parent_is_killed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "logs")], env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    server = []
    try:
        url = holder.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        server = _children(holder.pid)
        assert len(server) == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 15
        while _alive(server[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server[0]), "the Prefect server outlived its parent"
    finally:
        for pid in [holder.pid, *server]:  # only what this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
