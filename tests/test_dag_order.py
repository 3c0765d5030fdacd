"""The DAG spec (``sightsound_core.dag``): what each recipe runs, in which order, from which inputs."""

import pytest

from sightsound_core import dag, status
from sightsound_core.config import load_config
from sightsound_core.stage import StageRef
from sightsound_core.storage import ObjectStore

DEMO = ["ingest", "teacher", "vote", "verify", "corpus", "sft", "grpo", "bench-synthetic-test",
        "evaluate", "report"]
FOLDER = ["ingest", "questions", "teacher", "vote", "verify", "corpus", "sft", "grpo", "evaluate",
          "report"]


def fake_ref(name: str) -> StageRef:
    return StageRef(stage=name, stage_hash=f"h-{name}", dir=f"file:///x/{name}", shards=[],
                    shard_fingerprints=[], manifest={"run": "r", "stage": name})


def recording_executor(walked: list):
    """An executor that runs nothing: records each stage and the inputs it was given."""

    def execute(stage, cfg, store, inputs):
        walked.append((stage.name, {k: ref.stage for k, ref in inputs.items()}))
        return fake_ref(stage.name)

    return execute


def plain_walk(recipe, tmp_path, overrides=None):
    cfg = load_config(recipe, {"store.root": f"file://{tmp_path}/store", **(overrides or {})})
    walked = []
    dag.walk(cfg, ObjectStore(cfg.store.root), recording_executor(walked))
    return cfg, walked


@pytest.mark.parametrize("recipe, expected", [("demo.yaml", DEMO), ("folder.yaml", FOLDER)])
def test_the_plain_loop_walks_the_spec_in_order(recipe, expected, tmp_path):
    cfg, walked = plain_walk(recipe, tmp_path)
    assert [name for name, _ in walked] == expected == [s.name for s in dag.stages(cfg)]


def test_each_stage_reads_its_inputs_by_name(tmp_path):
    _, walked = plain_walk("folder.yaml", tmp_path)
    inputs = dict(walked)
    # The teacher and everything after it read the proposed questions, not the raw windows.
    assert inputs["teacher"] == {"clips": "questions"}
    assert inputs["corpus"] == {"clips": "questions", "samples": "teacher", "votes": "vote",
                                "verdicts": "verify"}
    assert inputs["report"] == {"corpus": "corpus", "sft": "sft", "grpo": "grpo", "evaluate": "evaluate"}

    _, walked = plain_walk("paper.yaml", tmp_path, {"grpo.enabled": False})
    inputs = dict(walked)
    assert "grpo" not in inputs
    assert inputs["vote"] == {"clips": "ingest", "samples": "teacher"}
    assert inputs["evaluate"] == {"sft": "sft", "bench-avqa": "bench-avqa",
                                  "bench-mmau-test-mini": "bench-mmau-test-mini",
                                  "bench-music-avqa": "bench-music-avqa"}
    assert inputs["report"] == {"corpus": "corpus", "sft": "sft", "evaluate": "evaluate"}


def test_flows_split_the_spec_without_gaps():
    cfg = load_config("paper.yaml")
    by_flow = [s.name for flow in ("distill", "train", "evaluate") for s in dag.stages(cfg, flow)]
    assert by_flow == [s.name for s in dag.stages(cfg)]


def test_gpu_stages_and_status_order_come_from_the_spec():
    from tasks.stages import GPU_STAGES

    assert GPU_STAGES == dag.GPU_STAGES == {"questions", "teacher", "sft", "grpo", "evaluate"}
    assert status.ORDER == dag.ORDER
    present = ["report", "evaluate", "bench-b", "grpo", "sft", "corpus", "verify", "vote", "teacher",
               "questions", "ingest"]
    assert sorted(present, key=status._order) == list(reversed(present))
    assert dag.upstream_of("evaluate", present) == ["sft", "grpo", "bench-b"]
    assert dag.upstream_of("teacher", present) == ["questions"]
    assert dag.upstream_of("teacher", ["ingest", "teacher"]) == ["ingest"]
