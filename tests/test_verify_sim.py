"""The sim verifier through the verify stage on the synthetic world: its precision and recall on
planted hallucinated sound claims, as the stage's manifest reports them."""

from __future__ import annotations

import pytest

from sightsound_core.config import DEFAULT_RECIPE, load_config
from sightsound_core.datasets.ingest import run_ingest
from sightsound_core.pipeline import open_store
from sightsound_core.schemas import Verdict
from sightsound_core.stage import read_all
from sightsound_core.teacher import run_teacher, run_vote
from sightsound_core.verify import hallucination_scores, run_verify


def _distill(tmp_path, n_clips: int):
    # A permissive vote keeps nearly every clip, so the verifier sees the teacher's guesses on
    # acoustic questions, where its hallucinations are.
    cfg = load_config(DEFAULT_RECIPE, {
        "run": "sim", "store.root": f"file://{tmp_path}/store",
        "ingest.synthetic.n_clips": n_clips, "ingest.shard_size": 100,
        "vote.policy": "majority", "vote.min_agreement": 0.2, "vote.require_label_match": False,
    })
    store = open_store(cfg)
    clips = run_ingest(cfg.ingest, store, cfg.run)
    samples = run_teacher(cfg.teacher, store, cfg.run, clips)
    votes = run_vote(cfg.vote, store, cfg.run, clips, samples)
    ref = run_verify(cfg.verify, store, cfg.run, clips, samples, votes)
    return store, ref


def _check(store, ref, n_clips: int, min_planted: int) -> dict:
    verdicts = Verdict.from_table(read_all(store, ref))
    summary = ref.manifest["summary"]
    scores = summary["hallucination"]
    assert scores == hallucination_scores(verdicts)
    assert len(verdicts) >= 0.8 * n_clips and scores["labelled"] == len(verdicts)
    assert sum(bool(v.planted) for v in verdicts) >= min_planted
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.9
    return scores


def test_stage_reports_precision_and_recall(tmp_path):
    store, ref = _distill(tmp_path, 60)
    _check(store, ref, 60, min_planted=10)


@pytest.mark.slow
def test_500_clips_with_planted_hallucinations(tmp_path):
    store, ref = _distill(tmp_path, 500)
    scores = _check(store, ref, 500, min_planted=100)
    print(f"sim verifier on 500 clips: {scores}")
