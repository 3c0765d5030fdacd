"""Exactly-once billing under SIGKILL: kill ``sightsound run`` during verify, resume, count requests.

Usage: .venv/bin/python benchmarks/verify_kill.py [--trials 10] [--seed 0] [--clips 48]

A local fake OpenAI-compatible server (``tests/fakes/openai_server.py``, in this process) plays
the verifier, with a little latency so verify lasts a few seconds. Each trial starts
``sightsound run`` on a small recipe (``verify.backend: openai`` pointed at the fake server) in
its own session, waits for the first verify request, SIGKILLs *only the CLI process* at a random
moment within verify, then counts the processes left in that session (orphans: the temporary
Prefect server must die with its parent), resumes with ``sightsound resume RUN --stage verify``,
and counts the requests the server saw per item over run + resume. Upstream stages are shared by
the trials (committed once, reused); each trial's verify stage starts empty.

An item *answered before the kill* is one whose reply the server had handed over at least
``--grace-s`` before the SIGKILL; each must have been asked exactly once. Items asked twice may
only be ones on the wire at the kill (sent, reply not yet read by the client): at most
``verify.concurrency`` times the shard tasks running at once, a trial. Prints JSON.

With few clips verify lasts well under a second: keep ``--grace-s`` below that, or no item counts
as answered before the kill (``answered_before_kill`` 0) and the exactly-once check is empty.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakes.openai_server import FakeOpenAIServer  # noqa: E402

CONCURRENCY = 4  # per verify shard task
MAX_WORKERS = 2  # verify shard tasks at once: at most CONCURRENCY * MAX_WORKERS on the wire


def write_recipe(path: Path, root: str, clips: int, server_url: str) -> None:
    data = yaml.safe_load((ROOT / "sightsound_core/recipes/demo.yaml").read_text())
    data["run"] = "kill"
    data["store"] = {"root": root, "storage_options": {}}
    data["models"]["student"] = "tiny://qwen2-audio"
    data["ingest"]["synthetic"]["n_clips"] = clips
    data["ingest"]["shard_size"] = 16
    data.setdefault("orchestration", {})["max_workers"] = MAX_WORKERS
    data["sft"].update(max_steps=2, variants=["cot"])
    data["grpo"].update(max_steps=1, num_generations=2, prompts_per_step=1, max_completion_length=8)
    data["verify"].update(backend="openai", model="fake-audio", base_url=server_url, api_key_env=None,
                          concurrency=CONCURRENCY, max_retries=0, timeout_s=10.0)
    path.write_text("# Run: sightsound run (verify_kill benchmark)\n" + yaml.safe_dump(data))


def session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (Linux /proc), zombies excluded."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def cli(*args: str, env: dict, session: bool = False, capture: bool = False) -> subprocess.Popen:
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=out, stderr=subprocess.STDOUT if capture else out,
                            start_new_session=session)


def reset_verify(store_dir: Path) -> None:
    """Remove verify and what follows it, and Prefect's task cache, whose records (in the store)
    would otherwise answer for the removed shards."""
    shutil.rmtree(store_dir / "_prefect", ignore_errors=True)
    shutil.rmtree(store_dir / "kill" / "verify", ignore_errors=True)
    for later in ("corpus", "sft", "grpo", "evaluate", "report"):
        shutil.rmtree(store_dir / "kill" / later, ignore_errors=True)
    for entry in (store_dir / "kill" / "_index").glob("*.json"):
        if entry.stem in ("verify", "corpus", "sft", "grpo", "evaluate", "report"):
            entry.unlink()


def prepare(recipe: Path) -> int:
    """Commit the stages before verify (shared by every trial); the number of traces verify asks."""
    from sightsound_core.config import load_config
    from sightsound_core.pipeline import run_pipeline

    cfg = load_config(recipe)

    class Stop(Exception):
        pass

    def stop_after_verify(stage: str, ref) -> None:
        if stage == "verify":
            raise Stop

    try:
        run_pipeline(cfg, on_stage=stop_after_verify)
    except Stop:
        pass
    from sightsound_core.stage import read_index
    from sightsound_core.storage import ObjectStore

    store = ObjectStore(cfg.store.root)
    return store.read_json(read_index(store, cfg.run)["verify"]["dir"] + "/_MANIFEST.json")["rows"]


def trial(server: FakeOpenAIServer, recipe: Path, store_dir: Path, env: dict, rng: random.Random,
          verify_s: float, grace_s: float, expected: int) -> dict:
    reset_verify(store_dir)
    server.reset_counters()
    proc = cli("run", str(recipe), env=env, session=True)
    deadline = time.monotonic() + 300
    while not server.requests:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the run never reached verify")
        time.sleep(0.01)
    verify_started = time.time()
    time.sleep(rng.uniform(0.1, 1.0) * verify_s)
    os.kill(proc.pid, signal.SIGKILL)  # the CLI only: what dies with it is the point
    killed_at = time.time()
    proc.wait()
    time.sleep(5.0)  # a server sent SIGTERM on its parent's death has this long to exit
    orphans = session_processes(proc.pid)
    for pid in orphans:  # left by this trial's run: stop them so the next trial starts clean
        os.kill(pid, signal.SIGKILL)
    first = dict(server.requests)
    answered = {item for item, t in server.answered_at.items() if t < killed_at - grace_s}

    server.reset_counters()
    resumed = cli("resume", "kill", "--stage", "verify", "--recipe", str(recipe), env=env, capture=True)
    output, _ = resumed.communicate(timeout=600)
    if resumed.returncode != 0:  # what it printed is the diagnosis: keep it
        raise RuntimeError(f"resume --stage verify failed (exit {resumed.returncode}), "
                           f"{killed_at - verify_started:.2f} s after the first request:\n{output[-4000:]}")
    second = dict(server.requests)
    total = {item: first.get(item, 0) + second.get(item, 0) for item in set(first) | set(second)}
    from sightsound_core.schemas import Verdict
    from sightsound_core.stage import load_ref, read_all, read_index
    from sightsound_core.storage import ObjectStore

    store = ObjectStore(f"file://{store_dir}")
    verdicts = Verdict.from_table(read_all(store, load_ref(store, read_index(store, "kill")["verify"]["dir"])))
    keys = [f"{v.clip_id}/{v.sample_idx}" for v in verdicts]
    return {
        "kill_after_first_request_s": round(killed_at - verify_started, 2),
        "items": len(keys),
        "requests_run": sum(first.values()),
        "requests_resume": sum(second.values()),
        "answered_before_kill": len(answered),
        "killed_during_verify": len(first) < expected,
        "max_requests_per_answered_item": max((total[i] for i in answered), default=0),
        "asked_twice": sum(n > 1 for n in total.values()),
        "items_lost": expected - len(set(keys)),
        "duplicate_rows": len(keys) - len(set(keys)),
        "errors": sum(v.status == "error" for v in verdicts),
        "orphans": len(orphans),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--latency-s", type=float, default=0.3)
    parser.add_argument("--grace-s", type=float, default=1.0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="sightsound-verify-kill-"))
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect"), PYTHONPATH=str(ROOT),
               SIGHTSOUND_CACHE=os.environ.get("SIGHTSOUND_CACHE", str(work / "cache")),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    with FakeOpenAIServer(latency_s=args.latency_s, seed=args.seed) as server:
        recipe = work / "kill.yaml"
        store_dir = work / "store"
        write_recipe(recipe, f"file://{store_dir}", args.clips, server.url)
        expected = prepare(recipe)
        # How long verify lasts under ``sightsound run`` (shards in parallel, a loaded machine):
        # measured on one uninterrupted run, so that kills land inside it.
        reset_verify(store_dir)
        server.reset_counters()
        calibration = cli("run", str(recipe), env=env, session=True)
        while len(server.answered_at) < expected and calibration.poll() is None:
            time.sleep(0.05)
        os.killpg(calibration.pid, signal.SIGKILL)  # verify is done: the rest is not measured
        calibration.wait()
        times = sorted(server.answered_at.values())
        verify_s = times[-1] - times[0]
        trials = [trial(server, recipe, store_dir, env, rng, verify_s, args.grace_s, expected)
                  for _ in range(args.trials)]
    print(json.dumps({
        "trials": len(trials),
        "traces": expected,
        "verify_s_uninterrupted": round(verify_s, 2),
        "grace_s": args.grace_s,
        "on_the_wire_bound": CONCURRENCY * MAX_WORKERS,
        "killed_during_verify": sum(t["killed_during_verify"] for t in trials),
        "answered_before_kill": sum(t["answered_before_kill"] for t in trials),
        "max_requests_per_answered_item": max(t["max_requests_per_answered_item"] for t in trials),
        "max_asked_twice_per_trial": max(t["asked_twice"] for t in trials),
        "items_lost": sum(t["items_lost"] for t in trials),
        "duplicate_rows": sum(t["duplicate_rows"] for t in trials),
        "orphan_processes": sum(t["orphans"] for t in trials),
        "per_trial": trials,
    }, indent=2))


if __name__ == "__main__":
    main()
