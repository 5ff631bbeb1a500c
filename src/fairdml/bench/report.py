"""Reports of a benchmark directory: tables with confidence intervals, published numbers, plots.

`build_report(directory)` reads ``results.sqlite`` and writes ``report.md`` and a
self-contained ``report.html`` (plots inline as PNG data). The main table has one row per
method and, for the "separated" and "concatenated" evaluations, mean ± 95% Student-t
confidence interval over the repeats of recall@K, r_precision, map@r, nmi and f1; the
best mean of each column is marked.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fairdml.bench.statistics import confidence_interval
from fairdml.bench.store import ResultsStore

KINDS = ("separated", "concatenated")
BASE_METRICS = ("r_precision", "map@r", "nmi", "f1")
# fairdml data set names -> the names used in published.csv
DATASET_NAMES = {"cub200": "CUB-200-2011", "cars196": "Cars196", "sop": "SOP",
                 "inshop": "In-Shop"}


@dataclass
class Cell:
    mean: float
    half_width: float
    best: bool = False

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "–"
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def load_published() -> list[dict[str, Any]]:
    """Rows of published.csv (numbers reported by papers, transcribed from the seed)."""
    text = resources.files("fairdml.bench").joinpath("published.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        row["value"] = float(row["value"])
        row["year"] = int(row["year"]) if row.get("year") else None
    return rows


def metric_columns(runs: list[dict[str, Any]]) -> list[str]:
    recalls = sorted({k for r in runs for k in r["metrics"] if k.startswith("recall@")},
                     key=lambda k: int(k.split("@")[1]))
    present = {k for r in runs for k in r["metrics"]}
    return recalls + [m for m in BASE_METRICS if m in present]


def summary_table(store: ResultsStore, confidence: float = 0.95
                  ) -> tuple[list[str], dict[tuple[str, str], dict[str, Cell]]]:
    """(columns, {(method, kind): {metric: Cell}}) over repeats, best per column marked."""
    runs = [r for r in store.runs(split="test") if r["kind"] in (*KINDS, "baseline")]
    columns = metric_columns(runs)
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[(run["method"], run["kind"])].append(run["metrics"])
    table: dict[tuple[str, str], dict[str, Cell]] = {}
    for key, metrics in grouped.items():
        row = {}
        for column in columns:
            values = [m[column] for m in metrics if column in m and m[column] is not None]
            row[column] = (Cell(*confidence_interval(values, confidence)) if values
                           else Cell(math.nan, math.nan))
        table[key] = row
    for kind in KINDS:
        for column in columns:
            cells = [row[column] for (method, k), row in table.items()
                     if k == kind and not math.isnan(row[column].mean)]
            if cells:
                best = max(cell.mean for cell in cells)
                for cell in cells:
                    cell.best = cell.mean == best
    return columns, table


# ---------------------------------------------------------------------------- plots


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def plot_papers_vs_reality(store: ResultsStore, published: list[dict[str, Any]],
                           dataset: str) -> bytes:
    """Published recall@1 by year beside measured map@r by year (the seed's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = DATASET_NAMES.get(dataset, "CUB-200-2011")
    points = [(r["year"], r["value"], r["method"]) for r in published
              if r["dataset"] == reference and r["metric"] == "recall@1" and r["year"]]
    years_by_loss = {r["loss"]: r["year"] for r in published if r.get("loss") and r["year"]}
    measured = defaultdict(list)
    for run in store.runs(split="test", kind="separated"):
        if run["method"] in years_by_loss or run["config"]["loss"]["name"] in years_by_loss:
            year = years_by_loss.get(run["method"], years_by_loss.get(
                run["config"]["loss"]["name"]))
            measured[(year, run["method"])].append(run["metrics"].get("map@r", math.nan))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if points:
        left.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
        for year, value, method in points:
            left.annotate(method, (year, value), fontsize=6, alpha=0.7)
    left.set(title=f"according to papers: published recall@1 ({reference})", xlabel="year",
             ylabel="recall@1 (%)")
    for (year, method), values in sorted(measured.items()):
        mean, half = confidence_interval(values)
        right.errorbar([year], [mean], yerr=[0 if math.isnan(half) else half], fmt="o",
                       capsize=3)
        right.annotate(method, (year, mean), fontsize=7)
    right.set(title=f"according to this benchmark: map@r ({dataset})", xlabel="year",
              ylabel="map@r (separated, 95% CI)")
    if not measured:
        right.text(0.5, 0.5, "no measured method has a publication year", ha="center",
                   transform=right.transAxes)
    return _figure_png(figure)


def plot_recall_vs_map(store: ResultsStore) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    by_method = defaultdict(list)
    for run in store.runs(split="test"):
        if run["kind"] in ("fold", "concatenated", "baseline"):
            by_method[run["method"]].append(run["metrics"])
    for method, metrics in sorted(by_method.items()):
        axis.scatter([m.get("map@r", math.nan) for m in metrics],
                     [m.get("recall@1", math.nan) for m in metrics], label=method, alpha=0.7)
    axis.set(xlabel="map@r", ylabel="recall@1", title="recall@1 against map@r (all test runs)")
    axis.legend(fontsize=7)
    return _figure_png(figure)


def plot_validation_curves(store: ResultsStore) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    curves = defaultdict(lambda: defaultdict(list))
    for row in store.curves():
        if row["stage"] == "repeat":
            curves[row["method"]][row["epoch"]].append(row["value"])
    for method, by_epoch in sorted(curves.items()):
        epochs = sorted(by_epoch)
        axis.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], marker="o",
                  label=method)
    axis.set(xlabel="epoch", ylabel="validation map@r (mean over folds and repeats)",
             title="validation map@r over epochs")
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves:
        axis.legend(fontsize=7)
    return _figure_png(figure)


def plot_repeat_spread(store: ResultsStore) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    methods = sorted({r["method"] for r in store.runs(split="test", kind="separated")})
    for position, method in enumerate(methods):
        for offset, kind in ((-0.15, "separated"), (0.15, "concatenated")):
            values = [r["metrics"].get("map@r", math.nan)
                      for r in store.runs(split="test", kind=kind, method=method)]
            axis.scatter([position + offset] * len(values), values,
                         color="tab:blue" if kind == "separated" else "tab:orange",
                         label=kind if position == 0 else None)
    axis.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    axis.set(ylabel="test map@r", title="spread over repeats")
    if methods:
        axis.legend(fontsize=7)
    return _figure_png(figure)


# ---------------------------------------------------------------------------- writers


def _markdown_table(columns: list[str], table: dict[tuple[str, str], dict[str, Cell]]) -> str:
    lines = []
    for kind in (*KINDS, "baseline"):
        rows = {m: r for (m, k), r in table.items() if k == kind}
        if not rows:
            continue
        lines += [f"### {kind}", "", "| method | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for method, row in sorted(rows.items()):
            cells = [f"**{row[c].text()}**" if row[c].best else row[c].text() for c in columns]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _html_table(columns: list[str], table: dict[tuple[str, str], dict[str, Cell]]) -> str:
    parts = []
    for kind in (*KINDS, "baseline"):
        rows = {m: r for (m, k), r in table.items() if k == kind}
        if not rows:
            continue
        header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for method, row in sorted(rows.items()):
            cells = "".join(
                f"<td class='{'best' if row[c].best else ''}'>{html.escape(row[c].text())}</td>"
                for c in columns)
            body.append(f"<tr><th>{html.escape(method)}</th>{cells}</tr>")
        parts.append(f"<h3>{kind}</h3><table class='results' data-kind='{kind}'><thead><tr>"
                     f"<th>method</th>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    return "".join(parts)


def _published_rows(published: list[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    reference = DATASET_NAMES.get(dataset)
    return [r for r in published if r["dataset"] == reference] if reference else []


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #e8f4e8; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{intro}</p>
<h2>Results on the test split (mean ± {confidence}% CI over repeats)</h2>
{tables}
<h2>Published numbers ({dataset})</h2>
{published}
<h2>Plots</h2>
{plots}
<script>
window.addEventListener("load", function () {{
  var images = Array.from(document.images);
  var ok = images.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
}});
</script>
</body></html>
"""


def build_report(directory: str | Path) -> dict[str, Any]:
    """Write report.md and report.html for a benchmark directory; returns what was drawn."""
    import json

    directory = Path(directory)
    path = directory / "results.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no benchmark results ({path.name} missing)")
    store = ResultsStore(path)
    preset = json.loads(store.get_meta("preset") or "{}")
    dataset = preset.get("run", {}).get("data", {}).get("name", "unknown")
    confidence = preset.get("protocol", {}).get("confidence", 0.95)
    columns, table = summary_table(store, confidence)
    published = load_published()
    reference_rows = _published_rows(published, dataset)
    plots = {
        "Papers vs reality": plot_papers_vs_reality(store, published, dataset),
        "recall@1 against map@r": plot_recall_vs_map(store),
        "Validation map@r over epochs": plot_validation_curves(store),
        "Spread over repeats": plot_repeat_spread(store),
    }
    title = f"fairdml benchmark: {preset.get('name', directory.name)} on {dataset}"
    intro = (f"fairdml {store.get_meta('fairdml_version')}, git {store.get_meta('git_revision')}"
             f"; {len(store.trials())} search trials; protocol "
             f"{json.dumps(preset.get('protocol', {}))}")
    published_md = "\n".join(
        [f"| {r['method']} | {r['year']} | {r['backbone']} | {r['embedding_dim']} | "
         f"{r['metric']} | {r['value']} |" for r in reference_rows])
    markdown = [f"# {title}", "", intro, "",
                f"## Results on the test split (mean ± {confidence:.0%} CI over repeats)", "",
                _markdown_table(columns, table), f"## Published numbers ({dataset})", ""]
    if reference_rows:
        markdown += ["| method | year | backbone | dim | metric | value |",
                     "|---|---|---|---|---|---|", published_md]
    else:
        markdown.append(f"No published numbers for {dataset} in the seed's tables.")
    markdown += ["", "## Plots", ""]
    plot_html = []
    for index, (name, png) in enumerate(plots.items()):
        file = directory / f"report_plot{index}.png"
        file.write_bytes(png)
        markdown += [f"### {name}", "", f"![{name}]({file.name})", ""]
        encoded = base64.b64encode(png).decode()
        plot_html.append(f"<h3>{html.escape(name)}</h3>"
                         f"<img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>")
    published_html = ("<table class='published'><thead><tr><th>method</th><th>year</th>"
                      "<th>backbone</th><th>dim</th><th>metric</th><th>value</th></tr></thead>"
                      "<tbody>" + "".join(
                          f"<tr><th>{html.escape(r['method'])}</th><td>{r['year']}</td>"
                          f"<td>{html.escape(r['backbone'])}</td><td>{r['embedding_dim']}</td>"
                          f"<td>{r['metric']}</td><td>{r['value']}</td></tr>"
                          for r in reference_rows) + "</tbody></table>"
                      if reference_rows else
                      f"<p>No published numbers for {html.escape(dataset)} in the seed.</p>")
    (directory / "report.md").write_text("\n".join(markdown) + "\n")
    (directory / "report.html").write_text(HTML_TEMPLATE.format(
        title=html.escape(title), intro=html.escape(intro), confidence=round(confidence * 100),
        tables=_html_table(columns, table), dataset=html.escape(dataset),
        published=published_html, plots="".join(plot_html)))
    store.close()
    return {"columns": columns, "table": table, "plots": list(plots)}
