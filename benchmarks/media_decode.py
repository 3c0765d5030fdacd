"""Media decoding throughput: our PyAV path against the ffmpeg command-line tool, same clips, same run.

Run (from the repository root; the ffmpeg CLI comes from Debian's packages)::

    apt-get update && apt-get install -y ffmpeg
    .venv/bin/python benchmarks/media_decode.py            # 100 synthetic 10 s clips
    .venv/bin/python benchmarks/media_decode.py --smoke --no-ffmpeg   # seconds, our path only

Both sides do the same work per clip: the teacher's silent frames (``--frame-fps`` per second, at
most ``--max-frames``, downscaled to ``--max-pixels`` with area averaging, RGB) and 16 kHz mono
float32 audio, read back into memory. Ours is ``load_frames`` + ``load_audio`` in worker
processes; ffmpeg is one process per clip (``fps`` + ``scale`` filters to rawvideo rgb24, and
``-ac 1 -ar 16000 -f f32le``), its start-up included, as a pipeline calling it would pay.
Each side is timed with 1 and with 2 workers after one untimed warm-up pass (page cache), best of
``--repeats`` interleaved passes. ffmpeg's bare start-up time is reported too, and the machine's
load average, since other work on a small machine moves these numbers.

Prints one JSON object: clips/s for each side and worker count, our throughput as a ratio of
ffmpeg's (goal: >= 0.8), the speed-up from 1 to 2 workers, and the frames and audio samples our
path decoded.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sightsound_core.config import SyntheticConfig  # noqa: E402
from sightsound_core.datasets.synthetic import generate_clips  # noqa: E402
from sightsound_core.media.decode import _scaled_size, load_audio, load_frames, probe, sample_times  # noqa: E402

log = logging.getLogger("media_decode")
RATE = 16000


def make_clips(args: argparse.Namespace, workdir: Path) -> list[str]:
    """The synthetic clips, generated once into ``workdir`` and reused by later runs."""
    cfg = SyntheticConfig(n_clips=args.clips, duration_s=args.seconds, fps=args.fps, size=args.size, seed=0)
    media = workdir / f"clips-{args.clips}-{args.seconds:g}s-{args.size}px-{args.fps}fps"
    paths = [media / f"clip-{i:06d}.mp4" for i in range(args.clips)]
    if not all(p.exists() for p in paths):
        began = time.perf_counter()
        generate_clips(cfg, str(media), 0, args.clips)
        log.info("generated %d clips in %.1f s", args.clips, time.perf_counter() - began)
    return [str(p) for p in paths]


def pyav_one(path: str, fps: float, max_frames: int, max_pixels: int) -> tuple[int, int]:
    frames, _ = load_frames(path, fps, max_frames, max_pixels)
    audio = load_audio(path, RATE)
    return len(frames), len(audio)


def ffmpeg_one(path: str, fps: float, max_frames: int, max_pixels: int) -> tuple[int, int]:
    info = probe(path)
    n = len(sample_times(info.duration_s, fps, max_frames))
    width, height = _scaled_size(info.width, info.height, max_pixels)
    with tempfile.NamedTemporaryFile(suffix=".f32") as audio_out:
        cmd = [
            "ffmpeg", "-nostdin", "-v", "error", "-y", "-i", path,
            "-map", "0:v:0", "-vf", f"fps={n}/{info.duration_s:.6f},scale={width}:{height}:flags=area",
            "-frames:v", str(n), "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1",
            "-map", "0:a:0", "-ac", "1", "-ar", str(RATE), "-f", "f32le", audio_out.name,
        ]
        video = subprocess.run(cmd, capture_output=True, check=True).stdout
        audio = np.fromfile(audio_out.name, dtype=np.float32)
    frames = np.frombuffer(video, np.uint8).reshape(-1, height, width, 3)
    return len(frames), len(audio)


def _pyav_batch(paths: list[str], fps: float, max_frames: int, max_pixels: int) -> list[tuple[int, int]]:
    return [pyav_one(p, fps, max_frames, max_pixels) for p in paths]


def timed(kind: str, paths: list[str], workers: int, args: argparse.Namespace) -> tuple[float, list]:
    """Seconds to decode every clip with ``workers`` workers, and the (frames, samples) of each."""
    frame_args = (args.frame_fps, args.max_frames, args.max_pixels)
    if kind == "pyav":
        batch = functools.partial(_pyav_batch, fps=args.frame_fps, max_frames=args.max_frames,
                                  max_pixels=args.max_pixels)
        chunks = [paths[i::workers] for i in range(workers)]
        with cf.ProcessPoolExecutor(workers) as pool:
            list(pool.map(batch, [c[:1] for c in chunks]))  # start the workers and import PyAV untimed
            began = time.perf_counter()
            results = [r for part in pool.map(batch, chunks) for r in part]
            return time.perf_counter() - began, results
    with cf.ThreadPoolExecutor(workers) as pool:  # each ffmpeg is its own process; threads only wait
        began = time.perf_counter()
        results = list(pool.map(lambda p: ffmpeg_one(p, *frame_args), paths))
        return time.perf_counter() - began, results


def _ffmpeg_startup() -> float:
    """Seconds for ffmpeg to start, open a 10 ms null source and exit."""
    began = time.perf_counter()
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc", "-t", "0.01",
                    "-f", "null", "-"], check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=320, help="Square video side of the synthetic clips.")
    parser.add_argument("--fps", type=int, default=25, help="Video frame rate of the synthetic clips.")
    parser.add_argument("--frame-fps", type=float, default=2.0, help="Teacher frames per second.")
    parser.add_argument("--max-frames", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=224 * 224)
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per setting; the best counts.")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "sightsound-bench"))
    parser.add_argument("--no-ffmpeg", action="store_true", help="Time our PyAV path only (no ffmpeg CLI).")
    parser.add_argument("--smoke", action="store_true", help="Seconds: 4 clips of 1 s at 64 px, one pass.")
    args = parser.parse_args()
    if args.smoke:
        args.clips, args.seconds, args.size, args.fps, args.repeats = 4, 1.0, 64, 10, 1
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    kinds = ("pyav",) if args.no_ffmpeg else ("pyav", "ffmpeg")
    if "ffmpeg" in kinds and shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg not found: apt-get install -y ffmpeg (or --no-ffmpeg)")

    paths = make_clips(args, Path(args.workdir))
    for kind in kinds:  # warm-up: every side reads the files once before any timing
        timed(kind, paths, 2, args)

    # Best of --repeats, interleaved, so a burst of other load on the machine hits both sides alike.
    seconds = {kind: {1: np.inf, 2: np.inf} for kind in kinds}
    outputs: dict[str, list] = {}
    for _ in range(args.repeats):
        for workers in (1, 2):
            for kind in kinds:
                took, outputs[kind] = timed(kind, paths, workers, args)
                seconds[kind][workers] = min(seconds[kind][workers], took)
                log.info("%s, %d worker(s): %.2f s", kind, workers, took)
    rate = {k: {w: len(paths) / s for w, s in v.items()} for k, v in seconds.items()}
    ours = np.array(outputs["pyav"])
    report = {
        "clips": len(paths),
        "clip": f"{args.seconds:g} s, {args.size}x{args.size} @ {args.fps} fps H.264 + AAC 16 kHz mono (synthetic world)",
        "work_per_clip": f"<= {args.max_frames} RGB frames at {args.frame_fps:g} fps within {args.max_pixels} px, "
                         f"plus all audio as 16 kHz mono float32",
        # What the last timed pass of our path decoded, summed over the clips.
        "frames_decoded": int(ours[:, 0].sum()),
        "audio_samples_decoded": int(ours[:, 1].sum()),
        "pyav_clips_per_s": {str(w): round(r, 2) for w, r in rate["pyav"].items()},
        "speedup_1_to_2_workers": {k: round(rate[k][2] / rate[k][1], 3) for k in rate},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_cores": os.cpu_count(),
        "pyav": av.__version__,
    }
    if "ffmpeg" in kinds:
        startup = min(_ffmpeg_startup() for _ in range(5))
        theirs = np.array(outputs["ffmpeg"])
        version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        report.update({
            "ffmpeg_cli_clips_per_s": {str(w): round(r, 2) for w, r in rate["ffmpeg"].items()},
            "ratio_to_ffmpeg": {str(w): round(rate["pyav"][w] / rate["ffmpeg"][w], 3) for w in (1, 2)},
            "goal_ratio": 0.8,
            "meets_goal": all(rate["pyav"][w] >= 0.8 * rate["ffmpeg"][w] for w in (1, 2)),
            # What one ffmpeg process costs before it decodes anything (best of 5): a large part of
            # its per-clip time at this clip size, and a cost any pipeline shelling out to it pays.
            "ffmpeg_startup_s": round(startup, 4),
            "ffmpeg_s_per_clip_1_worker": round(seconds["ffmpeg"][1] / len(paths), 4),
            "same_output_sizes": {
                "frames": bool((ours[:, 0] == theirs[:, 0]).all()),
                "max_audio_samples_diff": int(np.abs(ours[:, 1] - theirs[:, 1]).max()),
            },
            "ffmpeg": version,
        })
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
