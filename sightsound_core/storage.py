"""Object storage over fsspec URIs: atomic Parquet shards, a manifest written last.

Layout of one stage's output (see docs/ARCHITECTURE.md, "The stage contract")::

    {root}/{run}/{stage}/{stage_hash}/shard-00000.parquet     committed shards
    {root}/{run}/{stage}/{stage_hash}/quarantine-00000.parquet
    {root}/{run}/{stage}/{stage_hash}/_MANIFEST.json          written last: the stage is complete
    {root}/{run}/{stage}/{stage_hash}/_tmp/…                  in-flight writes, never read

A shard is written under ``_tmp/`` and then moved to its final key, so a reader listing shards
never sees a half-written file: on a local disk the move is a rename, on S3 the final object
appears in one piece when the copy completes. Readers trust only committed names and the manifest.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
TMP_DIR = "_tmp"


def join(*parts: str) -> str:
    """Join URI parts with '/', keeping the scheme of the first."""
    head, *rest = parts
    return posixpath.join(head.rstrip("/"), *[p.strip("/") for p in rest])


class ObjectStore:
    """A root URI plus the fsspec filesystem that serves it.

    ``file://relative/path`` is resolved against the working directory at construction.
    """

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.storage_options = dict(storage_options or {})
        protocol, path = _split(root)
        if protocol == "file":
            import os

            path = os.path.abspath(path)
        self.protocol = protocol
        self.fs = fsspec.filesystem(protocol, **self.storage_options)
        self.root = f"{protocol}://{path}"

    # -- paths ---------------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        return join(self.root, *parts)

    def _path(self, uri: str) -> str:
        protocol, path = _split(uri)
        if protocol != self.protocol:
            raise ValueError(f"{uri} is not in this store ({self.root})")
        return path

    def local_path(self, uri: str) -> str:
        """The filesystem path of a ``file://`` URI (for libraries that want a path)."""
        if self.protocol != "file":
            raise ValueError(f"{uri} is not on a local filesystem")
        return self._path(uri)

    # -- bytes and JSON ---------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return self.fs.exists(self._path(uri))

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` to ``uri`` atomically: a temporary key, then a move."""
        final = self._path(uri)
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, TMP_DIR, f"{posixpath.basename(final)}.{uuid.uuid4().hex}")
        self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def read_bytes(self, uri: str) -> bytes:
        with self.fs.open(self._path(uri), "rb") as fh:
            return fh.read()

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def put_file(self, local_path: str, uri: str) -> None:
        """Upload a local file atomically (temporary key, then move)."""
        with open(local_path, "rb") as fh:
            self.write_bytes(uri, fh.read())

    def put_dir(self, local_dir: str, uri: str) -> None:
        """Upload a directory tree, file by file; the caller writes a marker when done."""
        self.fs.put(local_dir.rstrip("/") + "/", self._path(uri), recursive=True)

    def get_dir(self, uri: str, local_dir: str) -> None:
        self.fs.get(self._path(uri).rstrip("/") + "/", local_dir, recursive=True)

    def open(self, uri: str, mode: str = "rb"):
        return self.fs.open(self._path(uri), mode)

    def rm(self, uri: str, recursive: bool = False) -> None:
        path = self._path(uri)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)

    def ls(self, uri: str) -> list[str]:
        """Names directly under ``uri`` (empty when it does not exist)."""
        path = self._path(uri)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    # -- Parquet ----------------------------------------------------------------------------------
    def write_table(self, uri: str, table: pa.Table) -> dict[str, Any]:
        """Write a Parquet file atomically; return its row count and size."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.write_bytes(uri, data)
        return {"rows": table.num_rows, "bytes": len(data)}

    def read_table(self, uri: str, schema: pa.Schema | None = None) -> pa.Table:
        with self.fs.open(self._path(uri), "rb") as fh:
            table = pq.read_table(fh)
        return table.cast(schema) if schema is not None else table

    def list_shards(self, dir_uri: str, prefix: str = "shard-") -> list[str]:
        """Committed shard URIs under ``dir_uri``, in index order (never in-flight writes)."""
        return [
            join(dir_uri, name)
            for name in self.ls(dir_uri)
            if name.startswith(prefix) and name.endswith(".parquet")
        ]

    # -- manifests --------------------------------------------------------------------------------
    def commit_manifest(self, dir_uri: str, manifest: dict[str, Any]) -> None:
        """Mark a stage output complete. Written last, after every shard it names."""
        missing = [s for s in manifest.get("shards", []) if not self.exists(s["uri"])]
        if missing:
            raise RuntimeError(f"manifest names shards that are not committed: {missing[:3]}")
        self.write_json(join(dir_uri, MANIFEST), manifest)

    def read_manifest(self, dir_uri: str) -> dict[str, Any] | None:
        uri = join(dir_uri, MANIFEST)
        return self.read_json(uri) if self.exists(uri) else None


def _split(uri: str) -> tuple[str, str]:
    if "://" in uri:
        protocol, path = uri.split("://", 1)
    else:
        protocol, path = "file", uri
    if protocol in ("s3a", "s3n"):
        protocol = "s3"
    return protocol, path
