"""The run's report: Markdown, one self-contained HTML file (plots as PNG data URIs), and what the
flow publishes as Prefect artifacts.

Sections, every number read from the run's own manifests and training logs:
    results     the paper's table: rows are models, columns AVQA, MMAU sound / music / speech /
                avg, MUSIC-AVQA and the synthetic world's visual / acoustic families (those the run
                configured), accuracy in percent with its 95% Wilson interval
    benchmarks  scorer, items, annotation release and file, MMAU prediction files
    accuracy    every model, benchmark and group (family, category; MMAU's difficulty and
                sub-category, computed from the official prediction file)
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

from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, run_plan
from sightsound_core.storage import ObjectStore, join

log = logging.getLogger(__name__)

STAGE = "report"
# Bump when the report's content changes, so committed reports are rebuilt.
REPORT_VERSION = 2
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
            columns += [(f"{name} {f}", name, "family", f) for f in ("visual", "acoustic")]
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


# -- sections -------------------------------------------------------------------------------------
def build_sections(data: dict[str, Any]) -> list[Section]:
    evaluation = data["evaluation"]
    models = evaluation.get("models") or list(evaluation.get("accuracy", {}))
    sections = []

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
    sections.append(Section(
        "Results",
        ["Accuracy in percent [95% Wilson interval], every model the run produced on every "
         "configured benchmark. MMAU: official string match on the `<answer>` content, 'avg' is "
         "the official total over all items. Synthetic: visual-correlate vs acoustic-only questions."],
        [results],
        ["accuracy"],
    ))

    bench_rows = []
    for name, info in evaluation.get("benchmarks", {}).items():
        bench_rows.append([
            name, info["dataset"], info["scorer"], info.get("items", 0),
            info.get("annotation_version") or "–", ", ".join(info.get("annotations") or []) or "–",
            ", ".join(u.rsplit("/", 1)[-1] for u in info.get("prediction_files", {}).values()) or "–",
        ])
    files = any(info.get("prediction_files") for info in evaluation.get("benchmarks", {}).values())
    sections.append(Section("Benchmarks", [
        f"MMAU prediction files (the input of MMAU's official evaluation.py) are in "
        f"`{data['evaluate_dir']}`."] if files else [], [Table(
        "benchmarks",
        ["benchmark", "dataset", "scorer", "items", "annotation version", "annotations",
         "prediction files"],
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

    funnel = data["funnel"]
    if funnel:
        by_family = [("all", funnel["all"]), *funnel["by_family"].items()]
        sections.append(Section(
            "Distillation funnel",
            ["Clips left after each filter: every teacher sample parsed, the K answers unanimous, "
             "the winner equal to the label, a trace accepted by the audio verifier (AGFV); "
             "errors: traces whose verify request failed (`sightsound resume RUN --stage verify`)."],
            [Table("funnel", ["family", *FUNNEL_STEPS, "errors"],
                   [[fam, *[counts[s] for s in FUNNEL_STEPS], counts.get("errors", 0)]
                    for fam, counts in by_family])],
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
    return {
        "run": run,
        "evaluation": evaluation,
        "evaluate_dir": inputs["evaluate"].dir,
        "rows": accuracy_rows(evaluation.get("accuracy", {})),
        "funnel": inputs["corpus"].manifest["summary"].get("funnel") if "corpus" in inputs else None,
        "training": {
            f"{stage}:{name}": entries
            for stage in ("sft", "grpo")
            if stage in inputs
            for name, entries in read_log(store, inputs[stage]).items()
        },
    }


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
