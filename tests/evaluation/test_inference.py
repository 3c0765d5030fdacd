"""Batched generation: clip order kept, each clip's answer from its own audio, batches bounded,
backends chosen by name."""

import numpy as np
import pytest
from mmau_data import Scripted

from sightsound_core.evaluation.inference import generate_answers, load_generator
from sightsound_core.schemas import Clip


def _clips(n):
    # Question lengths vary so that sorting by prompt length reorders the batches.
    return [
        Clip(f"x:{i}", "x", "test", None, f"file:///{i}.wav", 1.0, "q" * ((7 * i) % 11 + 1),
             [f"opt{i}", "other"], f"opt{i}", "unknown", "c")
        for i in range(n)
    ]


def test_answers_come_back_in_clip_order_in_bounded_batches():
    clips = _clips(11)
    loaded = []

    def load(uri):
        loaded.append(uri)
        return np.zeros(160, np.float32)

    fake = Scripted(lambda question, options: f"<answer>{options[0]}</answer>")
    texts = generate_answers(fake, clips, load, batch_size=4, max_new_tokens=8)
    assert texts == [f"<answer>opt{i}</answer>" for i in range(11)]
    assert fake.batches == [4, 4, 3]
    assert sorted(loaded) == sorted(c.audio_uri for c in clips)


def test_no_items_no_calls():
    fake = Scripted(lambda q, o: "")
    assert generate_answers(fake, [], lambda uri: np.zeros(1), 4, 8) == []
    assert fake.batches == []


def test_backends_by_name():
    from sightsound_core.backends.hf_student import StudentModel
    from sightsound_core.evaluation.vllm_student import VLLMStudent

    assert isinstance(load_generator("hf", "/m", "cpu"), StudentModel)
    student = load_generator("vllm", "/m")
    assert isinstance(student, VLLMStudent)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install -e \.\[vllm\]"):
            student.load()
    with pytest.raises(ValueError, match="unknown evaluation backend"):
        load_generator("onnx", "/m")


class HearsTheClip:
    """A generator whose answer is the number its item's waveform holds."""

    def load(self) -> None:
        pass

    def generate(self, items, max_new_tokens, temperature=0.0, num_return_sequences=1, seed=0):
        return [[f"<answer>{int(wave[0])}</answer>"] for wave, _, _ in items]


def test_each_answer_comes_from_its_own_clips_audio():
    clips = _clips(11)
    texts = generate_answers(HearsTheClip(), clips, lambda uri: np.full(160, float(uri[8:-4]), np.float32),
                             batch_size=4, max_new_tokens=8)
    assert texts == [f"<answer>{i}</answer>" for i in range(11)]
