"""Mutation check of the pure core modules: how many planted bugs their default-tier tests catch.

    .venv/bin/pip install -e ".[mutation]"
    .venv/bin/python benchmarks/mutation.py                      # the six modules of [tool.mutmut]
    .venv/bin/python benchmarks/mutation.py --only sightsound_core/verdicts.py

mutmut (pinned in the ``mutation`` extra, configured in pyproject's ``[tool.mutmut]``) mutates each
module's functions and runs the tests that own it against every mutant, in a scratch copy of the
repository so that its ``mutants/`` folder never lands in the worktree. Prints one JSON object:
per module, mutants, killed, survived (by name), equivalent mutants left out (by name, with the
reason) and the kill rate ``killed / (mutants - equivalent)``; goal >= 0.9 per module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.9
KILLED = {1, 3}  # mutmut: a failing test run, or pytest's internal error on the mutant

# Mutants no test can kill because they do not change behaviour, with the reason.
EQUIVALENT: dict[str, str] = {}


def copy_repository(target: Path) -> None:
    """The files mutmut needs: the package, the tests, pyproject."""
    for name in ("sightsound_core", "tests"):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="module paths (default: [tool.mutmut] only_mutate)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="leave the scratch copy and print where")
    args = parser.parse_args()

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    modules = args.only or config["only_mutate"]
    work = Path(tempfile.mkdtemp(prefix="sightsound-mutation-"))
    copy_repository(work)
    if args.only:
        text = (work / "pyproject.toml").read_text()
        listed = "only_mutate = [\n" + "".join(f'    "{m}",\n' for m in config["only_mutate"]) + "]"
        assert listed in text, "pyproject's only_mutate is not in the expected layout"
        (work / "pyproject.toml").write_text(text.replace(listed, f"only_mutate = {json.dumps(modules)}"))
    env = dict(os.environ, PYTHONPATH=str(work))
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)],
                         cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        sys.exit(f"mutmut failed ({run.returncode}): {run.stderr[-4000:]}")

    report: dict[str, dict] = {}
    for module in modules:
        meta = json.loads((work / "mutants" / (module + ".meta")).read_text())
        codes = meta["exit_code_by_key"]
        equivalent = {m: EQUIVALENT[m] for m in codes if m in EQUIVALENT}
        counted = {m: c for m, c in codes.items() if m not in equivalent}
        killed = sum(c in KILLED for c in counted.values())
        report[module] = {
            "mutants": len(codes),
            "killed": killed,
            "survived": sorted(m for m, c in counted.items() if c not in KILLED),
            "equivalent": equivalent,
            "kill_rate": round(killed / len(counted), 3) if counted else None,
        }
    total = sum(r["killed"] for r in report.values())
    counted_all = sum(r["mutants"] - len(r["equivalent"]) for r in report.values())
    print(json.dumps({
        "tool": "mutmut 3.8.1",
        "modules": report,
        "kill_rate": round(total / counted_all, 3) if counted_all else None,
        "goal": GOAL,
        "goal_met": all(r["kill_rate"] is not None and r["kill_rate"] >= GOAL for r in report.values()),
    }, indent=2))
    if args.keep:
        print(f"scratch copy: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
