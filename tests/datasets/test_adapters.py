"""The AVQA, MUSIC-AVQA and MMAU adapters on fixture files that follow each public schema exactly."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from mediafiles import FIXTURES, write_av

from sightsound_core.config import IngestConfig
from sightsound_core.datasets import ingest as ingest_mod
from sightsound_core.datasets import music_avqa
from sightsound_core.datasets.ingest import plan_ingest, run_ingest
from sightsound_core.schemas import Clip, Quarantine
from sightsound_core.stage import read_all

SPLITS = {"avqa": "val", "music_avqa": "test", "mmau": "test"}


def make_dataset(root, name, annotations=None):
    """Copy a dataset's fixture folder, write every media file its annotation files name, and return
    the records of ``annotations`` (default: the folder's only file; MUSIC-AVQA's updated release)."""
    shutil.copytree(FIXTURES / name, root)
    every = [r for path in sorted(root.rglob("*.json")) for r in json.loads(path.read_text())]
    for record in every:
        if name == "avqa":
            write_av(root / f"{record['video_name']}.mp4")
        elif name == "music_avqa":
            write_av(root / f"{record['video_id']}.mp4")
        else:
            write_av(root / record["audio_id"], seconds=1.5, video=False)
    if annotations is None and name == "music_avqa":
        annotations = "json_update/avqa-test.json"
    return json.loads((root / annotations).read_text()) if annotations else every


def ingest(store, root, name, **kw):
    cfg = IngestConfig(dataset=name, path=str(root), split=SPLITS[name], **kw)
    ref = run_ingest(cfg, store, "r")
    clips = Clip.from_table(read_all(store, ref))
    quarantined = []
    for job in plan_ingest(cfg, store, "r").jobs:
        if store.exists(job.quarantine_uri):
            quarantined += Quarantine.from_table(store.read_table(job.quarantine_uri))
    return ref, {c.clip_id: c for c in clips}, quarantined


def test_avqa(tmp_path, file_store):
    records = make_dataset(tmp_path / "avqa", "avqa")
    _, clips, quarantined = ingest(file_store, tmp_path / "avqa", "avqa")
    assert quarantined == [] and list(clips) == ["avqa:40001", "avqa:40002", "avqa:40003"]
    for record in records:
        clip = clips[f"avqa:{record['id']}"]
        assert (clip.source, clip.split, clip.question) == ("avqa", "val", record["question_text"])
        assert clip.options == record["multi_choice"]
        assert clip.label == record["multi_choice"][record["answer"]]
        assert clip.category == record["question_type"]
        assert clip.video_uri == clip.audio_uri
        assert clip.video_uri.endswith(f"/avqa/{record['video_name']}.mp4")
        assert abs(clip.duration_s - 1.0) < 0.1
        meta = clip.meta_dict()
        assert (meta["video_id"], meta["answer_index"]) == (record["video_id"], record["answer"])
    assert [clips[k].family for k in clips] == ["visual", "acoustic", "unknown"]


def test_music_avqa_fills_templates_and_builds_seeded_options(tmp_path, file_store):
    records = make_dataset(tmp_path / "m", "music_avqa", "avqa-test.json")
    _, clips, quarantined = ingest(file_store, tmp_path / "m", "music_avqa", music_avqa_release="original")
    assert [(q.input, q.reason) for q in quarantined] == [("music_avqa:64", "question_deleted")]
    assert clips["music_avqa:59"].question == "Is the piano on the left of the violin?"
    assert clips["music_avqa:42"].question == "Is the suona in the video always playing?"
    pools = music_avqa.answer_pools(records)
    # "five" belongs to a deleted question: never a distractor.
    assert pools["number"] == ["four", "one", "three", "two"]
    for record in records[:-1]:
        clip = clips[f"music_avqa:{record['question_id']}"]
        kind = music_avqa.answer_kind(record["anser"])
        assert clip.label == record["anser"] and clip.category == "/".join(json.loads(record["type"]))
        assert len(set(clip.options)) == len(clip.options) == min(4, len(pools[kind]))
        assert set(clip.options) <= set(pools[kind])
    assert clips["music_avqa:42"].family == "unknown"
    assert clips["music_avqa:41"].family == "acoustic" and clips["music_avqa:58"].family == "visual"
    assert sorted(clips["music_avqa:42"].options) == ["no", "yes"]


def test_music_avqa_reads_the_updated_release_by_default(tmp_path, file_store):
    make_dataset(tmp_path / "m", "music_avqa")
    ref, clips, _ = ingest(file_store, tmp_path / "m", "music_avqa")
    assert ref.manifest["shards"][0]["source"]["annotations"].endswith("/m/json_update/avqa-test.json")
    assert "music_avqa:70" in clips
    _, original, _ = ingest(file_store, tmp_path / "m", "music_avqa", music_avqa_release="original")
    assert "music_avqa:70" not in original and "music_avqa:41" in original


def test_music_avqa_options_never_single_out_the_label_by_its_kind(tmp_path, file_store):
    records = make_dataset(tmp_path / "m", "music_avqa")
    _, clips, quarantined = ingest(file_store, tmp_path / "m", "music_avqa")
    # The fixture's question types mix answer kinds, as the release's do.
    kinds_by_type = {}
    for record in records:
        kinds_by_type.setdefault(record["type"], set()).add(music_avqa.answer_kind(record["anser"]))
    assert {t for t, kinds in kinds_by_type.items() if len(kinds) > 1} >= {
        '["Audio", "Counting"]', '["Audio-Visual", "Counting"]', '["Audio-Visual", "Location"]',
        '["Visual", "Location"]'}
    assert len(clips) >= 15
    for clip in clips.values():
        kinds = [music_avqa.answer_kind(o) for o in clip.options]
        assert len(clip.options) >= 2 and set(kinds) <= _allowed_kinds(clip), clip
        assert clip.meta_dict()["answer_kind"] == music_avqa.answer_kind(clip.label)
    assert sorted(clips["music_avqa:76"].options) == ["indoor", "outdoor"]
    assert sorted(clips["music_avqa:73"].options) == ["left", "middle", "right"]
    assert set(clips["music_avqa:74"].options) == {"erhu", "guzheng", "piano"}


def _allowed_kinds(clip):
    """The label's kind, or timing with its template's paired kind (the module docstring)."""
    kind = music_avqa.answer_kind(clip.label)
    if clip.meta_dict()["question_content"] == TEMPORAL and kind in ("timing", "instrument", "position"):
        return {"timing", "instrument", "position"}
    return {kind}


TEMPORAL = "Which <Object> makes the sound <FL>?"


def test_music_avqa_scores_every_temporal_item(tmp_path, file_store):
    """"simultaneously" is the only timing answer: its items are kept, with distractors of the kind
    the same template's other answers have in the split (instruments when it has none)."""
    records = make_dataset(tmp_path / "m", "music_avqa")
    _, clips, quarantined = ingest(file_store, tmp_path / "m", "music_avqa")
    temporal = {f"music_avqa:{r['question_id']}" for r in records if "Temporal" in r["type"]}
    assert temporal and temporal <= set(clips)
    assert not [q for q in quarantined if q.input in temporal]
    kinds = sorted({music_avqa.answer_kind(o) for o in clips["music_avqa:79"].options})
    assert kinds == ["instrument", "timing"] and len(clips["music_avqa:79"].options) == 4

    # When the template is also answered by sides, "simultaneously" is one of the sides' options.
    extra = [{**records[-1], "question_id": 90 + i, "type": '["Audio-Visual", "Temporal"]',
              "question_content": TEMPORAL, "templ_values": '["violin", "first"]', "anser": side}
             for i, side in enumerate(("left", "right", "left", "middle"))]
    (tmp_path / "m" / "json_update" / "avqa-test.json").write_text(json.dumps(records + extra))
    _, clips, quarantined = ingest(file_store, tmp_path / "m", "music_avqa")
    assert not [q for q in quarantined if q.input in temporal]
    assert sorted(clips["music_avqa:79"].options) == ["left", "middle", "right", "simultaneously"]
    for i in range(4):
        assert set(clips[f"music_avqa:{90 + i}"].options) <= {"left", "middle", "right", "simultaneously"}
    assert any("simultaneously" in clips[f"music_avqa:{90 + i}"].options for i in range(4))
    for clip in clips.values():
        assert set(music_avqa.answer_kind(o) for o in clip.options) <= _allowed_kinds(clip), clip


def test_music_avqa_question_ids_given_twice(tmp_path, file_store):
    records = make_dataset(tmp_path / "m", "music_avqa")
    positions = [i for i, r in enumerate(records) if r["question_id"] == 81]
    assert positions == [21, 23]  # in different shards of 2
    _, clips, quarantined = ingest(file_store, tmp_path / "m", "music_avqa", shard_size=2)
    rows = [(q.input, q.reason) for q in quarantined]
    # 81 has two answers ("two", "three"): neither is guessed, both records are quarantined.
    assert rows.count(("music_avqa:81", "conflicting_answers")) == 2
    assert "music_avqa:81" not in clips
    # 82 is repeated with the same answer: the first record is kept, the second is a duplicate.
    assert rows.count(("music_avqa:82", "duplicate_id")) == 1 and clips["music_avqa:82"].label == "yes"
    assert len(clips) + len(quarantined) == len(records)

    # Once the release agrees with itself, the first record's shard is redone, not reused.
    records[23]["anser"] = "two"
    (tmp_path / "m" / "json_update" / "avqa-test.json").write_text(json.dumps(records))
    _, clips, quarantined = ingest(file_store, tmp_path / "m", "music_avqa", shard_size=2)
    assert clips["music_avqa:81"].label == "two"
    assert [(q.input, q.reason) for q in quarantined if q.input == "music_avqa:81"] == [
        ("music_avqa:81", "duplicate_id")]


def test_music_avqa_options_are_the_same_in_another_process():
    pool = ["zero", "one", "two", "three", "four", "five", "six"]
    here = [music_avqa.build_options("two", pool, qid, 4) for qid in range(20)]
    code = (
        "import json; from sightsound_core.datasets.music_avqa import build_options; "
        f"print(json.dumps([build_options('two', {pool!r}, q, 4) for q in range(20)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    there = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True, env=env))
    assert here == there
    assert len({tuple(o) for o in here}) > 5  # the seed is the question id: options differ by id
    assert all("two" in o and len(o) == 4 for o in here)


def test_mmau_is_audio_only_and_keeps_the_scorer_fields(tmp_path, file_store):
    records = make_dataset(tmp_path / "mmau", "mmau")
    _, clips, quarantined = ingest(file_store, tmp_path / "mmau", "mmau")
    assert quarantined == []
    for record in records:
        clip = clips[f"mmau:{record['id']}"]
        assert clip.video_uri is None
        assert clip.audio_uri.endswith(record["audio_id"][2:])
        assert (clip.options, clip.label, clip.category) == (record["choices"], record["answer"], record["task"])
        assert clip.family == "acoustic" and abs(clip.duration_s - 1.5) < 0.15
        meta = clip.meta_dict()
        for key in ("answer", "choices", "task", "difficulty", "sub-category", "category"):
            assert meta[key] == record[key]


@pytest.mark.parametrize("release", ["original", "v05.15.25"])
def test_mmau_keeps_items_whose_choices_repeat_a_string(tmp_path, file_store, release):
    fixture = FIXTURES.parent / "mmau" / "releases" / release / "mmau-test-mini.json"
    records = json.loads(fixture.read_text())
    root = tmp_path / "mmau"
    root.mkdir()
    shutil.copy(fixture, root / "mmau-test-mini.json")
    for record in records:
        write_av(root / record["audio_id"], video=False)
    _, clips, quarantined = ingest(file_store, root, "mmau")
    assert quarantined == [] and len(clips) == len(records)
    repeated = [r for r in records if len(set(r["choices"])) < len(r["choices"])]
    assert repeated
    for record in repeated:
        clip = clips[f"mmau:{record['id']}"]
        assert (clip.options, clip.label) == (record["choices"], record["answer"])
        assert clip.meta_dict()["choices"] == record["choices"]


def test_other_datasets_still_refuse_repeated_options():
    clip = Clip("avqa:1", "avqa", "val", "file:///a.mp4", "file:///a.mp4", 1.0, "q?",
                ["a dog", "a dog", "a car"], "a car", "acoustic", "Which")
    assert ingest_mod.validate_clip(clip)[0] == "duplicate_options"
    assert ingest_mod.validate_clip(clip, repeated_options=True) is None


def test_rerun_reuses_shards_and_a_changed_video_redoes_only_its_shard(tmp_path, file_store, monkeypatch):
    make_dataset(tmp_path / "m", "music_avqa")
    first, _, _ = ingest(file_store, tmp_path / "m", "music_avqa", shard_size=3)
    screened = []
    real = ingest_mod.screen_media
    monkeypatch.setattr(ingest_mod, "screen_media", lambda uri, *a, **k: screened.append(uri) or real(uri, *a, **k))

    again, _, _ = ingest(file_store, tmp_path / "m", "music_avqa", shard_size=3)
    assert screened == [] and again.manifest == first.manifest

    write_av(tmp_path / "m" / "00006835.mp4", seconds=1.25)  # records 0, 1, 6, 7 use it
    changed, clips, _ = ingest(file_store, tmp_path / "m", "music_avqa", shard_size=3)
    redone = [i for i, (a, b) in enumerate(zip(first.manifest["shards"], changed.manifest["shards"]))
              if a["input_fingerprint"] != b["input_fingerprint"]]
    assert redone == [0, 2]
    assert abs(clips["music_avqa:41"].duration_s - 1.25) < 0.1


def test_annotations_on_s3_with_the_store_options(tmp_path, s3_store):
    make_dataset(tmp_path / "mmau", "mmau")
    prefix = s3_store.root.rsplit("/", 1)[0] + f"/mmau-{uuid.uuid4().hex[:6]}"
    s3_store.fs.put(str(tmp_path / "mmau") + "/", prefix.split("://", 1)[1], recursive=True)
    cfg = IngestConfig(dataset="mmau", path=prefix, split="test")
    ref = run_ingest(cfg, s3_store, "r")
    clips = Clip.from_table(read_all(s3_store, ref))
    assert len(clips) == 3 and all(c.audio_uri.startswith("s3://") for c in clips)
    assert ref.manifest["quarantined"] == 0


def test_config_per_dataset():
    assert IngestConfig(dataset="mmau", path="/d").requires_video is False
    assert IngestConfig(dataset="avqa", path="/d").requires_video is True
    with pytest.raises(ValueError, match="ingest.path is required"):
        IngestConfig(dataset="folder")
    assert IngestConfig(storage_options={"anon": True}).content_hash() == IngestConfig().content_hash()


@pytest.mark.parametrize("module", ["music_avqa", "common"])
def test_doctests(module):
    import importlib

    mod = importlib.import_module(f"sightsound_core.datasets.{module}")
    assert doctest.testmod(mod).failed == 0
