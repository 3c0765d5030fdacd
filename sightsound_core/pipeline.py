"""The whole DAG as plain function calls, no orchestrator: for notebooks, tests and baselines.

The stages and their order are ``dag.STAGES``; this walks them in this process, shard by shard.
The Prefect flows in ``flows/`` walk the same specs with shards as tasks.
"""

from __future__ import annotations

from typing import Callable

from sightsound_core.config import PipelineConfig
from sightsound_core.dag import run_local, walk
from sightsound_core.stage import StageRef
from sightsound_core.storage import ObjectStore


def open_store(cfg: PipelineConfig) -> ObjectStore:
    return ObjectStore(cfg.store.root, cfg.store.storage_options)


def run_pipeline(
    cfg: PipelineConfig, on_stage: Callable[[str, StageRef], None] | None = None
) -> dict[str, StageRef]:
    """Run (or reuse) every stage in order; returns each stage's committed output."""
    return walk(cfg, open_store(cfg), run_local, on_stage=on_stage)
