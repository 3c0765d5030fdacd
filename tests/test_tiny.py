"""The tiny-model factory: builds, loads like a real checkpoint, tokenizes and templates right."""

from __future__ import annotations

import numpy as np
import pytest

from sightsound_core.tiny import TINY_AUDIO, TINY_VL, expand_image_tokens, resolve_model
from sightsound_core.training.inputs import encode_prompts, student_messages


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> str:
    return resolve_model(TINY_AUDIO, str(tmp_path_factory.mktemp("tiny")))


def test_non_tiny_names_pass_through(tmp_path):
    assert resolve_model("Qwen/Qwen2-Audio-7B-Instruct", str(tmp_path)) == "Qwen/Qwen2-Audio-7B-Instruct"
    assert resolve_model("/models/ckpt", str(tmp_path)) == "/models/ckpt"
    assert list(tmp_path.iterdir()) == []


def test_resolve_is_idempotent_and_leaves_no_temp(audio_dir):
    from pathlib import Path

    root = Path(audio_dir).parent
    assert resolve_model(TINY_AUDIO, str(root)) == audio_dir
    assert not [p for p in root.iterdir() if p.name.startswith(".build-")]


def test_audio_round_trip_is_deterministic(audio_dir, tmp_path):
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_dir)
    processor = AutoProcessor.from_pretrained(audio_dir)
    assert isinstance(processor, Qwen2AudioProcessor)
    other = Qwen2AudioForConditionalGeneration.from_pretrained(resolve_model(TINY_AUDIO, str(tmp_path)))
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
    assert model.config.audio_token_id == processor.audio_token_id


def test_two_second_clip_gives_50_audio_tokens(audio_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(audio_dir)
    batch = encode_prompts(processor, [np.zeros(32000, np.float32)], ["Is it high?"], [["low", "high"]])
    assert int((batch["input_ids"] == processor.audio_token_id).sum()) == 50
    assert tuple(batch["input_features"].shape) == (1, 128, 3000)


def test_chat_template_survives_a_datasets_round_trip(audio_dir):
    from datasets import Dataset
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(audio_dir)
    messages = student_messages("Is it high?", ["low", "high"])
    # After a round trip every part has every key: the text part gains "audio": None.
    round_tripped = Dataset.from_list([{"messages": messages}])[0]["messages"]
    assert "audio" in round_tripped[0]["content"][1]
    for msgs in (messages, round_tripped):
        text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert text.count("<|AUDIO|>") == 1
        assert text.endswith("<|im_start|>assistant\n")
        assert "A. low\nB. high" in text


def test_tokenizer_round_trips_completions(audio_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(audio_dir)
    text = "<think>The tone is high, 3 bursts.</think><answer>B. high</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2, "the corpus should make common words single tokens"
    for special in ("<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|endoftext|>"):
        assert tokenizer(special, add_special_tokens=False)["input_ids"] == [
            tokenizer.convert_tokens_to_ids(special)
        ]


def test_vl_builds_and_generates_from_frames(tmp_path):
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    path = resolve_model(TINY_VL, str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    frames = [np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8) for i in range(2)]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What sounds?"}]}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = image_processor(images=frames, return_tensors="pt")
    text = expand_image_tokens(text, images["image_grid_thw"].tolist(), image_processor.merge_size)
    enc = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, **images, max_new_tokens=4, do_sample=False)
    assert enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 4
    assert images["image_grid_thw"].tolist() == [[1, 6, 6], [1, 6, 6]]


def test_tiny_module_doctests():
    import doctest

    import sightsound_core.tiny as tiny

    assert doctest.testmod(tiny).failed == 0


def test_world_student_hears_a_two_second_window_and_is_pretrained(tmp_path, monkeypatch):
    """The demo's student: window sized to the clips (chunk_length and max_source_positions
    together), and its weights moved by the factory's pretraining (few steps here)."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    import sightsound_core.tiny as tiny

    monkeypatch.setattr(tiny, "PRETRAIN_CLIPS", 24)
    monkeypatch.setattr(tiny, "PRETRAIN_STEPS", 4)
    monkeypatch.setattr(tiny, "PRETRAIN_BATCH", 4)
    path = resolve_model(tiny.TINY_AUDIO_WORLD, str(tmp_path / "world"))
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path)
    fe = processor.feature_extractor
    assert (fe.chunk_length, fe.nb_max_frames) == (2, 200)
    assert model.config.audio_config.max_source_positions == 100

    batch = encode_prompts(processor, [np.zeros(32000, np.float32)], ["Is it high?"], [["low", "high"]])
    assert tuple(batch["input_features"].shape) == (1, 128, 200)
    assert int((batch["input_ids"] == processor.audio_token_id).sum()) == 50
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]

    fresh = tmp_path / "fresh"
    tiny.build_tiny_audio(fresh, window_s=2)
    untrained = Qwen2AudioForConditionalGeneration.from_pretrained(fresh)
    moved = [n for (n, a), (_, b) in zip(model.state_dict().items(), untrained.state_dict().items())
             if not torch.equal(a, b)]
    assert any("audio_tower" in n for n in moved) and any("language_model" in n for n in moved)
