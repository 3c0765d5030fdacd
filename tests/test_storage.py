import multiprocessing as mp
import os
import signal
import time

import pyarrow as pa
import pytest

from sightsound_core.schemas import (
    ALL_RECORDS, Clip, GRPOExample, Prediction, Quarantine, SFTExample, TeacherSample, Verdict, Vote,
)
from sightsound_core.storage import ObjectStore

SAMPLES = {
    Clip: Clip("s:1", "synthetic", "train", "file:///v.mp4", "file:///v.mp4", 2.0, "Which?",
               ["a", "b"], "a", "visual", "which_sounds", '{"x": 1}'),
    TeacherSample: TeacherSample("s:1", 0, "<think>t</think><answer>a</answer>", "t", "a", "ok",
                                 "stop", 10, 5, 0.1, "sim", "m"),
    Vote: Vote("s:1", ["a", ""], "a", 0.5, False, False, "a", "disagree", "visual"),
    Verdict: Verdict("s:1", 0, "rejected", ["rising pitch"], "ok", "{}", 2, 0.3, "sim", "m", True),
    SFTExample: SFTExample("cot:s:1:0", "cot", "s:1", "file:///v.mp4", "Which?", ["a", "b"],
                           "<think>t</think><answer>a</answer>", "a"),
    GRPOExample: GRPOExample("grpo:s:1", "s:1", "file:///v.mp4", "Which?", ["a", "b"], "a", "visual"),
    Prediction: Prediction("cot", "synthetic-test", "s:1", "<answer>a</answer>", None, "a", False,
                           "visual", "which_sounds"),
    Quarantine: Quarantine("ingest", "bad.mp4", "zero_byte_file", "0 bytes"),
}


def test_every_record_has_a_sample():
    assert set(SAMPLES) == set(ALL_RECORDS)


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: r.__name__)
def test_round_trip_every_schema(store, record):
    rows = [SAMPLES[record]]
    uri = store.uri("rt", f"{record.__name__}.parquet")
    store.write_table(uri, record.to_table(rows))
    table = store.read_table(uri)
    assert table.schema.equals(record.SCHEMA, check_metadata=False)
    assert record.from_table(table) == rows


def test_write_is_atomic_and_listing_sees_only_committed(store):
    d = store.uri("stage", "abc")
    store.write_table(store.uri("stage", "abc", "shard-00000.parquet"), Quarantine.to_table([SAMPLES[Quarantine]]))
    # An in-flight write sits under _tmp/ and is never listed as a shard.
    store.write_bytes(store.uri("stage", "abc", "_tmp", "shard-00001.parquet.x"), b"partial")
    assert store.list_shards(d) == [store.uri("stage", "abc", "shard-00000.parquet")]
    assert store.read_manifest(d) is None


def test_manifest_refuses_uncommitted_shards(store):
    d = store.uri("stage", "m")
    with pytest.raises(RuntimeError, match="not committed"):
        store.commit_manifest(d, {"shards": [{"uri": store.uri("stage", "m", "shard-00000.parquet")}]})
    assert store.read_manifest(d) is None


def test_failed_write_leaves_nothing(store, monkeypatch):
    uri = store.uri("stage", "f", "shard-00000.parquet")
    real_mv = store.fs.mv

    def broken_mv(*a, **k):
        raise OSError("disk went away")

    monkeypatch.setattr(store.fs, "mv", broken_mv)
    with pytest.raises(OSError):
        store.write_bytes(uri, b"x" * 1000)
    monkeypatch.setattr(store.fs, "mv", real_mv)
    assert not store.exists(uri)
    assert store.list_shards(store.uri("stage", "f")) == []
    assert store.ls(store.uri("stage", "f", "_tmp")) == []


def _slow_writer(root, options, uri, started):
    """Write a large shard through a file object, slowly, so it can be killed mid-write."""
    store = ObjectStore(root, options)
    table = pa.table({"x": [os.urandom(64).hex() for _ in range(20_000)]})  # incompressible
    real_open = store.fs.open

    def slow_open(path, mode="rb", **kw):
        fh = real_open(path, mode, **kw)
        if "w" in mode:
            write = fh.write

            def slow_write(data):
                for i in range(0, len(data), 4096):
                    write(data[i : i + 4096])
                    started.set()
                    time.sleep(0.01)
                return len(data)

            fh.write = slow_write
        return fh

    store.fs.open = slow_open
    store.write_table(uri, table)


def test_writer_killed_mid_write_leaves_no_visible_shard(store):
    uri = store.uri("kill", "h", "shard-00000.parquet")
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_slow_writer, args=(store.root, store.storage_options, uri, started))
    proc.start()
    assert started.wait(60), "writer never started writing"
    time.sleep(0.5)
    assert proc.is_alive(), "writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert not store.exists(uri)
    assert store.list_shards(store.uri("kill", "h")) == []
