"""Cost per clip as the corpus grows, and cutting windows from long videos against ffmpeg.

Run (from the repository root; the ffmpeg CLI comes from Debian's packages)::

    apt-get update && apt-get install -y ffmpeg
    .venv/bin/python benchmarks/corpus_scale.py                     # 1,000 and 8,000 clips
    .venv/bin/python benchmarks/corpus_scale.py --sizes 100,800     # a smoke run

Part 1, flat cost per clip: ingest -> teacher -> vote with the sim backends on the synthetic
world, the store on moto's S3 server (a real S3 API on 127.0.0.1), once per corpus size, each in
a fresh run. Per size: wall seconds per clip and S3 requests per clip (every S3 API call s3fs
makes, counted at its one entry point, ``_call_s3``), and the ratio of the largest size's
per-clip figures to the smallest's (goal: <= 1.2; cost per clip stays flat).

Part 2, windows per second: every 10 s window of a few long videos, cut by our path (seek, then
the teacher's frames and 16 kHz mono audio of the window: ``load_frames`` + ``load_audio`` on the
window's URI) and by the ffmpeg command line doing the same work per window (``-ss``/``-t`` input
seeking, ``fps`` + ``scale`` to rgb24, ``-ac 1 -ar 16000 -f f32le``), one worker each, best of
``--repeats`` interleaved passes after a warm-up. Goal: our rate >= 0.8 of ffmpeg's.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sightsound_core.config import PipelineConfig  # noqa: E402
from sightsound_core.datasets.folder import window_spans  # noqa: E402
from sightsound_core.datasets.ingest import run_ingest  # noqa: E402
from sightsound_core.media.decode import (  # noqa: E402
    _scaled_size,
    load_audio,
    load_frames,
    probe,
    sample_times,
    window_uri,
)
from sightsound_core.storage import ObjectStore  # noqa: E402
from sightsound_core.teacher import run_teacher, run_vote  # noqa: E402
from tests.fakes.longvideo import write_long_av  # noqa: E402

log = logging.getLogger("corpus_scale")
RATE = 16000
FRAME_FPS, MAX_FRAMES, MAX_PIXELS = 2.0, 16, 224 * 224


# -- part 1: cost per clip ------------------------------------------------------------------------
class S3Calls:
    """Counts every S3 API call s3fs makes (all of them pass through ``_call_s3``)."""

    def __init__(self) -> None:
        import s3fs

        self.counts: collections.Counter[str] = collections.Counter()
        real = s3fs.S3FileSystem._call_s3
        counts = self.counts

        async def counted(fs, method, *args, **kwargs):
            counts[method if isinstance(method, str) else getattr(method, "__name__", str(method))] += 1
            return await real(fs, method, *args, **kwargs)

        s3fs.S3FileSystem._call_s3 = counted

    def total(self) -> int:
        return sum(self.counts.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cost_per_clip(sizes: list[int], shard_size: int) -> dict:
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    # moto announces itself on stdout; the benchmark's stdout is its JSON alone.
    with contextlib.redirect_stdout(sys.stderr):
        server.start()
    calls = S3Calls()
    options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "testing", "secret": "testing"}
    bucket = f"scale-{uuid.uuid4().hex[:8]}"
    ObjectStore(f"s3://{bucket}", options).fs.mkdir(bucket)
    out = {}
    try:
        for n in sizes:
            cfg = PipelineConfig.model_validate({
                "run": f"scale-{n}", "store": {"root": f"s3://{bucket}/runs", "storage_options": options},
                "ingest": {"synthetic": {"n_clips": n}, "shard_size": shard_size},
            })
            store = ObjectStore(cfg.store.root, options)
            before = calls.total()
            stage_s = {}
            began = time.perf_counter()
            clips = run_ingest(cfg.ingest, store, cfg.run)
            stage_s["ingest"] = time.perf_counter() - began
            samples = run_teacher(cfg.teacher, store, cfg.run, clips)
            stage_s["teacher"] = time.perf_counter() - began - stage_s["ingest"]
            votes = run_vote(cfg.vote, store, cfg.run, clips, samples)
            wall = time.perf_counter() - began
            stage_s["vote"] = wall - stage_s["ingest"] - stage_s["teacher"]
            requests = calls.total() - before
            out[str(n)] = {
                "clips": clips.manifest["rows"], "votes": votes.manifest["rows"], "shards": len(clips.shards),
                "wall_s": round(wall, 2), "wall_s_per_clip": round(wall / n, 5),
                "stage_s": {k: round(v, 2) for k, v in stage_s.items()},
                "s3_requests": requests, "s3_requests_per_clip": round(requests / n, 4),
            }
            log.info("%d clips: %s", n, out[str(n)])
    finally:
        server.stop()
    small, large = out[str(min(sizes))], out[str(max(sizes))]
    ratio = {
        "wall_s_per_clip": round(large["wall_s_per_clip"] / small["wall_s_per_clip"], 3),
        "s3_requests_per_clip": round(large["s3_requests_per_clip"] / small["s3_requests_per_clip"], 3),
    }
    return {"sizes": out, "shard_size": shard_size, "ratio_largest_to_smallest": ratio, "goal_ratio": 1.2,
            "meets_goal": all(r <= 1.2 for r in ratio.values()), "s3_calls_by_method": dict(calls.counts)}


# -- part 2: windows per second -------------------------------------------------------------------
def ours(uri: str, start: float, end: float) -> tuple[int, int]:
    w = window_uri(uri, start, end)
    frames, _ = load_frames(w, FRAME_FPS, MAX_FRAMES, MAX_PIXELS)
    return len(frames), len(load_audio(w, RATE))


def ffmpeg(path: str, start: float, end: float, width: int, height: int) -> tuple[int, int]:
    n = len(sample_times(end - start, FRAME_FPS, MAX_FRAMES))
    with tempfile.NamedTemporaryFile(suffix=".f32") as audio_out:
        cmd = [
            "ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start:.3f}", "-t", f"{end - start:.3f}", "-i", path,
            "-map", "0:v:0", "-vf", f"fps={n}/{end - start:.6f},scale={width}:{height}:flags=area",
            "-frames:v", str(n), "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1",
            "-map", "0:a:0", "-ac", "1", "-ar", str(RATE), "-f", "f32le", audio_out.name,
        ]
        video = subprocess.run(cmd, capture_output=True, check=True).stdout
        audio = np.fromfile(audio_out.name, dtype=np.float32)
    return len(video) // (width * height * 3), len(audio)


def windows_per_second(args: argparse.Namespace) -> dict:
    from sightsound_core.config import WindowConfig

    workdir = Path(args.workdir)
    videos = []
    for i in range(args.videos):
        path = workdir / f"long-{args.video_seconds:g}s-{args.size}px-{args.fps}fps-{i}.mp4"
        if not path.exists():
            write_long_av(path, args.video_seconds, [(0, args.video_seconds)], width=args.size,
                          height=args.size * 3 // 4, fps=args.fps, gop=args.fps * 2)
        videos.append(str(path))
    windows = [(v, a, b) for v in videos for a, b in window_spans(probe(v).duration_s, WindowConfig())[0]]
    info = probe(videos[0])
    width, height = _scaled_size(info.width, info.height, MAX_PIXELS)
    sides = {"ours": lambda v, a, b: ours(v, a, b), "ffmpeg": lambda v, a, b: ffmpeg(v, a, b, width, height)}
    for run in sides.values():  # warm-up: page cache, imports
        [run(*w) for w in windows[:3]]
    best = {k: np.inf for k in sides}
    outputs = {}
    for _ in range(args.repeats):
        for kind, run in sides.items():
            began = time.perf_counter()
            outputs[kind] = [run(*w) for w in windows]
            best[kind] = min(best[kind], time.perf_counter() - began)
            log.info("%s: %d windows in %.2f s", kind, len(windows), time.perf_counter() - began)
    rate = {k: len(windows) / s for k, s in best.items()}
    a, b = np.array(outputs["ours"]), np.array(outputs["ffmpeg"])
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "videos": f"{args.videos} x {args.video_seconds:g} s, {args.size}x{args.size * 3 // 4} @ {args.fps} fps "
                  f"H.264 (keyframe every 2 s) + AAC 16 kHz mono",
        "windows": len(windows),
        "work_per_window": f"<= {MAX_FRAMES} RGB frames at {FRAME_FPS:g} fps within {MAX_PIXELS} px, "
                           "plus the window's audio as 16 kHz mono float32",
        "ours_windows_per_s": round(rate["ours"], 2), "ffmpeg_cli_windows_per_s": round(rate["ffmpeg"], 2),
        "ratio_to_ffmpeg": round(rate["ours"] / rate["ffmpeg"], 3), "goal_ratio": 0.8,
        "meets_goal": rate["ours"] >= 0.8 * rate["ffmpeg"],
        "same_frame_counts": bool((a[:, 0] == b[:, 0]).all()),
        "max_audio_samples_diff": int(np.abs(a[:, 1] - b[:, 1]).max()),
        "ffmpeg": version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,8000", help="Corpus sizes in clips, comma-separated.")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--videos", type=int, default=2, help="Long videos to cut windows from.")
    parser.add_argument("--video-seconds", type=float, default=600.0)
    parser.add_argument("--size", type=int, default=320, help="Long videos' width (height is 3/4 of it).")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip", choices=["scale", "windows"], help="Leave one part out.")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "sightsound-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in ("botocore", "s3fs", "aiobotocore", "werkzeug"):
        logging.getLogger(name).setLevel(logging.WARNING)
    result: dict = {"cpu_cores": os.cpu_count()}
    if args.skip != "scale":
        result["cost_per_clip"] = cost_per_clip([int(s) for s in args.sizes.split(",")], args.shard_size)
    if args.skip != "windows":
        if shutil.which("ffmpeg") is None:
            sys.exit("ffmpeg not found: apt-get install -y ffmpeg")
        result["windows_per_second"] = windows_per_second(args)
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
