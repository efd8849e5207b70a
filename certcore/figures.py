"""What the app draws: plotly figures of certificates, Eq. 6 curves and what-if sweeps, and images enlarged for
display. Nothing here computes a bound or a radius, and nothing imports streamlit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from certcore.paper import PAPER_SETTINGS, PERTURBED_PIXELS, paper_rows
from certcore.radius import BoundCurves
from certcore.sweeps import Sweep

TOP_K_COLOUR = "#d1495b"
OTHER_COLOUR = "#8d99ae"
TRUE_COLOUR = "#00798c"
LHS_COLOUR = "#00798c"
RHS_COLOUR = "#d1495b"


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 360) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        xaxis_title=x,
        yaxis_title=y,
        height=height,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0},
        hovermode="x unified",
    )
    return fig


def counts_figure(
    counts: Sequence[int],
    names: Sequence[str],
    top_k: Sequence[int],
    label: int | None = None,
    max_bars: int = 20,
) -> go.Figure:
    """Bar chart of label counts, largest first: top-k labels highlighted, the true label outlined and marked.

    With many classes only the ``max_bars`` largest counts are drawn, plus the true label and every top-k label.
    """
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable").tolist()
    shown = [j for j in order if j in set(order[:max_bars]) | set(top_k) | ({label} if label is not None else set())]
    colours = [TOP_K_COLOUR if j in top_k else OTHER_COLOUR for j in shown]
    x = [f"{names[j]} ★" if j == label else names[j] for j in shown]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=[int(counts[j]) for j in shown],
            marker={
                "color": colours,
                "line": {"color": [TRUE_COLOUR if j == label else colours[i] for i, j in enumerate(shown)],
                         "width": [4 if j == label else 0 for j in shown]},
            },
            customdata=[[j, f"{counts[j] / counts.sum():.2%}"] for j in shown],
            hovertemplate="%{x} (label %{customdata[0]}): %{y:,} samples, %{customdata[1]}<extra></extra>",
        )
    )
    hidden = len(counts) - len(shown)
    note = f"; {hidden:,} smaller labels not shown" if hidden else ""
    _layout(fig, f"Label counts, n = {int(counts.sum()):,}", f"top-{len(top_k)} in red"
            + (", true label ★" if label is not None else "") + note, "count", height=460)
    fig.update_layout(hovermode="closest", showlegend=False)
    return fig


def curves_figure(curves: BoundCurves, radius: int, limit: int | None, label_name: str) -> go.Figure:
    """Both sides of Eq. 6 over r: the lower bound of the label (lhs) against the min over t of the t-terms
    (rhs), each t-term dashed; the certified radius is the last r with lhs > rhs (marked), Theorem 2's limit
    dotted."""
    r = curves.r
    fig = go.Figure()
    fig.add_scatter(
        x=r, y=curves.lhs, name=f"lhs: p'({label_name}) - D(r)", line={"color": LHS_COLOUR, "width": 3},
        hovertemplate="%{y:.6f}",
    )
    fig.add_scatter(
        x=r, y=curves.rhs, name="rhs: min over t", line={"color": RHS_COLOUR, "width": 3},
        hovertemplate="%{y:.6f}",
    )
    for t, term in enumerate(curves.terms, start=1):
        fig.add_scatter(
            x=r, y=term, name=f"t = {t}: (p'(Y_{t}) + D(r)) / {t}", line={"dash": "dash", "width": 1},
            hovertemplate="%{y:.6f}", visible=True if len(curves.terms) <= 5 else "legendonly",
        )
    if radius >= 0:
        fig.add_vline(x=radius, line={"color": LHS_COLOUR, "dash": "solid", "width": 1},
                      annotation_text=f"radius {radius}", annotation_position="top left")
    if limit is not None:
        fig.add_vline(x=limit, line={"color": "grey", "dash": "dot", "width": 1},
                      annotation_text=f"Theorem 2 limit {limit}", annotation_position="bottom right")
    return _layout(fig, f"Eq. 6 for '{label_name}': certified while lhs > rhs", "r = pixels changed", "probability",
                   height=460)


def sweep_figure(sweep: Sweep, current: float, title: str, log_x: bool = False) -> go.Figure:
    """Radius against one parameter (-1 drawn as 'not certified'), the current value marked."""
    fig = go.Figure(
        go.Scatter(
            x=sweep.values, y=sweep.radii, mode="lines+markers",
            hovertemplate=f"{sweep.parameter} = %{{x:,}}: radius %{{y}}<extra></extra>",
        )
    )
    fig.add_vline(x=current, line={"color": "grey", "dash": "dot"}, annotation_text="current")
    if log_x:
        fig.update_xaxes(type="log")
    fig.update_yaxes(rangemode="tozero" if min(sweep.radii) >= 0 else "normal")
    _layout(fig, title, sweep.parameter, "certified radius (-1: none)", height=300)
    fig.update_layout(hovermode="closest", showlegend=False)
    return fig


def accuracy_runs_figure(summaries: Sequence[dict[str, Any]], paper: bool = True) -> go.Figure:
    """Certified top-k accuracy vs number of perturbed pixels for several runs (``certcore.summarize.summary_data``
    dicts), one line per run and k, model / n / alpha in the legend; with ``paper``, the paper's "Our method" rows
    (Table 1 for CIFAR10, Table 2 for ImageNet) for the same datasets and k, dashed."""
    fig = go.Figure()
    shown = set()
    for summary in summaries:
        run = summary["run"]
        for k, acc in summary["certified_accuracy"].items():
            shown.add((run["dataset"], int(k)))
            fig.add_scatter(
                x=summary["r"], y=acc, mode="lines+markers",
                name=f"top-{k} · {run['model']} · n={run['n']:,} · α={summary['alpha']:g} · {run['num_images']} images",
                hovertemplate="r = %{x}: %{y:.1%}",
            )
    for dataset, k in sorted(shown) if paper else []:
        setting = PAPER_SETTINGS[dataset]
        for row in paper_rows(dataset, k=k, method="ours"):
            fig.add_scatter(
                x=list(PERTURBED_PIXELS), y=list(row.accuracy), mode="lines+markers",
                line={"dash": "dash", "color": "grey"}, marker={"symbol": "circle-open"},
                name=f"paper Table {setting.table} · top-{k} · {setting.model} · n={setting.n:,} · "
                     f"α={setting.alpha:g} · {setting.num_images} images",
                hovertemplate="r = %{x}: %{y:.1%}",
            )
    _layout(fig, "Certified top-k accuracy", "number of perturbed pixels r", "certified top-k accuracy",
            height=520)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def enlarge(image: torch.Tensor | np.ndarray, min_side: int = 256) -> np.ndarray:
    """An image (C, H, W) tensor or (H, W, C) array in [0, 1] as uint8 (H', W', C), enlarged by an integer factor
    with nearest-neighbour copies until its shorter side is at least ``min_side`` (so 32x32 pixels stay crisp).

    >>> enlarge(torch.zeros(3, 32, 32), 256).shape
    (256, 256, 3)
    """
    arr = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    factor = max(1, -(-min_side // min(arr.shape[:2])))
    arr = np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)
    return np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)


def mosaic(images: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """uint8 tiles (count, H, W, C) laid out in a grid with ``columns`` per row and white gaps of ``gap`` pixels.

    >>> mosaic(np.zeros((5, 4, 4, 3), np.uint8), columns=3).shape
    (10, 16, 3)
    """
    count, h, w, c = images.shape
    rows = -(-count // columns)
    out = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, c), 255, np.uint8)
    for i, tile in enumerate(images):
        y, x = divmod(i, columns)
        out[y * (h + gap) : y * (h + gap) + h, x * (w + gap) : x * (w + gap) + w] = tile
    return out
