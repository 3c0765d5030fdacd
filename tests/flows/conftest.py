import pytest
import yaml
from prefect_procs import prefect_server_env

from sightsound_core.config import DEFAULT_RECIPE


@pytest.fixture
def small_recipe():
    return write_small_recipe


def write_small_recipe(path, root, storage_options=None, run="small"):
    """The demo recipe shrunk to seconds: 16 clips in 2 shards, 2 SFT steps, 1 GRPO step."""
    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    data["run"] = run
    data["store"] = {"root": root, "storage_options": storage_options or {}}
    # The random-init student: the world-pretrained one costs minutes to build once.
    data["models"]["student"] = "tiny://qwen2-audio"
    data["ingest"]["synthetic"]["n_clips"] = 16
    data["ingest"]["shard_size"] = 8
    data["sft"].update(max_steps=2, variants=["cot"])
    data["grpo"].update(max_steps=1, num_generations=2, prompts_per_step=1, max_completion_length=8)
    data["evaluate"].update(models=["pretrained", "cot", "grpo"], max_new_tokens=8)
    data["evaluate"]["benchmarks"][0]["ingest"]["synthetic"]["n_clips"] = 4
    path.write_text(f"# Run: sightsound run {path.name}\n" + yaml.safe_dump(data))
    return path


@pytest.fixture
def prefect_server(tmp_path):
    """A real local Prefect server for this test; the environment that points at it."""
    with prefect_server_env(tmp_path / "prefect") as env:
        yield env
