"""A folder or bucket of unlabeled videos: each scheduled run ingests only the files that are new."""

from __future__ import annotations

import os
import uuid

import pytest
from mediafiles import write_av

from sightsound_core.config import IngestConfig
from sightsound_core.datasets import ingest as ingest_mod
from sightsound_core.datasets.folder import PLACEHOLDER_OPTIONS, ledger_uri, read_ledger
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
    ledger = ledger_uri(cfg, file_store, "r", "ingest")
    assert [len(files) for files in read_ledger(file_store, ledger)] == [2, 1, 2]
    parts = [n for n in file_store.ls(ledger) if n.startswith("part-")]
    assert parts == ["part-000000.parquet", "part-000001.parquet"]  # appended, never rewritten


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
    ledger = read_ledger(s3_store, ledger_uri(cfg, s3_store, "r", "ingest"))
    stamps = [f["stamp"] for files in ledger for f in files]
    assert all(len(s) == 32 for s in stamps)  # S3 ETags (MD5 hex), not mtimes


def test_limit_caps_the_files_ingested_in_total(tmp_path, file_store):
    root = tmp_path / "corpus"
    for i in range(3):
        write_av(root / f"{i}.mp4")
    cfg = IngestConfig(dataset="folder", path=str(root), limit=2)
    assert len(_clips(file_store, run_ingest(cfg, file_store, "r"))) == 2
    write_av(root / "3.mp4")
    assert len(_clips(file_store, run_ingest(cfg, file_store, "r"))) == 2


def _span(item: str) -> tuple[float, float]:
    start, end = item.rsplit("#t=", 1)[1].split(",")
    return float(start), float(end)


def test_long_video_becomes_windows_and_every_second_is_accounted_for(tmp_path, file_store):
    from fakes.longvideo import write_long_av

    root = tmp_path / "corpus"
    write_long_av(root / "talks" / "long.mp4", 300.0, [(2, 4), (35, 38), (150, 151.5), (291, 299)])
    cfg = IngestConfig(dataset="folder", path=str(root))
    ref = run_ingest(cfg, file_store, "r")
    clips = Clip.from_table(read_all(file_store, ref))
    ids = [c.clip_id for c in clips]
    assert ids == [f"folder:talks/long.mp4#t={a},{a + 10}" for a in (0, 30, 150, 290)]
    clip = clips[1]
    assert clip.video_uri == clip.audio_uri == f"file://{root}/talks/long.mp4#t=30,40"
    assert clip.duration_s == 10.0 and (clip.meta_dict()["start_s"], clip.meta_dict()["end_s"]) == (30, 40)

    skipped = _quarantined(file_store, ref)
    assert set(skipped.values()) == {"silent_window"} and len(skipped) == 26
    spans = sorted(_span(i) for i in [*ids, *skipped])
    assert spans[0][0] == 0 and spans[-1][1] == 300
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap

    again = run_ingest(cfg, file_store, "r2")
    assert [c.clip_id for c in Clip.from_table(read_all(file_store, again))] == ids


def test_window_cap_tail_and_file_limit(tmp_path, file_store):
    from fakes.longvideo import write_long_av

    root = tmp_path / "corpus"
    write_long_av(root / "a.mp4", 45.0, [(0, 45)])
    write_long_av(root / "b.mp4", 25.5, [(0, 25.5)])
    windows = {"max_per_video": 2, "min_s": 2.0}
    cfg = IngestConfig(dataset="folder", path=str(root), windows=windows, limits={"max_file_duration_s": 40})
    ref = run_ingest(cfg, file_store, "r")
    assert _clips(file_store, ref) == ["folder:b.mp4#t=0,10", "folder:b.mp4#t=10,20"]
    assert _quarantined(file_store, ref) == {"folder:a.mp4": "duration_too_long", "folder:b.mp4#t=20,25.5": "over_window_cap"}

    cfg = IngestConfig(dataset="folder", path=str(root), windows={"min_s": 6.0})
    ref = run_ingest(cfg, file_store, "r")
    assert _quarantined(file_store, ref) == {"folder:a.mp4#t=40,45": "short_window",
                                             "folder:b.mp4#t=20,25.5": "short_window"}
    assert len(_clips(file_store, ref)) == 6
    with pytest.raises(ValueError, match="max_duration_s"):
        IngestConfig(dataset="folder", path=str(root), limits={"max_duration_s": 5})


def test_doctests():
    import doctest

    from sightsound_core.datasets import folder
    from sightsound_core.media import decode

    assert doctest.testmod(folder).failed == 0 and doctest.testmod(decode).failed == 0


def test_incremental_run_reads_and_writes_only_what_is_new(tmp_path, file_store, screened, monkeypatch):
    root = tmp_path / "corpus"
    for i in range(6):
        write_av(root / f"{i}.mp4")
    cfg = IngestConfig(dataset="folder", path=str(root), shard_size=2, page_size=4)
    first = run_ingest(cfg, file_store, "r")
    old = {u: os.stat(file_store.local_path(u)).st_mtime_ns for u in first.shards}

    write_av(root / "6.mp4")
    read, written = [], []
    real_read, real_write = file_store.read_table, file_store.write_table
    monkeypatch.setattr(file_store, "read_table", lambda uri, *a: read.append(uri) or real_read(uri, *a))
    monkeypatch.setattr(file_store, "write_table", lambda uri, t: written.append(uri) or real_write(uri, t))
    screened.clear()
    second = run_ingest(cfg, file_store, "r")
    assert screened == ["6.mp4"] and second.shards[:3] == first.shards and len(second.shards) == 4
    assert {u: os.stat(file_store.local_path(u)).st_mtime_ns for u in first.shards} == old
    new_shard = second.shards[3]
    assert [u for u in read if "/shard-" in u] == [new_shard]  # old shards' entries come from the manifest
    assert [u.rsplit("/", 1)[1] for u in written] == ["part-000001.parquet", "shard-00003.parquet"]
