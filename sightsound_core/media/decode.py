"""Decode media with PyAV: silent video frames for the teacher, 16 kHz mono audio for the rest.

Every function takes an fsspec URI (``file:///abs/path``, a plain path, ``s3://bucket/key`` with
``storage_options``), opens it with fsspec and hands the file object to ``av.open``, so local and
object-store media go through one code path. A file that cannot be used raises ``MediaError`` with
a short ``reason`` code (the Quarantine reason) and a human ``detail``; nothing else is raised for
bad media.

Video and audio are decoded separately on purpose: ``load_frames`` never demuxes the audio
stream, so the vision teacher cannot hear the clip even by accident.

Windows. A URI may end in a media fragment, ``{file}#t={start},{end}`` (seconds, W3C Media
Fragments), naming a window of a longer file (``window_uri``). ``load_frames`` and ``load_audio``
then seek to the window's start and stop decoding at its end, so a window costs about the same
wherever it lies in the file, and frame times are relative to the window's start. Every stage that
opens a clip's ``video_uri`` or ``audio_uri`` goes through these two functions, so the window is
honoured everywhere without the stages knowing about it. A ``DecodeCounter`` passed to either
counts the packets demuxed and frames decoded, the measure of that cost.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from contextlib import contextmanager
from typing import Any, Iterator

import av
import fsspec
import numpy as np
from av.video.reformatter import VideoReformatter

from sightsound_core.errors import InputRefused
from sightsound_core.config import MediaLimits

log = logging.getLogger(__name__)

# Leading bytes of the containers we read. A file that starts like media but does not open is
# truncated (an mp4 whose moov atom was never written); one that does not is not media at all.
_MAGIC = (
    (4, b"ftyp"),  # mp4 / mov / m4a
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"RIFF"),  # wav
    (0, b"fLaC"),
    (0, b"OggS"),
    (0, b"ID3"),  # mp3 with a tag
    (0, b"\xff\xfb"),  # mp3 frame sync (MPEG-1 layer III)
    (0, b"\xff\xf3"),
    (0, b"\xff\xf2"),
)
# Decoded audio shorter than this share of the declared duration means the file was cut short.
_MIN_DECODED_SHARE = 0.5
_FRAGMENT = re.compile(r"#t=(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)$")


def seconds_text(x: float) -> str:
    """Seconds as written in window ids and URIs: millisecond precision, no trailing zeros.

    >>> seconds_text(30.0), seconds_text(12.5), seconds_text(1 / 3)
    ('30', '12.5', '0.333')
    """
    return f"{x:.3f}".rstrip("0").rstrip(".")


def window_uri(uri: str, start_s: float, end_s: float) -> str:
    """``uri`` narrowed to the window ``[start_s, end_s)``.

    >>> window_uri("s3://b/a.mp4", 30, 40)
    's3://b/a.mp4#t=30,40'
    """
    return f"{uri}#t={seconds_text(start_s)},{seconds_text(end_s)}"


def split_window(uri: str) -> tuple[str, float | None, float | None]:
    """The file URI and the window a URI names, ``(uri, None, None)`` when it names no window.

    >>> split_window("file:///v/a.mp4#t=30,40.5")
    ('file:///v/a.mp4', 30.0, 40.5)
    >>> split_window("file:///v/a.mp4")
    ('file:///v/a.mp4', None, None)
    """
    m = _FRAGMENT.search(uri)
    if m is None:
        return uri, None, None
    return uri[: m.start()], float(m.group(1)), float(m.group(2))


@dataclasses.dataclass
class DecodeCounter:
    """What decoding cost: packets demuxed and frames decoded, summed over the calls given it."""

    packets: int = 0
    frames: int = 0


class MediaError(InputRefused):
    """Media that cannot be used.

    Attributes:
        reason: short code, one of ``not_found``, ``zero_byte_file``, ``not_media``,
            ``truncated``, ``no_video_stream``, ``no_audio_stream``, ``zero_length_audio``,
            ``non_finite_samples``, ``duration_too_long``, ``resolution_too_large``.
        detail: human-readable detail naming the file.
    """


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What a file holds.

    Attributes:
        has_video, has_audio: whether the container has such a stream.
        duration_s: seconds (longest stream; 0.0 when the container does not say).
        width, height: first video stream's size in pixels (0 without video).
        fps: first video stream's average frame rate (0.0 without video or when unknown).
        audio_rate: first audio stream's sample rate in Hz (0 without audio).
    """

    has_video: bool
    has_audio: bool
    duration_s: float
    width: int
    height: int
    fps: float
    audio_rate: int


@contextmanager
def _open(uri: str, storage_options: dict[str, Any] | None) -> Iterator[av.container.InputContainer]:
    """Open ``uri`` (a window's file) through fsspec and PyAV, mapping open failures to MediaError."""
    uri = split_window(uri)[0]
    try:
        fobj = fsspec.open(uri, "rb", **(storage_options or {})).open()
    except FileNotFoundError:
        raise MediaError("not_found", f"{uri}: no such file") from None
    try:
        head = fobj.read(16)
        if not head:
            raise MediaError("zero_byte_file", f"{uri}: file is empty")
        fobj.seek(0)
        try:
            container = av.open(fobj, mode="r")
        except (av.error.FFmpegError, ValueError) as exc:
            looks_like_media = any(head[o : o + len(m)] == m for o, m in _MAGIC)
            reason = "truncated" if looks_like_media else "not_media"
            raise MediaError(reason, f"{uri}: {exc}") from None
        try:
            yield container
        finally:
            container.close()
    finally:
        fobj.close()


def _duration(container: av.container.InputContainer) -> float:
    """Longest stream duration in seconds, falling back to the container's; 0.0 when unknown."""
    best = 0.0
    for stream in container.streams:
        if stream.duration is not None and stream.time_base is not None:
            best = max(best, float(stream.duration * stream.time_base))
    if best == 0.0 and container.duration is not None:
        best = container.duration / av.time_base
    return best


def probe(uri: str, storage_options: dict[str, Any] | None = None) -> MediaInfo:
    """Read a file's streams and sizes without decoding it."""
    with _open(uri, storage_options) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            raise MediaError("not_media", f"{uri}: no audio or video stream")
        return MediaInfo(
            has_video=video is not None,
            has_audio=audio is not None,
            duration_s=_duration(container),
            width=video.codec_context.width if video is not None else 0,
            height=video.codec_context.height if video is not None else 0,
            fps=float(video.average_rate) if video is not None and video.average_rate else 0.0,
            audio_rate=audio.codec_context.sample_rate if audio is not None else 0,
        )


def check_limits(info: MediaInfo, limits: MediaLimits, uri: str = "", windowed: bool = False) -> None:
    """Raise MediaError when probed media is longer or larger than the configured limits.

    A file that will be cut into windows (``windowed``) answers to ``max_file_duration_s``; the
    windows themselves are bounded by ``max_duration_s``.
    """
    bound = limits.max_file_duration_s if windowed else limits.max_duration_s
    if info.duration_s > bound:
        raise MediaError("duration_too_long", f"{uri}: {info.duration_s:.1f} s > {bound:.1f} s")
    if info.width > limits.max_width or info.height > limits.max_height:
        raise MediaError(
            "resolution_too_large",
            f"{uri}: {info.width}x{info.height} > {limits.max_width}x{limits.max_height}",
        )


def screen_media(
    uri: str,
    limits: MediaLimits,
    requires_video: bool,
    requires_audio: bool,
    storage_options: dict[str, Any] | None = None,
    windowed: bool = False,
) -> MediaInfo:
    """Everything ingest checks before a file may enter the run; raises MediaError, else its info.

    Probes the container, applies ``limits``, demands the streams the dataset needs, and decodes
    the audio track when audio is needed: zero-length, NaN/inf and cut-short audio only show up
    in the samples, and it is cheaper to refuse such a file once here than in every later stage.
    Video is not decoded: a file whose header opens but whose video is cut short still decodes
    the frames it has. A file to be cut into windows (``windowed``) is held to the file limit and
    its audio is left to the window scan (``audio_levels``), which judges each window on its own.
    """
    info = probe(uri, storage_options)
    check_limits(info, limits, uri, windowed)
    if requires_video and not info.has_video:
        raise MediaError("no_video_stream", f"{uri}: no video stream (this dataset needs video)")
    if requires_audio and not info.has_audio:
        raise MediaError("no_audio_stream", f"{uri}: no audio stream (this dataset needs audio)")
    if requires_audio and not windowed:
        load_audio(uri, storage_options=storage_options)
    return info


def sample_times(duration_s: float, fps: float, max_frames: int) -> np.ndarray:
    """Uniform sampling instants (seconds): about ``fps`` per second, at most ``max_frames``.

    Each instant is the centre of an equal slice of the clip, so a short clip still gets a
    frame from its middle rather than only its first frame.

    >>> sample_times(2.0, 2.0, 16).tolist()
    [0.25, 0.75, 1.25, 1.75]
    >>> len(sample_times(60.0, 2.0, 16))
    16
    """
    n = int(min(max_frames, max(1, round(duration_s * fps))))
    return (np.arange(n) + 0.5) * (duration_s / n)


def _scaled_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest even size with the same aspect and at most ``max_pixels`` pixels (never upscaled)."""
    scale = min(1.0, (max_pixels / float(width * height)) ** 0.5)
    w = max(2, int(width * scale) // 2 * 2)
    h = max(2, int(height * scale) // 2 * 2)
    return w, h


def _decoded(
    container: av.container.InputContainer, stream: Any, counter: DecodeCounter | None
) -> Iterator[Any]:
    """Frames of one stream, in order, counting packets and frames into ``counter``."""
    for packet in container.demux(stream):
        if counter is not None:
            counter.packets += 1
        for frame in packet.decode():
            if counter is not None:
                counter.frames += 1
            yield frame


def _seek(container: av.container.InputContainer, stream: Any, start_s: float) -> None:
    """Jump to the last keyframe at or before ``start_s`` (nothing to do at the file's start)."""
    if start_s > 0:
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True, any_frame=False)


def load_frames(
    uri: str,
    fps: float,
    max_frames: int,
    max_pixels: int,
    storage_options: dict[str, Any] | None = None,
    counter: DecodeCounter | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Silent frames of the first video stream, of the whole file or of the window ``uri`` names.

    Returns:
        frames: (T, H, W, 3) uint8 RGB, T <= max_frames, H * W <= max_pixels, aspect kept.
        times_s: (T,) float64, presentation time in seconds of each returned frame, from the
            window's start (a frame on screen since before the window started counts as 0).

    For each sampling instant (``sample_times``) the frame on screen at that instant is kept:
    the last frame whose timestamp is at or before it.
    """
    _, win_start, win_end = split_window(uri)
    with _open(uri, storage_options) as container:
        if not container.streams.video:
            raise MediaError("no_video_stream", f"{uri}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        origin = win_start or 0.0
        duration = (win_end - origin) if win_end is not None else _duration(container)
        width, height = _scaled_size(
            stream.codec_context.width, stream.codec_context.height, max_pixels
        )
        # Without a known duration, keep every frame's time first and sample afterwards.
        targets = origin + sample_times(duration, fps, max_frames) if duration > 0 else None

        scaler = VideoReformatter()
        picked: list[np.ndarray] = []
        times: list[float] = []
        pending: tuple[float, av.VideoFrame] | None = None
        every: list[tuple[float, np.ndarray]] = []
        try:
            _seek(container, stream, origin)
            for frame in _decoded(container, stream, counter):
                t = float(frame.time) if frame.time is not None else 0.0
                if targets is None:
                    every.append((t, _rgb(scaler, frame, width, height)))
                    continue
                # Emit the previous frame for every target it covers (those before this frame).
                while pending is not None and len(picked) < len(targets) and t > targets[len(picked)]:
                    picked.append(_rgb(scaler, pending[1], width, height))
                    times.append(pending[0])
                if len(picked) == len(targets):
                    break
                pending = (t, frame)
        except av.error.FFmpegError as exc:
            if not picked and pending is None and not every:
                raise MediaError("truncated", f"{uri}: {exc}") from None
            log.warning("%s: video decoding stopped early: %s", uri, exc)

        if targets is None:
            if not every:
                raise MediaError("truncated", f"{uri}: no decodable video frame")
            all_times = np.array([t for t, _ in every])
            want = sample_times(all_times[-1] + 1e-6, fps, max_frames) + all_times[0]
            idx = np.clip(np.searchsorted(all_times, want, side="right") - 1, 0, len(every) - 1)
            return np.stack([every[i][1] for i in idx]), all_times[idx]

        # Targets after the last decoded frame see that frame (it stays on screen to the end).
        while pending is not None and len(picked) < len(targets):
            picked.append(_rgb(scaler, pending[1], width, height))
            times.append(pending[0])
        if not picked:
            raise MediaError("truncated", f"{uri}: no decodable video frame")
        return np.stack(picked), np.maximum(np.asarray(times, dtype=np.float64) - origin, 0.0)


def _rgb(scaler: VideoReformatter, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    # One reformatter per clip: it keeps its swscale context between frames, where
    # ``frame.reformat`` builds a new one per call (about 30x slower on small frames).
    return scaler.reformat(
        frame, width=width, height=height, format="rgb24", interpolation="AREA"
    ).to_ndarray()


def load_audio(
    uri: str,
    sample_rate: int = 16000,
    storage_options: dict[str, Any] | None = None,
    counter: DecodeCounter | None = None,
) -> np.ndarray:
    """The first audio stream (or the window ``uri`` names) as float32 mono at ``sample_rate`` Hz,
    shape (n_samples,).

    Multi-channel audio is downmixed by the resampler. Raises MediaError for a file without
    audio, with no samples, with NaN/inf samples, or cut well short of its declared length (of
    the window's length, for a window).
    """
    _, win_start, win_end = split_window(uri)
    with _open(uri, storage_options) as container:
        if not container.streams.audio:
            raise MediaError("no_audio_stream", f"{uri}: no audio stream")
        stream = container.streams.audio[0]
        if win_end is not None:
            declared = win_end - (win_start or 0.0)
        elif stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        else:
            declared = 0.0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        try:
            if win_start is not None:
                _seek(container, stream, win_start)
            for frame in _decoded(container, stream, counter):
                if win_end is not None and frame.time is not None and frame.time >= win_end:
                    break
                if first_time is None:
                    first_time = float(frame.time) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            if not chunks:
                raise MediaError("truncated", f"{uri}: {exc}") from None
            log.warning("%s: audio decoding stopped early: %s", uri, exc)

    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if win_start is not None and win_end is not None:
        # Decoding starts at a packet boundary at or before the window: cut to the window exactly.
        skip = max(0, round((win_start - (first_time or 0.0)) * sample_rate))
        audio = audio[skip : skip + round((win_end - win_start) * sample_rate)]
    if audio.size == 0:
        raise MediaError("zero_length_audio", f"{uri}: audio stream has no samples")
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise MediaError("non_finite_samples", f"{uri}: {bad} NaN/inf samples")
    if declared > 0 and audio.size < _MIN_DECODED_SHARE * declared * sample_rate:
        raise MediaError(
            "truncated", f"{uri}: decoded {audio.size / sample_rate:.2f} s of {declared:.2f} s"
        )
    return audio


LEVEL_RATE = 16000  # Hz of the samples ``audio_levels`` counts


@dataclasses.dataclass(frozen=True)
class AudioLevels:
    """A file's audio track summarised in fixed blocks, read in one streaming pass.

    Attributes:
        block_s: seconds per block.
        level_db: (B,) RMS level of each block in dBFS (-inf for digital silence).
        samples: (B,) samples (at LEVEL_RATE) decoded into each block (short at the end, or where decoding stopped).
        non_finite: (B,) NaN/inf samples in each block.
    """

    block_s: float
    level_db: np.ndarray
    samples: np.ndarray
    non_finite: np.ndarray

    def span(self, start_s: float, end_s: float) -> slice:
        """The blocks of ``[start_s, end_s)``."""
        return slice(round(start_s / self.block_s), round(end_s / self.block_s))


def audio_levels(
    uri: str,
    block_s: float = 0.1,
    until_s: float | None = None,
    storage_options: dict[str, Any] | None = None,
    counter: DecodeCounter | None = None,
) -> AudioLevels:
    """Block levels of the first audio stream up to ``until_s`` (default: its end), at 16 kHz mono.

    Memory stays at one block per ``block_s`` however long the file: an hours-long track is
    summarised as it decodes, never held. Raises MediaError without an audio stream, or when it
    decodes to no samples at all.
    """
    per_block = max(1, round(block_s * LEVEL_RATE))
    sq: list[float] = []
    counts: list[int] = []
    bad: list[int] = []
    carry = np.zeros(0, np.float32)
    limit = None if until_s is None else math.ceil(until_s / block_s) * per_block
    taken = 0

    def add(samples: np.ndarray) -> None:
        finite = np.isfinite(samples)
        sq.append(float(np.square(samples[finite], dtype=np.float64).sum()))
        counts.append(samples.size)
        bad.append(int(samples.size - finite.sum()))

    with _open(uri, storage_options) as container:
        if not container.streams.audio:
            raise MediaError("no_audio_stream", f"{uri}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=LEVEL_RATE)
        try:
            for frame in _decoded(container, stream, counter):
                for out in resampler.resample(frame):
                    carry = np.concatenate([carry, out.to_ndarray().reshape(-1)])
                    while carry.size >= per_block:
                        add(carry[:per_block])
                        carry = carry[per_block:]
                taken = len(counts) * per_block
                if limit is not None and taken >= limit:
                    break
        except av.error.FFmpegError as exc:
            if not counts and carry.size == 0:
                raise MediaError("truncated", f"{uri}: {exc}") from None
            log.warning("%s: audio decoding stopped early: %s", uri, exc)
    if carry.size and (limit is None or taken < limit):
        add(carry)
    if not counts:
        raise MediaError("zero_length_audio", f"{uri}: audio stream has no samples")
    n = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        level = 10 * np.log10(np.asarray(sq) / np.maximum(n, 1))
    return AudioLevels(block_s, level, np.asarray(counts), np.asarray(bad))
