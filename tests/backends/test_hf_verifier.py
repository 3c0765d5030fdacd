"""The transformers verifier on the tiny Qwen2-Audio: the model hears each request's own clip, and the
text it writes is exactly the text the verdict is parsed from."""

from __future__ import annotations

import numpy as np
import pytest

from sightsound_core.backends.base import VerifyRequest
from sightsound_core.backends.hf_verifier import HFVerifier
from sightsound_core.schemas import Clip

SR = 16000


def _tone(freq: float, seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def _request(i: int, audio: np.ndarray) -> VerifyRequest:
    clip = Clip(f"c:{i}", "test", "train", None, f"file:///{i}.wav", len(audio) / SR, "Is it low or high?",
                ["low", "high"], "low", "acoustic", "pitch")
    return VerifyRequest(clip, 0, f"Trace {i}: a steady tone.", audio)


@pytest.fixture(scope="module")
def verifier() -> HFVerifier:
    loaded = HFVerifier("tiny://qwen2-audio", max_new_tokens=4, batch_size=2, device="cpu")
    loaded.load()
    return loaded


def test_the_model_hears_each_clip_of_the_batch(verifier):
    import torch

    heard = []
    hook = verifier._model.model.audio_tower.register_forward_pre_hook(
        lambda module, args: heard.append(args[0].detach().clone())
    )
    clips = [_tone(200.0, 1.0), _tone(3000.0, 0.5)]
    try:
        verifier.verify([_request(i, audio) for i, audio in enumerate(clips)])
    finally:
        hook.remove()

    # One audio encode per batch (at prefill), its rows the processor's features of each waveform.
    assert len(heard) == 1 and heard[0].shape[0] == 2
    fe = verifier._processor.feature_extractor
    expected = torch.cat([fe([a], sampling_rate=SR, return_tensors="pt")["input_features"] for a in clips])
    torch.testing.assert_close(heard[0], expected.to(heard[0].dtype))
    assert not torch.allclose(heard[0][0], heard[0][1])


def test_the_verdict_is_parsed_from_what_the_model_wrote(verifier, monkeypatch):
    import torch

    replies = [
        '{"verdict": "reject", "unsupported_claims": ["a dog barks"]}',
        '{"verdict": "accept", "unsupported_claims": []}',
    ]
    tokenizer = verifier._processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    seen = {}

    def scripted_generate(**inputs):
        # The prompt rows come back first, then each row's reply and the end of the turn, padded.
        seen["input_features"] = inputs["input_features"]
        replies_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [end] for r in replies]
        width = max(map(len, replies_ids))
        tail = torch.full((len(replies), width), tokenizer.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(replies_ids):
            tail[row, : len(ids)] = torch.tensor(ids)
        return torch.cat([inputs["input_ids"], tail], dim=1)

    monkeypatch.setattr(verifier._model, "generate", scripted_generate)
    results = verifier.verify([_request(0, _tone(200.0, 1.0)), _request(1, _tone(3000.0, 1.0))])

    assert seen["input_features"].shape[0] == 2
    assert [r.raw for r in results] == replies
    assert [(r.status, r.unsupported_claims, r.reason) for r in results] == [
        ("rejected", ["a dog barks"], "ok"),
        ("accepted", [], "ok"),
    ]
