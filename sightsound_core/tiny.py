"""The tiny-model factory: real architectures and processors, random weights, a local tokenizer.

No weights can be downloaded here, so tests and the CPU demo run on models built from configs:
``tiny://qwen2-audio`` (the student, ``Qwen2AudioForConditionalGeneration``) and
``tiny://qwen2.5-vl`` (a teacher, ``Qwen2_5_VLForConditionalGeneration``). Each is saved with
``save_pretrained`` and loaded by the same ``from_pretrained`` code that loads real checkpoints, so
nothing downstream knows it is tiny.

``tiny://qwen2-audio-world`` is the demo's student: the same architecture with a 2 s audio window
(the synthetic clips' length), pretrained here, once, to describe the synthetic world's sounds in
words (audio captioning on clips of its own seed, never its questions, options or answer format),
as Qwen2-Audio's own audio pretraining precedes the paper's LoRA SFT. So the demo starts, like the
paper, from a student that hears, and its "pretrained" row means that.

Building is deterministic (seed 0) and atomic: a model is built in a temporary folder under a file
lock and renamed into place, so a killed or concurrent build never leaves half a model behind.

>>> resolve_model("Qwen/Qwen2-Audio-7B-Instruct")
'Qwen/Qwen2-Audio-7B-Instruct'
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TINY_AUDIO = "tiny://qwen2-audio"
TINY_AUDIO_WORLD = "tiny://qwen2-audio-world"
TINY_VL = "tiny://qwen2.5-vl"
# Part of the folder name: editing the factory (sizes, corpus, template) must not reuse old builds.
FACTORY_VERSION = "v2"
SEED = 0
# The world student's pretraining, fixed before any distillation result was measured: clips of
# world seed PRETRAIN_SEED (the demo trains on seed 0 and tests on seed 1), full training of every
# weight with AdamW at PRETRAIN_LR, batch PRETRAIN_BATCH, PRETRAIN_STEPS steps.
WORLD_WINDOW_S = 2
PRETRAIN_SEED = 7919
PRETRAIN_CLIPS = 2000
PRETRAIN_STEPS = 700
PRETRAIN_BATCH = 16
PRETRAIN_LR = 2e-3
DESCRIBE_PROMPT = "Describe the sounds."
# Wider than Qwen's 0.02: at 0.02 a 128-wide random LM head caps logit gaps near 2.5, so LoRA on a
# frozen random base cannot make any token likely and the CPU demo could never learn its format.
LM_INIT_STD = 0.1

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
VISION_TOKENS = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# ChatML as Qwen writes it, except that a part's kind is read from content['type']: after a
# datasets round trip every part carries every key ('audio': None on text parts), so upstream's
# "'audio' in content" test miscounts audio parts.
AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# What the tokenizer learns from: enough English, the prompt templates and the option vocabulary
# of the synthetic world that prompts and traces tokenize into short sequences.
_CORPUS_WORDS = """
the a an of and or to in on at by for with from is are was were be been it this that these those
which what who when where how many much more less most least first last second third before after
during while then than there here one two three four five six seven eight nine ten zero none both
each every all any some no not yes only also very quite about around between above below near far
left right top bottom center middle up down high low higher lower highest lowest loud quiet louder
quieter loudest quietest soft hard fast slow faster slower fastest slowest steady rising falling
pitch tempo rhythm beat beats pulse pulses loudness volume timbre tone tones chord chords noise
burst bursts chirp chirps click clicks hum buzz whistle ring ringing bell drum flute violin piano
guitar voice speech music sound sounds sounding heard hear hearing listen audio clip video frame
frames scene object objects shape shapes circle square triangle star diamond hexagon rectangle
ellipse cross heart red green blue yellow orange purple pink white black gray grey brown cyan
magenta small large big tiny bright dark visible appears appear appeared flashes flash moves
moving still source sources count number order sequence start starts end ends begin begins
question options option answer answers choose chosen reason reasoning step think because so
therefore since likely probably must would could should seems seem looks look see seen saw watch
watching video silent sure clear clearly pure harmonic harmonics noisy smooth sharp sweep sweeping
repeating repeated repeats regular irregular once twice times per second seconds duration long
short longer shorter same different similar other another together alone simultaneously overlap
overlapping hz khz frequency frequencies bass treble mid range spectrum energy onset onsets
You are a helpful assistant. Audio Question Options Think step by step inside then give only the
chosen option inside which sounds first? how many sources are sounding? is the pitch high or low?
is the tempo fast or slow? which object makes the sound? what is the timbre of the sound?
drum flute organ whistle metronome instrument instruments ticks tick slowly quickly heard
I see the drum (visible from about 0.2 s to 0.8 s) and the flute (visible from about 1.1 s to 1.8 s).
Each instrument sounds only while it is visible, so I expect 2 distinct sounds.
The first sound starts at about 0.2 s, when the drum appears.
The flute looks small, and small instruments sound high, so the pitch of the flute is high.
Nothing in the picture settles this, but I am fairly sure the organ is louder at the start.
Judging by its look, the metronome gets louder toward the end. the pulses of the metronome are fast
From where the whistle sits in the frame, I think the whistle stays at the same loudness.
Which of these instruments can be heard in the clip? How many instruments can be heard in the clip?
Which instrument is heard first? Does the organ sound high or low? Are the ticks of the metronome slow or fast?
How does the loudness of the drum change? louder at the start louder at the end the same loudness throughout
a drum from 0.1 s to 0.9 s, louder at the start; then a low organ from 1.2 s to 1.9 s, steady.
0.0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 1.1 1.2 1.3 1.4 1.5 1.6 1.7 1.8 1.9 2.0
"""

_CORPUS_SENTENCES = [
    "<think>The clip has a steady high tone and no noise.</think><answer>high</answer>",
    "<think>I hear two pulses that repeat fast, so the tempo is fast.</think><answer>fast</answer>",
    "<think>The red circle flashes first, then the blue square.</think><answer>the red circle</answer>",
    "<think>Three sources sound together.</think><answer>3</answer>",
    "<answer>A</answer> <answer>B</answer> <answer>C</answer> <answer>D</answer>",
    "A. low\nB. high\nC. medium\nD. none of them",
    "Question: Which object sounds first?\nOptions:\nA. the red circle\nB. the blue square",
]


def _corpus() -> list[str]:
    from sightsound_core.prompts import FORMAT_INSTRUCTION, student_user_text, teacher_user_text

    lines = [line for line in _CORPUS_WORDS.strip().splitlines()]
    lines += _CORPUS_SENTENCES
    lines += [FORMAT_INSTRUCTION, student_user_text("Is the pitch high or low?", ["low", "high"])]
    lines += [teacher_user_text("How many sources sound?", ["1", "2", "3", "4"])]
    # Repetition makes frequent words whole tokens before rare byte pairs use up the vocabulary.
    return lines * 4


def build_tokenizer(special_tokens: list[str], vocab_size: int = 1024):
    """A byte-level BPE trained on the built-in corpus, wrapped as ``Qwen2Tokenizer``.

    The specials come after the learned vocabulary, as in Qwen's own tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[ENDOFTEXT],
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    vocab = bpe.get_vocab()
    merges = _merges_of(bpe)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        extra_special_tokens=[t for t in special_tokens if t not in (ENDOFTEXT, IM_END)],
    )
    return tokenizer


def _merges_of(bpe) -> list[tuple[str, str]]:
    import json

    state = json.loads(bpe.to_str())
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]


def build_tiny_audio(out_dir: str | Path, window_s: int = 30) -> None:
    """Build the tiny Qwen2-Audio student and its processor into ``out_dir``.

    ``window_s`` is the audio window: the feature extractor's ``chunk_length`` and the encoder's
    ``max_source_positions`` (50 per second: Whisper's 1500 for 30 s) change together, because
    the encoder accepts exactly ``2 * max_source_positions`` mel frames. Real checkpoints keep 30 s.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    specials = [ENDOFTEXT, IM_START, IM_END, *AUDIO_TOKENS]
    tokenizer = build_tokenizer(specials)
    tokenizer.padding_side = "left"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    # At 30 s the encoder keeps Whisper's 1500 positions: the processor pads every clip to 30 s of
    # mel frames, as the real checkpoint's processor does.
    audio_config = dict(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        num_mel_bins=128,
        max_source_positions=50 * window_s,
    )
    text_config = dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        initializer_range=LM_INIT_STD,
    )
    config = Qwen2AudioConfig(
        audio_config=audio_config, text_config=text_config, audio_token_index=ids["<|AUDIO|>"]
    )
    torch.manual_seed(SEED)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[ENDOFTEXT], do_sample=False
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, chunk_length=window_s),
        tokenizer=tokenizer,
        chat_template=AUDIO_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def describe_sounds(meta: dict) -> str:
    """An audio caption of a synthetic-world clip from its ground truth: what is heard, when, and
    how (pitch, loudness, tempo). The world student's pretraining target.

    >>> describe_sounds({"sources": [{"instrument": "drum", "onset": 0.21, "offset": 0.8,
    ...     "pitch": None, "tempo": None, "loudness": "falling"}]})
    'a drum from 0.2 s to 0.8 s, louder at the start.'
    """
    from sightsound_core.datasets.synthetic import LOUDNESS_TEXT

    parts = []
    for src in sorted(meta["sources"], key=lambda s: s["onset"]):
        words = [w for w in (src.get("pitch"), src.get("tempo") and f"{src['tempo']} ticking") if w]
        what = " ".join(["a", *([words[0]] if words else []), src["instrument"]])
        rest = ", ".join([*words[1:], LOUDNESS_TEXT[src["loudness"]]])
        parts.append(f"{what} from {src['onset']:.1f} s to {src['offset']:.1f} s, {rest}")
    return "; then ".join(parts) + "."


def build_tiny_audio_world(out_dir: str | Path) -> None:
    """The tiny student with a 2 s window, pretrained to describe the synthetic world's sounds.

    A plain AdamW loop over precomputed features: the one-off build needs no checkpoints,
    logging or data loaders, which is all Trainer would add here.
    """
    import json

    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from sightsound_core.config import SyntheticConfig
    from sightsound_core.datasets.synthetic import synthesize
    from sightsound_core.training.inputs import encode_sft

    build_tiny_audio(out_dir, window_s=WORLD_WINDOW_S)
    processor = AutoProcessor.from_pretrained(out_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out_dir, dtype=torch.float32)
    world = SyntheticConfig(seed=PRETRAIN_SEED, duration_s=float(WORLD_WINDOW_S))
    scenes = [synthesize(world, i) for i in range(PRETRAIN_CLIPS)]
    captions = [describe_sounds(json.loads(s.clip.meta)) for s in scenes]
    torch.manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / PRETRAIN_STEPS)
    order = np.random.default_rng(SEED).permutation
    model.train()
    started, perm = time.perf_counter(), order(PRETRAIN_CLIPS)
    for step in range(PRETRAIN_STEPS):
        pos = (step * PRETRAIN_BATCH) % PRETRAIN_CLIPS
        if pos < PRETRAIN_BATCH and step:
            perm = order(PRETRAIN_CLIPS)
        idx = perm[pos : pos + PRETRAIN_BATCH]
        batch = encode_sft(
            processor, [scenes[i].audio for i in idx], [""] * len(idx), [[]] * len(idx),
            [captions[i] for i in idx], max_length=256, prompt=DESCRIBE_PROMPT,
        )  # fmt: skip
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == PRETRAIN_STEPS - 1:
            log.info("world pretraining step %d/%d loss %.3f", step + 1, PRETRAIN_STEPS, loss.item())
    log.info("world pretraining: %d steps in %.0f s", PRETRAIN_STEPS, time.perf_counter() - started)
    model.eval()
    model.save_pretrained(out_dir)


def build_tiny_vl(out_dir: str | Path) -> None:
    """Build the tiny Qwen2.5-VL teacher, its tokenizer and its image processor into ``out_dir``.

    There is no ``Qwen2_5_VLProcessor`` in the folder: constructing one needs a video processor
    class, and Qwen2-VL's video processor imports torchvision, which cannot be installed next to CPU
    torch here (even ``video_processor=None`` fails the class check). Load the parts with
    ``AutoTokenizer`` and ``AutoImageProcessor`` (the PIL backend), feed video as frames decoded
    with PyAV passed as images, and expand each ``<|image_pad|>`` to
    ``image_grid_thw.prod() // merge_size**2`` tokens (see ``expand_image_tokens``).
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = [ENDOFTEXT, IM_START, IM_END, *VISION_TOKENS]
    tokenizer = build_tokenizer(specials)
    tokenizer.padding_side = "left"
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
    )
    vision_config = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        out_hidden_size=128,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[ENDOFTEXT], do_sample=False
    )
    # Explicit pixel bounds: the defaults upscale small frames to thousands of patches.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)


def expand_image_tokens(text: str, image_grid_thw, merge_size: int, image_token: str = "<|image_pad|>") -> str:
    """Replace each ``image_token`` in ``text`` by as many copies as its image has merged patches.

    This is what ``Qwen2_5_VLProcessor`` does for images; done here because that class cannot be
    built without torchvision.

    >>> expand_image_tokens("a<|image_pad|>b", [[1, 4, 4]], 2)
    'a<|image_pad|><|image_pad|><|image_pad|><|image_pad|>b'
    """
    parts = text.split(image_token)
    if len(parts) - 1 != len(image_grid_thw):
        raise ValueError(f"{len(parts) - 1} {image_token} in text but {len(image_grid_thw)} images")
    out = [parts[0]]
    for thw, rest in zip(image_grid_thw, parts[1:]):
        t, h, w = (int(x) for x in thw)
        out.append(image_token * (t * h * w // merge_size**2) + rest)
    return "".join(out)


_BUILDERS = {TINY_AUDIO: build_tiny_audio, TINY_AUDIO_WORLD: build_tiny_audio_world, TINY_VL: build_tiny_vl}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIGHTSOUND_CACHE") or Path.home() / ".cache" / "sightsound")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_model(name_or_path: str, cache_dir: str | None = None) -> str:
    """A local folder for ``tiny://`` names (built on first use); anything else unchanged."""
    builder = _BUILDERS.get(name_or_path)
    if builder is None:
        return name_or_path
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    name = name_or_path.removeprefix("tiny://").replace(".", "_")
    final = root / f"tiny-{name}-{FACTORY_VERSION}"
    if final.is_dir():
        return str(final)
    with _file_lock(root / f".tiny-{name}-{FACTORY_VERSION}.lock"):
        # Another process may have finished the build while this one waited for the lock.
        if final.is_dir():
            return str(final)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=root))
        try:
            builder(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s in %s (%.1f s)", name_or_path, final, time.perf_counter() - started)
    return str(final)
