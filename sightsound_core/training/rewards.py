"""GRPO rewards: small pure functions on TRL's reward contract.

``fn(completions, **dataset_columns) -> list[float]``, one float per completion. A completion is a
string or a conversational message list (``[{"role": "assistant", "content": "..."}]``). Both rewards
read the text with ``answers.parse_response``, the parser every other stage uses.
"""

from __future__ import annotations

from typing import Any

from sightsound_core.answers import OK, parse_response


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of one completion in either of TRL's forms.

    >>> completion_text([{"role": "assistant", "content": "<answer>x</answer>"}])
    '<answer>x</answer>'
    """
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if part.get("type") == "text")
    return content or ""


def accuracy_reward(
    completions: list[str] | list[list[dict[str, Any]]],
    label: list[str],
    options: list[list[str]],
    **kwargs: Any,
) -> list[float]:
    """1.0 when the answer parses to the labelled option, else 0.0.

    >>> accuracy_reward(
    ...     ["<think>low hum</think><answer>B</answer>", "<answer>high</answer>", "high"],
    ...     label=["high", "high", "high"],
    ...     options=[["low", "high"]] * 3,
    ... )
    [1.0, 1.0, 0.0]
    """
    rewards = []
    for completion, gold, opts in zip(completions, label, options, strict=True):
        parsed = parse_response(completion_text(completion), list(opts))
        rewards.append(1.0 if parsed.status == OK and parsed.option == gold else 0.0)
    return rewards


def format_reward(completions: list[str] | list[list[dict[str, Any]]], **kwargs: Any) -> list[float]:
    """1.0 for exactly ``<think>non-empty</think><answer>non-empty</answer>``, else 0.0.

    >>> format_reward(["<think>a hum</think><answer>low</answer>", "<answer>low</answer>", "low"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if parse_response(completion_text(c)).well_formed else 0.0 for c in completions]


REWARDS = {"accuracy": accuracy_reward, "format": format_reward}
"""Reward functions by the names used in ``GRPOConfig.reward_weights``."""
