import contextlib
import multiprocessing as mp
import os
import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sightsound_core.schemas import (
    ALL_RECORDS, Clip, GRPOExample, Prediction, Quarantine, SFTExample, TeacherSample, Verdict, Vote,
)
from sightsound_core.storage import ObjectStore, join

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


@pytest.mark.parametrize(
    "parts, uri",
    [
        (("s3://bucket/root", "run", "shard-00000.parquet"), "s3://bucket/root/run/shard-00000.parquet"),
        # Slashes around the parts are separators, not names; every letter of a name stays.
        (("file:///data/MAX//", "/RUNX/", "INDEX/"), "file:///data/MAX/RUNX/INDEX"),
        # A plain local path keeps its leading slash.
        (("/data/store", "run"), "/data/store/run"),
    ],
)
def test_join(parts, uri):
    assert join(*parts) == uri


def test_a_file_store_writes_where_its_root_says(tmp_path, monkeypatch):
    store = ObjectStore(f"file://{tmp_path}/store")
    store.write_bytes(store.uri("a", "b.bin"), b"x")
    assert (tmp_path / "store" / "a" / "b.bin").read_bytes() == b"x"
    # A relative root, or a plain path, is a local directory under the working directory.
    monkeypatch.chdir(tmp_path)
    for root in ("file://rel/store", "rel/store"):
        relative = ObjectStore(root)
        assert relative.root == f"file://{tmp_path}/rel/store"
        assert relative.local_path(relative.uri("x")) == f"{tmp_path}/rel/store/x"


def test_an_s3_store_writes_to_its_bucket(s3_store):
    import s3fs

    s3_store.write_bytes(s3_store.uri("a", "b.bin"), b"x")
    bucket_path = s3_store.root.removeprefix("s3://") + "/a/b.bin"
    assert s3fs.S3FileSystem(**s3_store.storage_options).cat(bucket_path) == b"x"
    # The s3a and s3n schemes of Hadoop name the same store.
    for scheme in ("s3a", "s3n"):
        alias = ObjectStore(s3_store.root.replace("s3://", f"{scheme}://"), s3_store.storage_options)
        assert alias.root == s3_store.root and alias.read_bytes(alias.uri("a", "b.bin")) == b"x"
    with pytest.raises(ValueError, match="is not on a local filesystem"):
        s3_store.local_path(s3_store.uri("a", "b.bin"))


def test_a_uri_outside_the_store_is_refused_by_name(store):
    with pytest.raises(ValueError, match=r"gs://elsewhere/x is not in this store \((file|s3)://"):
        store.exists("gs://elsewhere/x")


def test_only_the_first_separator_is_the_scheme(file_store):
    # Object keys may hold '://' themselves.
    assert file_store.local_path(file_store.uri("odd://name")) == file_store.root.removeprefix("file://") + "/odd://name"


def test_a_write_that_dies_before_its_move_leaves_its_partial_under_tmp_only(store, monkeypatch):
    def killed(*a, **k):
        raise OSError("killed")

    monkeypatch.setattr(store.fs, "mv", killed)
    monkeypatch.setattr(store.fs, "rm", lambda *a, **k: None)  # a killed process cleans up nothing
    with pytest.raises(OSError):
        store.write_bytes(store.uri("stage", "k", "shard-00000.parquet"), b"partial")
    assert store.ls(store.uri("stage", "k")) == ["_tmp"]
    assert [n.split(".parquet.")[0] for n in store.ls(store.uri("stage", "k", "_tmp"))] == ["shard-00000"]


def test_rm_leaves_a_directory_unless_asked_to_recurse(store):
    store.write_bytes(store.uri("d", "keep", "a"), b"x")
    with contextlib.suppress(ValueError):  # the local filesystem refuses, S3 does nothing
        store.rm(store.uri("d", "keep"))
    assert store.exists(store.uri("d", "keep", "a"))
    store.rm(store.uri("d", "keep"), recursive=True)
    assert not store.exists(store.uri("d", "keep", "a"))


def test_ls_reports_names_exactly(store):
    for name in ("A", "MAX", "trailing ", "sub/b"):
        store.write_bytes(store.uri("names", name), b"x")
    assert [n for n in store.ls(store.uri("names")) if n != "_tmp"] == ["A", "MAX", "sub", "trailing "]


def test_open_reads_bytes_by_default_and_honours_a_mode(store):
    store.write_bytes(store.uri("o", "t.txt"), b"text")
    with store.open(store.uri("o", "t.txt")) as fh:
        assert fh.read() == b"text"
    with store.open(store.uri("o", "t.txt"), "r") as fh:
        assert fh.read() == "text"


def test_json_is_written_readable_and_key_sorted(store):
    # Sorted keys: the same content always gives the same bytes, so manifests can be compared.
    store.write_json(store.uri("j.json"), {"b": 1, "a": [1]})
    assert store.read_bytes(store.uri("j.json")) == b'{\n  "a": [\n    1\n  ],\n  "b": 1\n}'


def test_tables_are_zstd_parquet_read_back_in_a_given_schema(store):
    uri = store.uri("t", "shard-00000.parquet")
    written = store.write_table(uri, pa.table({"x": pa.array([1, 2], pa.int32())}))
    assert written == {"rows": 2, "bytes": len(store.read_bytes(uri))}
    with store.open(uri) as fh:
        assert pq.ParquetFile(fh).metadata.row_group(0).column(0).compression == "ZSTD"
    assert store.read_table(uri, pa.schema([("x", pa.int64())])).schema.field("x").type == pa.int64()


@pytest.mark.parametrize("name", ["MODELX", "MODEL "])
@pytest.mark.parametrize("slash", ["", "/"])
def test_files_and_trees_go_up_and_come_back(store, tmp_path, name, slash):
    # A directory named with or without a trailing slash is the same directory; its name is kept whole.
    src = tmp_path / name
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    store.put_file(str(src / "a.txt"), store.uri("one", "a.txt"))
    assert store.read_bytes(store.uri("one", "a.txt")) == b"a"
    store.put_dir(str(src) + slash, store.uri(name))
    assert store.ls(store.uri(name)) == ["a.txt", "sub"]
    store.get_dir(store.uri(name) + slash, str(tmp_path / "back"))
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in (tmp_path / "back").rglob("*.txt")) == [
        "a.txt", "sub/b.txt"]


def test_a_manifest_may_name_no_shards_and_a_refusal_names_three(store):
    store.commit_manifest(store.uri("m0"), {"note": "nothing sharded"})
    assert store.read_manifest(store.uri("m0")) == {"note": "nothing sharded"}
    missing = [{"uri": store.uri("m4", f"shard-{i:05d}.parquet")} for i in range(4)]
    with pytest.raises(RuntimeError) as err:
        store.commit_manifest(store.uri("m4"), {"shards": missing})
    assert missing[2]["uri"] in str(err.value) and missing[3]["uri"] not in str(err.value)
