"""The teacher stage over an OpenAI-compatible server, killed mid-shard: every answered request
is saved before the next is sent, and the resumed stage never asks for it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from sightsound_core.config import PipelineConfig
from sightsound_core.datasets.ingest import run_ingest
from sightsound_core.schemas import TeacherSample
from sightsound_core.stage import PARTS_DIR, read_all
from sightsound_core.storage import ObjectStore
from sightsound_core.teacher import run_teacher

K = 3
KILLED_RUN = textwrap.dedent(
    """
    import sys
    from sightsound_core.config import PipelineConfig
    from sightsound_core.stage import load_ref
    from sightsound_core.storage import ObjectStore
    from sightsound_core.teacher import run_teacher
    cfg = PipelineConfig.model_validate_json(sys.argv[2])
    store = ObjectStore(sys.argv[1])
    run_teacher(cfg.teacher, store, cfg.run, load_ref(store, sys.argv[3]))
    """
)


def _cfg(server, **teacher) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "run": "t", "ingest": {"synthetic": {"n_clips": 24, "seed": 4}, "shard_size": 24},
        "teacher": {"backend": "openai", "model": "fake", "base_url": server.url, "api_key_env": None,
                    "k": K, "max_retries": 0, "timeout_s": 5.0, "media": "frames", **teacher},
    })


def test_a_killed_teacher_shard_never_reasks_an_answered_clip(openai_server, tmp_path):
    store = ObjectStore(f"file://{tmp_path}/store")
    cfg = _cfg(openai_server, concurrency=2, batch_size=24)
    clips = run_ingest(cfg.ingest, store, cfg.run)
    openai_server.configure(latency_s=0.1)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, store.root, cfg.model_dump_json(), clips.dir],
                            cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    try:
        while len(openai_server.answered_at) < 14:
            assert proc.poll() is None, "the stage finished before it could be killed"
            assert time.monotonic() < deadline, "the server answered too few requests"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        proc.wait()
    first = dict(openai_server.requests)
    answered = {item for item, t in openai_server.answered_at.items() if t < killed_at - 0.25}
    assert len(answered) >= 4
    assert not list((tmp_path / "store" / "t" / "teacher").glob("*/shard-00000.parquet"))

    openai_server.reset_counters()
    openai_server.configure(latency_s=0.0)
    rows = TeacherSample.from_table(read_all(store, run_teacher(cfg.teacher, store, cfg.run, clips)))
    keys = [(r.clip_id, r.sample_idx) for r in rows]
    assert len(keys) == len(set(keys)) == 24 * K
    assert {r.parse_status for r in rows} == {"ok"}
    assert not answered & set(openai_server.requests)  # nothing answered was asked again
    twice = [item for item in first if item in openai_server.requests]
    assert len(twice) <= cfg.teacher.client.concurrency  # only what was on the wire at the kill
    assert len(first) + len(openai_server.requests) - len(twice) == 24
    assert not list((tmp_path / "store" / "t" / "teacher").glob(f"*/{PARTS_DIR}/*/part-*"))


def test_a_resumed_teacher_shard_equals_an_uninterrupted_one(openai_server, tmp_path):
    """Rows saved by an earlier attempt come back exactly as a single attempt writes them."""
    store = ObjectStore(f"file://{tmp_path}/store")
    cfg = _cfg(openai_server, concurrency=4)
    clips = run_ingest(cfg.ingest, store, cfg.run)
    whole = read_all(store, run_teacher(cfg.teacher, store, cfg.run, clips))

    other = ObjectStore(f"file://{tmp_path}/other")
    clips2 = run_ingest(cfg.ingest, other, cfg.run)
    # Half the clips answered by a killed attempt: their rows sit in a part file.
    from sightsound_core.stage import write_part
    from sightsound_core.teacher import plan_teacher

    job = plan_teacher(cfg.teacher, other, cfg.run, clips2).jobs[0]
    half = whole.slice(0, 12 * K).replace_schema_metadata(None)
    write_part(other, job, half)
    openai_server.reset_counters()
    resumed = read_all(other, run_teacher(cfg.teacher, other, cfg.run, clips2))
    assert len(openai_server.requests) == 12
    drop = ["latency_s"]
    assert resumed.drop(drop).equals(whole.drop(drop))
