"""A regular (non-editable) install has its CLI and its default recipe, outside the repository.

The project is copied to a scratch directory, installed with ``pip install --no-deps`` into a fresh
virtual environment that sees this environment's packages through a ``.pth`` line (torch and the
rest are not reinstalled), and used from a directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "sightsound_core", "flows", "tasks")


def _run(cmd: list[str], **kwargs) -> str:
    """stdout of ``cmd``; its stderr in the failure message."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd[:3]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def _fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    # Appended after the venv's own site-packages: what the install puts there wins.
    Path(site, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_regular_install_runs_the_cli_and_finds_the_default_recipe(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    venv = _fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", str(src)],
        env=env, cwd=tmp_path,
    )  # fmt: skip
    shutil.rmtree(src)  # nothing may be read from the copy the wheel was built from

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    help_text = _run([str(venv / "bin" / "sightsound"), "run", "--help"], env=env, cwd=elsewhere)
    assert "recipe" in help_text.lower()
    probe = (
        "import sightsound_core, importlib.resources as r\n"
        "from sightsound_core.config import DEFAULT_RECIPE, load_config\n"
        "print(sightsound_core.__file__)\n"
        "print(DEFAULT_RECIPE)\n"
        "print(sorted(p.name for p in (r.files('sightsound_core') / 'recipes').iterdir()))\n"
        "print(load_config(DEFAULT_RECIPE, environ={}).run, load_config('paper.yaml', environ={}).run)\n"
    )
    out = _run([str(python), "-c", probe], env=env, cwd=elsewhere).splitlines()
    package_file, default_recipe, shipped, runs = out
    assert package_file.startswith(str(venv)), package_file
    assert default_recipe.startswith(str(venv)) and Path(default_recipe).is_file(), default_recipe
    assert {"demo.yaml", "paper.yaml", "folder.yaml"} <= set(eval(shipped))
    assert len(runs.split()) == 2
