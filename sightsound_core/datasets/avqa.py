"""AVQA (Yang et al., ACM MM 2022): multiple-choice questions on VGGSound videos.

Annotation files ``train_qa.json`` and ``val_qa.json`` (val serves as the test set) are JSON arrays
of records::

    {"id": 0, "video_name": "-0Gj8-vB1q4_000030", "video_id": 341,
     "question_text": "What is the man on the left doing?",
     "multi_choice": ["playing drums", "singing", "playing guitar", "talking"],
     "answer": 2, "question_relation": "View", "question_type": "Which"}

``answer`` indexes ``multi_choice``. The video is ``{video_name}.mp4`` under the dataset root.
``question_relation`` sets the family: View -> visual, Sound -> acoustic, Both -> unknown (it needs
both senses, so neither family's claim holds). Clip ids are ``avqa:{id}``.
"""

from __future__ import annotations

import json
from typing import Any

from sightsound_core.config import IngestConfig
from sightsound_core.datasets.common import Adapter, Refused, field, text_list
from sightsound_core.schemas import Clip

FAMILIES = {"View": "visual", "Sound": "acoustic"}


def native_id(record: dict[str, Any]) -> str:
    return str(field(record, "id", int))


def media_path(record: dict[str, Any]) -> str:
    return f"{field(record, 'video_name', str)}.mp4"


def to_clip(record: dict[str, Any], context: Any, cfg: IngestConfig, media_uri: str) -> Clip:
    question = field(record, "question_text", str)
    options = text_list(record, "multi_choice")
    answer = field(record, "answer", int)
    relation = field(record, "question_relation", str)
    qtype = field(record, "question_type", str)
    if len(options) < 2:
        raise Refused("too_few_options", f"{len(options)} option(s), need at least 2")
    if not 0 <= answer < len(options):
        raise Refused("label_not_in_options", f"answer index {answer} with {len(options)} options")
    meta = {
        "id": record["id"],
        "video_id": record.get("video_id"),
        "video_name": record["video_name"],
        "answer_index": answer,
        "question_relation": relation,
        "question_type": qtype,
    }
    return Clip(
        clip_id=f"avqa:{record['id']}",
        source="avqa",
        split=cfg.split,
        video_uri=media_uri,
        audio_uri=media_uri,
        duration_s=0.0,
        question=question,
        options=list(options),
        label=options[answer],
        family=FAMILIES.get(relation, "unknown"),
        category=qtype,
        meta=json.dumps(meta, sort_keys=True),
    )


ADAPTER = Adapter(
    name="avqa",
    default_annotations=lambda cfg: f"{cfg.split}_qa.json",
    native_id=native_id,
    media_path=media_path,
    to_clip=to_clip,
)
