"""The GPU suite's wheelhouse suffices: installed offline beside the GPU image's packages only, it
runs both throughput benchmarks through ``benchmarks/gpu/run.sh``.

The GPU image is stood in for by a fresh virtual environment that sees, of this environment's
packages, only those the image has (``benchmarks/gpu/image-packages.txt``) and what they need: no
trl, prefect, pydantic, av, soundfile, soxr. The wheelhouse is built for this Python by
``build_wheelhouse.py`` (it needs the package index), installed with ``pip install --no-index
--no-deps`` by ``run.sh``, and both benchmarks run their CPU smoke. The image's own versions of the
packages the benchmarks touch (``benchmarks/gpu/image-versions.txt``: transformers 5.17, not this
project's 5.23) are installed over the stand-in: the first GPU run failed on exactly that gap.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "benchmarks" / "gpu"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    text = (GPU / "image-packages.txt").read_text()
    return {_norm(w) for line in text.splitlines() if not line.startswith("#") for w in line.split()}


# Not on the image (docs/ARCHITECTURE.md, "Measured baselines"), whatever a newer local version of an image package
# requires (this typer wants pydantic): the stand-in never has them.
NOT_ON_IMAGE = {"trl", "datasets", "prefect", "pydantic", "av", "soundfile", "soxr"}


def wheelhouse_packages() -> set[str]:
    lines = (GPU / "requirements.txt").read_text().splitlines()
    return {_norm(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")}


def closure(names: set[str], exclude: set[str]) -> dict[str, md.Distribution]:
    """The installed distributions among ``names`` and, recursively, what they require, but none
    of ``exclude``."""
    installed = {_norm(d.metadata["Name"]): d for d in md.distributions()}
    found: dict[str, md.Distribution] = {}
    todo = [n for n in names if n in installed]
    while todo:
        name = todo.pop()
        if name in found or name in exclude:
            continue
        found[name] = installed[name]
        for line in installed[name].requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                if _norm(req.name) in installed:
                    todo.append(_norm(req.name))
    return found


def stand_in_site(dest: Path, dists: dict[str, md.Distribution]) -> None:
    """Links to the top-level files and folders of ``dists`` (their packages and metadata)."""
    dest.mkdir(parents=True)
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in dists.values():
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops - {"..", "__pycache__"}:
            if (site / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(site / top)


@pytest.mark.slow
def test_wheelhouse_runs_both_benchmarks_beside_the_image_packages_only(tmp_path):
    wheels = tmp_path / "wheels"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    build = subprocess.run(
        [sys.executable, str(GPU / "build_wheelhouse.py"), "--dest", str(wheels), "--python-version", version],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    assert json.loads(build.stdout)["fits"]

    dists = closure(image_packages(), exclude=NOT_ON_IMAGE | wheelhouse_packages())
    assert "torch" in dists and "transformers" in dists
    # dill (datasets' fingerprints) pickles a module by value unless its path looks installed.
    stand_in = tmp_path / "image" / "site-packages"
    stand_in_site(stand_in, dists)
    pinned = tmp_path / "image" / "pinned"
    pins = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", "--target", str(pinned),
         "-r", str(GPU / "image-versions.txt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert pins.returncode == 0, pins.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "image.pth").write_text(f"{pinned}\n{stand_in}\n")
    # pip itself is no image package here but is one there: give the venv this one.
    pip_dir = Path(md.distribution("pip").locate_file("pip"))
    Path(purelib, "pip").symlink_to(pip_dir)

    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        OUT=str(out), PYTHON=str(python), WHEELHOUSE=str(wheels), SITE=str(tmp_path / "suite" / "site-packages"),
        TEACHER_ARGS="--smoke --repeats 1", TRAIN_ARGS="--smoke",
        SIGHTSOUND_CACHE=str(tmp_path / "cache"),  # the tiny models are built there, as on the device
    )  # fmt: skip
    done = subprocess.run([str(GPU / "run.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    teacher = json.loads((out / "teacher_throughput.json").read_text())
    train = json.loads((out / "train_throughput.json").read_text())
    assert teacher["stock_generate"]["generated_tokens"] > 0
    assert train["batch_sizes"] and not train["grpo"].get("oom")
