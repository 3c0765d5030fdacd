"""The student's chat and processor inputs, built in one place for SFT, GRPO and inference.

The student sees one user turn, the audio then ``prompts.student_user_text(question, options)``,
and answers in the assistant turn, which ends with ``<|im_end|>``. Training targets are the prompt
token ids (from the processor, which expands the audio placeholder) followed by the completion's
token ids, so the prompt a model is trained on is exactly the prompt it is later generated from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sightsound_core.prompts import student_user_text

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"


def student_messages(question: str, options: list[str], prompt: str | None = None) -> list[dict[str, Any]]:
    """The student's chat: a user turn with the audio part, then the question text (or, for the
    tiny factory's audio pretraining, a free ``prompt`` instead of a question).

    The audio part carries both ``type`` (read by our templates) and an ``audio`` key (read by
    upstream Qwen2-Audio templates, which test ``'audio' in content``), so real and tiny
    checkpoints render the same placeholder.
    """
    text = prompt if prompt is not None else student_user_text(question, list(options))
    return [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": "clip"},
                {"type": "text", "text": text},
            ],
        }
    ]


def prompt_texts(
    processor: Any, questions: list[str], options: list[list[str]], prompt: str | None = None
) -> list[str]:
    return [
        processor.apply_chat_template(
            student_messages(q, o, prompt), tokenize=False, add_generation_prompt=True
        )
        for q, o in zip(questions, options, strict=True)
    ]


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a student turn."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (END_OF_TURN, END_OF_TEXT)]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def banned_token_ids(tokenizer: Any) -> list[int]:
    """Tokens a completion must never contain: a generated ``<|AUDIO|>`` would have no audio
    features behind it and break every later forward (untrained tiny models do emit them).
    """
    names = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|im_start|>")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in names]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def encode_prompts(
    processor: Any,
    waveforms: list[np.ndarray],
    questions: list[str],
    options: list[list[str]],
    prompt: str | None = None,
) -> dict[str, "torch.Tensor"]:
    """Left-padded prompt batch: input_ids, attention_mask, input_features, feature_attention_mask.

    Left padding puts every prompt's last token at the same position, which batched generation
    needs.
    """
    import torch

    processor.tokenizer.padding_side = "left"
    # The processor pads every clip to 30 s before its STFT; most of that work is on silence.
    # Features of the real audio (plus one window of zeros), padded to 30 s with their last,
    # all-silence frame, are the same numbers at a fraction of the cost (tested against the
    # 30 s path).
    fe = processor.feature_extractor
    clips = [np.asarray(w, dtype=np.float32)[: fe.n_samples] for w in waveforms]
    longest = max(len(c) for c in clips)
    n = min(fe.n_samples, -(-(longest + fe.n_fft) // fe.hop_length) * fe.hop_length)
    batch = processor(
        text=prompt_texts(processor, questions, options, prompt),
        audio=clips,
        sampling_rate=SAMPLE_RATE,
        padding=True,
        return_tensors="pt",
        audio_kwargs={"max_length": n},
    )
    rest = fe.nb_max_frames - batch["input_features"].shape[2]
    features = batch["input_features"]
    if rest > 0:
        features = torch.cat([features, features[:, :, -1:].expand(-1, -1, rest)], dim=2)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "input_features": features,
        "feature_attention_mask": torch.nn.functional.pad(batch["feature_attention_mask"], (0, max(rest, 0))),
    }


def encode_sft(
    processor: Any,
    waveforms: list[np.ndarray],
    questions: list[str],
    options: list[list[str]],
    completions: list[str],
    max_length: int,
    prompt: str | None = None,
) -> dict[str, "torch.Tensor"]:
    """Right-padded training batch with labels: -100 on the prompt and on padding.

    A sequence longer than ``max_length`` loses the end of its completion, never prompt tokens:
    the audio placeholders must match the audio features one for one.
    """
    import torch

    prompts = encode_prompts(processor, waveforms, questions, options, prompt)
    tokenizer = processor.tokenizer
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    rows: list[tuple[list[int], list[int]]] = []
    for ids, mask, completion in zip(prompts["input_ids"], prompts["attention_mask"], completions):
        prompt_ids = ids[mask.bool()].tolist()
        target = tokenizer(completion, add_special_tokens=False)["input_ids"] + [end_id]
        room = max_length - len(prompt_ids)
        if room < 1:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit max_length={max_length}")
        rows.append((prompt_ids, target[:room]))
    width = max(len(p) + len(t) for p, t in rows)
    pad_id = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt_ids, target) in enumerate(rows):
        n, m = len(prompt_ids), len(target)
        input_ids[i, : n + m] = torch.tensor(prompt_ids + target)
        attention_mask[i, : n + m] = 1
        labels[i, n : n + m] = torch.tensor(target)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "input_features": prompts["input_features"],
        "feature_attention_mask": prompts["feature_attention_mask"],
    }


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_student(path: str, device: str = "cpu", dtype: Any = None, weights: str | None = None) -> tuple[Any, Any]:
    """The student model (eval mode, on ``device``) and its processor, from a local folder or id.

    ``weights``: a folder to take the model from instead (a Trainer checkpoint, which holds no
    processor); every weight must be in it, since ``from_pretrained`` only warns about a missing one.
    """
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(
        weights or path, dtype=dtype or torch.float32, output_loading_info=True
    )
    if weights is not None and (info["missing_keys"] or info["unexpected_keys"]):
        raise ValueError(
            f"{weights} does not hold the student's weights: missing {sorted(info['missing_keys'])[:5]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:5]}"
        )
    model.to(device)
    model.eval()
    return model, processor


def lora_target_regex(module_names: list[str]) -> str:
    """A PEFT ``target_modules`` regex that matches the named modules of the language model only.

    The audio encoder has ``q_proj``/``k_proj``/``v_proj`` too; adapting it would change what the
    student hears, which the method leaves fixed.

    >>> import re
    >>> rx = lora_target_regex(["q_proj", "v_proj"])
    >>> bool(re.fullmatch(rx, "model.language_model.layers.0.self_attn.q_proj"))
    True
    >>> bool(re.fullmatch(rx, "model.audio_tower.layers.0.self_attn.q_proj"))
    False
    """
    names = "|".join(sorted(set(module_names)))
    return rf".*language_model\..*\.({names})"
