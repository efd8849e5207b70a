"""Streamlit pieces shared by the pages: the error guard, cached resources and the certificate view.

Only widgets and layout live here; every number comes from certcore.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch
from torch import nn

from certcore.engine.certificate import Certificate
from certcore.engine.compiled import compile_for_cpu
from certcore.models.checkpoints import CheckpointInfo, CheckpointWarning, list_checkpoints, load_checkpoint
from certcore.models.data import Sample, bundled_samples
from certcore.views.default_result import STORED, DefaultResult, checkpoint_dir, load_default
from certcore.views.explain import (
    BOUNDS_NAMES,
    bound_rows,
    certificate_json,
    counts_csv,
    curve_range,
    curves_for,
    radius_rows,
    reading,
)
from certcore.views.figures import counts_figure, curves_figure
from certcore.views.interactive import SampledCounts

log = logging.getLogger("certcore.app")
CERTIFY_LAST = "certify.last"  # session key of the Certify page's result on display (a Shown)
BOUNDS_MODES = {  # the Bounds choice of the Certify and What-if pages: a certificate's ``bounds`` in words
    "anytime": "Anytime (valid whenever you stop)",
    "simuem": "Fixed n (SimuEM, the paper's method)",
}

HELP = {
    "e": "e: pixels kept in each ablated copy (Section 2.1). The rest are ablated. Smaller e: larger radius but a "
         "less accurate base classifier. The paper uses e = 50 (CIFAR10) and e = 1,000 (ImageNet).",
    "k": "k: the smoothed classifier returns its k most likely labels; a label is certified if it provably stays "
         "among them (Theorem 1). The paper's default is k = 3.",
    "n": "n: number of ablated samples whose labels are counted (the Monte Carlo estimate of Eq. 8). Larger n: "
         "tighter bounds, slower. The paper uses n = 100,000.",
    "alpha": "alpha: allowed failure probability of the bounds (Eq. 8). The true label is certified with "
             "confidence 1 - alpha, labels picked from the counts jointly with 1 - 2 alpha. Paper: 0.001.",
    "seed": "Seed of the random ablations: the same image, checkpoint, e, n and seed give the same counts.",
    "d": "d: pixels in the image (H x W; the channels of a pixel are kept or ablated together).",
}


@dataclass(frozen=True)
class Shown:
    """A result on display: its counts, the image and inputs they came from, and how they were obtained."""

    key: str
    sampled: SampledCounts
    image: torch.Tensor
    context: dict[str, Any]
    how: str  # "sampled", "cached", "stored", "partial"


def _through_app_navigation() -> None:
    """Make sure the page runs under app.py's ``st.navigation`` (wide layout, page titles).

    A server whose first request is a link to a page (not /) runs that page in Streamlit's legacy mode for a
    ``pages/`` folder, without app.py, and stays in it until someone opens /. On a session's first run, leave
    that mode and rerun: the rerun goes through app.py, which opens the page that was asked for. (Only on the
    first run: a rerun would drop the click that triggered a later one.)
    """
    from streamlit.runtime.pages_manager import PagesManager  # no public switch for this

    first_run = not st.session_state.get("app.navigation-checked")
    st.session_state["app.navigation-checked"] = True
    if first_run and PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def shielded(part: Callable[..., None]) -> Callable[..., None]:
    """``part`` with an unexpected error shown as a short message, never as a stack trace. For a page body and
    for each fragment in it (a fragment's rerun does not pass through the page body's guard).

    Streamlit's own stop and rerun signals are BaseExceptions and pass through untouched.
    """

    @functools.wraps(part)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            part(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into a readable message
            log.exception("page failed")
            st.error(f"Something went wrong: {type(exc).__name__}: {exc}. Change the inputs or reload the page; "
                     "if it persists, please report it with the page's URL.")

    return run


def guard(body: Callable[[], None]) -> None:
    """Run a page body through app.py's navigation, with errors shown as short messages (``shielded``)."""
    _through_app_navigation()
    shielded(body)()


@st.cache_resource(show_spinner=False)
def samples(dataset: str) -> list[Sample]:
    """The bundled sample images of a dataset, loaded once per process."""
    return bundled_samples(dataset)


@st.cache_data(show_spinner=False, ttl=600)
def _checkpoints(directory: str, stamp: tuple[tuple[str, float, int], ...]) -> tuple[list[CheckpointInfo], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        found = list_checkpoints(directory)
    return found, [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]


def checkpoints() -> list[CheckpointInfo]:
    """Valid checkpoints in the app's checkpoint folder (re-read when a file there changes)."""
    return _checkpoint_scan()[0]


def skipped_checkpoints() -> list[str]:
    """Why files in the checkpoint folder were skipped (not valid certcore checkpoints), one line each."""
    return _checkpoint_scan()[1]


def _checkpoint_scan() -> tuple[list[CheckpointInfo], list[str]]:
    directory = checkpoint_dir()
    files = sorted(directory.glob("*.pt")) if directory.is_dir() else []
    stamp = tuple((p.name, p.stat().st_mtime, p.stat().st_size) for p in files)
    return _checkpoints(str(directory), stamp)


@st.cache_resource(show_spinner="Loading the base classifier (on a CPU also compiling it, once per server) ...",
                   max_entries=4)
def model(path: str, weights_sha256: str, device: str, image_shape: tuple[int, int, int]) -> nn.Module:
    """A checkpoint's model on ``device``, loaded once per process (the hash makes a replaced file reload); on the
    CPU compiled for images of ``image_shape`` (C, H, W), which samples faster (``certcore.engine.compiled``)."""
    net = load_checkpoint(path, device=device)[0]
    if torch.device(device).type != "cpu":
        return net
    return compile_for_cpu(net, image_shape)


@st.cache_resource(show_spinner=False)
def default_result(dataset: str) -> DefaultResult | None:
    """The stored default certificate of ``dataset`` (e.g. certcore/default_certificate.json), if it is one of
    ``dataset``'s."""
    stored = load_default(STORED[dataset].path)
    return stored if stored is not None and stored.dataset == dataset else None


class CountsStore:
    """Completed sampling results shared by all sessions of this process, by ``counts_key`` (bounded LRU)."""

    def __init__(self, capacity: int = 256) -> None:
        self._items: OrderedDict[str, SampledCounts] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: str) -> SampledCounts | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: str, value: SampledCounts) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def counts_store() -> CountsStore:
    """The process-wide cache of sampled counts: a certification is computed once per set of inputs."""
    return CountsStore()


def devices() -> list[str]:
    """Devices to sample on: every CUDA device first when present, then the CPU."""
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] + ["cpu"]


def threads_note() -> str:
    """A caption about CPU threads (sampling speed on a CPU depends on them)."""
    return f"{torch.get_num_threads()} CPU threads, {os.cpu_count()} cores visible"


def _radius_text(radius: int) -> str:
    return "not certified" if radius < 0 else ("1 pixel" if radius == 1 else f"{radius:,} pixels")


PAINT_GAP_S = 0.05  # measured: 50 ms lets Chromium paint the reading before it starts on the charts


def paint_first(since: float) -> None:
    """Give the browser time to paint what was just sent before the heavy elements follow.

    The browser draws the elements of a run as they arrive, and charts and tables take it 100-500 ms on a busy
    2-core machine; elements arriving right behind the reading are drawn in the same long task, so the reading
    only shows when they are done. Waiting until ``PAINT_GAP_S`` after ``since`` (a ``time.perf_counter()``
    taken when the reading was sent; work done meanwhile counts) lets the reading show first.
    """
    time.sleep(max(0.0, PAINT_GAP_S - (time.perf_counter() - since)))


def show_certificate(cert: Certificate, names: Sequence[str], *, key: str, context: dict[str, Any]) -> None:
    """The full view of a certificate: reading in words, radii, counts chart, Eq. 6 curves, bounds, export.
    The reading is sent first and given time to show before the tables and charts (``paint_first``)."""
    with st.container(border=True):
        st.markdown(reading(cert, names))
    sent = time.perf_counter()
    rows = radius_rows(cert, names)
    paint_first(sent)
    st.dataframe(
        [
            {
                "label": f"{r.name} ({r.label})",
                "role": r.role,
                f"certified radius, top-{cert.k} (Thm 1)": _radius_text(r.radius),
                "Theorem 2 limit": "-" if r.theorem2_limit is None else f"{r.theorem2_limit:,}",
                "top-1 radius (Thm 1)": _radius_text(r.top1_radius),
                "top-1, Levine & Feizi": _radius_text(r.levine_feizi_top1),
            }
            for r in rows
        ],
        hide_index=True,
    )
    st.caption(
        "Radius: largest number of pixels an attacker may change (to any values) while the label provably stays "
        f"in the top {cert.k}. Theorem 2 limit: no certificate from the same bounds can exceed it (-: its "
        "assumptions do not hold for these bounds, e.g. upper bounds summing past 1 at small n). The last two "
        "columns compare top-1 radii from the same counts: Theorem 1 with this certificate's bounds (each at "
        "alpha/c) against Levine & Feizi's (the label's bound at alpha, the runner-up bounded by 1 minus it; a "
        "fixed-n baseline, whichever bounds the certificate uses). Theorem 1 usually wins through its tighter "
        "runner-up bound; when nearly all samples vote for one label, L&F's single bound can."
    )
    labels = [r.label for r in rows]
    chosen = st.pills(
        "Eq. 6 curves for", labels, default=cert.label if cert.label is not None else labels[0],
        format_func=lambda j: names[j], key=f"{key}-curve-label",
        help="Theorem 1: the radius is the last r where the label's lower bound minus D(r) (lhs) stays above the "
             "min over t of (sum of the t smallest of the k largest other upper bounds + D(r)) / t (rhs).",
    )
    row = next(r for r in rows if r.label == chosen) if chosen in labels else rows[0]
    left, right = st.columns(2)
    left.plotly_chart(counts_figure(cert.counts, names, cert.top_k, cert.label), key=f"{key}-counts")
    curves = curves_for(cert, row.label, curve_range(row.radius, cert.d))
    right.plotly_chart(curves_figure(curves, row.radius, row.theorem2_limit, row.name), key=f"{key}-curves")
    long_name, short = BOUNDS_NAMES[cert.bounds]
    lower, upper = f"lower ({short})", f"upper ({short})"
    with st.expander(f"Bounds of every label: {long_name}, and rounded to the 1/C(d, e) grid (Eq. 4)"):
        show_all = len(names) <= 20 or st.toggle("Show all labels", key=f"{key}-all-bounds")
        st.dataframe(
            [
                {
                    "label": f"{b.name} ({b.label})",
                    "count": b.count,
                    "frequency": b.frequency,
                    lower: b.lower,
                    upper: b.upper,
                    "lower rounded (Eq. 4)": b.lower_rounded,
                    "upper rounded (Eq. 4)": b.upper_rounded,
                }
                for b in bound_rows(cert, names, None if show_all else 20)
            ],
            hide_index=True,
            column_config={c: st.column_config.NumberColumn(format="%.6f") for c in
                           ("frequency", lower, upper, "lower rounded (Eq. 4)",
                            "upper rounded (Eq. 4)")},
        )
        st.caption(
            f"Each bound is one-sided at level alpha/c = {cert.alpha / len(names):.2g}. Every label probability is "
            f"a multiple of 1/C(d, e) (C({cert.d:,}, {cert.e:,}) equally likely ablations), so Eq. 4 rounds lower "
            "bounds up and upper bounds down to that grid; for real image sizes the grid is far finer than the "
            "digits shown."
        )
    a, b = st.columns(2)
    a.download_button("Download certificate (JSON)", lambda: certificate_json(cert, context), on_click="ignore",
                      file_name="certificate.json", mime="application/json", key=f"{key}-json",
                      icon=":material/download:")
    b.download_button("Download counts (CSV)", lambda: counts_csv(cert, names), on_click="ignore",
                      file_name="counts.csv", mime="text/csv", key=f"{key}-csv", icon=":material/download:")
