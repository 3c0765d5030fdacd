"""The run's report: Markdown, one self-contained HTML file (plots as PNG data URIs), and what the
flow publishes as Prefect artifacts.

Sections, every number read from the run's own manifests and training logs:
    miniature   the paper in miniature (runs on the synthetic world): the five models' accuracy per
                evidence tier and overall, with silence in place of the audio, and their
                hallucination rate, each with its 95% interval, the paper's numbers beside them, one line per claim of the paper saying
                whether this run reproduces it, and examples a person reads at a glance
    results     the paper's table: rows are models, columns AVQA, MMAU sound / music / speech /
                avg, MUSIC-AVQA and the synthetic world's visual / acoustic families (those the run
                configured), accuracy in percent with its 95% Wilson interval
    benchmarks  scorer, answer rule, items in the file and items scored, annotation release and
                file, MMAU prediction files
    accuracy    every model, benchmark and group (family, category; MMAU's difficulty and
                sub-category, computed from the official prediction file)
    silence     the silent-audio probe: every model, benchmark and group's accuracy with audio and
                with each clip's audio replaced by silence of the same length, and the difference
    funnel      clips -> parsed -> unanimous -> label-agreeing -> verified, overall and per family
    agreement   the teacher's agreement histogram per question family
    verifier    AGFV precision / recall on planted hallucinations, where known
    training    loss, reward and KL curves of every trained model

The report stage writes ``report.md``, ``report.html`` and ``report.json`` (the tables) in its
directory; ``report_artifacts`` returns what the flow publishes.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
import re
from typing import Any

import pyarrow as pa

from sightsound_core.schemas import Prediction
from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, run_plan
from sightsound_core.storage import ObjectStore, join

log = logging.getLogger(__name__)

STAGE = "report"
# Bump when the report's content changes, so committed reports are rebuilt.
REPORT_VERSION = 6
ROW_SCHEMA = pa.schema(
    [
        ("model_tag", pa.string()),
        ("benchmark", pa.string()),
        ("group", pa.string()),
        ("n", pa.int64()),
        ("accuracy", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
    ]
)
MODEL_NAMES = {
    "pretrained": "pretrained",
    "label_only": "SFT, label only",
    "cot_noagfv": "CoT SFT, no AGFV",
    "cot": "CoT SFT",
    "grpo": "CoT SFT + GRPO",
}
# The paper's column order: AVQA, MMAU, MUSIC-AVQA, then the synthetic world.
SCORER_ORDER = ("avqa", "mmau", "music_avqa", "option")
FUNNEL_STEPS = ("clips", "parsed", "unanimous", "label_agreeing", "verified")
TRAINING_METRICS = ("loss", "reward", "kl")


@dataclasses.dataclass
class Table:
    """A table of the report; ``key`` is its HTML id and its artifact key suffix."""

    key: str
    header: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.header, row)) for row in self.rows]


@dataclasses.dataclass
class Section:
    title: str
    text: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)


# -- numbers --------------------------------------------------------------------------------------
def pct(acc: dict[str, Any] | None) -> str:
    """Accuracy in percent with its 95% interval.

    >>> pct({"n": 10, "accuracy": 0.8, "ci_low": 0.49, "ci_high": 0.943})
    '80.0 [49.0, 94.3]'
    >>> pct(None)
    '–'
    """
    if not acc or not acc["n"]:
        return "–"
    return f"{100 * acc['accuracy']:.1f} [{100 * acc['ci_low']:.1f}, {100 * acc['ci_high']:.1f}]"


def accuracy_rows(accuracy: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten the evaluate summary into rows: group ``all``, ``family:x``, ``category:y``, and for
    MMAU ``difficulty:z`` and ``sub-category:w`` from the official breakdown."""
    rows = []
    for tag, benches in accuracy.items():
        for bench, entry in benches.items():
            groups = [("all", entry["all"])]
            groups += [(f"family:{k}", v) for k, v in entry["by_family"].items()]
            groups += [(f"category:{k}", v) for k, v in entry["by_category"].items()]
            official = entry.get("official") or {}
            groups += [(f"difficulty:{k}", v) for k, v in official.get("by_difficulty", {}).items()]
            groups += [(f"sub-category:{k}", v) for k, v in official.get("by_subcategory", {}).items()]
            for group, acc in groups:
                rows.append(
                    {"model_tag": tag, "benchmark": bench, "group": group, "n": acc["n"],
                     "accuracy": acc["accuracy"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"]}
                )
    return rows


def paper_columns(evaluation: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The results table's columns as (header, benchmark, kind, key): kind ``all``, ``family``,
    ``category`` or ``official`` (MMAU's official total, its 'avg')."""
    benchmarks = evaluation.get("benchmarks", {})
    names = sorted(benchmarks, key=lambda n: SCORER_ORDER.index(benchmarks[n]["scorer"]))
    columns = []
    for name in names:
        scorer = benchmarks[name]["scorer"]
        if scorer == "mmau":
            columns += [(f"{name} {t}", name, "category", t) for t in ("sound", "music", "speech")]
            columns.append((f"{name} avg", name, "official", "total"))
        elif scorer == "option":
            entries = [m[name] for m in evaluation.get("accuracy", {}).values() if name in m]
            families = tier_families(entries[0]) if entries else []
            columns += [(f"{name} {f}", name, "family", f) for f in families if f != "unknown"]
            columns.append((f"{name} all", name, "all", "all"))
        else:
            columns.append((name, name, "all", "all"))
    return columns


def cell(entry: dict[str, Any] | None, kind: str, key: str) -> dict[str, Any] | None:
    if entry is None:
        return None
    if kind == "all":
        return entry["all"]
    if kind == "official":
        return (entry.get("official") or {}).get(key)
    return entry[f"by_{kind}"].get(key)


# -- the paper in miniature -----------------------------------------------------------------------
TIER_ORDER = ("visible", "partial", "invisible")
# The paper's numbers beside the matching rows: its ablation steps in order (no AGFV, AGFV,
# + GRPO) and the final model's MMAU Sound and MUSIC-AVQA accuracy.
PAPER = {
    "cot_noagfv": "52.3 (ablation)",
    "cot": "54.1 (ablation)",
    "grpo": "56.2 (ablation); MMAU Sound 66.1, MUSIC-AVQA 59.5",
}


def tier_families(entry: dict[str, Any]) -> list[str]:
    """A benchmark's question families, evidence tiers first in their order.

    >>> tier_families({"by_family": {"invisible": {}, "visible": {}, "other": {}}})
    ['visible', 'invisible', 'other']
    """
    fams = list(entry.get("by_family", {}))
    return [f for f in TIER_ORDER if f in fams] + sorted(f for f in fams if f not in TIER_ORDER)


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> dict[str, Any]:
    """Model a against model b on the items both answered: accuracy of each, the difference in
    points, and McNemar's exact test on the items where they disagree.

    >>> r = paired_comparison({"1": True, "2": True, "3": False}, {"1": False, "2": True, "3": False})
    >>> (r["n"], round(r["diff"], 1), r["a_only"], r["b_only"], r["p"])
    (3, 33.3, 1, 0, 1.0)
    """
    from scipy.stats import binomtest

    items = sorted(set(a) & set(b))
    a_only = sum(a[i] and not b[i] for i in items)
    b_only = sum(b[i] and not a[i] for i in items)
    n = max(len(items), 1)
    p = binomtest(a_only, a_only + b_only).pvalue if a_only + b_only else 1.0
    return {
        "n": len(items),
        "a": 100 * sum(a[i] for i in items) / n,
        "b": 100 * sum(b[i] for i in items) / n,
        "diff": 100 * (a_only - b_only) / n,
        "a_only": a_only,
        "b_only": b_only,
        "p": float(p),
    }


def verdict(diff: float, p: float | None) -> str:
    """Reproduced when the difference has the paper's sign and McNemar's p < 0.05.

    >>> verdict(3.0, 0.01), verdict(3.0, 0.4), verdict(-1.0, 0.5)
    ('reproduced', 'same direction, not significant', 'not reproduced')
    """
    if diff > 0 and p is not None and p < 0.05:
        return "reproduced"
    return "same direction, not significant" if diff > 0 else "not reproduced"


def hall(entry: dict[str, Any] | None) -> str:
    """A hallucination rate in percent with its interval and claim count, '–' without claims.

    >>> hall({"hallucination": {"claims": 10, "contradicted": 2, "rate": 0.2, "ci_low": 0.05, "ci_high": 0.5}})
    '20.0 [5.0, 50.0] of 10'
    >>> hall({"hallucination": {"claims": 4, "rate": 0.25, "ci_low": 0.05, "ci_high": 0.7, "unit": "answers"}})
    '25.0 [5.0, 70.0] of 4 answers'
    """
    h = (entry or {}).get("hallucination") or {}
    if not h.get("claims"):
        return "–"
    unit = " answers" if h.get("unit") == "answers" else ""
    return f"{100 * h['rate']:.1f} [{100 * h['ci_low']:.1f}, {100 * h['ci_high']:.1f}] of {h['claims']}{unit}"


def miniature_benchmark(evaluation: dict[str, Any]) -> str | None:
    """The first option-scored benchmark whose families are the world's evidence tiers."""
    for name, info in evaluation.get("benchmarks", {}).items():
        if info["scorer"] != "option":
            continue
        entries = [m.get(name) for m in evaluation.get("accuracy", {}).values() if m.get(name)]
        if any(set(e["by_family"]) & set(TIER_ORDER) for e in entries):
            return name
    return None


def miniature_section(data: dict[str, Any]) -> Section | None:
    evaluation = data["evaluation"]
    bench = miniature_benchmark(evaluation)
    if bench is None:
        return None
    accuracy = evaluation["accuracy"]
    models = [m for m in (evaluation.get("models") or list(accuracy)) if bench in accuracy.get(m, {})]
    families = tier_families(accuracy[models[0]][bench])
    chance = data.get("chance", {})
    rows = [[
        MODEL_NAMES.get(tag, tag),
        *[pct(accuracy[tag][bench]["by_family"].get(f)) for f in families],
        pct(accuracy[tag][bench]["all"]),
        pct(silent_accuracy(evaluation, tag, bench)),
        hall(accuracy[tag][bench]),
        PAPER.get(tag, "–"),
    ] for tag in models]
    rows.append(["chance (uniform over options)", *[_pct_plain(chance.get(f)) for f in families],
                 _pct_plain(chance.get("all")), "–", "–", "–"])
    table = Table("miniature", ["model", *families, "all", "silence", "hallucination rate", "paper"], rows)

    text = [
        f"Benchmark `{bench}`: {accuracy[models[0]][bench]['all']['n']} held-out clips of the synthetic "
        "instrument world. Accuracy in percent [95% Wilson interval] per evidence tier (visible: the "
        "frames show the answer; partial: size suggests pitch in about 80% of sources; invisible: "
        "loudness and tempo, no visual cue). silence: accuracy over all clips with each clip's audio "
        "replaced by silence of the same length (the silent-audio probe, '–' when it was off). "
        "Hallucination rate: share of the sound claims in the "
        "model's answers that the waveform analysis (the simulated verifier's) contradicts, [95% "
        "interval over claims], of N claims. 'paper': the paper's figures for the matching row "
        "(its ablation steps in order, and the final model's MMAU Sound and MUSIC-AVQA accuracy).",
    ]
    recipe = recipe_line(data.get("recipe") or {})
    if recipe:
        text.append(recipe)
    text += [f"- {line}" for line in claim_lines(data, bench, models)]
    return Section("The paper in miniature", text, [table, *example_tables(data, bench)])


def silent_accuracy(evaluation: dict[str, Any], tag: str, bench: str) -> dict[str, Any] | None:
    """A model's accuracy with silence on a benchmark, overall (None without the probe)."""
    return evaluation.get("silence", {}).get(tag, {}).get(bench, {}).get("all", {}).get("silence")


def silence_section(evaluation: dict[str, Any], models: list[str]) -> Section | None:
    """The silent-audio probe, per model, benchmark and group (None when it was off)."""
    probe = evaluation.get("silence")
    if not probe:
        return None
    rows = []
    for tag in models:
        for bench, entry in probe.get(tag, {}).items():
            groups = [("all", entry["all"])]
            groups += [(f"family:{k}", v) for k, v in entry["by_family"].items()]
            groups += [(f"category:{k}", v) for k, v in entry["by_category"].items()]
            rows += [[MODEL_NAMES.get(tag, tag), bench, group, g["audio"]["n"], pct(g["audio"]),
                      pct(g["silence"]), f"{100 * g['difference']:+.1f}", g["audio_only"], g["silence_only"]]
                     for group, g in groups]
    return Section(
        "Silent-audio probe",
        ["Beyond the paper: every model also answered every item with its audio replaced by silence "
         "of the same length (zeros). Audio LMs answer many benchmark items right with no audio at "
         "all (AudioMCQ, arXiv 2509.21060, found about half of MMAU test-mini), so accuracy with "
         "silence is what the question and options give away; the difference is what listening "
         "added. Accuracy in percent [95% Wilson interval], difference in points (with audio minus "
         "with silence), and the items right only with audio and only with silence. Every other "
         "number of this report is on the answers with audio."],
        [Table("silence", ["model", "benchmark", "group", "n", "with audio", "with silence",
                           "difference (points)", "right only with audio", "right only with silence"], rows)],
    )


def _pct_plain(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def paper_claims(data: dict[str, Any], bench: str, models: list[str]) -> list[dict[str, str]]:
    """Each claim of the paper this run can test: ``{"claim", "verdict", "line"}``, the verdict
    ``reproduced``, ``same direction, not significant``, ``not reproduced`` or ``not measured``,
    the line saying so with the numbers."""
    correct = data.get("correct", {})
    out = []

    def add(claim: str, verdict_: str, numbers: str) -> None:
        out.append({"claim": claim, "verdict": verdict_, "line": f"{claim}: {verdict_} ({numbers})."})

    pairs = [
        ("cot", "label_only", "CoT SFT beats label-only SFT"),
        ("cot", "cot_noagfv", "AGFV (verified traces) beats CoT SFT without AGFV"),
        ("grpo", "cot", "GRPO beats SFT alone"),
    ]
    for a, b, claim in pairs:
        if a not in models or b not in models:
            add(claim, "not measured", f"this run has no {a if a not in models else b} model")
            continue
        r = paired_comparison(correct.get(a, {}), correct.get(b, {}))
        add(claim, verdict(r["diff"], r["p"]),
            f"{r['a']:.1f}% vs {r['b']:.1f}% on {r['n']} paired items, {r['diff']:+.1f} points; "
            f"{r['a_only']} items only {a} got right, {r['b_only']} only {b}; McNemar p={r['p']:.3g}")
    accuracy = data["evaluation"]["accuracy"]
    if "cot" in models and "cot_noagfv" in models:
        h_a = accuracy["cot"][bench].get("hallucination") or {}
        h_b = accuracy["cot_noagfv"][bench].get("hallucination") or {}
        claim = "AGFV makes the student hallucinate less (beyond the paper)"
        if h_a.get("claims") and h_b.get("claims"):
            lower = h_a["rate"] < h_b["rate"]
            apart = h_a["ci_high"] < h_b["ci_low"]
            add(claim, "reproduced" if lower and apart else "same direction, not significant" if lower
                else "not reproduced",
                f"{100 * h_a['rate']:.1f}% vs {100 * h_b['rate']:.1f}% of claims contradicted")
        else:
            add(claim, "not measured", "a model made no checkable claim")
    funnel = data.get("funnel") or {}
    fams = funnel.get("by_family", {})
    if "visible" in fams and "invisible" in fams:
        kept = {f: fams[f]["label_agreeing"] / max(fams[f]["clips"], 1) for f in fams}
        shown = ", ".join(f"{f} {100 * kept[f]:.0f}% of {fams[f]['clips']}" for f in TIER_ORDER if f in kept)
        add("The teacher keeps invisible-property questions less often",
            "reproduced" if kept["invisible"] < kept["visible"] else "not reproduced",
            f"clips kept by the unanimous, label-matching vote: {shown}")
    return out


def claim_lines(data: dict[str, Any], bench: str, models: list[str]) -> list[str]:
    """The claim lines, then what GRPO did (its learning signal and the invisible tier)."""
    lines = [c["line"] for c in paper_claims(data, bench, models)]
    accuracy = data["evaluation"]["accuracy"]
    if "grpo" in models and "cot" in models:
        inv = [accuracy[m][bench]["by_family"].get("invisible") for m in ("cot", "grpo")]
        if all(inv):
            lines.append(
                f"GRPO on labels of every tier moves the invisible tier: {100 * inv[0]['accuracy']:.1f}% "
                f"after SFT, {100 * inv[1]['accuracy']:.1f}% after GRPO ({inv[1]['n']} items)."
            )
    grpo_log = data["training"].get("grpo:policy") or []
    stds = [v for _, m, v in grpo_log if m == "reward_std"]
    rewards = [v for _, m, v in sorted(grpo_log) if m == "reward"]
    if stds and rewards:
        q = max(1, len(rewards) // 4)
        lines.append(
            f"GRPO had a learning signal (reward_std > 0) in {sum(s > 0 for s in stds)}/{len(stds)} steps; "
            f"mean reward {sum(rewards[:q]) / q:.3f} over its first quarter, {sum(rewards[-q:]) / q:.3f} over its last."
        )
    return lines


def example_tables(data: dict[str, Any], bench: str) -> list[Table]:
    """A kept trace, a trace the verifier rejected with what the audio contradicted, and student
    answers before and after training on one held-out clip."""
    tables = []
    examples = (data.get("funnel") or {}).get("examples") or {}
    if examples.get("kept"):
        tables.append(Table("example-kept", ["kept and verified teacher trace (question, trace)"],
                            [[examples["kept"]["question"]], [examples["kept"]["trace"]]]))
    if examples.get("rejected"):
        r = examples["rejected"]
        tables.append(Table("example-rejected", ["trace the verifier rejected (question, trace, contradicted)"],
                            [[r["question"]], [r["trace"]], ["; ".join(r["claims"])]]))
    before_after = data.get("before_after")
    if before_after:
        tables.append(Table(
            "example-student", ["model", "answer on one held-out clip"],
            [[f"question ({before_after['label']} is right)", before_after["question"]],
             *[[MODEL_NAMES.get(t, t), text] for t, text in before_after["answers"]]],
        ))
    return tables


def judged_table(evaluation: dict[str, Any], models: list[str]) -> Table | None:
    """Per model and real benchmark, the verifier-judged hallucination rate; None when no
    benchmark's answers were judged (every benchmark synthetic, or ``evaluate.judge`` off)."""
    accuracy = evaluation.get("accuracy", {})
    names = [b for b in evaluation.get("benchmarks", {})
             if any(((accuracy.get(t, {}).get(b) or {}).get("hallucination") or {}).get("unit") == "answers"
                    for t in models)]
    if not names:
        return None

    def judged(entry: dict[str, Any] | None) -> str:
        h = (entry or {}).get("hallucination") or {}
        apart = h.get("not_judged") or 0
        return hall(entry) + (f" ({apart} not judged)" if apart else "")

    rows = [[MODEL_NAMES.get(t, t), *[judged(accuracy.get(t, {}).get(b)) for b in names]] for t in models]
    return Table("hallucination-judged", ["model", *names], rows)


# -- sections -------------------------------------------------------------------------------------
def build_sections(data: dict[str, Any]) -> list[Section]:
    evaluation = data["evaluation"]
    models = evaluation.get("models") or list(evaluation.get("accuracy", {}))
    sections = []
    miniature = miniature_section(data)
    if miniature is not None:
        sections.append(miniature)

    columns = paper_columns(evaluation)
    results = Table(
        "results",
        ["model", *[c[0] for c in columns]],
        [
            [MODEL_NAMES.get(tag, tag),
             *[pct(cell(evaluation["accuracy"].get(tag, {}).get(b), kind, key)) for _, b, kind, key in columns]]
            for tag in models
        ],
    )
    judged = judged_table(evaluation, models)
    sections.append(Section(
        "Results",
        ["Accuracy in percent [95% Wilson interval], every model the run produced on every "
         "configured benchmark, on the text each benchmark's answer rule picks (see Benchmarks). "
         "MMAU: official string match, 'avg' is the official total over all items. Synthetic: per "
         "question family (evidence tier) and all."]
        + (["Student hallucination on real clips: the share of reasoned answers (a non-empty "
            "<think>) that the run's verifier, hearing the clip, rejected [95% interval], of N "
            "answers it judged; answers it could not judge are counted apart."] if judged else []),
        [results] + ([judged] if judged else []),
        ["accuracy"],
    ))

    bench_rows = []
    for name, info in evaluation.get("benchmarks", {}).items():
        bench_rows.append([
            name, info["dataset"], info["scorer"], info.get("items", 0),
            info.get("annotation_version") or "–", info.get("answer_rule") or "–",
            info.get("file_items", "–"),
            ", ".join(info.get("annotations") or []) or "–",
            ", ".join(u.rsplit("/", 1)[-1] for u in info.get("prediction_files", {}).values()) or "–",
        ])
    files = any(info.get("prediction_files") for info in evaluation.get("benchmarks", {}).values())
    sections.append(Section("Benchmarks", [
        f"MMAU prediction files (the input of MMAU's official evaluation.py) are in "
        f"`{data['evaluate_dir']}`."] if files else [], [Table(
        "benchmarks",
        ["benchmark", "dataset", "scorer", "items scored", "annotation version", "answer rule",
         "items in file", "annotations", "prediction files"],
        bench_rows,
    )]))

    sections.append(Section(
        "Accuracy per benchmark and category", [],
        [Table(
            "accuracy",
            ["model", "benchmark", "group", "n", "accuracy", "95% CI"],
            [[r["model_tag"], r["benchmark"], r["group"], r["n"], f"{r['accuracy']:.3f}",
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"] for r in data["rows"]],
        )],
    ))

    silence = silence_section(evaluation, models)
    if silence is not None:
        sections.append(silence)

    funnel = data["funnel"]
    if funnel:
        by_family = [("all", funnel["all"]), *funnel["by_family"].items()]
        dropped = ["silent_solvable"] if "silent_solvable" in funnel["all"] else []
        sections.append(Section(
            "Distillation funnel",
            ["Clips left after each filter: every teacher sample parsed, the K answers unanimous, "
             "the winner equal to the label, a trace accepted by the audio verifier (AGFV); "
             "errors: traces whose verify request failed (`sightsound resume RUN --stage verify`)."
             + (" silent_solvable: clips the pretrained student answers right with silence in place "
                "of the audio, dropped from every training set (corpus.drop_silent_solvable)."
                if dropped else "")],
            [Table("funnel", ["family", *FUNNEL_STEPS, "errors", *dropped],
                   [[fam, *[counts[s] for s in FUNNEL_STEPS], counts.get("errors", 0),
                     *[counts[d] for d in dropped]] for fam, counts in by_family])],
            ["funnel"],
        ))
        agreement = funnel["agreement_by_family"]
        levels = sorted({round(v, 4) for values in agreement.values() for v in values})
        sections.append(Section(
            "Teacher agreement by question family",
            [f"- {fam}: {sum(v == 1.0 for v in vals)}/{len(vals)} clips unanimous, mean agreement "
             f"{sum(vals) / max(len(vals), 1):.3f}" for fam, vals in agreement.items()],
            [Table("agreement", ["family", *[f"{v:g}" for v in levels]],
                   [[fam, *[sum(round(v, 4) == lv for v in vals) for lv in levels]]
                    for fam, vals in agreement.items()])],
            ["agreement"],
        ))
        ver = funnel["verifier"]
        known = ver["labelled"] > 0
        sections.append(Section(
            "Verifier on planted hallucinations",
            [f"Traces with known ground truth: {ver['labelled']}."
             + ("" if known else " Precision and recall are not known for this data.")],
            [Table("verifier", ["traces with ground truth", "precision", "recall"],
                   [[ver["labelled"], _num(ver["precision"]), _num(ver["recall"])]])],
        ))

    training = data["training"]
    train_rows = []
    for name, entries in training.items():
        for metric in sorted({m for _, m, _ in entries}, key=_metric_order):
            pts = [(s, v) for s, m, v in entries if m == metric]
            values = [v for _, v in pts]
            train_rows.append([name, metric, len(pts), f"{values[0]:.4g}", f"{values[-1]:.4g}",
                               f"{min(values):.4g}", f"{max(values):.4g}"])
    empty = [name for name, entries in training.items() if not entries]
    sections.append(Section(
        "Training curves",
        [f"No logged metrics for: {', '.join(empty)}."] if empty else [],
        [Table("training", ["model", "metric", "steps", "first", "last", "min", "max"], train_rows)],
        ["training"] if any(training.values()) else [],
    ))
    return sections


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _metric_order(metric: str) -> tuple[int, str]:
    return (TRAINING_METRICS.index(metric) if metric in TRAINING_METRICS else len(TRAINING_METRICS), metric)


# -- plots ----------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def make_plots(data: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs by name: accuracy, funnel, agreement, training (those with data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    evaluation = data["evaluation"]
    columns = paper_columns(evaluation)
    models = evaluation.get("models") or list(evaluation.get("accuracy", {}))
    if columns and models:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(columns) * max(1, len(models)) / 3), 3.5))
        width = 0.8 / len(models)
        for i, tag in enumerate(models):
            accs = [cell(evaluation["accuracy"].get(tag, {}).get(b), kind, key) for _, b, kind, key in columns]
            xs = [j + i * width for j in range(len(columns))]
            ys = [a["accuracy"] if a and a["n"] else 0.0 for a in accs]
            err = [[y - (a["ci_low"] if a and a["n"] else 0.0) for y, a in zip(ys, accs)],
                   [(a["ci_high"] if a and a["n"] else 0.0) - y for y, a in zip(ys, accs)]]
            ax.bar(xs, ys, width, yerr=err, capsize=2, label=MODEL_NAMES.get(tag, tag))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(columns))])
        ax.set_xticklabels([c[0] for c in columns], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title("Accuracy (95% Wilson interval)")
        ax.legend(fontsize=7)
        plots["accuracy"] = _png(fig)
    funnel = data["funnel"]
    if funnel:
        fig, ax = plt.subplots(figsize=(6, 3))
        for family, counts in funnel["by_family"].items():
            ax.plot(FUNNEL_STEPS, [counts[s] for s in FUNNEL_STEPS], marker="o", label=family)
        ax.plot(FUNNEL_STEPS, [funnel["all"][s] for s in FUNNEL_STEPS], marker="s", color="k", label="all")
        ax.set_ylabel("clips")
        ax.set_title("Distillation funnel")
        ax.legend()
        plots["funnel"] = _png(fig)
        fig, ax = plt.subplots(figsize=(6, 3))
        for family, values in funnel["agreement_by_family"].items():
            ax.hist(values, bins=[i / 10 for i in range(11)], alpha=0.6, label=family)
        ax.set_xlabel("fraction of K samples giving the winning answer")
        ax.set_ylabel("clips")
        ax.set_title("Teacher agreement by question family")
        ax.legend()
        plots["agreement"] = _png(fig)
    curves = {name: entries for name, entries in data["training"].items() if entries}
    metrics = [m for m in TRAINING_METRICS if any(m == e[1] for entries in curves.values() for e in entries)]
    if metrics:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for name, entries in curves.items():
                pts = [(s, v) for s, m, v in entries if m == metric]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
            ax.set_title(metric)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        plots["training"] = _png(fig)
    return plots


# -- rendering ------------------------------------------------------------------------------------
def render_markdown(run: str, sections: list[Section]) -> str:
    lines = [f"# sightsound report: run `{run}`"]
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        for text in section.text:
            lines += [text, ""] if not text.startswith("- ") else [text]
        for table in section.tables:
            if section.text and section.text[-1].startswith("- "):
                lines.append("")
            lines.append("| " + " | ".join(table.header) + " |")
            lines.append("|" + "---|" * len(table.header))
            lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def render_html(run: str, sections: list[Section], plots: dict[str, str]) -> str:
    body = [f"<h1>sightsound report: run {html.escape(run)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        items = [t[2:] for t in section.text if t.startswith("- ")]
        body += [f"<p>{html.escape(t)}</p>" for t in section.text if not t.startswith("- ")]
        if items:
            body.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in items) + "</ul>")
        for table in section.tables:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in table.rows
            )
            body.append(f"<table id='{table.key}'><tr>{head}</tr>{rows}</table>")
        for name in section.plots:
            if name in plots:
                body.append(
                    f'<figure><img id="plot-{name}" alt="{name}" src="data:image/png;base64,{plots[name]}"/>'
                    f"<figcaption>{name}</figcaption></figure>"
                )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>sightsound report: {html.escape(run)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "figure{margin:1em 0}img{max-width:100%}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )


# -- the stage ------------------------------------------------------------------------------------
def plan_report(store: ObjectStore, run: str, inputs: dict[str, StageRef]) -> StagePlan:
    fps = {name: ref.fingerprint for name, ref in sorted(inputs.items())}
    upstream = [f"{n}={r.stage_hash}" for n, r in sorted(inputs.items())]
    return plan_sources(store, run, STAGE, {"version": REPORT_VERSION}, [{"inputs": fps}], upstream)


def report_data(store: ObjectStore, run: str, inputs: dict[str, StageRef]) -> dict[str, Any]:
    """What the report shows, read from the committed inputs' manifests and training logs."""
    from sightsound_core.training.stages import read_log

    evaluation = inputs["evaluate"].manifest["summary"]
    bench = miniature_benchmark(evaluation)
    predictions = []
    if bench is not None:
        predictions = [p for uri in inputs["evaluate"].shards
                       for p in Prediction.from_table(store.read_table(uri)) if p.benchmark == bench]
    return {
        "run": run,
        "evaluation": evaluation,
        "chance": evaluation["benchmarks"][bench].get("chance", {}) if bench else {},
        "correct": _correct_by_model(predictions),
        "before_after": evaluation["benchmarks"][bench].get("example") if bench else None,
        "evaluate_dir": inputs["evaluate"].dir,
        "rows": accuracy_rows(evaluation.get("accuracy", {})),
        "funnel": inputs["corpus"].manifest["summary"].get("funnel") if "corpus" in inputs else None,
        "training": {
            f"{stage}:{name}": entries
            for stage in ("sft", "grpo")
            if stage in inputs
            for name, entries in read_log(store, inputs[stage]).items()
        },
        "recipe": {stage: inputs[stage].manifest.get("config") for stage in ("sft", "grpo") if stage in inputs},
    }


def recipe_line(recipe: dict[str, Any]) -> str | None:
    """How the students were tuned, with each deviation from the paper's recipe named.

    >>> recipe_line({"sft": {"sft": {"lora": None, "learning_rate": 0.001, "max_steps": 300}},
    ...              "grpo": {"lora": None, "learning_rate": 1e-4, "max_steps": 40, "num_generations": 8, "beta": 0.04}})
    'Recipe: SFT full fine-tuning (the paper: LoRA r=8), lr 0.001 (the paper: 5e-05), 300 steps (the paper: 2000); GRPO full-parameter, lr 0.0001 (the paper: 1e-06), 40 steps (the paper: up to 1000), G=8, KL beta 0.04.'
    """
    sft = (recipe.get("sft") or {}).get("sft")
    grpo = recipe.get("grpo")
    if not sft:
        return None

    def differs(value: Any, paper: Any, shown: str) -> str:
        return shown if value == paper else f"{shown} (the paper: {paper})"

    lora = sft.get("lora")
    parts = [
        "SFT " + (f"LoRA r={lora['r']}" if lora else "full fine-tuning (the paper: LoRA r=8)"),
        differs(sft["learning_rate"], 5e-5, f"lr {sft['learning_rate']:g}"),
        differs(sft["max_steps"], 2000, f"{sft['max_steps']} steps"),
    ]
    line = "Recipe: " + ", ".join(parts)
    if grpo:
        kind = f"LoRA r={grpo['lora']['r']} (the paper: full-parameter)" if grpo.get("lora") else "full-parameter"
        line += (f"; GRPO {kind}, {differs(grpo['learning_rate'], 1e-6, 'lr ' + format(grpo['learning_rate'], 'g'))}, "
                 f"{grpo['max_steps']} steps (the paper: up to 1000), "
                 f"G={grpo['num_generations']}, KL beta {grpo['beta']:g}")
    return line + "."


def _correct_by_model(predictions: list[Prediction]) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {}
    for p in predictions:
        out.setdefault(p.model_tag, {})[p.clip_id] = p.correct
    return out


def report_shard(
    store: ObjectStore, job: ShardJob, run: str, inputs: dict[str, StageRef]
) -> tuple[pa.Table, None]:
    data = report_data(store, run, inputs)
    sections = build_sections(data)
    markdown = render_markdown(run, sections)
    out_dir = job.output_uri.rsplit("/", 1)[0]
    tables = {t.key: t.records() for s in sections for t in s.tables}
    store.write_bytes(join(out_dir, "report.json"), json.dumps({"run": run, "tables": tables}).encode())
    store.write_bytes(join(out_dir, "report.md"), markdown.encode())
    store.write_bytes(join(out_dir, "report.html"), render_html(run, sections, make_plots(data)).encode())
    return pa.Table.from_pylist(data["rows"], schema=ROW_SCHEMA), None


def run_report(store: ObjectStore, run: str, inputs: dict[str, StageRef]) -> StageRef:
    plan = plan_report(store, run, inputs)
    return run_plan(store, plan, lambda job: report_shard(store, job, run, inputs))


def report_uris(ref: StageRef) -> dict[str, str]:
    return {
        "markdown": join(ref.dir, "report.md"),
        "html": join(ref.dir, "report.html"),
        "tables": join(ref.dir, "report.json"),
    }


def artifact_key(run: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for one of a run's tables.

    >>> artifact_key("Demo_1.b", "results")
    'demo-1-b-results'
    """
    return re.sub(r"[^a-z0-9-]+", "-", f"{run}-{name}".lower()).strip("-")


def report_artifacts(store: ObjectStore, ref: StageRef) -> dict[str, Any]:
    """What the flow publishes for a committed report: ``{"markdown": str, "tables": {key: rows}}``,
    keys already valid artifact keys and rows lists of dicts (``create_table_artifact``)."""
    uris = report_uris(ref)
    saved = json.loads(store.read_bytes(uris["tables"]))
    markdown = store.read_bytes(uris["markdown"]).decode()
    markdown += f"\nFull report with plots: `{uris['html']}`\n"
    return {
        "markdown": markdown,
        "tables": {artifact_key(saved["run"], name): rows for name, rows in saved["tables"].items()},
    }
