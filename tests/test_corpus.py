"""The corpus funnel counts the traces whose verify request failed; with drop_silent_solvable the
corpus drops the clips the pretrained student answers right on silence, and counts them."""

import numpy as np
from fakes.verify_world import make_world

import sightsound_core.corpus as corpus_module
from sightsound_core.config import PipelineConfig, VerifyConfig
from sightsound_core.corpus import DATASETS, CorpusTables, dataset_uri, funnel, run_corpus
from sightsound_core.evaluation.inference import load_generator
from sightsound_core.evaluation.scoring import score
from sightsound_core.schemas import Clip, Verdict
from sightsound_core.stage import plan_map, read_all, run_plan
from sightsound_core.storage import ObjectStore
from sightsound_core.verify import run_verify


def test_funnel_counts_verify_errors(tmp_path, openai_server):
    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=20, samples_per_clip=2, clips_per_shard=10)
    openai_server.configure(p500=0.4)
    cfg = VerifyConfig(backend="openai", model="fake-audio", base_url=openai_server.url, api_key_env=None,
                       samples_per_clip=2, max_retries=0)
    verdicts = run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
    errors = sum(v.status == "error" for v in Verdict.from_table(read_all(store, verdicts)))
    tables = CorpusTables(store, {"clips": refs["clips"], "samples": refs["samples"], "votes": refs["votes"],
                                  "verdicts": verdicts})
    counts = funnel(tables)
    assert counts["all"]["errors"] == errors > 0
    assert sum(f["errors"] for f in counts["by_family"].values()) == errors


def _world(tmp_path, n_clips=8):
    """A committed small world (every clip kept, labelled 'low', one accepted trace each)."""
    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=n_clips, samples_per_clip=1,
                      clips_per_shard=n_clips)
    accepted = Verdict.to_table([Verdict(f"test:{i:05d}", 0, "accepted", [], "", "", 1, 0.0, "test", "test")
                                 for i in range(n_clips)])
    refs["verdicts"] = run_plan(store, plan_map(store, "r", "verify", {"v": 1}, refs, "clips"),
                                lambda job: (accepted, None))
    return store, refs


def _cfg(tmp_path, drop):
    return PipelineConfig(run="r", store={"root": f"file://{tmp_path}/store"},
                          models={"student": "tiny://qwen2-audio", "device": "cpu"},
                          corpus={"drop_silent_solvable": drop}, evaluate={"batch_size": 3, "max_new_tokens": 8})


def _clip_ids(store, ref):
    return {name: sorted(store.read_table(dataset_uri(ref, name))["clip_id"].to_pylist()) for name in DATASETS}


class Says:
    """A generator whose text is ``answer(question, options)``, counting the items of each call."""

    def __init__(self, answer):
        self.answer, self.batches = answer, []

    def load(self):
        pass

    def generate(self, items, max_new_tokens, temperature=0.0, num_return_sequences=1, seed=0):
        self.batches.append(len(items))
        return [[self.answer(question, options)] for _, question, options in items]


class Recorder:
    """Wraps a generator, keeping every waveform it was given and every text it returned."""

    def __init__(self, inner):
        self.inner, self.waves, self.texts = inner, [], {}

    def load(self):
        self.inner.load()

    def generate(self, items, max_new_tokens, temperature=0.0, num_return_sequences=1, seed=0):
        out = self.inner.generate(items, max_new_tokens, temperature, num_return_sequences, seed)
        self.waves += [np.asarray(w) for w, _, _ in items]
        self.texts.update({q: o[0] for (_, q, _), o in zip(items, out)})
        return out


def test_drop_silent_solvable_drops_exactly_the_clips_answered_right_on_silence(tmp_path, monkeypatch):
    store, refs = _world(tmp_path)
    # On silence the student says 'low' (the label) for even clips and 'high' for odd ones.
    fake = Recorder(Says(lambda question, options: "low" if int(question.split()[2]) % 2 == 0 else "high"))
    monkeypatch.setattr(corpus_module, "resolve_model", lambda name, cache_dir=None: name)
    monkeypatch.setattr(corpus_module, "load_generator", lambda backend, path, device: fake)
    on = run_corpus(_cfg(tmp_path, True), store, refs)
    off = run_corpus(_cfg(tmp_path, False), store, refs)
    assert on.dir != off.dir
    even = {f"test:{i:05d}" for i in range(0, 8, 2)}
    kept, trained = _clip_ids(store, off), _clip_ids(store, on)
    for name in DATASETS:
        assert kept[name] and trained[name] == sorted(set(kept[name]) - even), name
    funnel = on.manifest["summary"]["funnel"]
    assert funnel["all"]["silent_solvable"] == 4 and funnel["by_family"]["acoustic"]["silent_solvable"] == 4
    assert "silent_solvable" not in off.manifest["summary"]["funnel"]["all"]
    # Every clip was heard once, as zeros as long as its 8,000-sample tone, in batches of three.
    assert fake.inner.batches == [3, 3, 2]
    assert len(fake.waves) == 8 and all(len(w) == 8000 and not np.any(w) for w in fake.waves)


def test_drop_silent_solvable_on_the_tiny_student(tmp_path, monkeypatch):
    store, refs = _world(tmp_path, n_clips=4)
    made = []

    def recorded(backend, path, device):
        made.append(Recorder(load_generator(backend, path, device)))
        return made[-1]

    monkeypatch.setattr(corpus_module, "load_generator", recorded)
    ref = run_corpus(_cfg(tmp_path, True), store, refs)
    (student,) = made
    assert len(student.waves) == 4 and all(len(w) == 8000 and not np.any(w) for w in student.waves)
    clips = {c.question: c for c in Clip.from_table(read_all(store, refs["clips"]))}
    solved = {clips[q].clip_id for q, text in student.texts.items()
              if score("option", text, clips[q], "answer_block_or_raw").correct}
    assert ref.manifest["summary"]["funnel"]["all"]["silent_solvable"] == len(solved)
    assert set(_clip_ids(store, ref)["grpo"]) == set(c.clip_id for c in clips.values()) - solved
