"""Committed ingest, teacher and vote stages made directly, for testing the verify stage alone.

Each clip is a short WAV tone; each of its samples is a trace that gives the winning answer, and
every ``reject_every``-th trace holds a sentence marked ``[unheard]`` (what ``fake_verdict``
rejects). The three stages are committed with manifests and run-index entries, exactly as the
real stages leave them, so ``run_verify`` and ``resume_verify`` read them like any run.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import soundfile as sf

from sightsound_core.schemas import Clip, TeacherSample, Vote
from sightsound_core.stage import StageRef, plan_map, plan_sources, run_plan
from sightsound_core.storage import ObjectStore

OPTIONS = ["low", "high"]


def trace_text(i: int, j: int, reject_every: int) -> str:
    claim = " A loud bang follows [unheard]." if (i * 31 + j) % reject_every == 0 else ""
    return f"<think>Clip {i} sample {j}: a steady low tone.{claim}</think><answer>low</answer>"


def make_world(
    store: ObjectStore,
    run: str,
    wav_dir: str,
    n_clips: int,
    samples_per_clip: int,
    clips_per_shard: int,
    reject_every: int = 4,
) -> dict[str, StageRef]:
    """Commit ``n_clips`` clips with ``samples_per_clip`` kept traces each; returns the refs."""
    os.makedirs(wav_dir, exist_ok=True)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)
    clips = []
    for i in range(n_clips):
        path = os.path.join(wav_dir, f"clip-{i:05d}.wav")
        if not os.path.exists(path):
            sf.write(path, tone, 16000)
        clips.append(Clip(f"test:{i:05d}", "test", "train", None, f"file://{path}", 0.5,
                          f"Is clip {i} low or high?", OPTIONS, "low", "acoustic", "pitch"))
    shards = [clips[k : k + clips_per_shard] for k in range(0, n_clips, clips_per_shard)]

    def samples_of(batch: list[Clip]) -> pa.Table:
        rows = [
            TeacherSample(c.clip_id, j, trace_text(int(c.clip_id[5:]), j, reject_every), "steady low",
                          "low", "ok", "stop", 10, 10, 0.0, "test", "test")
            for c in batch for j in range(samples_per_clip)
        ]
        return TeacherSample.to_table(rows)

    def votes_of(batch: list[Clip]) -> pa.Table:
        rows = [Vote(c.clip_id, ["low"] * samples_per_clip, "low", 1.0, True, False, "low", "kept",
                     "acoustic") for c in batch]
        return Vote.to_table(rows)

    ingest = run_plan(store, plan_sources(store, run, "ingest", {"test": n_clips}, list(range(len(shards)))),
                      lambda job: (Clip.to_table(shards[job.source]), None))
    teacher = run_plan(store, plan_map(store, run, "teacher", {"k": samples_per_clip}, {"clips": ingest}, "clips"),
                       lambda job: (samples_of(shards[job.index]), None))
    vote = run_plan(store, plan_map(store, run, "vote", {"v": 1}, {"clips": ingest, "samples": teacher}, "clips"),
                    lambda job: (votes_of(shards[job.index]), None))
    return {"clips": ingest, "samples": teacher, "votes": vote}
