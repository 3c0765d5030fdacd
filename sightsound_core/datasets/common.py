"""What every real-data adapter shares: refusing an item with a reason, a dataset root that media
paths cannot leave, reading annotation JSON, and typed field access.

An adapter never raises anything but ``Refused`` (or ``MediaError`` from the media checks) for a
bad item; ingest turns either into a Quarantine row and carries on with the next item.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import posixpath
from typing import Any, Callable, Iterator

import fsspec
from fsspec import AbstractFileSystem

from sightsound_core.errors import InputRefused
from sightsound_core.config import IngestConfig
from sightsound_core.schemas import Clip


class Refused(InputRefused):
    """An item ingest will not use.

    Attributes:
        reason: short code (the Quarantine reason): ``malformed_json``, ``malformed_record``,
            ``missing_field``, ``bad_field_type``, ``non_utf8_text``, ``duplicate_id``,
            ``label_not_in_options``, ``too_few_options``, ``path_escapes_root``,
            ``not_found``, ``conflicting_answers``, and the adapters' own (``question_deleted``,
            ``template_mismatch``, ``changed_since_ingest``).
        detail: human-readable detail naming the item.
    """


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How one annotated dataset becomes clips. Every callable raises only ``Refused``.

    Attributes:
        name: the Clip ``source`` and the clip id prefix (``{name}:{native id}``).
        default_annotations: ingest config -> annotation file name under the dataset root.
        native_id: record -> the dataset's own id of the item, as text.
        media_path: record -> the media file's path relative to the dataset root.
        context: all records -> what a clip depends on beyond its own record (JSON-able).
        context_for: (context, records of one shard) -> the part of ``context`` those records use;
            it enters the shard's fingerprint, so a shard is recomputed when it changes.
        to_clip: (record, context, config, media URI) -> Clip with ``duration_s`` 0 (ingest sets
            it from the probed file).
        repeated_options: whether an item whose options repeat a string is kept. Only for a
            benchmark whose official scorer reads the answer's text, not its position (MMAU): it
            must be scored on every item of its file. Elsewhere a repeat makes the letter of the
            answer ambiguous, so the item is refused (``duplicate_options``).
    """

    name: str
    default_annotations: Callable[[IngestConfig], str]
    native_id: Callable[[dict[str, Any]], str]
    media_path: Callable[[dict[str, Any]], str]
    to_clip: Callable[[dict[str, Any], Any, IngestConfig, str], Clip]
    context: Callable[[list[Any]], Any] = lambda records: None
    context_for: Callable[[Any, list[Any]], Any] = lambda context, records: None
    repeated_options: bool = False
    answer_of: Callable[[dict[str, Any]], Any] | None = None


@dataclasses.dataclass(frozen=True)
class DatasetRoot:
    """A dataset root on a local disk or an object store: media resolve inside it, never outside."""

    uri: str
    fs: AbstractFileSystem
    path: str
    storage_options: dict[str, Any]

    @classmethod
    def open(cls, uri: str, storage_options: dict[str, Any] | None = None) -> "DatasetRoot":
        options = dict(storage_options or {})
        fs, path = fsspec.core.url_to_fs(uri, **options)
        path = path.rstrip("/") or "/"
        if fs_is_local(fs):
            path = os.path.abspath(path)
        return cls(fs.unstrip_protocol(path), fs, path, options)

    @property
    def local(self) -> bool:
        return fs_is_local(self.fs)

    def resolve(self, relative: str) -> str:
        """The full URI of ``relative`` under the root; refuses ``..`` out of it, absolute paths,
        URIs, and (on a local disk) symlinks whose target lies outside the root."""
        if "://" in relative:
            raise Refused("path_escapes_root", f"{relative!r} is a URI, not a path under {self.uri}")
        if relative.startswith(("/", "\\")) or os.path.isabs(relative) or relative[1:3] in (":/", ":\\"):
            raise Refused("path_escapes_root", f"{relative!r} is an absolute path, not under {self.uri}")
        norm = posixpath.normpath(relative)
        if norm == ".." or norm.startswith("../"):
            raise Refused("path_escapes_root", f"{relative!r} climbs out of {self.uri}")
        full = posixpath.join(self.path, norm)
        if self.local:
            real, real_root = os.path.realpath(full), os.path.realpath(self.path)
            if os.path.commonpath([real, real_root]) != real_root:
                raise Refused(
                    "path_escapes_root", f"{relative!r} is a symlink out of {self.uri} (to {real})"
                )
        return self.fs.unstrip_protocol(full)

    def relative(self, path: str) -> str:
        return path[len(self.path) :].lstrip("/")

    def listing(self) -> dict[str, dict[str, Any]]:
        """Every file under the root (symlinks included, not followed), by relative path:
        ``{"size": bytes, "stamp": etag or mtime}``."""
        return {rel: stat for page in self.pages() for rel, stat in page}

    def pages(self, page_size: int = 1000) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """``listing()`` a page at a time, ``(relative path, stat)`` pairs, so a bucket of millions
        of objects is never held as one listing: one ``ListObjectsV2`` request per page on S3,
        one directory at a time elsewhere."""
        if hasattr(self.fs, "call_s3"):
            yield from self._s3_pages(page_size)
            return
        page: list[tuple[str, dict[str, Any]]] = []
        try:
            for _, _, files in self.fs.walk(self.path, detail=True):
                for name in sorted(files):
                    info = files[name]
                    stat = {"size": int(info.get("size") or 0), "stamp": _stamp(info)}
                    page.append((self.relative(info["name"]), stat))
                    if len(page) == page_size:
                        yield page
                        page = []
        except FileNotFoundError:
            return
        if page:
            yield page

    def _s3_pages(self, page_size: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        bucket, _, prefix = self.path.partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        token: str | None = None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            reply = self.fs.call_s3("list_objects_v2", **kwargs)
            yield [
                (obj["Key"][len(prefix) :], {"size": int(obj.get("Size") or 0), "stamp": _stamp(obj)})
                for obj in reply.get("Contents", [])
                if not obj["Key"].endswith("/")
            ]
            token = reply.get("NextContinuationToken")
            if not reply.get("IsTruncated") or not token:
                return


def fs_is_local(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _stamp(info: dict[str, Any]) -> str:
    """What changes when a file's content does: the object-store ETag, else the mtime."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def read_annotations(uri: str, storage_options: dict[str, Any] | None = None) -> list[Any]:
    """The records of an annotation file (a JSON array). Raises Refused when it cannot be read.

    Bytes that are not UTF-8 do not fail the file: they decode to lone surrogates, and the one
    record holding them is refused by ``check_text`` (``non_utf8_text``).
    """
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise Refused("not_found", f"{uri}: no such annotation file") from None
    return _parsed(fs, path, uri, _stamp(info), int(info.get("size") or 0))


@functools.lru_cache(maxsize=4)
def _parsed(fs: AbstractFileSystem, path: str, uri: str, stamp: str, size: int) -> list[Any]:
    # Cached by content stamp: every shard of a dataset reads the same file, often in one process.
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused("malformed_json", f"{uri}: {exc}") from None
    if not isinstance(records, list):
        kind = type(records).__name__
        raise Refused("malformed_json", f"{uri}: expected a JSON array of records, got {kind}")
    return records


def check_text(record: dict[str, Any]) -> None:
    """Refuse a record holding text that was not valid UTF-8 (or a lone surrogate escape)."""
    for key, value in record.items():
        for text in _strings(value):
            if any("\ud800" <= ch <= "\udfff" for ch in text):
                raise Refused("non_utf8_text", f"field {key!r} is not valid UTF-8: '{safe_text(text)}'")


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)


def safe_text(text: str) -> str:
    """``text`` with the bytes that were not valid UTF-8 written as escapes (Parquet needs UTF-8).

    >>> safe_text(b"caf\\xe9".decode("utf-8", "surrogateescape"))
    'caf\\\\xe9'
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate written as a JSON escape, not a stray byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


_TYPES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def field(record: dict[str, Any], name: str, kind: type) -> Any:
    """``record[name]``, refused when missing or not of ``kind`` (a bool is not an integer)."""
    if name not in record or record[name] is None:
        raise Refused("missing_field", f"field {name!r} is missing")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Refused(
            "bad_field_type", f"field {name!r} is {type(value).__name__}, expected {_TYPES[kind]}"
        )
    return value


def text_list(record: dict[str, Any], name: str) -> list[str]:
    values = field(record, name, list)
    if not all(isinstance(v, str) for v in values):
        raise Refused("bad_field_type", f"field {name!r} must be a list of strings")
    return values


def json_field(record: dict[str, Any], name: str) -> Any:
    """A field that holds JSON as a string (MUSIC-AVQA's ``type`` and ``templ_values``)."""
    raw = field(record, name, str)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Refused("malformed_json", f"field {name!r} is not valid JSON ({exc}): {raw[:80]!r}") from None
