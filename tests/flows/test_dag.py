"""The whole DAG through Prefect on a very small synthetic run: complete, then fully reused."""

import os

from sightsound_core.config import load_config
from sightsound_core.pipeline import open_store
from sightsound_core.stage import read_index
from sightsound_core.status import run_status


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.stat(p).st_mtime_ns
    return out


def test_pipeline_runs_every_stage_then_reuses_all(prefect_harness, tmp_path, small_recipe):
    from flows.dag import pipeline

    root = tmp_path / "store"
    recipe = small_recipe(tmp_path / "small.yaml", f"file://{root}")
    uris = pipeline(recipe=str(recipe))
    cfg = load_config(recipe)
    store = open_store(cfg)

    stages = {r["stage"]: r for r in run_status(store, cfg.run)}
    expected = {"ingest", "teacher", "vote", "verify", "corpus", "sft", "grpo",
                "bench-synthetic-test", "evaluate", "report"}
    assert set(stages) == expected
    assert all(r["state"] == "done" for r in stages.values())
    assert stages["teacher"]["rows"] == 16 * cfg.teacher.k
    assert stages["evaluate"]["rows"] == 3 * 4
    html = store.read_bytes(uris["html"]).decode()
    assert "<table id='accuracy'>" in html and "data:image/png;base64," in html

    data_files = lambda: {p: t for p, t in _files(root).items() if "/_prefect/" not in p and "/_index/" not in p}
    before = data_files()
    index_before = read_index(store, cfg.run)
    pipeline(recipe=str(recipe))
    # Nothing recomputed: no shard, manifest, media or model file was rewritten.
    assert data_files() == before
    assert read_index(store, cfg.run) == index_before
