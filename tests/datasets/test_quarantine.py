"""Every kind of bad input becomes a Quarantine row with a clear reason; none stops the run and
none disappears: clips + quarantine rows == records."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from mediafiles import tone, write_av, write_wav

from sightsound_core.config import IngestConfig, MediaLimits
from sightsound_core.datasets.ingest import plan_ingest, run_ingest
from sightsound_core.schemas import Clip, Quarantine
from sightsound_core.stage import read_all

LIMITS = MediaLimits(max_duration_s=2.5, max_width=100, max_height=100)


def _avqa(rid, video, **over):
    record = {
        "id": rid, "video_name": video, "video_id": rid,
        "question_text": "What makes the sound?", "multi_choice": ["a dog", "a car", "a bird", "rain"],
        "answer": 1, "question_relation": "Sound", "question_type": "Which",
    }
    record.update(over)
    return record


def _run(store, cfg):
    ref = run_ingest(cfg, store, "r")
    clips = Clip.from_table(read_all(store, ref))
    rows = []
    for job in plan_ingest(cfg, store, "r").jobs:
        if store.exists(job.quarantine_uri):
            rows += Quarantine.from_table(store.read_table(job.quarantine_uri))
    assert ref.manifest["quarantined"] == len(rows)
    for row in rows:
        assert row.stage == "ingest" and row.detail.strip()
    return clips, rows


@pytest.fixture
def bad_avqa(tmp_path):
    root = tmp_path / "avqa"
    good = write_av(root / "good.mp4")
    (root / "empty.mp4").write_bytes(b"")
    (root / "trunc.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "text.mp4").write_text("this is a subtitle file, not a video\n" * 20)
    write_av(root / "silent.mp4", audio=False)
    write_av(root / "audio_only.mp4", video=False)
    write_av(root / "long.mp4", seconds=3.0)
    write_av(root / "big.mp4", width=128, height=96)
    outside = write_av(tmp_path / "elsewhere" / "real.mp4")
    os.symlink(outside, root / "link.mp4")
    missing_question = _avqa(9, "good")
    del missing_question["question_text"]
    records = [
        _avqa(1, "good"),
        _avqa(2, "empty"),
        _avqa(3, "trunc"),
        _avqa(4, "text"),
        _avqa(5, "silent"),
        _avqa(6, "audio_only"),
        _avqa(7, "long"),
        _avqa(8, "big"),
        missing_question,
        _avqa(10, "good", answer=7),
        _avqa(11, "good", multi_choice=["only"], answer=0),
        _avqa(1, "good", question_text="Same id as the first record, another shard."),
        _avqa(13, "good", question_text="NONUTF8"),
        _avqa(14, "../elsewhere/real"),
        _avqa(15, str(tmp_path / "elsewhere" / "real")),
        _avqa(16, "link"),
        _avqa(17, "nope"),
        _avqa(18, "good", answer="1"),
        "not a record",
        _avqa(20, "good", multi_choice=["a dog", "a dog", "a car"], answer=0),
        _avqa(21, "good", question_text="And one more good question?"),
    ]
    text = json.dumps(records, indent=1).encode()
    (root / "val_qa.json").write_bytes(text.replace(b"NONUTF8", b"caf\xe9 \xff noise"))
    return root, len(records)


def test_every_bad_avqa_item_is_quarantined_with_its_reason(bad_avqa, file_store):
    root, n_records = bad_avqa
    cfg = IngestConfig(dataset="avqa", path=str(root), split="val", shard_size=4, limits=LIMITS)
    clips, rows = _run(file_store, cfg)

    assert sorted(c.clip_id for c in clips) == ["avqa:1", "avqa:21"]
    assert len(clips) + len(rows) == n_records
    reasons = {row.input: row.reason for row in rows if row.input != "avqa:1"}
    assert reasons == {
        "avqa:2": "zero_byte_file",
        "avqa:3": "truncated",
        "avqa:4": "not_media",
        "avqa:5": "no_audio_stream",
        "avqa:6": "no_video_stream",
        "avqa:7": "duration_too_long",
        "avqa:8": "resolution_too_large",
        "avqa:9": "missing_field",
        "avqa:10": "label_not_in_options",
        "avqa:11": "too_few_options",
        "avqa:13": "non_utf8_text",
        "avqa:14": "path_escapes_root",
        "avqa:15": "path_escapes_root",
        "avqa:16": "path_escapes_root",
        "avqa:17": "not_found",
        "avqa:18": "bad_field_type",
        f"file://{root}/val_qa.json#/18": "malformed_record",
        "avqa:20": "duplicate_options",
    }
    duplicate = [r for r in rows if r.input == "avqa:1"]
    assert [r.reason for r in duplicate] == ["duplicate_id"] and "record 0" in duplicate[0].detail
    details = {row.input: row.detail for row in rows}
    assert "climbs out" in details["avqa:14"] and "absolute" in details["avqa:15"]
    assert "symlink" in details["avqa:16"] and "\\xff" in details["avqa:13"]
    assert "question_text" in details["avqa:9"]


def test_audio_only_dataset_refuses_bad_samples(tmp_path, file_store):
    root = tmp_path / "mmau"
    write_wav(root / "a" / "ok.wav", tone(1.0))
    write_wav(root / "a" / "empty.wav", np.zeros(0, np.float32))
    nan = tone(1.0)
    nan[500] = np.nan
    write_wav(root / "a" / "nan.wav", nan)
    inf = tone(1.0)
    inf[9] = np.inf
    write_wav(root / "a" / "inf.wav", inf)
    write_av(root / "a" / "mute.mp4", audio=False)

    def item(i, audio, **over):
        path = audio if audio.startswith(("/", "s3://")) else f"./a/{audio}"
        return {"id": f"q{i}", "audio_id": path, "question": "Is it loud?",
                "choices": ["yes", "no"], "answer": "yes", "task": "sound", **over}

    records = [item(0, "ok.wav"), item(1, "empty.wav"), item(2, "nan.wav"), item(3, "inf.wav"),
               item(4, "mute.mp4"), item(5, "ok.wav", answer="maybe"), item(6, "ok.wav", choices=["yes"]),
               item(7, "/etc/passwd"), item(8, "s3://other-bucket/x.wav")]
    (root / "mmau-test-mini.json").write_text(json.dumps(records))
    clips, rows = _run(file_store, IngestConfig(dataset="mmau", path=str(root), split="test"))
    assert [c.clip_id for c in clips] == ["mmau:q0"]
    assert {r.input: r.reason for r in rows} == {
        "mmau:q1": "zero_length_audio",
        "mmau:q2": "non_finite_samples",
        "mmau:q3": "non_finite_samples",
        "mmau:q4": "no_audio_stream",
        "mmau:q5": "label_not_in_options",
        "mmau:q6": "too_few_options",
        "mmau:q7": "path_escapes_root",
        "mmau:q8": "path_escapes_root",
    }


def test_malformed_annotation_file_is_one_quarantine_row_not_a_crash(tmp_path, file_store):
    root = tmp_path / "avqa"
    root.mkdir()
    (root / "train_qa.json").write_text('[{"id": 1, "video_name": "x",')
    clips, rows = _run(file_store, IngestConfig(dataset="avqa", path=str(root)))
    assert clips == [] and [r.reason for r in rows] == ["malformed_json"]
    assert rows[0].input.endswith("train_qa.json") and "line 1" in rows[0].detail

    (root / "train_qa.json").write_text('{"id": 1}')
    _, rows = _run(file_store, IngestConfig(dataset="avqa", path=str(root), shard_size=3))
    assert [r.reason for r in rows] == ["malformed_json"] and "JSON array" in rows[0].detail

    _, rows = _run(file_store, IngestConfig(dataset="avqa", path=str(root), split="val"))
    assert [r.reason for r in rows] == ["not_found"]


def test_music_avqa_record_level_json_and_template_errors(tmp_path, file_store):
    root = tmp_path / "m"
    write_av(root / "00000001.mp4")

    def rec(qid, **over):
        return {"video_id": "00000001", "question_id": qid, "type": '["Audio", "Counting"]',
                "question_content": "How many <Object> are sounding?", "templ_values": '["violins"]',
                "question_deleted": 0, "anser": ["two", "three", "four"][qid % 3], **over}

    records = [rec(0), rec(1), rec(2, templ_values='["violins"'), rec(3, templ_values="[]"),
               rec(4, type="Audio Counting"), rec(5, question_deleted=1), rec(6, video_id="../00000001")]
    (root / "json_update").mkdir()
    (root / "json_update" / "avqa-train.json").write_text(json.dumps(records))
    clips, rows = _run(file_store, IngestConfig(dataset="music_avqa", path=str(root)))
    assert [c.clip_id for c in clips] == ["music_avqa:0", "music_avqa:1"]
    assert {r.input: r.reason for r in rows} == {
        "music_avqa:2": "malformed_json",
        "music_avqa:3": "template_mismatch",
        "music_avqa:4": "malformed_json",
        "music_avqa:5": "question_deleted",
        "music_avqa:6": "path_escapes_root",
    }
