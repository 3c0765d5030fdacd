"""A stage fanned out over two workers of a process pool, one of them SIGKILLed mid-batch.

Everything is real and local: a Prefect server, ``prefect deploy`` of ``stage-batch/local``, the
shipped unresponsive-run automation, two ``prefect worker start`` processes, and the distill flow
as the coordinator with ``orchestration.fanout`` set for the teacher. The test watches the store
and the server, and kills (SIGKILL, with the flow run it started: the machine is gone) the first
worker seen holding a batch that is part done. It then checks what the issue asks: both workers'
shares in the flow-run records, the dead batch marked Crashed and run again on the other worker,
every shard committed once (never rewritten, and computed by exactly one run), and the distill
outputs equal to those of the same recipe run in one process.
"""

import contextlib
import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from prefect_procs import ROOT, prefect_cli, stop

pytestmark = pytest.mark.slow

AUTOMATION = ROOT / "deployments" / "automations" / "crash-unresponsive-runs.yaml"
# The coordinator: the distill flow on the demo recipe with the test's overrides; it prints the
# committed stages' directories.
COORDINATOR = """
import json, sys
from flows.dag import _distill
from sightsound_core.config import load_config
refs = _distill(load_config("demo.yaml", json.loads(sys.argv[1])))
print(json.dumps({name: ref.dir for name, ref in refs.items()}))
"""
# 12 teacher shards of 48 clips, batches of 4: three batches for two workers, each batch a few
# seconds of work, so a batch can be caught part done.
SIZE = {"ingest.synthetic.n_clips": 576, "ingest.shard_size": 48, "orchestration.shards_per_task": 4}
# Workers heartbeat every 30 s (Prefect's minimum); two missed ones mark a batch Crashed.
HEARTBEAT_S, WITHIN_S = 30, 60


def _overrides(root, fanout):
    out = {"store.root": f"file://{root}", **SIZE}
    if fanout:
        out.update({"orchestration.fanout": "stage-batch/local", "orchestration.fanout_stages": ["teacher"],
                    "orchestration.fanout_poll_s": 1.0})
    return out


@contextlib.contextmanager
def _client(env):
    """A sync Prefect client of the test's server (the setting is restored on exit)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            yield client


def _batch_runs(client):
    """Every stage-batch flow run: name, state type, worker, shards, id."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["stage-batch"])))
    return [{"id": r.id, "name": r.name, "state": r.state.type.value if r.state else None,
             "worker": r.labels.get("prefect.worker.name"), "shards": r.parameters["shards"]}
            for r in runs]


def _committed(teacher_root):
    return {int(p.stem.split("-")[1]): p for p in teacher_root.glob("*/shard-*.parquet")}


def _kill_tree(proc):
    """SIGKILL a worker and everything it started, at once; wait until they are gone."""
    family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.wait(30)


def test_two_workers_one_killed_mid_batch(prefect_server, tmp_path):
    with contextlib.ExitStack() as stack:
        _two_workers_one_killed(prefect_server, tmp_path, stack)


def _two_workers_one_killed(prefect_server, tmp_path, stack):
    env = dict(prefect_server, SIGHTSOUND_REPO=str(ROOT), PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_S))
    prefect_cli(env, "work-pool", "create", "sightsound-local", "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                "--name", "stage-batch/local")
    automation = yaml.safe_load(AUTOMATION.read_text())
    automation["trigger"]["within"] = WITHIN_S
    automation["actions"][0]["message"] = f"No heartbeat for {WITHIN_S} s"
    prefect_cli(env, "automation", "create", "--from-json", json.dumps(automation))

    workers = {
        name: subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "sightsound-local",
             "--name", name, "--limit", "1"],
            env=env, cwd=ROOT, stdout=open(tmp_path / f"{name}.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name in ("w1", "w2")
    }
    store = tmp_path / "store"
    coordinator = subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, json.dumps(_overrides(store, fanout=True))],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(tmp_path / "coordinator.log", "w"),
        text=True, start_new_session=True,
    )
    client = stack.enter_context(_client(env))
    first_seen: dict[int, tuple[int, int]] = {}  # shard -> (inode, mtime) when first seen committed
    killed = None
    try:
        deadline = time.time() + 900
        while coordinator.poll() is None:
            assert time.time() < deadline, "the coordinator did not finish in 15 minutes"
            committed = _committed(store / "demo" / "teacher")
            for i, path in committed.items():
                st = path.stat()
                first_seen.setdefault(i, (st.st_ino, st.st_mtime_ns))
            if killed is None and committed:
                for run in _batch_runs(client):
                    done = set(run["shards"]) & set(committed)
                    if run["state"] == "RUNNING" and run["worker"] and done and done != set(run["shards"]):
                        _kill_tree(workers[run["worker"]])
                        killed = {**run, "committed_at_kill": set(_committed(store / "demo" / "teacher"))}
                        break
            time.sleep(0.05)
        out, _ = coordinator.communicate()
    finally:
        for proc in [coordinator, *workers.values()]:
            stop(proc, grace=5.0)
    log = (tmp_path / "coordinator.log").read_text()
    assert coordinator.returncode == 0, log[-3000:]
    assert killed is not None, "no batch was caught part done: every batch finished between two looks"

    runs = _batch_runs(client)
    by_id = {r["id"]: r for r in runs}
    # The killed batch: marked Crashed by the automation, then run again to completion on the
    # worker that was left.
    assert by_id[killed["id"]]["state"] == "CRASHED", runs
    survivor = ({"w1", "w2"} - {killed["worker"]}).pop()
    again = [r for r in runs if r["shards"] == killed["shards"] and r["id"] != killed["id"]]
    assert [(r["state"], r["worker"]) for r in again] == [("COMPLETED", survivor)], runs
    # Each worker's share is in the flow-run records.
    shares = {w: [r["name"] for r in runs if r["worker"] == w] for w in ("w1", "w2")}
    assert all(shares.values()), shares
    assert all(r["state"] == "COMPLETED" for r in runs if r["id"] != killed["id"]), runs

    # Every shard committed once: present, never rewritten after it first appeared, and
    # computed by exactly one run (the killed one's commits are reused by its successor).
    teacher = _committed(store / "demo" / "teacher")
    assert sorted(teacher) == list(range(12))
    for i, path in teacher.items():
        st = path.stat()
        assert (st.st_ino, st.st_mtime_ns) == first_seen[i], f"shard {i} was rewritten"
    computed: list[int] = []
    reused: list[int] = []
    for run in runs:
        if run["state"] != "COMPLETED":
            continue
        rows = _artifact_rows(client, run["id"])
        computed += [r["shard"] for r in rows if r["outcome"] == "computed"]
        reused += [r["shard"] for r in rows if r["outcome"] == "reused"]
        assert {r["worker"] for r in rows} == {run["worker"]}
    by_killed = killed["committed_at_kill"] & set(killed["shards"])
    assert by_killed and sorted(computed + sorted(by_killed)) == list(range(12))
    assert sorted(reused) == sorted(by_killed)

    # The outputs equal the same recipe run in one process.
    from sightsound_core.config import load_config
    from sightsound_core.dag import walk
    from sightsound_core.pipeline import open_store
    from sightsound_core.stage import load_ref, read_all
    from sightsound_core.storage import ObjectStore

    reference_cfg = load_config("demo.yaml", _overrides(tmp_path / "one", fanout=False))
    reference_store = open_store(reference_cfg)
    reference = walk(reference_cfg, reference_store, flow="distill")
    fanned = json.loads(out.strip().splitlines()[-1])
    fanned_store = ObjectStore(f"file://{store}")
    assert set(fanned) == set(reference)
    for name, ref in reference.items():
        got = load_ref(fanned_store, fanned[name])
        assert got.stage_hash == ref.stage_hash, name
        assert _rows(fanned_store, got) == _rows(reference_store, ref), \
            f"{name} differs from the one-process run"


def _rows(store, ref):
    """A stage's rows, less the wall times of requests, with the store's root written the same
    way (media URIs name it)."""
    from sightsound_core.stage import read_all

    table = read_all(store, ref)
    table = table.drop_columns([c for c in table.column_names if c == "latency_s"])
    return json.dumps(table.to_pylist(), default=str).replace(store.root, "ROOT")


def _artifact_rows(client, run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else data
