"""The MMAU prediction file is what the official evaluation.py reads, and scores as we do."""

import json
import re

import pytest
from mmau_data import records

from sightsound_core.config import IngestConfig
from sightsound_core.datasets.mmau import to_clip
from sightsound_core.evaluation.mmau import official_breakdown, prediction_json, prediction_record
from sightsound_core.evaluation.scoring import score
from sightsound_core.schemas import Prediction

# Hand-made outputs for the fixture items, by question, with the official verdict of each under
# the default answer rule (answer_block_or_raw) and under the strict one (answer_block).
OUTPUTS = {
    "Which vehicle door is being closed in the recording?":
        ("<think>A thud; a house door is heavier.</think><answer>Car door</answer>", True, True),
    "Who is speaking?": ("<think>A high voice.</think><answer>child</answer>", False, False),
    "What is the tempo of the piece?": ("<think>Quick beats.</think><answer>Fast.</answer>", True, True),
    "Which instrument carries the melody?":
        ("<think>Plucked strings.</think><answer>guitar</answer>", False, False),
    # No answer tag: the raw output is scored by default, nothing under the strict rule.
    "How many speakers take part in the conversation?": ("<think>Two voices.</think> Two", True, False),
    "Who is the speaker?": ("<think>A low voice.</think><answer>(B) man</answer>", True, True),
}
RULES = {"answer_block_or_raw": 1, "answer_block": 2}


def official_string_match(answer, prediction, choices):
    """MMAU's published rule, written out again independently for this check."""
    def tokens(text):
        return set(re.findall(r"\b\w+\b", text.lower()))

    pred, ans = tokens(prediction), tokens(answer)
    if not pred:
        return False
    wrong = set()
    for choice in choices:
        if tokens(choice) != ans:
            wrong.update(tokens(choice) - ans)
    return ans.issubset(pred) and pred.isdisjoint(wrong)


def official_read(data):
    """What evaluation.py does with each sample of the file: the keys it reads, the dictionaries it
    indexes (a task or difficulty outside them is a KeyError there), the verdict it computes."""
    task_metrics = {"sound": [0, 0], "music": [0, 0], "speech": [0, 0]}
    diff_metrics = {"easy": [0, 0], "hard": [0, 0], "medium": [0, 0]}
    verdicts = []
    for sample in data:
        assert "model_output" in sample
        ok = official_string_match(sample["answer"], sample["model_output"], sample["choices"])
        sample.get("sub-category")
        task_metrics[sample["task"]][0] += ok
        task_metrics[sample["task"]][1] += 1
        diff_metrics[sample["difficulty"]][0] += ok
        diff_metrics[sample["difficulty"]][1] += 1
        verdicts.append(ok)
    return verdicts, task_metrics, diff_metrics


def _file(rule="answer_block_or_raw", originals=None):
    cfg = IngestConfig(dataset="mmau", path="/unused", split="test-mini")
    originals = records() if originals is None else originals
    out = []
    for record in originals:
        clip = to_clip(record, None, cfg, f"file:///unused/{record['audio_id']}")
        raw = OUTPUTS[record["question"]][0]
        scored = score("mmau", raw, clip, rule)
        prediction = Prediction("cot", "mmau", clip.clip_id, raw, scored.answer, clip.label,
                                scored.correct, clip.family, clip.category)
        out.append(prediction_record(clip, prediction, "v-test", rule))
    return originals, json.loads(prediction_json(out))


def test_file_keeps_each_original_record_and_adds_the_model_output():
    originals, data = _file("answer_block")
    assert isinstance(data, list) and len(data) == len(originals)
    for original, sample in zip(originals, data):
        assert {k: sample[k] for k in original} == original
        assert isinstance(sample["model_output"], str)
        assert sample["model_prediction"] == sample["model_output"]
        assert sample["sightsound"]["annotation_version"] == "v-test"
        assert sample["sightsound"]["answer_rule"] == "answer_block"
        assert sample["sightsound"]["raw_output"] == OUTPUTS[original["question"]][0]
    # The <answer> content is what the official script reads, never the reasoning.
    assert data[0]["model_output"] == "Car door"
    assert data[4]["model_output"] == ""


def test_the_default_rule_writes_the_raw_output_where_there_is_no_answer_tag():
    originals, data = _file("answer_block_or_raw")
    assert data[0]["model_output"] == "Car door"
    assert data[4]["model_output"] == data[4]["model_prediction"] == OUTPUTS[originals[4]["question"]][0]
    assert {s["sightsound"]["answer_rule"] for s in data} == {"answer_block_or_raw"}


@pytest.mark.parametrize("rule, speech, hard", [("answer_block_or_raw", [2, 2], [1, 2]),
                                               ("answer_block", [1, 2], [0, 2])])
def test_official_reading_of_the_file_agrees_with_our_scores(rule, speech, hard):
    originals, data = _file(rule)
    verdicts, tasks, diffs = official_read(data)
    expected = [OUTPUTS[r["question"]][RULES[rule]] for r in originals]
    assert verdicts == expected
    assert [s["sightsound"]["correct"] for s in data] == expected
    assert tasks == {"sound": [1, 2], "music": [1, 2], "speech": speech}
    assert diffs == {"easy": [1, 2], "hard": hard, "medium": [2, 2]}
    breakdown = official_breakdown(data)
    assert breakdown["total"]["correct"] == sum(expected) and breakdown["total"]["n"] == 6
    assert breakdown["by_task"]["music"]["accuracy"] == 0.5
    assert breakdown["by_difficulty"]["medium"]["accuracy"] == 1.0
    assert breakdown["by_subcategory"]["Tempo"]["correct"] == 1


def test_a_record_the_official_script_cannot_score_is_refused():
    cfg = IngestConfig(dataset="mmau", path="/unused", split="test-mini")
    record = dict(records()[0], task="Sound")
    clip = to_clip(record, None, cfg, "file:///unused/a.wav")
    prediction = Prediction("cot", "mmau", clip.clip_id, "<answer>Car door</answer>", None,
                            clip.label, True, clip.family, clip.category)
    with pytest.raises(ValueError, match="task 'Sound'"):
        prediction_record(clip, prediction, "v-test", "answer_block")
