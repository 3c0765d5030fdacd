"""The ``sightsound`` command line: run the DAG, see what a run committed, open the Prefect UI."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="SightSound-R1: distil audio reasoning from a vision-language teacher into an audio "
    "LM student, as a resumable Prefect DAG. Start with `sightsound run` (the offline demo: "
    "synthetic world, tiny models, local files) and `sightsound status demo`.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _prefect_env(data_dir: Path) -> None:
    """Local Prefect defaults; anything already set in the environment wins."""
    os.environ.setdefault("PREFECT_HOME", str((data_dir / ".prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # Keep library chatter (weight-loading bars, deprecation notices) out of the progress display.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")


def _parse_sets(values: list[str]) -> dict[str, object]:
    import yaml

    out = {}
    for item in values:
        if "=" not in item:
            raise typer.BadParameter(f"--set wants key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


SET_HELP = "Override a recipe field, e.g. --set teacher.k=3 (repeatable)."
FIND_HELP = (
    "The overrides the run was made with (repeatable), e.g. --set store.root=s3://bucket/runs: "
    "store.* ones are needed to find the run; result-changing ones (teacher.k=3) must be "
    "repeated too, or the stages they change are new stages, not a resume; runtime ones "
    "(verify.concurrency=8) may differ."
)


def _command(verb: str, run_name: str, recipe: Optional[Path], sets: list[str], *extra: str) -> str:
    """The exact command line that reaches run ``run_name`` again: ``--recipe`` when it is not
    the demo's, and the given ``--set`` overrides, quoted for a POSIX shell."""
    from sightsound_core.config import DEFAULT_RECIPE, recipe_path

    words = ["sightsound", verb, run_name, *extra]
    if recipe is not None and recipe_path(recipe).resolve() != DEFAULT_RECIPE.resolve():
        words += ["--recipe", str(recipe)]
    for item in sets:
        words += ["--set", item]
    return " ".join(shlex.quote(w) for w in words)


def _store_sets(sets: list[str]) -> list[str]:
    """The overrides that say where a run is stored (all ``status`` needs besides the recipe)."""
    return [s for s in sets if s.split("=", 1)[0].strip().split(".")[0] == "store"]


def _run_sets(sets: list[str]) -> list[str]:
    """The overrides a resume repeats: all but the run name, which is its argument."""
    return [s for s in sets if s.split("=", 1)[0].strip() != "run"]


def _load(recipe: Optional[Path], overrides: dict[str, object]):
    from sightsound_core.config import DEFAULT_RECIPE, ConfigError, load_config

    try:
        return load_config(recipe or DEFAULT_RECIPE, overrides)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)


def _errors_line(errors: dict[str, int]) -> str:
    """``12 (http_429 10, timeout 2)``: a count, then its kinds, most frequent first."""
    kinds = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{sum(errors.values())} (" + ", ".join(f"{k} {n}" for k, n in kinds) + ")"


def _next_steps(rows: list[dict], run_name: str, recipe: Optional[Path], sets: list[str]) -> list[str]:
    """What to type next, from a run's status rows: lines for the end of a run and for status."""
    resume = _command("resume", run_name, recipe, _run_sets(sets))
    lines = []
    by_stage = {r["stage"]: r for r in rows}
    verify = by_stage.get("verify")
    if verify and verify["state"] in ("repair stopped", "incomplete", "partial"):
        lines.append(f"verify is {verify['state']}; finish it with:\n  "
                     + _command("resume", run_name, recipe, _run_sets(sets), "--stage", "verify"))
    elif verify and verify["state"] == "repairing":
        lines.append("verify is being repaired; run status again when it is done")
    elif verify and verify["errors"]:
        retry = {k: n for k, n in verify["errors"].items() if not k.startswith("media:")}
        if retry:
            lines.append(f"verify: {sum(retry.values())} requests failed; re-ask only those with:\n  "
                         + _command("resume", run_name, recipe, _run_sets(sets), "--stage", "verify",
                                    "--downstream"))
    teacher = by_stage.get("teacher")
    if teacher and teacher["errors"]:
        lines.append("teacher: failed clips are kept as error rows (see `--json`); a resume does "
                     "not ask for them again")
    stale = [r["stage"] for r in rows if r["stale"]]
    if stale:
        lines.append(f"stale (an input changed since): {', '.join(stale)}; recompute them with:\n  {resume}")
    return lines


def stage_count(cfg) -> int:
    """The stages a run of ``cfg`` commits: the progress bar's total."""
    from sightsound_core.dag import stages

    return len(stages(cfg))


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(
        None, help="YAML recipe: a path, or a shipped recipe's name (default: demo.yaml, the offline demo)."
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's task logs."),
) -> None:
    """Run the whole DAG: ingest, teacher, vote, verify, corpus, SFT, GRPO, evaluate, report.

    Committed work is reused: running again recomputes nothing that is already done.
    """
    from sightsound_core.config import DEFAULT_RECIPE
    from sightsound_core.pipeline import open_store
    from sightsound_core.status import run_status

    cfg = _load(recipe, _parse_sets(set_))  # fail on a bad recipe before any work starts
    _prefect_env(Path("data"))
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.prefect_server import temporary_server

    status_cmd = _command("status", cfg.run, recipe, _store_sets(set_))
    resume_cmd = _command("resume", cfg.run, recipe, _run_sets(set_))
    n_stages = stage_count(cfg)
    started = time.perf_counter()
    failure: Exception | None = None
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        bar = progress.add_task(f"run {cfg.run}: starting Prefect", total=n_stages)

        def on_stage(stage: str, ref) -> None:
            progress.update(bar, advance=1, description=f"run {cfg.run}: {stage} committed")

        # The server is this process's child and dies with it, even on SIGKILL.
        with temporary_server(Path(os.environ["PREFECT_HOME"])):
            from flows import dag

            dag.STAGE_HOOKS.append(on_stage)
            try:
                uris = dag.pipeline(recipe=str(recipe or DEFAULT_RECIPE), overrides=_parse_sets(set_))
            except Exception as exc:  # reported below with what to type next
                failure = exc
            finally:
                dag.STAGE_HOOKS.remove(on_stage)
    elapsed = time.perf_counter() - started
    rows = run_status(open_store(cfg), cfg.run)
    if failure is not None:
        console.print(f"[red]run {cfg.run} failed[/red] after {elapsed:.1f} s: "
                      f"{type(failure).__name__}: {failure}")
    else:
        console.print(f"[green]done[/green] in {elapsed:.1f} s")
        print(f"report: {uris['html']}")
        print(f"        {uris['markdown']}")
    for r in rows:
        if r["errors"]:
            print(f"errors: {r['stage']} {_errors_line(r['errors'])}")
    if not any(r["errors"] for r in rows):
        print("errors: none")
    for line in _next_steps(rows, cfg.run, recipe, set_):
        print(f"next:   {line}")
    print(f"status: {status_cmd}")
    print(f"resume: {resume_cmd}")
    if failure is not None:
        raise typer.Exit(1)


@app.command()
def resume(
    run_name: str = typer.Argument(..., metavar="RUN", help="Run name (the recipe's `run`)."),
    recipe: Optional[Path] = typer.Option(
        None, help="The recipe the run was made with (default: the demo recipe)."
    ),
    stage: Optional[str] = typer.Option(
        None, help="Only this stage (verify: re-verify its error rows and uncommitted shards, "
        "without Prefect). Default: the whole DAG, recomputing only what is not committed."
    ),
    downstream: bool = typer.Option(
        False, "--downstream", help="With --stage verify: then run the stages it made stale "
        "(corpus, training, evaluation, report), reusing everything else."
    ),
    set_: list[str] = typer.Option([], "--set", help=FIND_HELP),
) -> None:
    """Finish a run that failed or was interrupted: only failed and missing work is redone."""
    cfg = _load(recipe, {**_parse_sets(set_), "run": run_name})
    sets = [*_run_sets(set_), f"run={run_name}"]
    if stage is None:
        run(recipe=recipe, set_=sets, verbose=False)
        return
    if stage != "verify":
        console.print(f"[red]--stage {stage}: only verify can be resumed on its own; omit --stage "
                      "to resume the whole DAG[/red]")
        raise typer.Exit(2)
    from sightsound_core.pipeline import open_store
    from sightsound_core.status import run_status
    from sightsound_core.verify import read_verdicts, resume_verify, verdict_changes

    store = open_store(cfg)
    before = read_verdicts(store, run_name)
    try:
        ref = resume_verify(cfg.verify, store, run_name)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    changes = verdict_changes(before, read_verdicts(store, run_name))
    statuses = ref.manifest.get("summary", {}).get("statuses", {})
    print(f"verify of run {run_name}: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    moved = ", ".join(f"{k} {n}" for k, n in sorted(changes["changed"].items())) or "none"
    print(f"re-asked: {changes['re_asked']} items; committed for the first time: {changes['new']} items; "
          f"verdicts changed: {moved}")
    rows = run_status(store, run_name)
    errors = next((r["errors"] for r in rows if r["stage"] == "verify"), {})
    if errors:
        print(f"errors: verify {_errors_line(errors)}")
    stale = [r["stage"] for r in rows if r["stale"]]
    if downstream:
        run(recipe=recipe, set_=sets, verbose=False)
    elif stale:
        print(f"stale now: {', '.join(stale)}; run them with:")
        print("  " + _command("resume", run_name, recipe, _run_sets(set_), "--stage", "verify", "--downstream"))
    else:
        print("stale now: none")


@app.command()
def status(
    run_name: str = typer.Argument(..., metavar="RUN", help="Run name (the recipe's `run`)."),
    recipe: Optional[Path] = typer.Option(
        None, help="Recipe whose store holds the run (default: the demo recipe's store)."
    ),
    set_: list[str] = typer.Option([], "--set", help=FIND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """What each stage of a run has committed, failed and quarantined, and what to do next."""
    from sightsound_core.pipeline import open_store
    from sightsound_core.status import run_status

    cfg = _load(recipe, {**_parse_sets(set_), "run": run_name})
    rows = run_status(open_store(cfg), run_name)
    if not rows:
        console.print(f"no run named {run_name!r} under {cfg.store.root}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"run {run_name}")
    for col, justify in (("stage", "left"), ("state", "left"), ("shards", "right"), ("rows", "right"),
                         ("counts", "left"), ("errors", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        state = "stale" if r["stale"] else r["state"]
        rows_cell = str(r["rows"]) if r["rows"] is not None else (f"{r['saved']} saved" if r["saved"] else "-")
        counts = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
        errors = " ".join(f"{k}:{v}" for k, v in sorted(r["errors"].items(), key=lambda kv: -kv[1]))
        table.add_row(r["stage"], state, str(r["shards"]), rows_cell, counts, errors)
    out = Console()
    out.print(table)
    for line in _next_steps(rows, run_name, recipe, set_):
        out.print(line, soft_wrap=True, highlight=False, markup=False)


@app.command()
def ui(
    port: int = typer.Option(4200, help="Port for the Prefect server."),
    database_url: Optional[str] = typer.Option(
        None, help="SQLAlchemy URL (default: SQLite under PREFECT_HOME); e.g. postgresql+asyncpg://…"
    ),
) -> None:
    """Start a local Prefect server with its UI, and print its URL (Ctrl-C stops it)."""
    _prefect_env(Path("data"))
    env = dict(os.environ)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    url = f"http://127.0.0.1:{port}"
    print(f"Prefect UI: {url}")
    print(f"Point runs at it with: export PREFECT_API_URL={url}/api")
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command()
def plan(
    recipe: Optional[Path] = typer.Argument(
        None, help="A recipe to plan: its models, K, steps and corpus (a folder is listed and a "
        "sample of its videos probed). Without one, only the --set inputs count."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="An input, e.g. --set clips=500000 --set gpus=16 (repeatable); "
        "see `sightsound plan --show-inputs`. With a recipe, these win over what it says."
    ),
    workers: int = typer.Option(
        1, min=1, help="With a recipe: GPU workers, each with the teacher's tensor-parallel GPUs."
    ),
    sample: int = typer.Option(50, min=1, help="With a folder recipe: videos probed for windows."),
    show_inputs: bool = typer.Option(False, "--show-inputs", help="List every input and default."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Estimate a run before starting it: windows, GPU-hours per stage, API calls and cost, wall time."""
    from sightsound_core.capacity import CapacityInputs, estimate, plan_recipe
    from sightsound_core.config import ConfigError, load_config

    if show_inputs:
        for name, field in CapacityInputs.model_fields.items():
            print(f"{name} = {field.default!r}  {field.description or ''}")
        return
    try:
        sets = _parse_sets(set_)
        if recipe is not None:
            from sightsound_core.pipeline import open_store

            cfg = load_config(recipe)
            planned = plan_recipe(cfg, open_store(cfg), workers, sample, sets)
        else:
            inputs = CapacityInputs.model_validate(sets)
            planned = {"inputs": inputs.model_dump(), "estimate": estimate(inputs)}
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(planned, indent=2))
        return
    inputs, result = planned["inputs"], planned["estimate"]
    if "corpus" in planned:
        c = planned["corpus"]
        console.print(", ".join(f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v}"
                                for k, v in c.items()))
    table = Table(title=f"{inputs['clips']:,} questions, K={inputs['k']}, {inputs['gpus']} GPUs")
    for col in ("stage", "GPU-hours", "wall hours", "GPU cost", "API calls", "API cost"):
        table.add_column(col, justify="right")
    for name, r in result.items():
        table.add_row(name, f"{r['gpu_hours']:,}", f"{r['wall_hours']:,}", f"{r['gpu_cost']:,}",
                      f"{r.get('api_calls', '')}", f"{r.get('api_cost', '')}")
    Console().print(table)


if __name__ == "__main__":
    app()
