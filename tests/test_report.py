"""The report of a small demo run (plus the hand-made MMAU items): every section, with the run's own
numbers, and an HTML file that renders in headless Chromium with its tables and plots.

Chromium comes from Debian's ``chromium`` package (CI installs it); without it this test fails.
"""

import doctest
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "evaluation"))

from mmau_data import write_mmau_root  # noqa: E402

import sightsound_core.report as report_module  # noqa: E402
from sightsound_core.config import DEFAULT_RECIPE, parse_config  # noqa: E402
from sightsound_core.pipeline import open_store, run_pipeline  # noqa: E402
from sightsound_core.report import pct, report_artifacts, report_uris  # noqa: E402
from sightsound_core.training.stages import read_log  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SECTIONS = [
    "The paper in miniature", "Results", "Benchmarks", "Accuracy per benchmark and category", "Silent-audio probe",
    "Distillation funnel",
    "Teacher agreement by question family", "Verifier on planted hallucinations", "Training curves",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    data["store"]["root"] = f"file://{tmp}/store"
    data["models"]["student"] = "tiny://qwen2-audio"  # the world-pretrained one takes minutes to build
    data["ingest"].update(shard_size=12)
    data["ingest"]["synthetic"]["n_clips"] = 24
    data["sft"].update(max_steps=2)
    data["grpo"].update(max_steps=2, num_generations=2, prompts_per_step=1, max_completion_length=8)
    data["evaluate"].update(models=["pretrained", "label_only", "cot_noagfv", "cot", "grpo"], max_new_tokens=8)
    data["evaluate"]["benchmarks"][0]["ingest"]["synthetic"]["n_clips"] = 8
    data["evaluate"]["benchmarks"].append({
        "name": "mmau-mini", "scorer": "mmau", "annotation_version": "fixture-v1",
        "ingest": {"dataset": "mmau", "path": str(write_mmau_root(tmp / "mmau")), "split": "test-mini"},
    })
    cfg = parse_config(data)
    refs = run_pipeline(cfg)
    store = open_store(cfg)
    uris = report_uris(refs["report"])
    return {
        "cfg": cfg, "refs": refs, "store": store,
        "md": store.read_bytes(uris["markdown"]).decode(),
        "html_path": Path(store.local_path(uris["html"])),
    }


def _table(md, title, header=False):
    """Rows (as lists of cells) of the first table under ``## title``, or its header row."""
    part = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in part.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return rows[0] if header else rows[2:]


def test_doctests():
    assert doctest.testmod(report_module).failed == 0


def test_every_section_is_there(demo):
    titles = re.findall(r"^## (.+)$", demo["md"], re.M)
    assert titles == SECTIONS


def test_results_table_is_the_runs_accuracy(demo):
    summary = demo["refs"]["evaluate"].manifest["summary"]
    assert summary["models"] == ["pretrained", "label_only", "cot_noagfv", "cot", "grpo"]
    rows = {r[0]: r[1:] for r in _table(demo["md"], "Results")}
    assert list(rows) == ["pretrained", "SFT, label only", "CoT SFT, no AGFV", "CoT SFT", "CoT SFT + GRPO"]
    grpo = summary["accuracy"]["grpo"]
    families = report_module.tier_families(grpo["synthetic-test"])
    assert families and set(families) <= {"visible", "partial", "invisible"}
    assert _table(demo["md"], "Results", header=True) == [
        "model", "mmau-mini sound", "mmau-mini music", "mmau-mini speech", "mmau-mini avg",
        *[f"synthetic-test {f}" for f in families], "synthetic-test all"]
    assert rows["CoT SFT + GRPO"][0] == pct(grpo["mmau-mini"]["by_category"]["sound"])
    assert rows["CoT SFT + GRPO"][3] == pct(grpo["mmau-mini"]["official"]["total"])
    assert rows["CoT SFT + GRPO"][4] == pct(grpo["synthetic-test"]["by_family"][families[0]])
    assert rows["CoT SFT + GRPO"][-1] == pct(grpo["synthetic-test"]["all"])
    bench = {r[0]: r for r in _table(demo["md"], "Benchmarks")}
    assert bench["mmau-mini"][1:5] == ["mmau", "mmau", "6", "fixture-v1"]


def test_the_paper_in_miniature_leads_with_the_runs_own_numbers(demo):
    summary = demo["refs"]["evaluate"].manifest["summary"]
    accuracy = summary["accuracy"]
    families = report_module.tier_families(accuracy["cot"]["synthetic-test"])
    header = _table(demo["md"], "The paper in miniature", header=True)
    assert header == ["model", *families, "all", "silence", "hallucination rate", "paper"]
    rows = {r[0]: r[1:] for r in _table(demo["md"], "The paper in miniature")}
    assert list(rows)[:5] == ["pretrained", "SFT, label only", "CoT SFT, no AGFV", "CoT SFT", "CoT SFT + GRPO"]
    for tag, name in [("cot", "CoT SFT"), ("grpo", "CoT SFT + GRPO"), ("label_only", "SFT, label only")]:
        entry = accuracy[tag]["synthetic-test"]
        assert rows[name][: len(families) + 1] == [*[pct(entry["by_family"][f]) for f in families], pct(entry["all"])]
        assert rows[name][len(families) + 2] == report_module.hall(entry)
    for tag, name in report_module.MODEL_NAMES.items():
        silence = summary["silence"][tag]["synthetic-test"]["all"]["silence"]
        assert silence["n"] == accuracy[tag]["synthetic-test"]["all"]["n"]
        assert rows[name][len(families) + 1] == pct(silence)
    assert rows["chance (uniform over options)"][len(families) + 1] == "–"
    assert rows["CoT SFT + GRPO"][-1].startswith("56.2")
    chance = summary["benchmarks"]["synthetic-test"]["chance"]
    assert rows["chance (uniform over options)"][len(families)] == f"{100 * chance['all']:.1f}"
    part = demo["md"].split("## The paper in miniature\n", 1)[1].split("\n## ", 1)[0]
    for claim in ("CoT SFT beats label-only SFT", "AGFV (verified traces) beats CoT SFT without AGFV",
                  "GRPO beats SFT alone", "The teacher keeps invisible-property questions less often"):
        line = next(x for x in part.splitlines() if x.startswith(f"- {claim}: "))
        assert re.search(r": (reproduced|not reproduced|same direction, not significant|not measured) \(", line), line
    assert "kept and verified teacher trace" in part


def test_the_silent_audio_probe_shows_every_model_on_every_benchmark(demo):
    summary = demo["refs"]["evaluate"].manifest["summary"]
    rows = _table(demo["md"], "Silent-audio probe")
    assert _table(demo["md"], "Silent-audio probe", header=True)[:7] == [
        "model", "benchmark", "group", "n", "with audio", "with silence", "difference (points)"]
    shown = {(r[0], r[1], r[2]): r[3:] for r in rows}
    for tag, name in report_module.MODEL_NAMES.items():
        for bench in ("synthetic-test", "mmau-mini"):
            probe = summary["silence"][tag][bench]
            assert probe["all"]["audio"] == summary["accuracy"][tag][bench]["all"]
            row = shown[(name, bench, "all")]
            assert row[:3] == [str(probe["all"]["audio"]["n"]), pct(probe["all"]["audio"]),
                               pct(probe["all"]["silence"])]
            assert row[3] == f"{100 * probe['all']['difference']:+.1f}"
            groups = {g for (m, b, g) in shown if (m, b) == (name, bench)}
            assert groups == {"all", *[f"{k}:{v}" for k in ("family", "category")
                                       for v in summary["accuracy"][tag][bench][f"by_{k}"]]}


def test_funnel_verifier_and_training_come_from_the_run(demo):
    store, refs = demo["store"], demo["refs"]
    funnel = refs["corpus"].manifest["summary"]["funnel"]
    rows = {r[0]: [int(x) for x in r[1:]] for r in _table(demo["md"], "Distillation funnel")}
    steps = ["clips", "parsed", "unanimous", "label_agreeing", "verified", "errors"]
    assert rows["all"] == [funnel["all"][s] for s in steps]
    for family, counts in funnel["by_family"].items():
        assert rows[family] == [counts[s] for s in steps]
    agreement = {r[0]: sum(int(x) for x in r[1:]) for r in _table(demo["md"], "Teacher agreement by question family")}
    assert agreement == {f: len(v) for f, v in funnel["agreement_by_family"].items()}
    verifier = _table(demo["md"], "Verifier on planted hallucinations")[0]
    assert int(verifier[0]) == funnel["verifier"]["labelled"] > 0
    training = {(r[0], r[1]): r for r in _table(demo["md"], "Training curves")}
    for stage in ("sft", "grpo"):
        for name, entries in read_log(store, refs[stage]).items():
            for metric in {"loss", "reward", "kl"} & {m for _, m, _ in entries}:
                last = [v for _, m, v in entries if m == metric][-1]
                assert training[(f"{stage}:{name}", metric)][4] == f"{last:.4g}"
    assert {("sft:cot", "loss"), ("sft:label_only", "loss"), ("grpo:policy", "loss"),
            ("grpo:policy", "reward"), ("grpo:policy", "kl")} <= set(training)


PROBE = """<script>
window.addEventListener('load', () => {
  const probe = document.createElement('pre');
  probe.id = 'render-probe';
  probe.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight]),
    tables: [...document.querySelectorAll('table')].map(t => [t.id, t.rows.length]),
  });
  document.body.appendChild(probe);
});
</script></body>"""


def test_html_renders_in_headless_chromium(demo, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    page = demo["html_path"].read_text()
    assert "<script" not in page and "http" not in page.split("<body>", 1)[0]  # self-contained
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE))
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    found = re.search(r'<pre id="render-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not finish loading in Chromium: {dom[:500]!r}"
    rendered = json.loads(html.unescape(found.group(1)))
    tables = dict(rendered["tables"])
    for key in ("miniature", "results", "benchmarks", "accuracy", "silence", "funnel", "agreement", "verifier",
                "training"):
        assert tables[key] > 1, key
    images = {i[0]: i[1:] for i in rendered["images"]}
    assert set(images) == {"plot-accuracy", "plot-funnel", "plot-agreement", "plot-training"}
    assert all(done and width > 100 and height > 100 for done, width, height in images.values())


def test_artifacts_for_the_flow(demo):
    art = report_artifacts(demo["store"], demo["refs"]["report"])
    assert art["markdown"].startswith(demo["md"])
    keys = set(art["tables"])
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in keys)
    assert {"demo-results", "demo-accuracy", "demo-funnel", "demo-training"} <= keys
    results = art["tables"]["demo-results"]
    assert [r["model"] for r in results] == ["pretrained", "SFT, label only", "CoT SFT, no AGFV", "CoT SFT",
                                             "CoT SFT + GRPO"]
    assert "demo-miniature" in keys


def test_benchmarks_table_shows_how_each_benchmark_was_scored():
    info = {"dataset": "mmau", "scorer": "mmau", "items": 5, "file_items": 6,
            "annotation_version": "v05.15.25", "answer_rule": "answer_block",
            "annotations": ["file:///d/mmau-test-mini.json"],
            "prediction_files": {}}
    data = {"evaluation": {"benchmarks": {"mmau-mini": info}, "accuracy": {}, "models": []},
            "evaluate_dir": "file:///e", "rows": [], "funnel": None, "training": {}}
    md = report_module.render_markdown("r", report_module.build_sections(data))
    header = _table(md, "Benchmarks", header=True)
    row = dict(zip(header, _table(md, "Benchmarks")[0]))
    assert row["answer rule"] == "answer_block" and row["annotation version"] == "v05.15.25"
    assert (row["items in file"], row["items scored"]) == ("6", "5")


def test_the_miniature_silence_column_is_accuracy_with_silence():
    acc = lambda k, n: {"n": n, "correct": k, "accuracy": k / n, "ci_low": 0.0, "ci_high": 1.0}
    entry = {"all": acc(8, 10), "by_family": {"visible": acc(8, 10)}, "by_category": {}}
    probe = {"all": {"audio": acc(8, 10), "silence": acc(3, 10), "difference": 0.5, "audio_only": 5,
                     "silence_only": 0}, "by_family": {}, "by_category": {}}
    evaluation = {"benchmarks": {"s": {"scorer": "option"}}, "models": ["pretrained", "cot"],
                  "accuracy": {"pretrained": {"s": entry}, "cot": {"s": entry}},
                  "silence": {"pretrained": {"s": probe}}}
    data = {"evaluation": evaluation, "chance": {}, "correct": {}, "training": {}, "funnel": None}
    table = report_module.miniature_section(data).tables[0]
    rows = {r[0]: dict(zip(table.header, r)) for r in table.rows}
    assert rows["pretrained"]["silence"] == pct(acc(3, 10)) != rows["pretrained"]["all"]
    assert rows["CoT SFT"]["silence"] == "–"  # no probe for this model
