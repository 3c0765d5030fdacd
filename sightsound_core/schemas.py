"""Record types that flow between stages, and their Arrow schemas.

Every stage reads and writes Parquet shards of one of these records. A record is a frozen
dataclass whose ``SCHEMA`` class attribute is the exact Arrow schema of its shard, in column
order; ``to_table`` / ``from_table`` convert between lists of records and Arrow tables.
Nested data that has no fixed shape (dataset-specific metadata) travels as a JSON string.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

import pyarrow as pa

_str_list = pa.list_(pa.string())

R = TypeVar("R", bound="Record")


class Record:
    """Mixin for the record dataclasses: Arrow conversion driven by ``SCHEMA``."""

    SCHEMA: ClassVar[pa.Schema]

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def to_table(cls: type[R], records: list[R]) -> pa.Table:
        columns = {f.name: [getattr(r, f.name) for r in records] for f in cls.SCHEMA}
        return pa.Table.from_pydict(columns, schema=cls.SCHEMA)

    @classmethod
    def from_table(cls: type[R], table: pa.Table) -> list[R]:
        table = table.select(cls.SCHEMA.names)
        return [cls(**row) for row in table.to_pylist()]

    @classmethod
    def empty_table(cls) -> pa.Table:
        return cls.SCHEMA.empty_table()


@dataclasses.dataclass(frozen=True)
class Clip(Record):
    """One question about one piece of media, the unit every stage works on.

    Columns:
        clip_id: stable id, unique within a run (``{source}:{native id}``).
        source: dataset adapter that produced it (synthetic, avqa, music_avqa, mmau, folder).
        split: train / val / test.
        video_uri: fsspec URI of a video file, or None for audio-only data (MMAU).
        audio_uri: fsspec URI holding the audio track (often the same file as the video).
        duration_s: media duration in seconds.
        question: question text.
        options: answer options (at least 2).
        label: the correct option, one of ``options``; None when unlabeled.
        family: question family: ``visual`` (a vision-only model can answer it) or
            ``acoustic`` (needs hearing); ``unknown`` for real data without the distinction.
        category: finer category (question type, MMAU task, synthetic question kind).
        meta: JSON object string of source-specific fields kept for scoring and reports.
    """

    clip_id: str
    source: str
    split: str
    video_uri: str | None
    audio_uri: str | None
    duration_s: float
    question: str
    options: list[str]
    label: str | None
    family: str
    category: str
    meta: str = "{}"

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("clip_id", pa.string()),
            ("source", pa.string()),
            ("split", pa.string()),
            ("video_uri", pa.string()),
            ("audio_uri", pa.string()),
            ("duration_s", pa.float64()),
            ("question", pa.string()),
            ("options", _str_list),
            ("label", pa.string()),
            ("family", pa.string()),
            ("category", pa.string()),
            ("meta", pa.string()),
        ]
    )

    def meta_dict(self) -> dict[str, Any]:
        return json.loads(self.meta)


@dataclasses.dataclass(frozen=True)
class TeacherSample(Record):
    """One of the K teacher samples for a clip.

    Columns:
        clip_id: the clip.
        sample_idx: 0..K-1.
        raw: the full generated text.
        think: content of ``<think>``, None when absent.
        answer: the option the answer parsed to, None when it did not parse to one.
        parse_status: ``ok`` or the parser's reason (see ``answers.ParseStatus``).
        finish_reason: ``stop``, ``length`` or ``error``.
        prompt_tokens, completion_tokens: token counts as reported by the backend.
        latency_s: wall time of the request that produced this sample (shared by its K samples).
        backend, model: what produced it.
    """

    clip_id: str
    sample_idx: int
    raw: str
    think: str | None
    answer: str | None
    parse_status: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    backend: str
    model: str

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("clip_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("raw", pa.string()),
            ("think", pa.string()),
            ("answer", pa.string()),
            ("parse_status", pa.string()),
            ("finish_reason", pa.string()),
            ("prompt_tokens", pa.int32()),
            ("completion_tokens", pa.int32()),
            ("latency_s", pa.float64()),
            ("backend", pa.string()),
            ("model", pa.string()),
        ]
    )


@dataclasses.dataclass(frozen=True)
class Vote(Record):
    """The test-time-scaling decision for one clip.

    Columns:
        clip_id: the clip.
        answers: the K parsed answers in sample order ('' where a sample did not parse).
        winner: the most frequent parsed answer, None when no sample parsed.
        agreement: fraction of the K samples that gave ``winner``.
        kept: whether the clip passes the vote policy (and the label check where configured).
        pseudo_label: True when there is no label and ``winner`` stands in for it.
        label: the clip's label, or ``winner`` when ``pseudo_label``.
        reason: ``kept`` or why not (``no_parse``, ``disagree``, ``label_mismatch``).
        family: copied from the clip, for per-family reporting.
    """

    clip_id: str
    answers: list[str]
    winner: str | None
    agreement: float
    kept: bool
    pseudo_label: bool
    label: str | None
    reason: str
    family: str

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("clip_id", pa.string()),
            ("answers", _str_list),
            ("winner", pa.string()),
            ("agreement", pa.float64()),
            ("kept", pa.bool_()),
            ("pseudo_label", pa.bool_()),
            ("label", pa.string()),
            ("reason", pa.string()),
            ("family", pa.string()),
        ]
    )


VERDICT_STATUSES = ("accepted", "rejected", "unparseable", "error")


@dataclasses.dataclass(frozen=True)
class Verdict(Record):
    """The audio model's verdict on one teacher trace (AGFV).

    Columns:
        clip_id, sample_idx: the trace.
        status: one of ``accepted``, ``rejected``, ``unparseable``, ``error``.
        unsupported_claims: the claims the verifier could not hear.
        reason: short human-readable reason (error class for ``error``).
        raw: the verifier's raw reply (empty on ``error``).
        attempts: requests made for this item, retries included.
        latency_s: wall time spent on this item.
        backend, model: what produced it.
        planted: for synthetic data, whether the trace holds a claim known to be false
            (None when unknown); used to measure verifier precision and recall.
    """

    clip_id: str
    sample_idx: int
    status: str
    unsupported_claims: list[str]
    reason: str
    raw: str
    attempts: int
    latency_s: float
    backend: str
    model: str
    planted: bool | None = None

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("clip_id", pa.string()),
            ("sample_idx", pa.int32()),
            ("status", pa.string()),
            ("unsupported_claims", _str_list),
            ("reason", pa.string()),
            ("raw", pa.string()),
            ("attempts", pa.int32()),
            ("latency_s", pa.float64()),
            ("backend", pa.string()),
            ("model", pa.string()),
            ("planted", pa.bool_()),
        ]
    )


@dataclasses.dataclass(frozen=True)
class SFTExample(Record):
    """A supervised example for the student: audio + prompt -> completion.

    Columns:
        example_id: ``{variant}:{clip_id}:{sample_idx}``.
        variant: ``cot`` (verified traces), ``cot_noagfv`` (unanimous, unverified) or
            ``label_only`` (answer tag only).
        clip_id: the clip.
        audio_uri: where the audio lives; never copied into the row.
        question, options: as in the clip.
        completion: the target text, ``<think>..</think><answer>..</answer>`` or ``<answer>..</answer>``.
        label: the answer the completion ends in.
    """

    example_id: str
    variant: str
    clip_id: str
    audio_uri: str
    question: str
    options: list[str]
    completion: str
    label: str

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("example_id", pa.string()),
            ("variant", pa.string()),
            ("clip_id", pa.string()),
            ("audio_uri", pa.string()),
            ("question", pa.string()),
            ("options", _str_list),
            ("completion", pa.string()),
            ("label", pa.string()),
        ]
    )


@dataclasses.dataclass(frozen=True)
class GRPOExample(Record):
    """A GRPO prompt: audio + question + options, rewarded against ``label``.

    Columns:
        example_id: ``grpo:{clip_id}``.
        clip_id, audio_uri, question, options, label: as in the clip (label may be a pseudo-label).
        family: question family, for per-family reward curves.
    """

    example_id: str
    clip_id: str
    audio_uri: str
    question: str
    options: list[str]
    label: str
    family: str

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("example_id", pa.string()),
            ("clip_id", pa.string()),
            ("audio_uri", pa.string()),
            ("question", pa.string()),
            ("options", _str_list),
            ("label", pa.string()),
            ("family", pa.string()),
        ]
    )


@dataclasses.dataclass(frozen=True)
class Prediction(Record):
    """A model's answer to one benchmark item.

    Columns:
        model_tag: which model of the run (pretrained, label_only, cot_noagfv, cot, grpo).
        benchmark: benchmark name from the evaluation config.
        clip_id: the item.
        raw: generated text.
        answer: parsed option, None when it did not parse to one.
        label: the correct option.
        correct: scored by the benchmark's own rule.
        family, category: for per-category accuracy.
        claims: sound claims in ``raw`` that can be checked against the audio. Synthetic items:
            the verifier's claim language, each checked by the waveform analysis. Real items: 1
            when the run's verifier judged the answer's reasoning (``evaluation/judge.py``), else 0.
        contradicted: how many of those the audio does not support (real items: 1 when the
            verifier rejected the reasoning).
        judge: the verifier's status on a real item's reasoning (accepted, rejected, unparseable,
            error); empty when it was not judged.
    """

    model_tag: str
    benchmark: str
    clip_id: str
    raw: str
    answer: str | None
    label: str
    correct: bool
    family: str
    category: str
    claims: int = 0
    contradicted: int = 0
    judge: str = ""

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("model_tag", pa.string()),
            ("benchmark", pa.string()),
            ("clip_id", pa.string()),
            ("raw", pa.string()),
            ("answer", pa.string()),
            ("label", pa.string()),
            ("correct", pa.bool_()),
            ("family", pa.string()),
            ("category", pa.string()),
            ("claims", pa.int64()),
            ("contradicted", pa.int64()),
            ("judge", pa.string()),
        ]
    )


@dataclasses.dataclass(frozen=True)
class Quarantine(Record):
    """An input a stage refused, with the reason; written instead of crashing or dropping.

    Columns:
        stage: the stage that refused it.
        input: what was refused (a path, a record id, a JSON pointer).
        reason: a short machine-friendly reason code (``zero_byte_file``, ``no_audio_stream``...).
        detail: human-readable detail.
    """

    stage: str
    input: str
    reason: str
    detail: str

    SCHEMA: ClassVar[pa.Schema] = pa.schema(
        [
            ("stage", pa.string()),
            ("input", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
        ]
    )


ALL_RECORDS: tuple[type[Record], ...] = (
    Clip,
    TeacherSample,
    Vote,
    Verdict,
    SFTExample,
    GRPOExample,
    Prediction,
    Quarantine,
)
