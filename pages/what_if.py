"""What-if: certify label counts (or bounds) typed in by hand, no model, and sweep k, e, n and alpha."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from certcore import bound_curves, certified_radius, radius_limit, rounded_bounds, simuem_bounds
from certcore.engine.certificate import certificate_from_counts
from certcore.models.data import class_names
from certcore.views.explain import curve_range, e_problem, k_problem, parameter_problems
from certcore.views.figures import curves_figure, sweep_figure
from certcore.views.sweeps import (
    default_grids,
    example_counts,
    radius_vs_alpha,
    radius_vs_e,
    radius_vs_k,
    radius_vs_n,
    scale_counts,
)
from pages import _ui as ui

_cached = st.cache_data(show_spinner=False, max_entries=256)  # a sweep that does not depend on the change is reused
PRESETS = {"CIFAR10": ("cifar10", 1024, 50), "ImageNet": ("imagenet", 50176, 1000), "Custom": (None, 1024, 50)}


def _load_from_certify() -> None:
    shown = st.session_state[ui.CERTIFY_LAST]
    st.session_state["wi-loaded"] = (shown.context["dataset"], shown.sampled.counts, shown.sampled.label,
                                     shown.sampled.bounds)
    st.session_state["wi-bounds"] = shown.sampled.bounds  # the bounds that validly certify these counts
    st.session_state["wi-preset"] = "CIFAR10" if shown.context["dataset"] == "cifar10" else "ImageNet"
    st.session_state["wi-version"] = st.session_state.get("wi-version", 0) + 1
    st.session_state["wi-n"] = None  # the counts as sampled, not rescaled
    if shown.sampled.label is not None:
        st.session_state["wi-label"] = shown.sampled.label


def setting() -> tuple[str, int, list[str]]:
    """The preset, d and the class names, from a preset or typed in (e is asked next to k, alpha and n)."""
    preset = st.segmented_control("Preset", list(PRESETS), default="CIFAR10", key="wi-preset",
                                  help="The paper's settings: CIFAR10 32x32 with e = 50, ImageNet 224x224 with "
                                       "e = 1,000.") or "CIFAR10"
    dataset, d_default, _ = PRESETS[preset]
    a, c = st.columns(2)
    d = a.number_input("d: pixels", min_value=1, max_value=250_000, value=d_default, step=1, key=f"wi-d-{preset}",
                       help=ui.HELP["d"] + " At most 250,000 here (a 500x500 image).", disabled=dataset is not None)
    if dataset is None:
        classes = c.number_input("c: classes", min_value=2, max_value=1_000, value=10, step=1, key="wi-c",
                                 help="Number of labels of the base classifier (at most 1,000, as ImageNet).")
        return preset, d, [f"label {j}" for j in range(classes)]
    c.number_input("c: classes", value=len(class_names(dataset)), disabled=True, key=f"wi-c-{preset}")
    return preset, d, class_names(dataset)


def e_input(where: DeltaGenerator, preset: str) -> int:
    """e, pixels kept per ablation (one value per preset)."""
    return where.number_input("e: pixels kept", min_value=1, max_value=10_000, value=PRESETS[preset][2], step=1,
                              key=f"wi-e-{preset}", help=ui.HELP["e"] + " At most 10,000 here, to keep the page "
                              "fast.")


def counts_editor(names: list[str]) -> np.ndarray:
    """Label counts in an editable table (an example, or the last certificate's counts)."""
    loaded = st.session_state.get("wi-loaded")
    start = example_counts(len(names))
    if loaded is not None and len(loaded[1]) == len(names):
        start = np.asarray(loaded[1])
    table = st.data_editor(
        pd.DataFrame({"label": names, "count": start}),
        column_config={"label": st.column_config.TextColumn(disabled=True),
                       "count": st.column_config.NumberColumn(min_value=0, step=1, format="%d", required=True,
                                                              help="n_j: how many of the n ablated samples the "
                                                                   "base classifier labelled j.")},
        hide_index=True, height=300, key=f"wi-counts-{len(names)}-{st.session_state.get('wi-version', 0)}",
    )
    return table["count"].fillna(0).to_numpy(dtype=np.int64)


def counts_mode(preset: str, d: int, names: list[str]) -> None:
    """Editable counts, then their certificate and sweeps (a fragment: e, k, alpha, n, the bounds and the label
    rerun only it)."""
    left, right = st.columns([1, 1.3], gap="large")
    with left:
        if ui.CERTIFY_LAST in st.session_state:
            st.button("Use the counts of the last certificate (Certify page)", on_click=_load_from_certify,
                      icon=":material/input:")
        counts = counts_editor(names)
    right.markdown("Edit any count n_j in the table (the certificate below follows), or change e, k, alpha, n, "
                   "the bounds and the true label below: the bounds (Eq. 8 or anytime), the Eq. 6 curves and the "
                   "radius update, then the four sweeps.")
    if counts.sum() <= 0:
        st.error("All counts are zero: enter at least one positive count.")
        return
    certificate_view(counts, preset, d, names)


@st.fragment
@ui.shielded
def certificate_view(typed: np.ndarray, preset: str, d: int, names: list[str]) -> None:
    """e, k, alpha, n, the bounds and the true label, then the certificate of the counts and the four sweeps (all
    with those bounds). A fragment: changing one of these reruns only this part of the page, not the settings and
    the counts table above it."""
    loaded = st.session_state.get("wi-loaded")
    true_default = loaded[2] if loaded is not None and loaded[2] is not None and loaded[2] < len(names) else None
    a, b, c, f, g = st.columns([2, 1, 1, 1, 1])
    label = a.selectbox("True label (fixed in advance)", range(len(names)),
                        index=int(np.argmax(typed)) if true_default is None else true_default,
                        format_func=lambda j: names[j], key="wi-label",
                        help="Certified with confidence 1 - alpha; the top-k picked from the counts are "
                             "certified jointly with 1 - 2 alpha.")
    e = e_input(b, preset)
    k = c.number_input("k", min_value=1, value=3, step=1, key="wi-k", help=ui.HELP["k"])
    alpha = f.number_input("alpha", min_value=1e-12, max_value=0.5, value=0.001, step=0.001, format="%g",
                           key="wi-alpha", help=ui.HELP["alpha"])
    n = g.number_input("n: rescale counts to", min_value=1, value=None, step=1000, key="wi-n",
                       placeholder=f"{int(typed.sum()):,}", help=ui.HELP["n"] + " Empty: the counts as typed; "
                       "a number: the same frequencies observed in n samples.")
    bounds = bounds_input(loaded, typed)
    counts = typed if n is None else scale_counts(typed, n)
    problems = parameter_problems(d=d, e=e, k=k, n=int(counts.sum()), alpha=alpha, num_classes=len(names))
    if problems:
        for problem in problems:
            st.error(problem)
        return
    cert = certificate_from_counts(counts, d=d, e=e, k=k, alpha=alpha, label=label, bounds=bounds)
    ui.show_certificate(cert, names, key="what-if", context={"source": "what-if", "d": d, "e": e})
    sweeps(counts, label, d, e, k, alpha, len(names), bounds)


def bounds_input(loaded: tuple | None, typed: np.ndarray) -> str:
    """The bounds that certify the counts: by default SimuEM for typed counts, the last certificate's bounds while
    its counts (loaded by ``_load_from_certify``) are in the table; says so when those are an anytime run's."""
    loaded_bounds = loaded[3] if loaded is not None and np.array_equal(typed, loaded[1]) else None
    bounds = st.radio("Bounds", list(ui.BOUNDS_MODES), index=list(ui.BOUNDS_MODES).index(loaded_bounds or "simuem"),
                      format_func=ui.BOUNDS_MODES.get, key="wi-bounds", horizontal=True,
                      help="Which bounds certify the counts. Fixed n: the paper's SimuEM bounds (Eq. 8), valid only "
                           "for an n chosen before sampling. Anytime: a confidence sequence (certcore.math.anytime), "
                           "valid whenever sampling stops, however that moment was chosen; slightly wider, so the "
                           "radius can be a little smaller. Counts rescaled to another n are hypothetical with either.")
    if loaded_bounds == "anytime":
        note = st.caption if bounds == "anytime" else st.warning
        note("These counts come from an anytime run of the Certify page, whose n was decided while watching: "
             "anytime bounds certify them; fixed-n SimuEM bounds are not valid for them.")
    return bounds


def sweeps(counts: np.ndarray, label: int, d: int, e: int, k: int, alpha: float, num_classes: int,
           bounds: str) -> None:
    """Radius of the true label vs k, e, n and alpha on these counts (the shape of the paper's Figures 1-4),
    certified with ``bounds`` like the certificate above them."""
    st.subheader("Sweeps: the radius of the true label as one parameter moves")
    n = int(counts.sum())
    grid = default_grids(d, e, n, num_classes, k, alpha)
    a, b = st.columns(2)
    a.plotly_chart(sweep_figure(_cached(radius_vs_k)(counts, label, d, e, alpha, grid["k"], bounds), k,
                                "vs k (Figure 1): larger k, larger radius"), key="sweep-k")
    b.plotly_chart(sweep_figure(_cached(radius_vs_e)(counts, label, d, k, alpha, grid["e"], bounds), e,
                                "vs e (Figure 2), same counts", log_x=True), key="sweep-e")
    a.plotly_chart(sweep_figure(_cached(radius_vs_n)(counts, label, d, e, k, alpha, grid["n"], bounds), n,
                                "vs n (Figure 3), same frequencies", log_x=True), key="sweep-n")
    b.plotly_chart(sweep_figure(_cached(radius_vs_alpha)(counts, label, d, e, k, grid["alpha"], bounds), alpha,
                                "vs alpha (Figure 4)", log_x=True), key="sweep-alpha")
    st.caption("The e sweep keeps the counts fixed, so it shows what the certificate alone does with e; with a "
               "real base classifier the counts change too (fewer kept pixels, less accurate votes), which is the "
               "accuracy-robustness trade-off of the paper's Figure 2.")


def bounds_mode(preset: str, d: int, names: list[str]) -> None:
    """Eq. 3 typed in directly: a lower bound for the label, upper bounds for all the others."""
    a, b = st.columns([1, 1.3], gap="large")
    with a:
        e = e_input(a, preset)
        label = st.selectbox("Label l", range(len(names)), format_func=lambda j: names[j], key="wi-b-label",
                             help="The label whose radius Theorem 1 certifies.")
        lower, upper = simuem_bounds(example_counts(len(names)), 0.001)
        p_lower = st.number_input("Lower bound of p_l", min_value=0.0, max_value=1.0, value=float(lower[label]),
                                  step=0.01, format="%.6f", key=f"wi-b-lower-{label}",
                                  help="Eq. 3: p_l <= Pr(f(U) = l).")
        others = [j for j in range(len(names)) if j != label]
        table = st.data_editor(
            pd.DataFrame({"label": [names[j] for j in others], "upper bound": upper[others]}),
            column_config={"label": st.column_config.TextColumn(disabled=True),
                           "upper bound": st.column_config.NumberColumn(min_value=0.0, max_value=1.0,
                                                                        format="%.6f", required=True,
                                                                        help="Eq. 3: an upper bound of the "
                                                                             "probability of label j.")},
            hide_index=True, height=300, key=f"wi-b-uppers-{len(names)}-{label}",
        )
        k = st.number_input("k", min_value=1, value=3, step=1, key="wi-b-k", help=ui.HELP["k"])
    uppers = table["upper bound"].fillna(1.0).to_numpy(dtype=float)
    problems = [p for p in (e_problem(d, e), k_problem(k, len(names))) if p is not None]
    for problem in problems:
        st.error(problem)
    if problems:
        return
    radius = certified_radius(p_lower, uppers, d, e, k)
    limit = radius_limit(p_lower, uppers, d, e, k)
    (lower_rounded,), uppers_rounded = rounded_bounds([p_lower], uppers, d, e)
    with b:
        m1, m2, m3 = st.columns(3)
        m1.metric(f"Certified radius (top-{k})", "not certified" if radius < 0 else f"{radius:,}")
        m2.metric("Theorem 2 limit", "-" if limit is None else f"{limit:,}")
        m3.metric("p_l after Eq. 4", f"{lower_rounded:.6f}")
        curves = bound_curves(p_lower, uppers, d, e, k, curve_range(radius, d))
        st.plotly_chart(curves_figure(curves, radius, limit, names[label]), key="bounds-curves")
        st.caption(f"Upper bounds after Eq. 4 (rounded down to multiples of 1/C({d:,}, {e:,})): largest "
                   f"{', '.join(f'{u:.6f}' for u in sorted(uppers_rounded, reverse=True)[:k])}.")


def body() -> None:
    st.title("What-if: certify label counts")
    st.markdown("No model here: type label counts (or probability bounds) and see the bounds, the Eq. 6 curves and "
                "the certified radius update, then sweep k, e, n and alpha. Try the paper's settings or your own.")
    preset, d, names = setting()
    mode = st.segmented_control("Start from", ["Label counts", "Bounds (Eq. 3)"], default="Label counts",
                                key="wi-mode", help="Label counts n_j of n samples (bounds from Eq. 8), or the "
                                "bounds of Eq. 3 themselves: a lower bound for l, upper bounds for the others.") \
        or "Label counts"
    if mode == "Label counts":
        counts_mode(preset, d, names)
    else:
        bounds_mode(preset, d, names)


ui.guard(body)
