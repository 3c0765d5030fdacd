"""The whole DAG through Prefect on a very small synthetic run: complete, then fully reused."""

import os

import pytest
import yaml

from sightsound_core.config import DEFAULT_RECIPE
from sightsound_core.pipeline import open_store
from sightsound_core.stage import read_index
from sightsound_core.status import run_status


def _small_recipe(tmp_path, root):
    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    data["store"]["root"] = root
    data["ingest"]["synthetic"]["n_clips"] = 24
    data["ingest"]["shard_size"] = 12
    data["sft"].update(max_steps=2, variants=["cot"])
    data["grpo"].update(max_steps=1, num_generations=2, prompts_per_step=1, max_completion_length=8)
    data["evaluate"].update(models=["pretrained", "cot", "grpo"], max_new_tokens=8)
    data["evaluate"]["benchmarks"][0]["ingest"]["synthetic"]["n_clips"] = 8
    path = tmp_path / "small.yaml"
    path.write_text("# Run: sightsound run small.yaml\n" + yaml.safe_dump(data))
    return path


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.stat(p).st_mtime_ns
    return out


def test_pipeline_runs_every_stage_then_reuses_all(prefect_harness, tmp_path):
    from flows.dag import pipeline
    from sightsound_core.config import load_config

    root = tmp_path / "store"
    recipe = _small_recipe(tmp_path, f"file://{root}")
    uris = pipeline(recipe=str(recipe))
    cfg = load_config(recipe)
    store = open_store(cfg)

    stages = {r["stage"]: r for r in run_status(store, cfg.run)}
    expected = {"ingest", "teacher", "vote", "verify", "corpus", "sft", "grpo",
                "bench-synthetic-test", "evaluate", "report"}
    assert set(stages) == expected
    assert all(r["state"] == "done" for r in stages.values())
    assert stages["teacher"]["rows"] == 24 * cfg.teacher.k
    assert stages["evaluate"]["rows"] == 3 * 8
    html = store.read_bytes(uris["html"]).decode()
    assert "<table id='accuracy'>" in html and "data:image/png;base64," in html

    before = _files(root)
    index_before = read_index(store, cfg.run)
    pipeline(recipe=str(recipe))
    after = _files(root)
    # Nothing recomputed: no shard, manifest or model file was rewritten; only the run index.
    changed = [p for p in after if before.get(p) != after[p] and "/_index/" not in p]
    assert changed == []
    assert read_index(store, cfg.run) == index_before
