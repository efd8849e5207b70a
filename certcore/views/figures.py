"""What the app draws: plotly figures of certificates, Eq. 6 curves and what-if sweeps, and images enlarged for
display (certified-accuracy figures, which the command line draws too, are in ``certcore.evaluation.plots``).
Nothing here computes a bound or a radius, and nothing imports streamlit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from certcore.evaluation.plots import figure_layout
from certcore.math.radius import BoundCurves
from certcore.views.sweeps import Sweep

if TYPE_CHECKING:
    import torch

TOP_K_COLOUR = "#d1495b"
OTHER_COLOUR = "#8d99ae"
REST_COLOUR = "#d9dde3"
TRUE_COLOUR = "#00798c"
LHS_COLOUR = "#00798c"
RHS_COLOUR = "#d1495b"


def _vline(x: float, text: str, colour: str, dash: str, top: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A vertical line across the plot at ``x`` and its label (a shape and an annotation)."""
    shape = {"type": "line", "x0": x, "x1": x, "yref": "paper", "y0": 0, "y1": 1,
             "line": {"color": colour, "dash": dash, "width": 1}}
    note = {"x": x, "yref": "paper", "y": 1 if top else 0, "text": text, "showarrow": False,
            "xanchor": "right" if top else "left", "yanchor": "top" if top else "bottom"}
    return shape, note


def counts_figure(
    counts: Sequence[int],
    names: Sequence[str],
    top_k: Sequence[int],
    label: int | None = None,
    max_bars: int = 20,
) -> go.Figure:
    """Bar chart of label counts, largest first: top-k labels highlighted, the true label outlined and marked.

    With many classes only the ``max_bars`` largest counts are drawn, plus the true label and every top-k label,
    and one last bar for all the other labels together.
    """
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable").tolist()
    shown = [j for j in order if j in set(order[:max_bars]) | set(top_k) | ({label} if label is not None else set())]
    hidden = len(counts) - len(shown)
    colours = [TOP_K_COLOUR if j in top_k else OTHER_COLOUR for j in shown]
    x = [f"{names[j]} ★" if j == label else names[j] for j in shown]
    y = [int(counts[j]) for j in shown]
    about = [f"label {j}" for j in shown]
    if hidden:
        x.append(f"all {hidden:,} others")
        y.append(int(counts.sum()) - sum(y))
        about.append(f"{hidden:,} labels together")
        colours.append(REST_COLOUR)
    outline = [TRUE_COLOUR if j == label else colours[i] for i, j in enumerate(shown)] + colours[len(shown):]
    bar = go.Bar(
        x=x,
        y=y,
        marker={"color": colours,
                "line": {"color": outline, "width": [4 if j == label else 0 for j in shown] + [0] * (hidden > 0)}},
        customdata=[[a, f"{v / counts.sum():.2%}"] for a, v in zip(about, y, strict=True)],
        hovertemplate="%{x} (%{customdata[0]}): %{y:,} samples, %{customdata[1]}<extra></extra>",
    )
    x_title = f"top-{len(top_k)} in red" + (", true label ★" if label is not None else "") + (
        f"; the {hidden:,} smaller labels in one bar" if hidden else "")
    return go.Figure(bar, layout=figure_layout(f"Label counts, n = {int(counts.sum()):,}", x_title, "count", height=460,
                                         hovermode="closest", showlegend=False))


def curves_figure(curves: BoundCurves, radius: int, limit: int | None, label_name: str) -> go.Figure:
    """Both sides of Eq. 6 over r: the lower bound of the label (lhs) against the min over t of the t-terms
    (rhs), each t-term dashed; the certified radius is the last r with lhs > rhs (marked), Theorem 2's limit
    dotted."""
    r = curves.r
    traces = [
        go.Scatter(x=r, y=curves.lhs, name=f"lhs: p'({label_name}) - D(r)", line={"color": LHS_COLOUR, "width": 3},
                   hovertemplate="%{y:.6f}"),
        go.Scatter(x=r, y=curves.rhs, name="rhs: min over t", line={"color": RHS_COLOUR, "width": 3},
                   hovertemplate="%{y:.6f}"),
    ]
    traces += [
        go.Scatter(x=r, y=term, name=f"t = {t}: (p'(Y_{t}) + D(r)) / {t}", line={"dash": "dash", "width": 1},
                   hovertemplate="%{y:.6f}", visible=True if len(curves.terms) <= 5 else "legendonly")
        for t, term in enumerate(curves.terms, start=1)
    ]
    marks = [_vline(radius, f"radius {radius}", LHS_COLOUR, "solid", top=True)] if radius >= 0 else []
    if limit is not None:
        marks.append(_vline(limit, f"Theorem 2 limit {limit}", "grey", "dot", top=False))
    return go.Figure(traces, layout=figure_layout(
        f"Eq. 6 for '{label_name}': certified while lhs > rhs", "r = pixels changed", "probability", height=460,
        shapes=[shape for shape, _ in marks], annotations=[note for _, note in marks]))


def sweep_figure(sweep: Sweep, current: float, title: str, log_x: bool = False) -> go.Figure:
    """Radius against one parameter (-1: not certified), the point at the current value marked."""
    traces = [go.Scatter(x=sweep.values, y=sweep.radii, mode="lines+markers", name="radius",
                         hovertemplate=f"{sweep.parameter} = %{{x:,}}: radius %{{y}}<extra></extra>")]
    if current in sweep.values:
        traces.append(go.Scatter(
            x=[current], y=[sweep.radii[sweep.values.index(current)]], mode="markers", name="current",
            marker={"size": 14, "symbol": "diamond", "color": TOP_K_COLOUR},
            hovertemplate=f"current {sweep.parameter} = %{{x:,}}: radius %{{y}}<extra></extra>"))
    layout = figure_layout(title, sweep.parameter, "certified radius (-1: none)", height=300, hovermode="closest",
                     showlegend=False)
    layout["xaxis"]["type"] = "log" if log_x else "linear"
    layout["yaxis"]["rangemode"] = "tozero" if min(sweep.radii) >= 0 else "normal"
    return go.Figure(traces, layout=layout)


def enlarge(image: torch.Tensor | np.ndarray, min_side: int = 256) -> np.ndarray:
    """An image (C, H, W) tensor or (H, W, C) array in [0, 1] as uint8 (H', W', C), enlarged by an integer factor
    with nearest-neighbour copies until its shorter side is at least ``min_side`` (so 32x32 pixels stay crisp).

    >>> import torch
    >>> enlarge(torch.zeros(3, 32, 32), 256).shape
    (256, 256, 3)
    """
    import torch  # here, not at the top: the figures need no torch (results and their figures stay light)

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
