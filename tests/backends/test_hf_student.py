"""The transformers student: each item's completions are its own, in item order, batched or not."""

from __future__ import annotations

import numpy as np
import pytest

from sightsound_core.backends.hf_student import StudentModel

SR = 16000


def _tone(freq: float, seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


# Different audio, question lengths and option counts: the batch is left-padded unevenly.
ITEMS = [
    (_tone(200.0, 1.0), "Is the pitch high or low?", ["low", "high"]),
    (_tone(3000.0, 0.5), "Which object sounds first?", ["the red circle", "the blue square", "the drum"]),
    (np.random.default_rng(0).normal(0, 0.3, SR).astype(np.float32), "How many sources are sounding?",
     ["1", "2", "3", "4"]),
    (_tone(800.0, 2.0), "What is the timbre of the sound?", ["pure", "noisy"]),
]


@pytest.fixture(scope="module")
def student() -> StudentModel:
    from sightsound_core.tiny import TINY_AUDIO, resolve_model

    model = StudentModel(resolve_model(TINY_AUDIO), device="cpu")
    model.load()
    return model


def test_each_item_gets_the_completions_written_from_its_own_audio_and_question(student, monkeypatch):
    """A scripted ``generate`` answers each row with its own question, and checks that the row's
    audio features are the processor's features of that item's waveform."""
    import torch

    from sightsound_core.training.inputs import encode_prompts

    tokenizer = student.processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    alone = [encode_prompts(student.processor, [w], [q], [o])["input_features"][0] for w, q, o in ITEMS]

    def scripted_generate(input_ids, input_features, num_return_sequences, **kwargs):
        # Like ``generate``: num_return_sequences rows per prompt, prompt-major.
        replies = []
        for row in range(input_ids.shape[0]):
            prompt = tokenizer.decode(input_ids[row], skip_special_tokens=True)
            question = next(q for _, q, _ in ITEMS if q in prompt)
            torch.testing.assert_close(input_features[row], alone[[q for _, q, _ in ITEMS].index(question)])
            for sample in range(num_return_sequences):
                replies.append(tokenizer(f"{question} #{sample}", add_special_tokens=False)["input_ids"])
        width = max(map(len, replies)) + 1
        tail = torch.full((len(replies), width), tokenizer.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(replies):
            tail[row, : len(ids) + 1] = torch.tensor(ids + [end])
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), tail], dim=1)

    monkeypatch.setattr(student.model, "generate", scripted_generate)
    assert student.generate(ITEMS, max_new_tokens=4) == [[f"{q} #0"] for _, q, _ in ITEMS]
    sampled = student.generate(ITEMS, max_new_tokens=4, temperature=1.0, num_return_sequences=2)
    assert sampled == [[f"{q} #0", f"{q} #1"] for _, q, _ in ITEMS]


def test_batched_greedy_completions_equal_one_at_a_time_in_item_order(student):
    batched = student.generate(ITEMS, max_new_tokens=6)
    alone = [student.generate([item], max_new_tokens=6)[0] for item in ITEMS]
    assert batched == alone
    # Random weights still answer each item differently, so a reordering could not go unnoticed.
    assert len({texts[0] for texts in alone}) == len(ITEMS)
