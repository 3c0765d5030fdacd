"""MMAU's official prediction file, and the official breakdown computed from it.

MMAU's ``evaluation.py`` reads a JSON array of the benchmark's own records with the model's text
added under ``model_output`` (its README says ``model_prediction``; both are written), and indexes
``answer``, ``choices``, ``task`` (sound / music / speech), ``difficulty`` (easy / medium / hard)
and ``sub-category`` of each. We put the text our score was computed on there (the benchmark's
answer rule picks it: the ``<answer>`` content, or the raw output when it has no answer tag and the
rule allows it), so the official script and ``scoring.score_mmau`` agree item by item. The full
generation, our verdict, the answer rule and the annotation version ride along under the key
``sightsound``.
"""

from __future__ import annotations

import json
from typing import Any

from sightsound_core.config import AnswerRule
from sightsound_core.evaluation.scoring import accuracy, answer_text, mmau_match
from sightsound_core.schemas import Clip, Prediction

TASKS = ("sound", "music", "speech")
DIFFICULTIES = ("easy", "medium", "hard")
# The fields of a test-mini record, in the order the release writes them.
RECORD_FIELDS = (
    "id", "audio_id", "question", "choices", "answer", "dataset", "task", "split", "category",
    "sub-category", "difficulty",
)


def prediction_record(
    clip: Clip, prediction: Prediction, annotation_version: str | None, answer_rule: AnswerRule
) -> dict[str, Any]:
    """The item's original MMAU record plus ``model_output`` / ``model_prediction``.

    ``question``, ``choices`` and ``answer`` are the clip's, which is what was asked and scored
    (``choices`` as the release gives them, a repeated string included); the rest comes from the
    clip's ``meta`` as the MMAU adapter kept it.
    """
    meta = clip.meta_dict()
    record = {k: meta[k] for k in RECORD_FIELDS if k in meta}
    record.update(question=clip.question, choices=list(clip.options), answer=clip.label)
    for key, allowed in (("task", TASKS), ("difficulty", DIFFICULTIES)):
        if record.get(key) not in allowed:
            raise ValueError(
                f"{clip.clip_id}: MMAU {key} {record.get(key)!r} is not one of {allowed}; the "
                "official script cannot score it"
            )
    record = {k: record[k] for k in RECORD_FIELDS if k in record}
    text = answer_text(prediction.raw, answer_rule)
    record["model_output"] = text
    record["model_prediction"] = text
    record["sightsound"] = {
        "clip_id": clip.clip_id,
        "model": prediction.model_tag,
        "raw_output": prediction.raw,
        "correct": prediction.correct,
        "annotation_version": annotation_version,
        "answer_rule": answer_rule,
    }
    return record


def prediction_json(records: list[dict[str, Any]]) -> bytes:
    return json.dumps(records, indent=1, ensure_ascii=False).encode()


def official_breakdown(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy as the official script reports it (total, per task, per difficulty, per
    sub-category), each with a 95% interval, recomputed from the prediction records."""
    flags = [mmau_match(r["model_output"], r["answer"], r["choices"]) for r in records]

    def by(key: str) -> dict[str, Any]:
        values = sorted({str(r.get(key)) for r in records})
        return {v: accuracy([f for f, r in zip(flags, records) if str(r.get(key)) == v]) for v in values}

    return {
        "total": accuracy(flags),
        "by_task": by("task"),
        "by_difficulty": by("difficulty"),
        "by_subcategory": by("sub-category"),
    }
