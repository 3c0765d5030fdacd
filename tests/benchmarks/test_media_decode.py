"""The media-decode benchmark's smoke (our PyAV path; the ffmpeg CLI is not installed here): it
decodes the frames and the audio it claims."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_decodes_every_clips_frames_and_audio(tmp_path):
    out = subprocess.run(
        [sys.executable, "benchmarks/media_decode.py", "--smoke", "--no-ffmpeg", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout)
    assert report["clips"] == 4 == len(list(tmp_path.glob("clips-*/*.mp4")))
    # 1 s clips at 2 teacher frames per second: 2 frames each.
    assert report["frames_decoded"] == 4 * 2
    # 1 s of 16 kHz audio each; AAC may add up to two frames of 1024 samples of padding.
    assert 4 * 16000 <= report["audio_samples_decoded"] <= 4 * (16000 + 2048)
    assert all(rate > 0 for rate in report["pyav_clips_per_s"].values())
