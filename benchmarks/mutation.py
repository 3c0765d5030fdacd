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
_CASE_BLIND = "the pattern is searched with re.IGNORECASE, so upper-casing its letters matches the same text"
_SAME_SHIFT = ("every option's spans move by the same offset, so which span lies inside which is unchanged, "
               "and only that is read")
_READ_BY_DEFAULT = "fsspec's open (local and s3fs) defaults to mode 'rb'"
_NAMES_ONLY = "fsspec's local and s3fs ls default to detail=False and read None as False"
EQUIVALENT: dict[str, str] = {
    "sightsound_core.answers.x__named_option__mutmut_9": (
        "the empty-option guard never decides: both callers pass normalized, non-empty text (match_option "
        "returns on empty text and reads a letter followed by punctuation alone as the bare letter), whose "
        "padded form never holds two adjacent spaces, so an empty option's pattern '(?=  )' finds nothing"),
    "sightsound_core.answers.x__named_option__mutmut_10": _SAME_SHIFT,
    "sightsound_core.answers.x__named_option__mutmut_11": _SAME_SHIFT,
    "sightsound_core.answers.x_parse_response__mutmut_33": _CASE_BLIND,
    "sightsound_core.answers.x_parse_response__mutmut_64": _CASE_BLIND,
    "sightsound_core.answers.x_parse_response__mutmut_74": _CASE_BLIND,
    "sightsound_core.evaluation.scoring.x_score_option__mutmut_8": (
        "match_option returns None for text that normalizes to nothing, the None the guard returns for ''"),
    **{f"sightsound_core.stage.x_compute_stage_hash__mutmut_{n}": (
        "a renamed key of the hashed payload leaves the hash a deterministic function of stage, config, "
        "upstream and code that tells apart exactly what the original does; directories are only ever "
        "found by recomputing it") for n in range(5, 13)},
    "sightsound_core.stage.x__shard_fingerprint_meta__mutmut_4": "ObjectStore.open's mode defaults to 'rb'",
    "sightsound_core.stage.x_is_committed__mutmut_13": (
        "an input fingerprint is a hex digest, so a shard without one fails the comparison whether the "
        "default decodes to '' or 'XXXX'"),
    "sightsound_core.stage.x__file_sha__mutmut_3": (
        "a shard's file fingerprint is only compared with fingerprints the same function made (manifest "
        "entries, the input fingerprints of downstream shards); 17 hex digits tell the same files apart as 16"),
    "sightsound_core.stage.x_finalize__mutmut_40": (
        "a reused manifest entry is found by its shard URI, which spells the shard's index, so the entry's "
        "index already equals job.index"),
    "sightsound_core.storage.xǁObjectStoreǁread_bytes__mutmut_4": _READ_BY_DEFAULT,
    "sightsound_core.storage.xǁObjectStoreǁread_table__mutmut_4": _READ_BY_DEFAULT,
    "sightsound_core.storage.xǁObjectStoreǁwrite_table__mutmut_9": "pyarrow reads compression names in any case",
    "sightsound_core.storage.xǁObjectStoreǁls__mutmut_5": _NAMES_ONLY,
    "sightsound_core.storage.xǁObjectStoreǁls__mutmut_7": _NAMES_ONLY,
    "sightsound_core.storage.xǁObjectStoreǁls__mutmut_12": "basename does not read leading slashes",
}


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
