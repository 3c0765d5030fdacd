"""The ``sightsound`` command line: run the DAG, see what a run committed, open the Prefect UI."""

from __future__ import annotations

import json
import os
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


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(
        None, help="YAML recipe (default: deployments/configs/demo.yaml, the offline demo)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a field, e.g. --set teacher.k=3 (repeatable)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's task logs."),
) -> None:
    """Run the whole DAG: ingest, teacher, vote, verify, corpus, SFT, GRPO, evaluate, report.

    Committed work is reused: running again recomputes nothing that is already done.
    """
    from sightsound_core.config import DEFAULT_RECIPE, ConfigError, load_config

    recipe = recipe or DEFAULT_RECIPE
    overrides = _parse_sets(set_)
    try:
        cfg = load_config(recipe, overrides)  # fail on a bad recipe before any work starts
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    _prefect_env(Path("data"))
    if verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from flows import dag

    n_stages = 9 + len(cfg.evaluate.benchmarks) - (0 if cfg.grpo.enabled else 1)
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        bar = progress.add_task(f"run {cfg.run}: starting Prefect", total=n_stages)

        def on_stage(stage: str, ref) -> None:
            progress.update(bar, advance=1, description=f"run {cfg.run}: {stage} committed")

        dag.STAGE_HOOKS.append(on_stage)
        uris = dag.pipeline(recipe=str(recipe), overrides=overrides)
    elapsed = time.perf_counter() - started
    console.print(f"[green]done[/green] in {elapsed:.1f} s")
    print(f"report: {uris['html']}")
    print(f"        {uris['markdown']}")
    print(f"status: sightsound status {cfg.run}")


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
    set_: list[str] = typer.Option([], "--set", help="Runtime overrides, e.g. --set verify.concurrency=8."),
) -> None:
    """Finish a run that failed or was interrupted: only failed and missing work is redone."""
    from sightsound_core.config import DEFAULT_RECIPE, ConfigError, load_config

    recipe = recipe or DEFAULT_RECIPE
    overrides = {**_parse_sets(set_), "run": run_name}
    try:
        cfg = load_config(recipe, overrides)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    if stage is None:
        run(recipe=recipe, set_=[f"{k}={json.dumps(v)}" for k, v in overrides.items()], verbose=False)
        return
    if stage != "verify":
        console.print(f"[red]--stage {stage}: only verify can be resumed on its own; omit --stage "
                      "to resume the whole DAG[/red]")
        raise typer.Exit(2)
    from sightsound_core.pipeline import open_store
    from sightsound_core.verify import resume_verify

    try:
        ref = resume_verify(cfg.verify, open_store(cfg), run_name)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    statuses = ref.manifest.get("summary", {}).get("statuses", {})
    print(f"verify of run {run_name}: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))


@app.command()
def status(
    run_name: str = typer.Argument(..., metavar="RUN", help="Run name (the recipe's `run`)."),
    recipe: Optional[Path] = typer.Option(
        None, help="Recipe whose store holds the run (default: the demo recipe's store)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """What each stage of a run has committed, failed and quarantined."""
    from sightsound_core.config import DEFAULT_RECIPE, load_config
    from sightsound_core.pipeline import open_store
    from sightsound_core.status import run_status

    cfg = load_config(recipe or DEFAULT_RECIPE)
    rows = run_status(open_store(cfg), run_name)
    if not rows:
        console.print(f"no run named {run_name!r} under {cfg.store.root}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"run {run_name}")
    for col in ("stage", "state", "hash", "shards", "rows", "quarantined", "statuses"):
        table.add_column(col)
    for r in rows:
        statuses = ", ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
        table.add_row(r["stage"], r["state"], r["stage_hash"][:10], str(r["shards"]),
                      str(r["rows"] if r["rows"] is not None else "-"),
                      str(r["quarantined"] if r["quarantined"] is not None else "-"), statuses)
    Console().print(table)


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
