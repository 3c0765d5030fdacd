"""A folder or bucket of unlabeled videos: each scheduled run ingests only the files that are new."""

from __future__ import annotations

import os
import uuid

import pytest
from mediafiles import write_av

from sightsound_core.config import IngestConfig
from sightsound_core.datasets import ingest as ingest_mod
from sightsound_core.datasets.folder import PLACEHOLDER_OPTIONS, ledger_uri
from sightsound_core.datasets.ingest import run_ingest
from sightsound_core.schemas import Clip, Quarantine
from sightsound_core.stage import read_all


@pytest.fixture
def screened(monkeypatch):
    """The files ingest opened, in order."""
    calls: list[str] = []
    real = ingest_mod.screen_media
    monkeypatch.setattr(
        ingest_mod, "screen_media", lambda uri, *a, **k: calls.append(uri.rsplit("/", 1)[1]) or real(uri, *a, **k)
    )
    return calls


def _clips(store, ref):
    return [c.clip_id for c in Clip.from_table(read_all(store, ref))] if ref.shards else []


def _quarantined(store, ref):
    rows = []
    for uri in ref.shards:
        q = uri.replace("/shard-", "/quarantine-")
        if store.exists(q):
            rows += Quarantine.from_table(store.read_table(q))
    return {r.input: r.reason for r in rows}


def test_each_run_ingests_only_new_files_as_new_shards(tmp_path, file_store, screened):
    root = tmp_path / "corpus"
    for name in ("a.mp4", "b.mkv", "sub/c.mp4"):
        write_av(root / name)
    (root / "notes.txt").write_text("not listed")
    cfg = IngestConfig(dataset="folder", path=str(root), shard_size=2)

    first = run_ingest(cfg, file_store, "r")
    assert _clips(file_store, first) == ["folder:a.mp4", "folder:b.mkv", "folder:sub/c.mp4"]
    assert len(first.shards) == 2 and sorted(screened) == ["a.mp4", "b.mkv", "c.mp4"]

    screened.clear()
    same = run_ingest(cfg, file_store, "r")
    assert screened == [] and same.manifest == first.manifest

    write_av(root / "d.mp4")
    write_av(root / "sub" / "e.mp4")
    second = run_ingest(cfg, file_store, "r")
    assert screened == ["d.mp4", "e.mp4"]
    assert second.shards[:2] == first.shards and len(second.shards) == 3
    assert second.manifest["shards"][:2] == first.manifest["shards"]
    assert _clips(file_store, second)[3:] == ["folder:d.mp4", "folder:sub/e.mp4"]
    ledger = file_store.read_json(ledger_uri(cfg, file_store, "r", "ingest"))
    assert [len(s["files"]) for s in ledger["shards"]] == [2, 1, 2]


def test_unlabeled_clip_carries_a_placeholder_question(tmp_path, file_store):
    write_av(tmp_path / "v" / "x.mp4", seconds=1.5)
    ref = run_ingest(IngestConfig(dataset="folder", path=str(tmp_path / "v")), file_store, "r")
    (clip,) = Clip.from_table(read_all(file_store, ref))
    assert clip.label is None and clip.options == PLACEHOLDER_OPTIONS and clip.source == "folder"
    assert clip.meta_dict()["needs_questions"] is True and abs(clip.duration_s - 1.5) < 0.1
    assert clip.video_uri == clip.audio_uri == f"file://{tmp_path}/v/x.mp4"


def test_changed_files_symlinks_and_half_uploads(tmp_path, file_store):
    root = tmp_path / "corpus"
    write_av(root / "a.mp4")
    (root / "partial.mp4").write_bytes(b"")  # still being copied when the run lists the folder
    os.symlink(write_av(tmp_path / "outside.mp4"), root / "escape.mp4")
    cfg = IngestConfig(dataset="folder", path=str(root))
    first = run_ingest(cfg, file_store, "r")
    assert _clips(file_store, first) == ["folder:a.mp4"]
    assert _quarantined(file_store, first) == {
        "folder:partial.mp4": "zero_byte_file", "folder:escape.mp4": "path_escapes_root",
    }

    write_av(root / "partial.mp4")  # the copy finished: the earlier version never became a clip
    write_av(root / "a.mp4", seconds=2.0)  # a clip already exists for it: a second would clash
    second = run_ingest(cfg, file_store, "r")
    assert _clips(file_store, second) == ["folder:a.mp4", "folder:partial.mp4"]
    assert _quarantined(file_store, second) == {
        "folder:partial.mp4": "zero_byte_file",
        "folder:escape.mp4": "path_escapes_root",
        "folder:a.mp4": "changed_since_ingest",
    }


def test_bucket_listing_uses_etags(s3_store, tmp_path):
    local = tmp_path / "src"
    for name in ("one.mp4", "two.mp4"):
        write_av(local / name)
    prefix = s3_store.root.rsplit("/", 1)[0] + f"/videos-{uuid.uuid4().hex[:6]}"
    s3_store.fs.put(str(local) + "/", prefix.split("://", 1)[1], recursive=True)
    cfg = IngestConfig(dataset="folder", path=prefix, shard_size=8)
    first = run_ingest(cfg, s3_store, "r")
    assert _clips(s3_store, first) == ["folder:one.mp4", "folder:two.mp4"]

    s3_store.fs.put_file(str(write_av(local / "three.mp4")), prefix.split("://", 1)[1] + "/three.mp4")
    second = run_ingest(cfg, s3_store, "r")
    assert second.shards[0] == first.shards[0] and len(second.shards) == 2
    assert _clips(s3_store, second)[2:] == ["folder:three.mp4"]
    ledger = s3_store.read_json(ledger_uri(cfg, s3_store, "r", "ingest"))
    stamps = [f["stamp"] for s in ledger["shards"] for f in s["files"]]
    assert all(len(s) == 32 for s in stamps)  # S3 ETags (MD5 hex), not mtimes


def test_limit_caps_the_files_ingested_in_total(tmp_path, file_store):
    root = tmp_path / "corpus"
    for i in range(3):
        write_av(root / f"{i}.mp4")
    cfg = IngestConfig(dataset="folder", path=str(root), limit=2)
    assert len(_clips(file_store, run_ingest(cfg, file_store, "r"))) == 2
    write_av(root / "3.mp4")
    assert len(_clips(file_store, run_ingest(cfg, file_store, "r"))) == 2
