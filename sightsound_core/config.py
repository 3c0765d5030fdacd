"""Typed configuration: one pydantic model per stage, ``PipelineConfig`` over them, YAML recipes.

Fields that change results take part in each stage's content hash; fields that only change how the
work runs (concurrency, device, API keys, paths of caches) are marked ``runtime`` and are left out,
so turning a runtime knob never invalidates committed work.

Recipes ship inside the package (``sightsound_core/recipes/*.yaml``, package data), so an installed
``sightsound`` has its default; a shipped recipe is named by its file name alone (``paper.yaml``),
any other by its path. Environment variables override any field:
``SIGHTSOUND__TEACHER__K=3`` sets ``teacher.k``; the value is read as YAML (``3`` is an int).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CODE_VERSION = "0.1.0"
ENV_PREFIX = "SIGHTSOUND__"


def runtime(*args: Any, **kwargs: Any) -> Any:
    """A field that changes how work runs, never what it produces: excluded from hashes."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra["runtime"] = True
    return Field(*args, json_schema_extra=extra, **kwargs)


class StageConfig(BaseModel):
    """Base of all configs: unknown keys are errors, so a typo fails before any work starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def hash_payload(self) -> dict[str, Any]:
        """The fields that change results, recursively, as plain JSON-able data."""
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and extra.get("runtime"):
                continue
            value = getattr(self, name)
            out[name] = _payload(value)
        return out

    def content_hash(self) -> str:
        return digest(self.hash_payload())


def _payload(value: Any) -> Any:
    if isinstance(value, StageConfig):
        return value.hash_payload()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_payload(v) for v in value]
    if isinstance(value, dict):
        return {k: _payload(v) for k, v in value.items()}
    return value


def digest(payload: Any, length: int = 16) -> str:
    """A stable hex digest of JSON-able data (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class StoreConfig(StageConfig):
    root: str = runtime(
        "file://./data",
        description="Object-store root as an fsspec URI: file://path (relative to the working "
        "directory) or s3://bucket/prefix.",
    )
    storage_options: dict[str, Any] = runtime(
        default_factory=dict,
        description="fsspec storage options, e.g. {client_kwargs: {endpoint_url: ...}} for S3.",
    )


class SyntheticConfig(StageConfig):
    """The procedural audio-visual world (see sightsound_core.datasets.synthetic).

    ``world: v2`` (the default) is the instrument world: each instrument has its own look and its
    own sound, so a vision model can reason about what is heard. ``v1`` is the older world whose
    sounds are drawn independently of every look.
    """

    world: Literal["v1", "v2"] = Field(
        "v2", description="v2: instruments with a fixed look and sound (three evidence tiers); "
        "v1: coloured shapes whose sounds are independent of their looks."
    )
    n_clips: int = Field(64, ge=1, description="Clips to generate (one question each).")
    seed: int = Field(0, description="World seed: same seed, same clips, same files.")
    duration_s: float = Field(2.0, gt=0.2, le=60, description="Clip length in seconds.")
    fps: int = Field(8, ge=1, le=60, description="Video frame rate of the generated mp4.")
    size: int = Field(96, ge=32, le=1024, description="Square video side in pixels.")
    max_sources: int = Field(3, ge=1, le=6, description="Most sound sources in one clip.")
    acoustic_fraction: float = Field(
        0.5, ge=0, le=1, description="v1: share of acoustic-only questions (the rest visual-correlate)."
    )
    split: str = Field("train", description="Split name written on the clips.")
    tiers: dict[str, float] = Field(
        default_factory=lambda: {"visible": 0.5, "partial": 0.25, "invisible": 0.25},
        description="v2: share of questions per evidence tier (visible correlates, partial "
        "correlates, invisible properties); normalised.",
    )
    partial_rate: float = Field(
        0.8, ge=0, le=1,
        description="v2: fraction of tonal instruments whose pitch follows their size (large "
        "sounds low, small sounds high); the rest sound the other way.",
    )

    @field_validator("tiers")
    @classmethod
    def _known_tiers(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - {"visible", "partial", "invisible"}
        if unknown or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("tiers: weights >= 0 for visible / partial / invisible, not all zero")
        return v


class MediaLimits(StageConfig):
    """Bounds on media that ingest accepts; anything beyond them is quarantined, not decoded later."""

    max_duration_s: float = Field(
        600.0, gt=0, description="Longer clips are quarantined (for a folder corpus: longer windows)."
    )
    max_file_duration_s: float = Field(
        12 * 3600.0, gt=0,
        description="folder: a longer video is quarantined (shorter ones are cut into windows).",
    )
    max_width: int = Field(7680, gt=0, description="Wider video is quarantined.")
    max_height: int = Field(4320, gt=0, description="Taller video is quarantined.")


class WindowConfig(StageConfig):
    """How a folder corpus's long videos become clips: fixed windows, silent ones skipped.

    Windows start at 0, ``hop_s`` apart, each ``length_s`` long (the last one ends with the file).
    A file no longer than one window is one clip, named and addressed as the file itself.
    """

    length_s: float = Field(10.0, gt=0, description="Seconds per window (AVQA's cuts are 10 s).")
    hop_s: float | None = Field(
        None, gt=0, description="Seconds between window starts; default length_s (no overlap). "
        "At most length_s, so every second of a file falls in some window."
    )
    min_s: float = Field(1.0, gt=0, description="A shorter window (a file's tail) is skipped.")
    max_per_video: int | None = Field(
        None, ge=1, description="Cut at most this many windows from one video, from its start; "
        "the rest of it is recorded as one skipped row (over_window_cap)."
    )
    silence_db: float = Field(
        -50.0, le=0, description="A 100 ms block is active when its RMS level is above this (dBFS)."
    )
    min_active_s: float = Field(
        0.3, ge=0, description="A window with less active sound than this is skipped (silent_window)."
    )

    @property
    def hop(self) -> float:
        return self.hop_s if self.hop_s is not None else self.length_s

    @model_validator(mode="after")
    def _hop_covers(self) -> "WindowConfig":
        if self.hop > self.length_s:
            raise ValueError(f"windows.hop_s {self.hop} > length_s {self.length_s} would skip seconds")
        if self.min_s > self.length_s:
            raise ValueError(f"windows.min_s {self.min_s} > length_s {self.length_s}")
        return self


class IngestConfig(StageConfig):
    """Where clips come from and what ingest accepts (see sightsound_core.datasets.ingest).

    ``requires_video`` / ``requires_audio`` follow from the dataset: the teacher needs a video
    stream and the verifier and student an audio stream, except MMAU, which is audio only.
    """

    dataset: Literal["synthetic", "avqa", "music_avqa", "mmau", "folder"] = Field(
        "synthetic", description="Which adapter turns the source into Clip records."
    )
    path: str | None = Field(
        None,
        description="Dataset root (local path or fsspec URI). Every media path of an annotation "
        "resolves inside it; for folder, the folder or bucket prefix to list. Unused for synthetic.",
    )
    annotations: str | None = Field(
        None,
        description="Annotation JSON: a path relative to `path`, or an absolute path / URI. Default: "
        "avqa {split}_qa.json, music_avqa json_update/avqa-{split}.json (release json_update) or "
        "avqa-{split}.json (release original), mmau mmau-test-mini.json.",
    )
    music_avqa_release: Literal["json_update", "original"] = Field(
        "json_update",
        description="MUSIC-AVQA annotation release: json_update (the authors' corrected "
        "annotations, the default) or original (the first release). Picks the default "
        "annotation file and is the benchmark's annotation version.",
    )
    split: str = Field("train", description="Split to read for real datasets, written on the clips.")
    n_options: int = Field(
        4, ge=2, le=16, description="MUSIC-AVQA: options built for each open answer (gold + distractors)."
    )
    extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".mkv", ".webm", ".mov"],
        description="folder: file name endings listed as videos (case-insensitive).",
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    limits: MediaLimits = Field(default_factory=MediaLimits)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    shard_size: int = Field(
        32, ge=1, description="Clips per shard: the unit of caching and retry (folder: videos per "
        "shard, each cut into windows)."
    )
    limit: int | None = Field(
        None, ge=1, description="Read at most this many items (records, or files for folder)."
    )
    page_size: int = runtime(
        1000, ge=1, description="folder: files per listing page (one list request each on S3)."
    )
    storage_options: dict[str, Any] | None = runtime(
        None,
        description="fsspec options for the dataset's URIs; default: the store's when the "
        "protocols match.",
    )

    @model_validator(mode="after")
    def _path_for_real_data(self) -> "IngestConfig":
        if self.dataset != "synthetic" and not self.path:
            raise ValueError(f"ingest.path is required for dataset '{self.dataset}'")
        if self.dataset == "folder" and self.windows.length_s > self.limits.max_duration_s:
            raise ValueError(
                f"ingest.windows.length_s {self.windows.length_s} > limits.max_duration_s "
                f"{self.limits.max_duration_s}: every window would be quarantined"
            )
        return self

    @property
    def requires_video(self) -> bool:
        return self.dataset != "mmau"

    @property
    def requires_audio(self) -> bool:
        return True


class FrameConfig(StageConfig):
    """How the teacher's silent frames are sampled from each clip's video."""

    fps: float = Field(2.0, gt=0, description="Frames per second sampled for the teacher.")
    max_frames: int = Field(16, ge=1, description="At most this many frames per clip.")
    max_pixels: int = Field(224 * 224, ge=32 * 32, description="Frames are downscaled to this area.")


CLIENT_KEYS = ("base_url", "api_key_env", "api_key_secret", "concurrency", "requests_per_minute",
               "tokens_per_minute", "max_retries", "timeout_s", "backoff_base_s", "backoff_max_s",
               "max_retry_after_s")


class ClientConfig(StageConfig):
    """How to reach an OpenAI-compatible server and how hard to push it: one model for every stage
    that talks to one (teacher, question synthesis, verifier). None of it changes results.

    The API key is never a field: only the names of where it lives (``api_key_env``,
    ``api_key_secret``); ``secrets.resolve_api_key`` reads it when a client opens.
    """

    base_url: str | None = Field(None, description="URL up to and including /v1 (None: OpenAI's).")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Env var holding the API key; null for servers that take none."
    )
    api_key_secret: str | None = Field(
        None, description="Prefect Secret block name read when the env var is unset."
    )
    concurrency: int = Field(16, ge=1, description="Requests on the wire at once.")
    requests_per_minute: int | None = Field(None, ge=1, description="Client-side request limit.")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Client-side token limit (estimated per request, corrected from usage)."
    )
    max_retries: int = Field(
        6, ge=0, description="Retries after the first attempt, on 408/409/429/5xx, timeouts, "
        "connection failures and malformed replies."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-attempt timeout, whole request.")
    backoff_base_s: float = Field(
        0.5, gt=0, description="Full-jitter backoff: retry r waits up to base * 2**r, capped."
    )
    backoff_max_s: float = Field(30.0, gt=0, description="Longest backoff between retries.")
    max_retry_after_s: float = Field(
        120.0, gt=0, description="Longest server-requested wait (Retry-After) honoured; longer "
        "ones are capped to it."
    )


def client_field(**defaults: Any) -> Any:
    """A stage's ``client`` field (runtime: outside the stage hash), with the stage's defaults."""
    return runtime(
        default_factory=lambda: ClientConfig(**defaults),
        description="OpenAI-compatible client (openai backend). The same keys are also accepted "
        "flat on the stage (teacher.concurrency), as older recipes wrote them.",
    )


def lift_client_keys(data: Any, defaults: dict[str, Any]) -> Any:
    """Move client keys written flat on a stage (``verify.concurrency``) into its ``client``,
    over the stage's defaults; a key given both ways is an error."""
    if not isinstance(data, dict):
        return data
    flat = {k: data[k] for k in CLIENT_KEYS if k in data}
    nested = data.get("client")
    if isinstance(nested, ClientConfig) and not flat:
        return data
    if not flat and nested is None:
        return data
    nested = nested.model_dump() if isinstance(nested, ClientConfig) else dict(nested or {})
    both = sorted(set(flat) & set(nested))
    if both:
        raise ValueError(f"client keys given both flat and under client: {both}")
    rest = {k: v for k, v in data.items() if k not in CLIENT_KEYS}
    return {**rest, "client": {**defaults, **nested, **flat}}


# Video requests for K samples are heavier than one verdict: fewer at once, longer to answer.
_TEACHER_CLIENT = {"concurrency": 8, "timeout_s": 120.0}
_VERIFY_CLIENT = {"concurrency": 16, "timeout_s": 60.0}


class TeacherConfig(StageConfig):
    """The vision-language teacher: K samples per question from the silent frames.

    Backends: ``sim`` (the synthetic world's simulated teacher), ``hf`` (transformers, Qwen2.5-VL;
    encodes each video once for its K samples), ``vllm`` (offline engine, ``n=K`` shares one
    prefill), ``openai`` (any OpenAI-compatible server, async, bounded, retried).
    """

    backend: Literal["sim", "hf", "openai", "vllm"] = Field("sim", description="Teacher backend.")
    model: str = Field(
        "sim://vision-teacher",
        description="Model id or path (tiny://qwen2.5-vl for the tiny model, a local checkpoint, "
        "or a served model name for openai).",
    )
    k: int = Field(5, ge=1, le=64, description="Samples per question (test-time scaling).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=8)
    seed: int = Field(0, description="Sampling seed.")
    frames: FrameConfig = Field(default_factory=FrameConfig)
    prompt_version: str = Field(
        "teacher-v1", description="Teacher prompt template version; must be this code's version."
    )
    media: Literal["video", "frames"] = Field(
        "video",
        description="openai backend: send a silent mp4 as video_url (vllm serve, Qwen2.5-VL) or "
        "the sampled frames as timestamped images (hosted image models).",
    )
    questions_per_clip: int = Field(
        3, ge=1, le=16, description="Question synthesis: questions proposed per unlabeled clip."
    )
    questions_prompt_version: str = Field(
        "questions-v1", description="Question-synthesis prompt version; must be this code's version."
    )
    client: ClientConfig = client_field(**_TEACHER_CLIENT)
    batch_size: int = runtime(8, ge=1, description="Clips per generate call (hf/vllm).")
    device: str = runtime("auto", description="hf: auto, cpu or cuda.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = runtime(
        "auto", description="hf/vllm weights dtype; auto is bfloat16 on GPU, float32 on CPU."
    )
    compile: bool = runtime(
        False, description="hf: static KV cache and a CUDA-graph-compiled decode step (GPU)."
    )
    tensor_parallel_size: int = runtime(1, ge=1, description="vLLM tensor parallelism.")
    gpu_memory_utilization: float = runtime(0.9, gt=0, le=1, description="vLLM memory share.")

    @model_validator(mode="before")
    @classmethod
    def _client_keys(cls, data: Any) -> Any:
        return lift_client_keys(data, _TEACHER_CLIENT)

    @field_validator("prompt_version")
    @classmethod
    def _known_teacher_prompt(cls, v: str) -> str:
        from sightsound_core.prompts import TEACHER_VERSION

        if v != TEACHER_VERSION:
            raise ValueError(f"this code writes teacher prompt {TEACHER_VERSION!r}, not {v!r}")
        return v

    @field_validator("questions_prompt_version")
    @classmethod
    def _known_questions_prompt(cls, v: str) -> str:
        from sightsound_core.prompts import QUESTIONS_VERSION

        if v != QUESTIONS_VERSION:
            raise ValueError(f"this code writes question prompt {QUESTIONS_VERSION!r}, not {v!r}")
        return v


class VoteConfig(StageConfig):
    """The test-time-scaling filter over each clip's K parsed answers."""

    policy: Literal["unanimous", "majority"] = Field(
        "unanimous", description="unanimous (the paper) or majority (agreement >= min_agreement)."
    )
    min_agreement: float = Field(0.5, gt=0, le=1, description="For the majority policy.")
    require_label_match: bool = Field(
        True, description="Drop clips whose winning answer differs from the label, where labeled."
    )


class VerifyConfig(StageConfig):
    """AGFV: an audio model hears each kept trace's clip and accepts or rejects the trace.

    The server and the client's discipline are ``client`` (``ClientConfig``, as the teacher's).
    """

    backend: Literal["sim", "openai", "hf", "vllm"] = Field(
        "sim",
        description="sim (waveform simulator), openai (any OpenAI-compatible server: GPT-4o-audio, "
        "vllm serve with Qwen2-Audio / Qwen2.5-Omni), hf (transformers Qwen2-Audio), vllm (offline).",
    )
    model: str = Field(
        "sim://waveform-verifier",
        description="Verifier model: a served model name (openai), a checkpoint path or hub id "
        "(hf, vllm; tiny://qwen2-audio in tests).",
    )
    prompt_version: str = Field("verifier-v1")
    samples_per_clip: int = Field(
        1, ge=1, description="Traces verified per kept clip (the first N of its K samples)."
    )
    max_new_tokens: int = Field(256, ge=8)
    client: ClientConfig = client_field(**_VERIFY_CLIENT)
    part_size: int = runtime(
        64, ge=1, description="Traces per call of a batch backend (sim, hf, vllm); each call's "
        "verdicts are saved before the next. A streaming backend (openai) saves each verdict as "
        "its answer arrives, so a killed run re-asks only what was on the wire."
    )
    batch_size: int = runtime(8, ge=1, description="Traces per generate call (hf, vllm).")
    device: str = runtime("auto", description="auto, cpu or cuda (hf).")
    tensor_parallel_size: int = runtime(1, ge=1, description="vLLM tensor parallelism.")

    @model_validator(mode="before")
    @classmethod
    def _client_keys(cls, data: Any) -> Any:
        return lift_client_keys(data, _VERIFY_CLIENT)


class CorpusConfig(StageConfig):
    variants: list[Literal["cot", "cot_noagfv", "label_only"]] = Field(
        default_factory=lambda: ["cot", "cot_noagfv", "label_only"],
        description="SFT sets to build.",
    )
    traces_per_clip: int = Field(1, ge=1, description="Verified traces kept per clip for SFT.")
    drop_silent_solvable: bool = Field(
        False,
        description="Drop from every training set the clips the pretrained student answers right "
        "with their audio replaced by silence (it runs on them at corpus time, greedy, with "
        "evaluate's backend and max_new_tokens); the funnel counts them.",
    )


class LoraConfig(StageConfig):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names inside the language model (never the audio encoder).",
    )


class SFTConfig(StageConfig):
    variants: list[Literal["cot", "cot_noagfv", "label_only"]] = Field(
        default_factory=lambda: ["cot"], description="Which corpus sets to train on (one model each)."
    )
    max_steps: int = Field(2000, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="None: full fine-tune.")
    max_length: int = Field(1024, ge=32)
    seed: int = Field(0)
    save_steps: int = runtime(200, ge=1, description="Checkpoint every N steps.")
    gradient_checkpointing: bool = runtime(False)
    bf16: bool = runtime(False, description="bf16 autocast (GPU).")
    dataloader_workers: int = runtime(
        0, ge=0, description="Processes building batches (audio decode, features) ahead of the "
        "GPU; 0 builds them in the training loop. Use 2 or more on GPU workers."
    )
    logging_steps: int = runtime(
        1, ge=1, description="Log the loss every N steps (each log waits for the GPU)."
    )
    optim: str = runtime(
        "adamw_torch", description="transformers optimizer name; adamw_torch_fused on GPU."
    )


class GRPOConfig(StageConfig):
    enabled: bool = Field(True)
    num_generations: int = Field(8, ge=2, description="Completions per prompt (G).")
    max_steps: int = Field(1000, ge=1)
    learning_rate: float = Field(1e-6, gt=0)
    beta: float = Field(0.04, ge=0, description="KL coefficient against the reference policy.")
    prompts_per_step: int = Field(2, ge=1)
    max_completion_length: int = Field(256, ge=4)
    temperature: float = Field(1.0, gt=0)
    epsilon: float = Field(0.2, gt=0, description="PPO-style clip range.")
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 1.0, "format": 1.0}
    )
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="None: full-parameter.")
    seed: int = Field(0)
    save_steps: int = runtime(50, ge=1)
    bf16: bool = runtime(
        False, description="bf16: the frozen base held in bf16 under LoRA, forwards autocast (GPU)."
    )
    micro_batch_rows: int | None = runtime(
        None, ge=1, description="Completions scored per forward/backward; None: a process's whole "
        "step at once. The update is the same; smaller needs less GPU memory."
    )


AnswerRule = Literal["answer_block_or_raw", "answer_block"]


class BenchmarkConfig(StageConfig):
    """One benchmark of the evaluate stage: its items (an ingest config) and its scoring rule.

    Each real benchmark is scored only by its own rule (``mmau`` items by MMAU's official string
    match, never by option equality), and MMAU's annotation release must be named: the May 2025
    relabel changed about a quarter of test-mini's answers, so a score means nothing without it.
    """

    name: str = Field(description="Name in the report; unique among the benchmarks.")
    ingest: IngestConfig = Field(description="Where its items come from.")
    scorer: Literal["option", "avqa", "music_avqa", "mmau"] = Field(
        "option",
        description="Scoring rule (sightsound_core.evaluation.scoring): option (parsed option equals "
        "the label: synthetic, folder), avqa, music_avqa, mmau (official string match). Each "
        "reads the text answer_rule picks. avqa, music_avqa and mmau go with their own dataset only.",
    )
    annotation_version: str | None = Field(
        None,
        description="Which release of the annotations was scored, recorded with the scores and in "
        "the prediction file. Required for mmau: e.g. 'v05.15.25' (the May 2025 relabel) or "
        "'original' (the 2024 release). music_avqa: ingest.music_avqa_release, recorded as it.",
    )
    answer_rule: AnswerRule = Field(
        "answer_block_or_raw",
        description="Which text of an output is scored, for every scorer: answer_block_or_raw (the "
        "<answer> content, or the whole output when it has no <answer> tag, as R1-AQA scores) or "
        "answer_block (strict: an output without an answer block scores 0). See "
        "sightsound_core.evaluation.scoring.",
    )

    @model_validator(mode="after")
    def _scorer_fits_dataset(self) -> "BenchmarkConfig":
        own_rule = ("avqa", "music_avqa", "mmau")
        dataset = self.ingest.dataset
        if (dataset in own_rule or self.scorer in own_rule) and self.scorer != dataset:
            raise ValueError(
                f"benchmark {self.name!r}: dataset {dataset!r} cannot be scored by {self.scorer!r}"
                + (f"; use scorer: {dataset}" if dataset in own_rule else "")
            )
        release = self.ingest.music_avqa_release
        if dataset == "music_avqa" and self.annotation_version not in (None, release):
            raise ValueError(
                f"benchmark {self.name!r}: annotation_version {self.annotation_version!r} but "
                f"ingest.music_avqa_release is {release!r}; set the release, the version follows it"
            )
        if self.scorer == "mmau" and not self.annotation_version:
            raise ValueError(
                f"benchmark {self.name!r}: name the MMAU annotation release in annotation_version "
                "(e.g. 'v05.15.25' or 'original')"
            )
        return self


EVALUATED_MODELS = ("pretrained", "label_only", "cot_noagfv", "cot", "grpo")


class EvaluateConfig(StageConfig):
    """Every model the run produced, on every benchmark (one job per pair)."""

    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    models: list[Literal["pretrained", "label_only", "cot_noagfv", "cot", "grpo"]] = Field(
        default_factory=lambda: list(EVALUATED_MODELS),
        description="Which of the run's models to evaluate; a model the run did not produce "
        "(an SFT variant not trained, GRPO disabled) is skipped.",
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="Inference engine: hf (transformers, CPU or GPU) or vllm (GPU host)."
    )
    max_new_tokens: int = Field(128, ge=4)
    silent_probe: bool = Field(
        True,
        description="Each model also answers every item with its audio replaced by silence of the "
        "same length (the silent-audio probe): accuracy with silence beside accuracy with audio.",
    )
    judge: bool = Field(
        True,
        description="On benchmarks of real clips, the run's verifier (verify.backend) hears each "
        "answer that reasons (a non-empty <think>) and accepts or rejects it, as it does a teacher "
        "trace: the student hallucination rate there, per answer. Synthetic items are checked claim "
        "by claim by the waveform analysis instead.",
    )
    batch_size: int = runtime(64, ge=1, description="Items per generate call.")

    @field_validator("benchmarks")
    @classmethod
    def _unique_names(cls, v: list[BenchmarkConfig]) -> list[BenchmarkConfig]:
        names = [b.name for b in v]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"benchmark names must be unique; repeated: {repeated}")
        return v


class ModelsConfig(StageConfig):
    student: str = Field(
        "tiny://qwen2-audio",
        description="Student checkpoint: tiny://qwen2-audio, a local path, or a hub id "
        "(Qwen/Qwen2-Audio-7B-Instruct) already in the local HF cache.",
    )
    cache_dir: str | None = runtime(None, description="Where tiny models are built (default ~/.cache).")
    device: str = runtime("auto", description="auto, cpu or cuda.")


class LaunchConfig(StageConfig):
    """How a training job uses the GPUs of its worker.

    With ``num_processes`` above 1 each training job runs under ``accelerate launch`` (DDP, one
    process per GPU). GRPO splits each step's prompts across processes and takes the same update
    as one process would; SFT trains ``per_device_batch_size`` rows on each process, so its global
    batch grows with the process count, and the count is part of the SFT stage hash.
    """

    num_processes: int = runtime(1, ge=1, description="Processes (GPUs) per training job.")
    accelerate_config: str | None = runtime(
        None,
        description="accelerate config file, e.g. deployments/accelerate/ddp.yaml (SFT and GRPO) "
        "or deployments/accelerate/zero3.yaml (SFT only); None: DDP on this machine's GPUs.",
    )
    main_process_port: int | None = runtime(
        None, ge=1, le=65535, description="Rendezvous port; None picks a free one."
    )


class OrchestrationConfig(StageConfig):
    """How the DAG is run; none of it changes results."""

    max_workers: int = runtime(2, ge=1, description="Task runner threads for shard tasks.")
    shards_per_task: int | Literal["auto"] = runtime(
        "auto",
        description="Shards one task processes. auto: enough tasks to keep every worker busy "
        "about four times over, so stages of many tiny shards do not pay Prefect's per-task cost "
        "per shard; a failed task's committed shards are still reused on retry.",
    )

    def batch_size(self, n_shards: int) -> int:
        """Shards per task for a stage of ``n_shards``.

        >>> OrchestrationConfig().batch_size(1000), OrchestrationConfig().batch_size(3)
        (125, 1)
        """
        if self.shards_per_task == "auto":
            return max(1, -(-n_shards // (4 * self.max_workers)))
        return self.shards_per_task
    retries: int = runtime(2, ge=0, description="Retries of a task on transient errors only.")
    dispatch_train: str | None = runtime(
        None, description="Deployment ('flow/deployment') that runs the training flow on a GPU "
        "pool; None runs it in place."
    )
    dispatch_evaluate: str | None = runtime(
        None, description="Deployment that runs the evaluation flow on a GPU pool."
    )
    fanout: str | None = runtime(
        None, description="Deployment of the stage-batch flow ('stage-batch/gpu'): the shards of "
        "the stages in fanout_stages then run as one flow run per batch (shards_per_task shards) "
        "on that deployment's work pool, on as many workers as it has. None: in this flow run."
    )
    fanout_stages: list[str] = runtime(
        ["questions", "teacher", "evaluate"],
        description="Stages whose batches fan out when fanout is set: the GPU stages that map "
        "shard by shard. Add verify when its backend is hf or vllm.",
    )
    fanout_attempts: int = runtime(
        3, ge=1, description="Flow runs a batch gets: one that crashed (its worker or machine "
        "died, marked Crashed by Prefect's unresponsive-run automation) is run again on any free "
        "worker; a batch that failed (its tasks raised after their retries) fails the stage."
    )
    fanout_poll_s: float = runtime(2.0, gt=0, description="Seconds between looks at the batches' flow runs.")


class PipelineConfig(StageConfig):
    run: str = Field("demo", description="Run name: outputs go under {store.root}/{run}/.")
    store: StoreConfig = Field(default_factory=StoreConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    vote: VoteConfig = Field(default_factory=VoteConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @field_validator("run")
    @classmethod
    def _run_name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_." for c in v) or v.startswith("."):
            raise ValueError("run must be a non-empty name of letters, digits, '-', '_' or '.'")
        return v


class ConfigError(ValueError):
    """A recipe that cannot run; the message names each bad field and why."""


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot override inside a non-mapping field")
    node[path[-1]] = value


def apply_env_overrides(data: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply ``SIGHTSOUND__A__B=value`` overrides (lowercased path, YAML-parsed value)."""
    environ = dict(os.environ if environ is None else environ)
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX):
            path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
            if path:
                _set_path(data, path, yaml.safe_load(environ[key]))
    return data


def parse_config(data: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid recipe {source}:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> PipelineConfig:
    """Read a YAML recipe, apply dotted-key overrides (``{"teacher.k": 3}``) then environment
    overrides, validate. Fails fast, naming each bad field."""
    path = recipe_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    for key, value in (overrides or {}).items():
        _set_path(data, key.split("."), value)
    return parse_config(apply_env_overrides(data, environ), str(path))


# Package data: a directory on disk in both editable and regular installs.
RECIPES_DIR = Path(str(importlib.resources.files("sightsound_core") / "recipes"))
DEFAULT_RECIPE = RECIPES_DIR / "demo.yaml"


def recipe_path(recipe: str | Path) -> Path:
    """The recipe file ``recipe`` names: a path that exists, else a shipped recipe's file name.

    >>> recipe_path("paper.yaml") == RECIPES_DIR / "paper.yaml"
    True
    >>> str(recipe_path("no/such.yaml"))
    'no/such.yaml'
    """
    path = Path(recipe)
    if not path.exists() and path.name == str(recipe) and (RECIPES_DIR / path.name).is_file():
        return RECIPES_DIR / path.name
    return path
