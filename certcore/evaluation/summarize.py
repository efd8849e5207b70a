"""Summary of a results file: ``python -m certcore.summarize results/NAME.jsonl [--k 1 2 3] [--alpha A]``.

Prints the certified top-k accuracy table (paper layout: rows k, columns #perturbed pixels r = 0..r_max) and
writes, each atomically, ``PREFIX.md``, ``PREFIX.csv``, ``PREFIX.json``, the figure ``PREFIX.html`` (plotly.js
embedded, works offline) and ``PREFIX.png`` (plotly static export through kaleido, which drives a local
Chrome/Chromium; skipped with a warning when none can be started). ``PREFIX`` defaults to
``results/NAME.summary``. Other k or alpha than the run's are re-certified from the stored counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS

from certcore.evaluation.paper import PAPER_SETTINGS, PERTURBED_PIXELS, paper_rows
from certcore.evaluation.results import (
    Record,
    ResultsError,
    accuracy_table,
    atomic_write,
    describe_run,
    format_accuracy_table,
    read_results,
)


def summary_data(records: Sequence[Record], ks: Sequence[int], alpha: float | None, r_max: int) -> dict[str, Any]:
    """The summary as JSON-ready data: run description, alpha used, r values and accuracy per k."""
    run = describe_run(records)
    table = accuracy_table(records, ks, alpha, r_max)
    return {
        "run": run,
        "alpha": run["alpha"] if alpha is None else alpha,
        "recertified": alpha not in (None, run["alpha"]) or any(k not in run["k"] for k in ks),
        "r": list(range(r_max + 1)),
        "certified_accuracy": {str(k): [float(a) for a in acc] for k, acc in table.items()},
    }


def summary_caption(summary: dict[str, Any]) -> str:
    """One line saying what the numbers are: the run, and the alpha if re-certified at another one."""
    caption = summary["run"]["label"]
    if summary["alpha"] != summary["run"]["alpha"]:
        caption += f", re-certified from its counts at α={summary['alpha']:g}"
    return caption


def accuracy_figure(summary: dict[str, Any], paper: bool = True) -> go.Figure:
    """Certified top-k accuracy vs #perturbed pixels, one line per k; with ``paper``, the paper's "Our method"
    rows for the same dataset and k (Table 1 or 2, r = 1..5) as dashed lines."""
    fig = go.Figure()
    colors = {k: DEFAULT_PLOTLY_COLORS[i % len(DEFAULT_PLOTLY_COLORS)]
              for i, k in enumerate(summary["certified_accuracy"])}
    for k, acc in summary["certified_accuracy"].items():
        fig.add_trace(go.Scatter(x=summary["r"], y=acc, mode="lines+markers", name=f"top-{k}",
                                 line={"color": colors[k]}))
    setting = PAPER_SETTINGS.get(summary["run"]["dataset"])
    if paper and setting is not None:
        for row in paper_rows(setting.dataset, method="ours"):
            if str(row.k) in colors:
                fig.add_trace(go.Scatter(
                    x=list(PERTURBED_PIXELS), y=list(row.accuracy), mode="lines+markers",
                    line={"dash": "dash", "color": colors[str(row.k)]}, marker={"symbol": "circle-open"},
                    name=f"paper Table {setting.table}, top-{row.k} ({setting.model}, n={setting.n:,})"))
    fig.update_layout(
        title=f"Certified top-k accuracy<br><sup>{summary_caption(summary)}</sup>",
        xaxis_title="number of perturbed pixels r", yaxis_title="certified top-k accuracy",
        yaxis_range=[0, 1.02], template="plotly_white", width=900, height=560,
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
    )
    return fig


def write_summary(
    results: str | Path,
    ks: Sequence[int] | None = None,
    alpha: float | None = None,
    r_max: int = 10,
    prefix: str | Path | None = None,
    paper: bool = True,
    png: bool = True,
) -> dict[str, Path]:
    """Write the summary files of ``results`` (see the module docstring); returns {extension: path}."""
    results = Path(results)
    records = read_results(results)
    if not records:
        raise ResultsError(f"{results}: no certified images yet")
    ks = sorted(set(ks or records[0]["k"]))
    summary = summary_data(records, ks, alpha, r_max)
    summary["results_file"] = results.name
    prefix = Path(prefix) if prefix is not None else results.with_name(f"{results.stem}.summary")
    table = {int(k): acc for k, acc in summary["certified_accuracy"].items()}
    caption = (f"Certified top-k accuracy of {results.name}: {summary_caption(summary)}. "
               "Rows: k; columns: number of perturbed pixels.\n\n")
    contents: dict[str, str | bytes] = {
        "md": caption + format_accuracy_table(table, "markdown"),
        "csv": format_accuracy_table(table, "csv"),
        "json": json.dumps(summary, indent=2) + "\n",
    }
    contents.update(figure_files(accuracy_figure(summary, paper), png))
    return write_files(prefix, contents)


def figure_files(fig: go.Figure, png: bool = True) -> dict[str, str | bytes]:
    """A figure as file contents: ``html`` (plotly.js embedded, works offline) and, with ``png``, ``png``
    (kaleido, which drives a local Chrome/Chromium; left out with a warning when none can be started)."""
    contents: dict[str, str | bytes] = {"html": fig.to_html(include_plotlyjs=True, full_html=True)}
    if png:
        try:
            contents["png"] = png_bytes(fig)
        except Exception as exc:  # kaleido fails in many ways when no Chrome/Chromium can be started
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            warnings.warn(f"PNG export skipped: {reason} kaleido (requirements.txt) draws the PNG with a local "
                          "Chrome or Chromium: install one (Debian/Ubuntu: apt-get install chromium) or set "
                          "BROWSER_PATH to its executable; --no-png skips the PNG", stacklevel=3)
    return contents


def png_bytes(fig: go.Figure) -> bytes:
    """``fig`` as a PNG through kaleido, tried a second time if the first try fails: on a loaded machine kaleido can
    query its page before the page's script has loaded (``ReferenceError: kaleido_scopes is not defined``, seen in a CI
    run), and each try starts a fresh browser. A second failure is raised."""
    try:
        return fig.to_image(format="png", scale=2)
    except Exception:
        return fig.to_image(format="png", scale=2)


def write_files(prefix: str | Path, contents: dict[str, str | bytes]) -> dict[str, Path]:
    """Write each ``{suffix: data}`` atomically to ``PREFIX.suffix``; returns {suffix: path}."""
    prefix = Path(prefix)
    written = {}
    for suffix, data in contents.items():
        path = prefix.with_name(f"{prefix.name}.{suffix}")
        atomic_write(path, data)
        written[suffix] = path
    return written


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Command line: print the table and write the summary files."""
    p = argparse.ArgumentParser(prog="python -m certcore.summarize", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results file written by python -m certcore.evaluate")
    p.add_argument("--k", type=int, nargs="+", default=None, help="top-k rows (default: the run's)")
    p.add_argument("--alpha", type=float, default=None, help="re-certify at this alpha (default: the run's)")
    p.add_argument("--r-max", type=int, default=10, help="last column: #perturbed pixels")
    p.add_argument("--prefix", default=None, help="output path prefix (default results/NAME.summary)")
    p.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out of the figure")
    p.add_argument("--no-png", action="store_true", help="skip the PNG export (needs Chrome/Chromium)")
    args = p.parse_args(argv)
    if args.r_max < 0 or (args.k is not None and min(args.k) < 1):
        p.error("--r-max must be >= 0 and --k values >= 1")
    if args.alpha is not None and not 0 < args.alpha < 1:
        p.error(f"--alpha must be in (0, 1), got {args.alpha}")
    try:
        written = write_summary(args.results, args.k, args.alpha, args.r_max, args.prefix, not args.no_paper,
                                not args.no_png)
    except ResultsError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(written["md"].read_text(), end="")
    print("wrote " + ", ".join(str(path) for path in written.values()))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
