"""Figures of certified accuracy: evaluation runs against the paper's tables (the app's accuracy page) and the
paper's Figures 1-4 (``python -m certcore.paper_figures``). Drawn here, below both, so that the command line and the
app share one drawing; the common plotly layout of every certcore figure lives here too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from certcore.evaluation.paper import PAPER_SETTINGS, PERTURBED_PIXELS, paper_rows


def figure_layout(title: str, x: str, y: str, height: int = 360, **extra: Any) -> dict[str, Any]:
    """A figure layout; passed to ``go.Figure`` at construction (several times faster than ``update_layout``)."""
    return {
        "title": {"text": title, "x": 0, "xanchor": "left"},
        "xaxis": {"title": {"text": x}},
        "yaxis": {"title": {"text": y}},
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 50, "b": 10},
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0},
        "hovermode": "x unified",
        **extra,
    }


K_COLOURS = ("#00798c", "#d1495b", "#edae49", "#66a182", "#2e4057", "#8d96a3", "#a05195", "#f95d6a")
RUN_DASHES = ("solid", "dot", "dashdot", "longdashdot")


def accuracy_runs_figure(summaries: Sequence[dict[str, Any]], paper: bool = True) -> go.Figure:
    """Certified top-k accuracy vs number of perturbed pixels for several runs
    (``certcore.evaluation.summarize.summary_data`` dicts), one line per run and k (colour: k; line style: run),
    model / n / alpha in the legend; with ``paper``, the paper's "Our method" rows (Table 1 for CIFAR10, Table 2
    for ImageNet) for the same datasets and k, dashed with open markers in the colour of their k."""
    traces, shown = [], set()
    for i, summary in enumerate(summaries):
        run = summary["run"]
        for k, acc in summary["certified_accuracy"].items():
            shown.add((run["dataset"], int(k)))
            traces.append(_accuracy_trace(
                summary["r"], acc, K_COLOURS[(int(k) - 1) % len(K_COLOURS)],
                f"top-{k} · {run['model']} · n={run['n']:,} · α={summary['alpha']:g} · {run['num_images']} images",
                dash=RUN_DASHES[i % len(RUN_DASHES)]))
    for dataset, k in sorted(shown) if paper else []:
        setting = PAPER_SETTINGS[dataset]
        traces += [
            _accuracy_trace(list(PERTURBED_PIXELS), row.accuracy, K_COLOURS[(k - 1) % len(K_COLOURS)],
                            f"paper Table {setting.table} · top-{k} · {setting.model} · n={setting.n:,} · "
                            f"α={setting.alpha:g} · {setting.num_images} images",
                            dash="dash", width=1, marker={"symbol": "circle-open", "size": 9})
            for row in paper_rows(dataset, k=k, method="ours")
        ]
    return go.Figure(traces, layout=_accuracy_layout("Certified top-k accuracy", "certified top-k accuracy"))


def accuracy_curves_figure(curves: Mapping[str, Sequence[float]], title: str, y_title: str) -> go.Figure:
    """Certified accuracy vs number of perturbed pixels r = 0, 1, ..., one line per named curve, coloured in
    order, in the layout of ``accuracy_runs_figure`` (the paper's Figures 1-4: one line per value of k, e, n or
    alpha)."""
    traces = [_accuracy_trace(list(range(len(acc))), acc, K_COLOURS[i % len(K_COLOURS)], name)
              for i, (name, acc) in enumerate(curves.items())]
    return go.Figure(traces, layout=_accuracy_layout(title, y_title))


def _accuracy_trace(r: Sequence[int], acc: Sequence[float], colour: str, name: str, dash: str = "solid",
                    width: float = 2, **extra: Any) -> go.Scatter:
    """One certified-accuracy line over r, percentages on hover."""
    return go.Scatter(x=list(r), y=list(acc), mode="lines+markers", name=name, hovertemplate="r = %{x}: %{y:.1%}",
                      line={"color": colour, "dash": dash, "width": width}, **extra)


def _accuracy_layout(title: str, y_title: str) -> dict[str, Any]:
    """The layout of certified-accuracy figures: r on x, accuracy on y from 0 to 100%."""
    layout = figure_layout(title, "number of perturbed pixels r", y_title, height=520)
    layout["yaxis"].update(range=[0, 1.02], tickformat=".0%")
    return layout
