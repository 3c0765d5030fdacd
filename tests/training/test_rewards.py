from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

from sightsound_core.training import rewards
from sightsound_core.training.rewards import accuracy_reward, completion_text, format_reward


def test_doctests():
    assert doctest.testmod(rewards).failed == 0


def test_accuracy_reads_the_one_parser():
    opts = [["the flute", "the drum"]] * 5
    completions = [
        "<think>x</think><answer>B. the drum</answer>",
        "<think>x</think><answer>the flute</answer>",
        "<think>x</think><answer>A</answer><answer>B</answer>",
        "<think>x</think><answer>the drum",
        "<think>x</think><answer>the flute or the drum</answer>",
    ]
    assert accuracy_reward(completions, label=["the drum"] * 5, options=opts) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_conversational_completions():
    conv = [[{"role": "assistant", "content": "<think>hum</think><answer>low</answer>"}]]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": "<answer>low</answer>"}]}]]
    assert accuracy_reward(conv, label=["low"], options=[["low", "high"]]) == [1.0]
    assert accuracy_reward(parts, label=["low"], options=[["low", "high"]]) == [1.0]
    assert format_reward(conv) == [1.0]
    assert format_reward(parts) == [0.0]


def test_completion_text_of_odd_messages():
    # Text parts are joined as they are, whatever sits between them; a part without text adds none.
    parts = [
        {"type": "text", "text": "<think>a hum</think>"},
        {"type": "image"},
        {"type": "text"},
        {"type": "text", "text": "<answer>low</answer>"},
    ]
    assert completion_text([{"role": "assistant", "content": parts}]) == "<think>a hum</think><answer>low</answer>"
    # An empty conversation or a message without content (a tool call) is no text.
    assert completion_text([]) == ""
    assert completion_text([{"role": "assistant", "content": None}]) == ""


def test_accuracy_refuses_columns_of_another_length():
    # Unchecked, a short label column would silently yield fewer rewards than completions.
    with pytest.raises(ValueError):
        accuracy_reward(["<answer>low</answer>"] * 2, label=["low"], options=[["low", "high"]] * 2)


def test_format_is_strict():
    bad = [
        "",
        "<think>x</think><answer>low</answer><answer>high</answer>",
        "<think>x</think><answer>low <think>y</think></answer>",
        "<think></think><answer>low</answer>",
        "<think>x</think><answer></answer>",
        "preamble <think>x</think><answer>low</answer>",
        "<think>x</think><answer>low</answer> trailing",
    ]
    assert format_reward(bad) == [0.0] * len(bad)
    assert format_reward(["  <think>x</think>\n<answer>low</answer>\n"]) == [1.0]


def test_extra_dataset_columns_are_accepted():
    assert accuracy_reward(["<answer>low</answer>"], label=["low"], options=[["low"]], family=["a"]) == [1.0]


def test_import_does_not_load_torch():
    code = "import sys, sightsound_core.training.rewards; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
