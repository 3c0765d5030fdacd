"""Build, on a machine with a package index, the wheels the GPU suite needs that the GPU image lacks.

    python benchmarks/gpu/build_wheelhouse.py                        # .whl/, for the GPU's Python 3.12
    python benchmarks/gpu/build_wheelhouse.py --python-version 3.11  # for a local check

Downloads exactly ``requirements.txt`` (pinned, ``--no-deps``, binary wheels for manylinux x86-64)
into ``--dest``, after removing the wheels already there (two versions of one package stop an
install). The project itself travels as the working tree, not as a wheel: the benchmarks put the
checkout first on ``sys.path``. Fails when the wheels and the working tree together exceed the
device tool's 64 MiB. Prints one JSON object: each wheel and its size, and the totals.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LIMIT_BYTES = 64 << 20  # the device tool's working tree + carry limit
PLATFORMS = [
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
    "manylinux2014_x86_64", "manylinux1_x86_64",
]  # fmt: skip


def tree_bytes() -> int:
    """Bytes of what the device tool sends besides the carry: tracked and untracked-not-ignored."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def build(dest: Path, python_version: str) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp",
        *[arg for p in PLATFORMS for arg in ("--platform", p)],
        "-d", str(dest), "-r", str(HERE / "requirements.txt"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheels = {w.name: w.stat().st_size for w in sorted(dest.glob("*.whl"))}
    total = sum(wheels.values())
    tree = tree_bytes()
    return {
        "dest": str(dest),
        "python_version": python_version,
        "wheels": wheels,
        "wheel_mib": round(total / 2**20, 2),
        "tree_mib": round(tree / 2**20, 2),
        "limit_mib": LIMIT_BYTES >> 20,
        "fits": total + tree <= LIMIT_BYTES,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="default: .whl/ (ignored by git)")
    parser.add_argument("--python-version", default="3.12", help="the GPU image's Python (default 3.12)")
    args = parser.parse_args(argv)
    result = build(args.dest, args.python_version)
    print(json.dumps(result, indent=2))
    if not result["fits"]:
        raise SystemExit(f"wheels + working tree exceed {result['limit_mib']} MiB")
    return result


if __name__ == "__main__":
    main()
