"""The command line on real runs: the whole DAG printing where its report is, resume of failed
verification batches, status."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fakes.verify_world import make_world
from flows.cli import app
from sightsound_core.config import DEFAULT_RECIPE, VerifyConfig
from sightsound_core.schemas import Verdict
from sightsound_core.stage import read_all, read_index, load_ref
from sightsound_core.storage import ObjectStore
from sightsound_core.verify import run_verify


def test_resume_verify_retries_only_the_failed_items(tmp_path, openai_server):
    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=40, samples_per_clip=2, clips_per_shard=20)
    verify = dict(backend="openai", model="fake-audio", samples_per_clip=2)
    runtime = dict(base_url=openai_server.url, api_key_env=None, max_retries=0, timeout_s=5.0,
                   backoff_base_s=0.01, backoff_max_s=0.02)
    openai_server.configure(p500=0.3)
    run_verify(VerifyConfig(**verify, **runtime), store, "r", refs["clips"], refs["samples"], refs["votes"])
    first = Verdict.from_table(read_all(store, load_ref(store, read_index(store, "r")["verify"]["dir"])))
    failed = {(v.clip_id, v.sample_idx) for v in first if v.status == "error"}
    assert failed, "the planted 500s left no error to resume"

    openai_server.configure(p500=0.0)
    openai_server.reset_counters()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"run": "r", "store": {"root": store.root}, "verify": {**verify, **runtime}}))
    result = CliRunner().invoke(app, ["resume", "r", "--stage", "verify", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "error" not in result.output.splitlines()[0].split(":", 1)[1]
    assert f"re-asked: {len(failed)} items" in result.output

    after = Verdict.from_table(read_all(store, load_ref(store, read_index(store, "r")["verify"]["dir"])))
    assert len(after) == len(first) == 80 and not any(v.status == "error" for v in after)
    assert sum(openai_server.requests.values()) == len(failed)
    settled = {(v.clip_id, v.sample_idx): v for v in first if v.status != "error"}
    assert all(v == settled[(v.clip_id, v.sample_idx)] for v in after if (v.clip_id, v.sample_idx) in settled)

    status = CliRunner().invoke(app, ["status", "r", "--recipe", str(recipe), "--json"])
    rows = {r["stage"]: r for r in json.loads(status.output)}
    assert rows["verify"]["state"] == "done" and "error" not in rows["verify"]["statuses"]


def test_resume_refuses_a_stage_it_cannot_resume_alone(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"run": "r", "store": {"root": f"file://{tmp_path}/s"}}))
    result = CliRunner().invoke(app, ["resume", "r", "--stage", "teacher", "--recipe", str(recipe)])
    assert result.exit_code == 2


@pytest.mark.slow
def test_run_prints_where_the_report_is(tmp_path, small_recipe):
    """README command 1 (``sightsound run``), on the demo shrunk to seconds, in a fresh process."""
    repo = Path(__file__).resolve().parents[2]
    recipe = small_recipe(tmp_path / "small.yaml", f"file://{tmp_path}/store")
    assert yaml.safe_load(recipe.read_text())["models"]["student"] == "tiny://qwen2-audio"
    env = dict(os.environ, PYTHONPATH=str(repo), PREFECT_HOME=str(tmp_path / "prefect"),
               SIGHTSOUND_CACHE=os.environ.get("SIGHTSOUND_CACHE", str(tmp_path / "cache")))
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(recipe)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    printed = dict(line.split(": ", 1) for line in out.stdout.splitlines() if line.startswith(("report: ", "status: ")))
    html = printed["report"].strip()
    path = Path(html.removeprefix("file://"))
    assert path.is_file() and path.name == "report.html" and path.is_relative_to(tmp_path / "store")
    assert "<html" in path.read_text().lower()
    markdown = out.stdout.split("report: ", 1)[1].splitlines()[1].strip()
    assert Path(markdown.removeprefix("file://")).is_file()
    assert printed["status"].startswith("sightsound status small")
def _failed_run(tmp_path, server, root):
    """A run at ``root`` whose verify stage holds http_500 errors, with a stage after it."""
    import pyarrow as pa

    from sightsound_core.stage import plan_sources, run_plan

    store = ObjectStore(root)
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=20, samples_per_clip=2, clips_per_shard=10)
    verify = dict(backend="openai", model="fake-audio", samples_per_clip=2, base_url=server.url,
                  api_key_env=None, max_retries=0, timeout_s=5.0)
    server.configure(p500=0.4)
    run_verify(VerifyConfig(**verify), store, "r", refs["clips"], refs["samples"], refs["votes"])
    server.configure(p500=0.0)
    run_plan(store, plan_sources(store, "r", "corpus", {}, [{"n": 0}]), lambda job: (pa.table({"x": [1]}), None))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"run": "r", "store": {"root": f"file://{tmp_path}/elsewhere"},
                                      "verify": verify}))
    return store, recipe


def test_status_and_resume_find_a_run_through_set_and_say_what_to_type_next(tmp_path, openai_server):
    root = f"file://{tmp_path}/store"
    store, recipe = _failed_run(tmp_path, openai_server, root)
    where = ["--recipe", str(recipe), "--set", f"store.root={root}"]
    lost = CliRunner().invoke(app, ["status", "r", "--recipe", str(recipe)])
    assert lost.exit_code == 1 and "no run named 'r'" in lost.output

    status = CliRunner().invoke(app, ["status", "r", *where], env={"COLUMNS": "80"})
    assert status.exit_code == 0, status.output
    table = status.output.split("\nverify:")[0]
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "http_500" in status.output
    assert f"sightsound resume r --stage verify --downstream --recipe {recipe} --set store.root={root}" in status.output

    rows = {r["stage"]: r for r in json.loads(CliRunner().invoke(app, ["status", "r", *where, "--json"]).output)}
    assert rows["verify"]["errors"]["http_500"] == rows["verify"]["summary"]["errors"]["http_500"] > 0

    resumed = CliRunner().invoke(app, ["resume", "r", "--stage", "verify", *where])
    assert resumed.exit_code == 0, resumed.output
    assert f"re-asked: {rows['verify']['errors']['http_500']} items" in resumed.output
    assert "stale now: corpus; run them with:" in resumed.output
    after = {r["stage"]: r for r in json.loads(CliRunner().invoke(app, ["status", "r", *where, "--json"]).output)}
    assert after["corpus"]["stale"] and not after["verify"]["errors"]
    text = CliRunner().invoke(app, ["status", "r", *where], env={"COLUMNS": "80"}).output
    assert "stale" in text and f"sightsound resume r --recipe {recipe} --set store.root={root}" in text


def test_commands_repeat_what_finds_the_run():
    from flows.cli import _command, _run_sets, _store_sets

    sets = ["store.root=s3://b/my runs", "teacher.k=3", "run=x", "verify.concurrency=8"]
    assert _command("status", "x", None, _store_sets(sets)) == "sightsound status x --set 'store.root=s3://b/my runs'"
    assert _command("resume", "x", Path("r.yaml"), _run_sets(sets), "--stage", "verify") == (
        "sightsound resume x --stage verify --recipe r.yaml --set 'store.root=s3://b/my runs' "
        "--set teacher.k=3 --set verify.concurrency=8")
    assert _command("status", "demo", DEFAULT_RECIPE, []) == "sightsound status demo"


def test_resume_help_does_not_call_every_override_runtime():
    text = CliRunner().invoke(app, ["resume", "--help"], env={"COLUMNS": "200"}).output
    assert "Runtime overrides" not in text and "result-changing" in text
