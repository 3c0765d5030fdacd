"""MMAU test-mini (Sakshi et al., 2024): audio-only multiple-choice questions.

``mmau-test-mini.json`` is a JSON array of 1000 records::

    {"id": "0b1c4a5e-...", "audio_id": "./test-mini-audios/0b1c4a5e-....wav",
     "question": "What is the tempo of the music?", "choices": ["slow", "moderate", "fast"],
     "answer": "fast", "dataset": "MusicCaps", "task": "music", "split": "test-mini",
     "category": "Perception", "sub-category": "Tempo", "difficulty": "easy"}

``audio_id`` is a path relative to the dataset root. ``answer`` is the text of one of ``choices``.
Some items repeat a string among their choices (``["four", "nine", "fourteen", "fourteen"]``), in the
original release and in the v05.15.25 relabel alike. The official scorer reads the answer's text,
never its position, and scores those items, so they are kept with ``choices`` exactly as given
(``Adapter.repeated_options``): MMAU is scored on every item of its file.
``task`` (sound / music / speech) is the split papers report, so it is the clip's ``category``;
every clip is ``acoustic`` and has no video. The official scorer works on the original record, so
``meta`` keeps ``choices``, ``answer``, ``task``, ``category`` (sometimes a list),
``sub-category``, ``difficulty``, ``dataset`` and ``split`` as given. Clip ids are ``mmau:{id}``.
"""

from __future__ import annotations

import json
from typing import Any

from sightsound_core.config import IngestConfig
from sightsound_core.datasets.common import Adapter, Refused, field, text_list
from sightsound_core.schemas import Clip

KEPT = ("id", "audio_id", "choices", "answer", "dataset", "task", "split", "category",
        "sub-category", "difficulty")


def native_id(record: dict[str, Any]) -> str:
    return field(record, "id", str)


def media_path(record: dict[str, Any]) -> str:
    return field(record, "audio_id", str)


def to_clip(record: dict[str, Any], context: Any, cfg: IngestConfig, media_uri: str) -> Clip:
    question = field(record, "question", str)
    options = text_list(record, "choices")
    answer = field(record, "answer", str)
    if len(options) < 2:
        raise Refused("too_few_options", f"{len(options)} choice(s), need at least 2")
    if answer not in options:
        raise Refused("label_not_in_options", f"answer {answer!r} is not one of {options}")
    task = record.get("task")
    return Clip(
        clip_id=f"mmau:{record['id']}",
        source="mmau",
        split=cfg.split,
        video_uri=None,
        audio_uri=media_uri,
        duration_s=0.0,
        question=question,
        options=list(options),
        label=answer,
        family="acoustic",
        category=task if isinstance(task, str) else "unknown",
        meta=json.dumps({k: record[k] for k in KEPT if k in record}, sort_keys=True),
    )


ADAPTER = Adapter(
    name="mmau",
    default_annotations=lambda cfg: "mmau-test-mini.json",
    native_id=native_id,
    media_path=media_path,
    to_clip=to_clip,
    repeated_options=True,
)
