"""The run's report: Markdown and one self-contained HTML file (plots embedded as PNG data URIs).

Sections: accuracy per model, benchmark and category with 95% intervals; the distillation funnel;
teacher agreement per question family; verifier precision/recall on planted hallucinations;
training curves. Every number comes from the run's own manifests and logs.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from typing import Any

import pyarrow as pa

from sightsound_core.stage import ShardJob, StagePlan, StageRef, plan_sources, run_plan
from sightsound_core.storage import ObjectStore, join

log = logging.getLogger(__name__)

STAGE = "report"
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


def accuracy_rows(accuracy: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten the evaluate summary into table rows (group 'all', 'family:x', 'category:y')."""
    rows = []
    for tag, benches in accuracy.items():
        for bench, entry in benches.items():
            groups = [("all", entry["all"])]
            groups += [(f"family:{k}", v) for k, v in entry["by_family"].items()]
            groups += [(f"category:{k}", v) for k, v in entry["by_category"].items()]
            for group, acc in groups:
                rows.append(
                    {"model_tag": tag, "benchmark": bench, "group": group, "n": acc["n"],
                     "accuracy": acc["accuracy"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"]}
                )
    return rows


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def make_plots(data: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs by name: accuracy, funnel, agreement, training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    rows = [r for r in data["rows"] if r["group"] == "all"]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 3))
        labels = [f"{r['model_tag']}\n{r['benchmark']}" for r in rows]
        acc = [r["accuracy"] for r in rows]
        err = [[a - r["ci_low"] for a, r in zip(acc, rows)], [r["ci_high"] - a for a, r in zip(acc, rows)]]
        ax.bar(labels, acc, yerr=err, capsize=3, color="#4c72b0")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title("Accuracy (95% Wilson interval)")
        plots["accuracy"] = _png(fig)
    funnel = data["funnel"]
    if funnel:
        fig, ax = plt.subplots(figsize=(6, 3))
        steps = list(funnel["all"].keys())
        for family, counts in funnel["by_family"].items():
            ax.plot(steps, [counts[s] for s in steps], marker="o", label=family)
        ax.plot(steps, [funnel["all"][s] for s in steps], marker="s", color="k", label="all")
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
    curves = data["training"]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
        for ax, (name, entries) in zip(axes[0], curves.items()):
            metrics = sorted({m for _, m, _ in entries})
            for metric in metrics:
                pts = [(s, v) for s, m, v in entries if m == metric]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=metric)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        plots["training"] = _png(fig)
    return plots


def render_markdown(data: dict[str, Any]) -> str:
    lines = [f"# sightsound report: run `{data['run']}`", "", "## Accuracy", ""]
    lines += ["| model | benchmark | group | n | accuracy | 95% CI |", "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(
            f"| {r['model_tag']} | {r['benchmark']} | {r['group']} | {r['n']} | "
            f"{r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |"
        )
    funnel = data["funnel"]
    if funnel:
        lines += ["", "## Distillation funnel", ""]
        steps = list(funnel["all"].keys())
        lines += ["| family | " + " | ".join(steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for family, counts in [("all", funnel["all"]), *funnel["by_family"].items()]:
            lines.append(f"| {family} | " + " | ".join(str(counts[s]) for s in steps) + " |")
        lines += ["", "## Teacher agreement by question family", ""]
        for family, values in funnel["agreement_by_family"].items():
            unanimous = sum(v == 1.0 for v in values)
            lines.append(f"- {family}: {unanimous}/{len(values)} clips unanimous, "
                         f"mean agreement {sum(values) / max(len(values), 1):.3f}")
        ver = funnel["verifier"]
        lines += ["", "## Verifier on planted hallucinations", ""]
        lines.append(f"- traces with known ground truth: {ver['labelled']}")
        lines.append(f"- precision: {ver['precision']}")
        lines.append(f"- recall: {ver['recall']}")
    if data["training"]:
        lines += ["", "## Training", ""]
        for name, entries in data["training"].items():
            finals: dict[str, tuple[int, float]] = {}
            firsts: dict[str, tuple[int, float]] = {}
            for step, metric, value in entries:
                firsts.setdefault(metric, (step, value))
                finals[metric] = (step, value)
            parts = [f"{m} {firsts[m][1]:.4g} → {finals[m][1]:.4g}" for m in sorted(finals)]
            lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def render_html(markdown_text: str, data: dict[str, Any], plots: dict[str, str]) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["model_tag"], r["benchmark"], r["group"], r["n"], f"{r['accuracy']:.3f}",
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")) + "</tr>"
        for r in data["rows"]
    )
    images = "".join(
        f'<figure><img id="plot-{name}" alt="{name}" src="data:image/png;base64,{b64}"/>'
        f"<figcaption>{name}</figcaption></figure>"
        for name, b64 in plots.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>sightsound report: {html.escape(data['run'])}</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        "figure{display:inline-block;margin:1em}</style></head><body>"
        f"<h1>sightsound report: run {html.escape(data['run'])}</h1>"
        "<h2>Accuracy</h2><table id='accuracy'><tr><th>model</th><th>benchmark</th><th>group</th>"
        f"<th>n</th><th>accuracy</th><th>95% CI</th></tr>{rows}</table>"
        f"<h2>Plots</h2>{images}"
        f"<h2>Details</h2><pre>{html.escape(markdown_text)}</pre></body></html>"
    )


def plan_report(store: ObjectStore, run: str, inputs: dict[str, StageRef]) -> StagePlan:
    fps = {name: ref.fingerprint for name, ref in sorted(inputs.items())}
    upstream = [f"{n}={r.stage_hash}" for n, r in sorted(inputs.items())]
    return plan_sources(store, run, STAGE, {"version": 1}, [{"inputs": fps}], upstream)


def report_shard(
    store: ObjectStore, job: ShardJob, run: str, inputs: dict[str, StageRef]
) -> tuple[pa.Table, None]:
    from sightsound_core.training.stages import read_log

    data = {
        "run": run,
        "rows": accuracy_rows(inputs["evaluate"].manifest["summary"].get("accuracy", {})),
        "funnel": inputs["corpus"].manifest["summary"].get("funnel"),
        "training": {
            f"{stage}:{name}": entries
            for stage in ("sft", "grpo")
            if stage in inputs
            for name, entries in read_log(store, inputs[stage]).items()
        },
    }
    md = render_markdown(data)
    plots = make_plots(data)
    out_dir = job.output_uri.rsplit("/", 1)[0]
    store.write_bytes(join(out_dir, "report.md"), md.encode())
    store.write_bytes(join(out_dir, "report.html"), render_html(md, data, plots).encode())
    return pa.Table.from_pylist(data["rows"], schema=ROW_SCHEMA), None


def run_report(store: ObjectStore, run: str, inputs: dict[str, StageRef]) -> StageRef:
    plan = plan_report(store, run, inputs)
    return run_plan(store, plan, lambda job: report_shard(store, job, run, inputs))


def report_uris(ref: StageRef) -> dict[str, str]:
    return {"markdown": join(ref.dir, "report.md"), "html": join(ref.dir, "report.html")}
