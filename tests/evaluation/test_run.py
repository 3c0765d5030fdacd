"""The evaluate stage: every model on every benchmark, batched, scored by each benchmark's rule."""

import json

import numpy as np
import pytest
from mmau_data import RELEASES, Scripted, records, write_mmau_root
from test_mmau_file import OUTPUTS

import sightsound_core.evaluation.run as run_module
from sightsound_core.backends.base import VerifyResult
from sightsound_core.config import BenchmarkConfig, EvaluateConfig, IngestConfig, PipelineConfig
from sightsound_core.dag import benchmark_stage
from sightsound_core.datasets.ingest import run_ingest
from sightsound_core.evaluation.mmau import official_breakdown
from sightsound_core.evaluation.run import run_evaluate, silence_file_uri
from sightsound_core.pipeline import open_store
from sightsound_core.schemas import Clip, Prediction
from sightsound_core.stage import read_all


def _answer(question, options):
    # MMAU items get their hand-made output; everything else answers the first option's letter.
    return OUTPUTS[question][0] if question in OUTPUTS else "<think>x</think><answer>A</answer>"


SILENT = "<answer>B</answer>"


class HearsSilence:
    """``Scripted(_answer)`` that answers ``SILENT`` to a waveform of zeros, keeping every waveform
    it was given."""

    def __init__(self):
        self.batches: list[int] = []
        self.waves: list[np.ndarray] = []

    def load(self) -> None:
        pass

    def generate(self, items, max_new_tokens, temperature=0.0, num_return_sequences=1, seed=0):
        self.batches.append(len(items))
        self.waves += [np.asarray(w) for w, _, _ in items]
        return [[SILENT if not np.any(w) else _answer(q, list(o))] for w, q, o in items]


class Judge:
    """A stand-in for the run's verifier as judge: rejects reasoning that mentions a door, keeps
    every request; 'Plucked' reasoning makes it fail to judge (an unparseable reply)."""

    name = "judge"
    model = "fake"

    def __init__(self):
        self.requests = []

    def verify(self, requests):
        self.requests += requests
        return [VerifyResult("unparseable" if "Plucked" in r.trace else "rejected" if "door" in r.trace
                             else "accepted", [], "", "") for r in requests]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    root = write_mmau_root(tmp / "mmau")
    cfg = PipelineConfig(
        run="t",
        store={"root": f"file://{tmp}/store"},
        evaluate={
            "models": ["pretrained", "label_only", "cot", "grpo"],
            "batch_size": 4,
            "benchmarks": [
                {"name": "mmau-mini", "scorer": "mmau", "annotation_version": "v-test",
                 "ingest": {"dataset": "mmau", "path": str(root), "split": "test-mini"}},
                {"name": "synthetic", "ingest": {"synthetic": {"n_clips": 10, "seed": 3, "split": "test"}}},
            ],
        },
    )
    store = open_store(cfg)
    benchmarks = {
        b.name: run_ingest(b.ingest, store, cfg.run, benchmark_stage(b.name)) for b in cfg.evaluate.benchmarks
    }
    # The run produced no label_only model: it is skipped, not an error.
    models = {"pretrained": ("/p", "fp-p"), "cot": ("/c", "fp-c"), "grpo": ("/g", "fp-g")}
    fake = HearsSilence()
    patch = pytest.MonkeyPatch()
    patch.setattr(run_module, "load_generator", lambda backend, path, device: fake)
    judge = Judge()
    patch.setattr(run_module, "make_verifier", lambda verify: judge)
    ref = run_evaluate(cfg, store, models, benchmarks)
    patch.undo()
    clips = {name: Clip.from_table(read_all(store, b)) for name, b in benchmarks.items()}
    fake.judge = judge
    return cfg, store, ref, clips, fake


def test_one_job_per_model_and_benchmark(evaluated):
    cfg, store, ref, clips, fake = evaluated
    sources = [(s["source"]["model"], s["source"]["benchmark"]) for s in ref.manifest["shards"]]
    assert sources == [(m, b) for m in ("pretrained", "cot", "grpo") for b in ("mmau-mini", "synthetic")]
    assert ref.manifest["rows"] == 3 * (6 + 10)
    assert ref.manifest["summary"]["models"] == ["pretrained", "cot", "grpo"]
    # Batched: no generate call holds more than batch_size items, with audio or with silence.
    assert max(fake.batches) == 4 and sum(fake.batches) == 2 * 3 * 16


def test_the_silent_probe_feeds_zeros_as_long_as_each_clip(evaluated):
    cfg, store, ref, clips, fake = evaluated
    heard = [w for w in fake.waves if np.any(w)]
    silent = [w for w in fake.waves if not np.any(w)]
    assert len(heard) == len(silent) == 3 * 16
    assert all(w.dtype == np.float32 for w in silent)
    # Each model's silent pass follows its pass with audio, item for item in the same order.
    assert [len(w) for w in silent] == [len(w) for w in heard]
    assert len({len(w) for w in silent}) > 1  # MMAU's 1 s tones, the world's longer clips


def test_silent_answers_never_leak_into_the_with_audio_results(evaluated):
    cfg, store, ref, clips, fake = evaluated
    summary = ref.manifest["summary"]
    for entry, job in zip(ref.manifest["shards"], run_module.plan_evaluate(
            cfg, store, {"pretrained": ("/p", "fp-p"), "cot": ("/c", "fp-c"), "grpo": ("/g", "fp-g")},
            _benchmarks(cfg, store)).jobs):
        tag, name = entry["source"]["model"], entry["source"]["benchmark"]
        preds = Prediction.from_table(store.read_table(entry["uri"]))
        silent = Prediction.from_table(store.read_table(silence_file_uri(job)))
        assert summary["benchmarks"][name]["silence_files"][tag] == silence_file_uri(job)
        assert preds and all(p.raw != SILENT for p in preds)
        assert [p.clip_id for p in silent] == [p.clip_id for p in preds]
        assert all(p.raw == SILENT for p in silent)
        assert summary["accuracy"][tag][name]["all"]["correct"] == sum(p.correct for p in preds)
        probe = summary["silence"][tag][name]
        assert probe["all"]["audio"] == summary["accuracy"][tag][name]["all"]
        assert probe["all"]["silence"]["correct"] == sum(p.correct for p in silent)
        assert probe["all"]["difference"] == pytest.approx(
            probe["all"]["audio"]["accuracy"] - probe["all"]["silence"]["accuracy"])
        for field in ("family", "category"):
            assert set(probe[f"by_{field}"]) == set(summary["accuracy"][tag][name][f"by_{field}"])
        if name == "mmau-mini":
            data = json.loads(store.read_bytes(summary["benchmarks"][name]["prediction_files"][tag]))
            assert all(d["sightsound"]["raw_output"] != SILENT for d in data)
    # On synthetic items audio answers the first option, silence the second: never both right.
    synthetic = summary["silence"]["cot"]["synthetic"]["all"]
    assert synthetic["audio"]["correct"] > 0 and synthetic["silence"]["correct"] > 0
    assert (synthetic["audio_only"], synthetic["silence_only"]) == (
        synthetic["audio"]["correct"], synthetic["silence"]["correct"])


def _benchmarks(cfg, store):
    return {b.name: run_ingest(b.ingest, store, cfg.run, benchmark_stage(b.name)) for b in cfg.evaluate.benchmarks}


def test_predictions_are_parquet_rows_scored_by_each_rule(evaluated):
    cfg, store, ref, clips, _ = evaluated
    preds = [p for uri in ref.shards for p in Prediction.from_table(store.read_table(uri))]
    mmau = {p.clip_id: p for p in preds if p.benchmark == "mmau-mini" and p.model_tag == "cot"}
    for clip in clips["mmau-mini"]:
        raw, correct, _ = OUTPUTS[clip.question]  # the benchmark keeps the default answer rule
        assert mmau[clip.clip_id].raw == raw and mmau[clip.clip_id].correct is correct
        assert mmau[clip.clip_id].category == clip.meta_dict()["task"]
    synthetic = [p for p in preds if p.benchmark == "synthetic" and p.model_tag == "cot"]
    first = {c.clip_id: c.options[0] for c in clips["synthetic"]}
    assert all(p.answer == first[p.clip_id] for p in synthetic)
    assert [p.correct for p in synthetic] == [p.label == first[p.clip_id] for p in synthetic]


def test_summary_has_accuracy_groups_and_the_mmau_version(evaluated):
    cfg, store, ref, clips, _ = evaluated
    summary = ref.manifest["summary"]
    mmau = summary["accuracy"]["cot"]["mmau-mini"]
    assert mmau["all"]["correct"] == 4 and mmau["all"]["n"] == 6
    assert set(mmau["by_category"]) == {"sound", "music", "speech"}
    assert mmau["official"]["total"] == mmau["all"]
    assert set(mmau["official"]["by_difficulty"]) == {"easy", "medium", "hard"}
    synthetic = summary["accuracy"]["grpo"]["synthetic"]
    assert set(synthetic["by_family"]) <= {"visible", "partial", "invisible"} and synthetic["all"]["n"] == 10
    chance = summary["benchmarks"]["synthetic"]["chance"]
    assert 0.25 <= chance["all"] <= 0.5 and set(chance) == {"all", *synthetic["by_family"]}
    assert synthetic["hallucination"]["claims"] >= 0 and "hallucination" in mmau
    info = summary["benchmarks"]["mmau-mini"]
    assert info["scorer"] == "mmau" and info["annotation_version"] == "v-test" and info["items"] == 6
    assert info["answer_rule"] == "answer_block_or_raw" and info["file_items"] == 6
    assert info["annotations"] == [f"file://{cfg.evaluate.benchmarks[0].ingest.path}/mmau-test-mini.json"]
    assert summary["benchmarks"]["synthetic"]["prediction_files"] == {}


def test_mmau_prediction_files_sit_next_to_the_shards(evaluated):
    cfg, store, ref, clips, _ = evaluated
    files = ref.manifest["summary"]["benchmarks"]["mmau-mini"]["prediction_files"]
    assert set(files) == {"pretrained", "cot", "grpo"}
    for tag, uri in files.items():
        assert uri.rsplit("/", 1)[0] == ref.dir and uri.endswith(f"mmau-{tag}-mmau-mini.json")
        data = json.loads(store.read_bytes(uri))
        assert [d["sightsound"]["annotation_version"] for d in data] == ["v-test"] * 6
        assert [d["model_output"] for d in data][:2] == ["Car door", "child"]


def test_rerun_reuses_every_committed_job(evaluated):
    cfg, store, ref, clips, _ = evaluated
    benchmarks = {b.name: run_ingest(b.ingest, store, cfg.run, benchmark_stage(b.name))
                  for b in cfg.evaluate.benchmarks}
    models = {"pretrained": ("/p", "fp-p"), "cot": ("/c", "fp-c"), "grpo": ("/g", "fp-g")}

    def refuse(*args):
        raise AssertionError("a committed job was recomputed")

    patch = pytest.MonkeyPatch()
    patch.setattr(run_module, "load_generator", refuse)
    try:
        again = run_evaluate(cfg, store, models, benchmarks)
    finally:
        patch.undo()
    assert again.manifest == ref.manifest


def test_benchmark_config_rules():
    mmau = {"dataset": "mmau", "path": "/d", "split": "test-mini"}
    with pytest.raises(ValueError, match="annotation_version"):
        BenchmarkConfig(name="m", scorer="mmau", ingest=mmau)
    with pytest.raises(ValueError, match="use scorer: mmau"):
        BenchmarkConfig(name="m", ingest=mmau, annotation_version="v")
    with pytest.raises(ValueError, match="cannot be scored by 'avqa'"):
        BenchmarkConfig(name="s", scorer="avqa", ingest=IngestConfig())
    ok = BenchmarkConfig(name="m", scorer="mmau", ingest=mmau, annotation_version="v05.15.25")
    with pytest.raises(ValueError, match="unique"):
        EvaluateConfig(benchmarks=[ok, ok])
    # The annotation release changes what is scored, so it is part of the hash.
    other = BenchmarkConfig(name="m", scorer="mmau", ingest=mmau, annotation_version="original")
    assert ok.content_hash() != other.content_hash()
    assert EvaluateConfig(batch_size=64).content_hash() == EvaluateConfig().content_hash()
    assert EvaluateConfig(silent_probe=False).content_hash() != EvaluateConfig().content_hash()


def test_music_avqa_annotation_version_is_the_release_ingest_read():
    ingest = {"dataset": "music_avqa", "path": "/d", "split": "test"}
    updated = BenchmarkConfig(name="m", scorer="music_avqa", ingest=ingest)
    assert run_module._annotation_version(updated.hash_payload()) == "json_update"
    original = BenchmarkConfig(name="m", scorer="music_avqa", annotation_version="original",
                               ingest={**ingest, "music_avqa_release": "original"})
    assert run_module._annotation_version(original.hash_payload()) == "original"
    assert updated.content_hash() != original.content_hash()
    with pytest.raises(ValueError, match="music_avqa_release is 'json_update'"):
        BenchmarkConfig(name="m", scorer="music_avqa", annotation_version="original", ingest=ingest)
    assert EvaluateConfig(backend="vllm").content_hash() != EvaluateConfig().content_hash()


def _evaluate_mmau(tmp_path, root, release, answer):
    """Ingest the MMAU root and evaluate one model that writes ``answer(question, options)``."""
    cfg = PipelineConfig(
        run="t",
        store={"root": f"file://{tmp_path}/store"},
        evaluate={
            "models": ["cot"],
            "benchmarks": [{"name": "mmau", "scorer": "mmau", "annotation_version": release,
                            "ingest": {"dataset": "mmau", "path": str(root), "split": "test-mini"}}],
        },
    )
    store = open_store(cfg)
    bench = cfg.evaluate.benchmarks[0]
    benchmarks = {"mmau": run_ingest(bench.ingest, store, cfg.run, benchmark_stage("mmau"))}
    patch = pytest.MonkeyPatch()
    patch.setattr(run_module, "load_generator", lambda backend, path, device: Scripted(answer))
    try:
        ref = run_evaluate(cfg, store, {"cot": ("/c", "fp-c")}, benchmarks)
    finally:
        patch.undo()
    return ref, store


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_mmau_items_with_repeated_choices_are_all_scored(tmp_path, release):
    """Both releases have items whose choices repeat a string: every item of the file is scored,
    as MMAU's official script scores it, and the prediction file keeps the choices as given."""
    originals = records(RELEASES[release])
    assert any(len(set(r["choices"])) < len(r["choices"]) for r in originals)
    root = write_mmau_root(tmp_path / "mmau", fixture=RELEASES[release])
    # The model answers each item's label, so every item is correct when it is scored.
    by_question = {r["question"]: r["answer"] for r in originals}
    ref, store = _evaluate_mmau(
        tmp_path, root, release, lambda q, options: f"<think>x</think><answer>{by_question[q]}</answer>"
    )
    info = ref.manifest["summary"]["benchmarks"]["mmau"]
    assert info["items"] == info["file_items"] == len(originals)
    assert ref.manifest["summary"]["accuracy"]["cot"]["mmau"]["all"]["correct"] == len(originals)
    data = json.loads(store.read_bytes(info["prediction_files"]["cot"]))
    assert [d["choices"] for d in data] == [r["choices"] for r in originals]
    assert [d["answer"] for d in data] == [r["answer"] for r in originals]
    assert {d["sightsound"]["annotation_version"] for d in data} == {release}
    assert official_breakdown(data)["total"]["correct"] == len(originals)


def test_the_summary_counts_the_file_items_ingest_could_not_use(tmp_path):
    root = write_mmau_root(tmp_path / "mmau")
    (root / records()[1]["audio_id"]).unlink()
    ref, _ = _evaluate_mmau(tmp_path, root, "v-test", lambda q, options: "<answer>x</answer>")
    info = ref.manifest["summary"]["benchmarks"]["mmau"]
    assert (info["file_items"], info["items"]) == (6, 5)


def test_the_verifier_judges_reasoned_answers_on_real_clips_only(evaluated):
    cfg, store, ref, clips, fake = evaluated
    judge = fake.judge
    mmau = {c.clip_id: c for c in clips["mmau-mini"]}
    reasoned = [c for c in clips["mmau-mini"] if "<think>" in _answer(c.question, list(c.options))
                and _answer(c.question, list(c.options)).split("<think>")[1].split("</think>")[0].strip()]
    # One request per reasoned MMAU answer per model; no synthetic item is ever sent.
    assert len(judge.requests) == 3 * len(reasoned) > 0
    assert all(r.clip.clip_id in mmau for r in judge.requests)
    # The judge hears each item's own audio and reads that item's own answer.
    for r in judge.requests:
        assert r.trace == _answer(r.clip.question, list(r.clip.options))
        assert r.audio.ndim == 1 and r.audio.size > 0
    rows = Prediction.from_table(read_all(store, ref))
    for p in rows:
        if p.clip_id not in mmau:  # synthetic: never judged (its claims are the waveform analysis's)
            assert p.judge == ""
            continue
        text = _answer(mmau[p.clip_id].question, list(mmau[p.clip_id].options))
        if "<think>" not in text:
            assert (p.judge, p.claims, p.contradicted) == ("", 0, 0)
        elif "Plucked" in text:
            assert (p.judge, p.claims, p.contradicted) == ("unparseable", 0, 0)
        else:
            door = "door" in text.split("</think>")[0]
            assert (p.judge, p.claims, p.contradicted) == ("rejected" if door else "accepted", 1, int(door))


def test_the_judged_rate_is_per_answer_in_the_summary(evaluated):
    cfg, store, ref, clips, fake = evaluated
    rows = [p for p in Prediction.from_table(read_all(store, ref)) if p.model_tag == "cot" and p.benchmark == "mmau-mini"]
    h = ref.manifest["summary"]["accuracy"]["cot"]["mmau-mini"]["hallucination"]
    judged = [p for p in rows if p.judge in ("accepted", "rejected")]
    assert h["unit"] == "answers" and h["claims"] == len(judged) > 0
    assert h["contradicted"] == sum(p.judge == "rejected" for p in rows) > 0
    assert h["not_judged"] == sum(p.judge == "unparseable" for p in rows) > 0
    synthetic = ref.manifest["summary"]["accuracy"]["cot"]["synthetic"]["hallucination"]
    assert synthetic["unit"] == "claims"


def test_judge_off_or_synthetic_only_sends_nothing(tmp_path):
    from sightsound_core.evaluation.run import judges

    real = {"name": "m", "scorer": "mmau", "annotation_version": "v", "ingest": {"dataset": "mmau", "path": str(tmp_path)}}
    synthetic = {"name": "s", "ingest": {"synthetic": {"n_clips": 4}}}
    assert judges(PipelineConfig(run="t", evaluate={"benchmarks": [real, synthetic]}))
    assert not judges(PipelineConfig(run="t", evaluate={"benchmarks": [synthetic]}))
    assert not judges(PipelineConfig(run="t", evaluate={"judge": False, "benchmarks": [real]}))
