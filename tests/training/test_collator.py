from __future__ import annotations

import numpy as np
import pytest
from toyworld import OPTIONS, QUESTION, load_audio, sft_examples

from sightsound_core.training.collator import AudioSFTCollator
from sightsound_core.training.inputs import IGNORE_INDEX


@pytest.fixture(scope="module")
def processor(tiny_student):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_student)


def _rows(clips, completions):
    rows = [e.to_row() for e in sft_examples(clips[: len(completions)])]
    for row, completion in zip(rows, completions):
        row["completion"] = completion
    return rows


def test_batch_shapes_and_label_mask(processor, clips):
    completions = ["<think>The tone is low.</think><answer>low</answer>", "<answer>high</answer>"]
    batch = AudioSFTCollator(processor, load_audio, max_length=512)(_rows(clips, completions))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "input_features", "feature_attention_mask"}
    assert tuple(batch["input_features"].shape) == (2, 128, 3000)
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for i, completion in enumerate(completions):
        labels = batch["labels"][i]
        target = labels[labels != IGNORE_INDEX].tolist()
        assert target == tok(completion, add_special_tokens=False)["input_ids"] + [end]
        # Supervised tokens are the last real tokens of the row: the prompt before them is masked.
        real = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, real - len(target) : real].tolist() == target
        assert (labels[real:] == IGNORE_INDEX).all() and (batch["attention_mask"][i, real:] == 0).all()
        assert int((batch["input_ids"][i] == processor.audio_token_id).sum()) == 50


def test_prompt_matches_the_generation_prompt(processor, clips):
    from sightsound_core.training.inputs import encode_prompts

    batch = AudioSFTCollator(processor, load_audio, max_length=512)(_rows(clips, ["<answer>low</answer>"]))
    prompt = encode_prompts(processor, [load_audio(clips[0][0])], [QUESTION], [OPTIONS])
    n = prompt["input_ids"].shape[1]
    assert batch["input_ids"][0, :n].tolist() == prompt["input_ids"][0].tolist()
    assert (batch["labels"][0, :n] == IGNORE_INDEX).all()
    assert np.allclose(batch["input_features"][0].numpy(), prompt["input_features"][0].numpy())


def test_truncation_cuts_the_completion_never_the_prompt(processor, clips):
    long = "<think>" + "the tone is low " * 50 + "</think><answer>low</answer>"
    collate = AudioSFTCollator(processor, load_audio, max_length=140)
    batch = collate(_rows(clips, [long]))
    assert batch["input_ids"].shape[1] == 140
    assert int((batch["input_ids"][0] == processor.audio_token_id).sum()) == 50
    with pytest.raises(ValueError, match="does not fit"):
        AudioSFTCollator(processor, load_audio, max_length=60)(_rows(clips, [long]))


def test_short_feature_path_equals_the_30s_processor_path():
    """encode_prompts computes features on the real audio only; they must equal the stock path."""
    import numpy as np
    import torch

    from sightsound_core.tiny import resolve_model
    from sightsound_core.training.inputs import SAMPLE_RATE, encode_prompts, load_student, prompt_texts

    _, processor = load_student(resolve_model("tiny://qwen2-audio"), device="cpu")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(SAMPLE_RATE * s)).astype(np.float32) * 0.1 for s in (0.5, 2.0, 7.3)]
    qs, opts = ["q"] * 3, [["a", "b"]] * 3
    fast = encode_prompts(processor, waves, qs, opts)
    processor.tokenizer.padding_side = "left"
    stock = processor(text=prompt_texts(processor, qs, opts), audio=waves, sampling_rate=SAMPLE_RATE,
                      padding=True, return_tensors="pt")
    assert fast["input_features"].shape == stock["input_features"].shape == (3, 128, 3000)
    assert torch.equal(fast["input_features"], stock["input_features"])
    assert torch.equal(fast["feature_attention_mask"], stock["feature_attention_mask"])
    assert torch.equal(fast["input_ids"], stock["input_ids"])
