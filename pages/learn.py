"""Learn: the method in short sections, and a toy image small enough to enumerate everything exactly."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from certcore.views.lesson import (
    COLOUR_NAMES,
    ablation_mosaic,
    certify_toy,
    lookup_classifier,
    tightness,
    toy_image,
)
from pages import _ui as ui

TOY_NAMES = ("cat", "dog", "fox", "owl")


def _pixels(r: int) -> str:
    return "1 pixel" if r == 1 else f"{r} pixels"


def method() -> None:
    """The method for a student, one idea per section."""
    st.markdown(
        "**1. Ablate.** Keep e of the image's d pixels, chosen uniformly at random, and mark the rest as "
        "*ablated* (Levine & Feizi). A base classifier f, trained on such inputs, labels the ablated copy. The "
        "**smoothed classifier** g returns the k labels that f gives most often over all C(d, e) equally likely "
        "ablations: their probabilities p_1, ..., p_c. (The app's ImageNet f is the ImageNet-pretrained "
        "EfficientNet-Lite0, Apache-2.0, adapted to ablated inputs by distillation on 800 ImageNet images rather than "
        "trained on ImageNet's training set, so it is weaker than the paper's ResNet-50.)\n\n"
        "**2. Why that is robust.** If an attacker changes r pixels, only the ablations that keep one of them "
        "can change. Their share is D(r) = 1 - C(d-r, e)/C(d, e), small when e is small: so each p_j moves by "
        "at most D(r).\n\n"
        "**3. Estimate with confidence (Eq. 8).** From n sampled ablations with label counts n_j, SimuEM gives a "
        "lower bound for the label l and upper bounds for all others, each a one-sided Clopper-Pearson bound at "
        "level alpha/c (B is the Beta quantile):"
    )
    st.latex(r"\underline{p_l} = B\!\left(\tfrac{\alpha}{c};\, n_l,\, n-n_l+1\right), \qquad "
             r"\overline{p}_j = B\!\left(1-\tfrac{\alpha}{c};\, n_j+1,\, n-n_j\right) \quad (j \ne l)")
    st.markdown("**4. Round to the grid (Eq. 4).** Every true probability is a multiple of 1/C(d, e), so a lower "
                "bound can be rounded up and an upper bound down, for free:")
    st.latex(r"\underline{p_l}' = \frac{\lceil \underline{p_l}\binom{d}{e} \rceil}{\binom{d}{e}}, \qquad "
             r"\overline{p}_j' = \frac{\lfloor \overline{p}_j\binom{d}{e} \rfloor}{\binom{d}{e}}")
    st.markdown(
        "**5. The certified radius (Theorem 1, Eq. 6).** Let a_1, ..., a_k be the k other labels with the largest "
        "upper bounds, smallest first, and p'(Y_t) the sum of the t smallest of them. Label l stays in the top k "
        "for every change of at most r_l pixels, where"
    )
    st.latex(r"r_l = \max r \;\; \text{s.t.} \;\; \underline{p_l}' - \Big(1 - \tfrac{\binom{d-r}{e}}{\binom{d}{e}}"
             r"\Big) \;>\; \min_{t=1}^{k} \frac{\overline{p}'_{\Upsilon_t} + \Big(1 - \tfrac{\binom{d-r}{e}}"
             r"{\binom{d}{e}}\Big)}{t}")
    st.markdown(
        "The left side is the least l can keep; each term on the right is what t rivals can reach, on average, "
        "if they take everything the change frees up. Both sides move monotonically in r, so a binary search "
        "finds r_l.\n\n"
        "**6. Almost tight (Theorem 2).** From the same bounds, no method can certify more than r_l + 1 pixels "
        "(exactly r_l for k = 1): a base classifier consistent with the bounds exists that loses l. The toy below "
        "builds one.\n\n"
        "**7. How sure?** The bounds hold with probability at least 1 - alpha for a label fixed before sampling "
        "(the true label); for labels picked from the same counts, such as the observed top k, all 2c bounds must "
        "hold at once: 1 - 2 alpha."
    )


def toy_controls() -> tuple[tuple[int, ...], int, int, int, int, float]:
    """The toy's image (3x3 binary, edited as a grid) and parameters."""
    left, right = st.columns([1, 2], gap="large")
    with left:
        st.markdown("**Image** (tick = white pixel)")
        start = pd.DataFrame([[True, False, True], [False, True, False], [True, True, False]],
                             columns=["left", "middle", "right"])
        grid = st.data_editor(start, hide_index=True, key="toy-image", column_config={
            c: st.column_config.CheckboxColumn(c, width="small", help="Tick: a white pixel (1), else black (0).")
            for c in start.columns})
        image = tuple(int(v) for v in grid.to_numpy(dtype=bool).ravel())
        st.image(toy_image(image), caption="d = 9 pixels")
    with right:
        a, b = st.columns(2)
        e = a.slider("e: pixels kept", 1, 8, 2, key="toy-e", help=ui.HELP["e"])
        classes = b.slider("c: classes", 2, len(TOY_NAMES), 3, key="toy-c",
                           help="Number of labels of the toy base classifier.")
        k = a.radio("k", list(range(1, classes)), horizontal=True, key="toy-k", help=ui.HELP["k"])
        favourite = b.slider("How often f says 'cat'", 0.0, 1.0, 0.75, 0.05, key="toy-fav",
                             help="The base classifier is a random lookup table: each ablation gets 'cat' with "
                                  "this probability, else a label that depends on its kept pixels or a random one.")
        seed = a.number_input("Classifier seed", 0, 10_000, 1, key="toy-seed",
                              help="Draws a different random base classifier.")
    return image, e, k, classes, seed, favourite


def toy() -> None:
    """Everything enumerated: all ablations, exact probabilities, the radius, a brute-force check, tightness."""
    st.header("Toy: a 3x3 image, everything exact")
    st.markdown("With d = 9 the smoothed classifier can be computed exactly: no sampling, so the bounds are the "
                "probabilities themselves and alpha plays no role. We certify the label 'cat'.")
    image, e, k, classes, seed, favourite = toy_controls()
    names = TOY_NAMES[:classes]
    f = lookup_classifier(classes, seed, favourite)
    cert = certify_toy(f, image, e, k, classes, label=0)
    total = sum(cert.counts)
    legend = ", ".join(f"{n} {c}" for n, c in zip(names, COLOUR_NAMES, strict=False))
    st.image(ablation_mosaic(f, image, e), caption=f"All C(9, {e}) = {total} ablations, each equally likely; the "
             f"frame shows the label f gives it: {legend}")
    st.dataframe(pd.DataFrame({
        "label": names,
        "ablations": cert.counts,
        "exact probability": [f"{c}/{total}" for c in cert.counts],
        "≈": [c / total for c in cert.counts],
    }), hide_index=True, column_config={"≈": st.column_config.NumberColumn(format="%.4f")})
    if cert.radius < 0:
        st.warning(f"'cat' is not certified in the top {k}: its probability does not beat the rivals' even with no "
                   "pixel changed. Raise 'How often f says cat', raise k or lower e.")
        return
    reach = cert.radius + 1
    limit = "-" if cert.limit is None else cert.limit
    at_next = "is beaten too." if cert.attack_next is not None else "still holds (it is not the worst case)."
    st.success(f"Theorem 1: 'cat' stays in the top {k} for any change of up to **{_pixels(cert.radius)}** (Theorem 2 "
               f"limit: {limit}). Brute force over all {cert.checked} images with 1 to {reach} changed pixels: no "
               f"change of at most {_pixels(cert.radius)} pushes 'cat' out ✔; with {reach} pixels this classifier "
               f"{at_next}")
    worst = tightness(f, cert, classes)
    if worst is not None:
        st.markdown(f"**Tightness.** A different base classifier, with *exactly the same* probabilities at this "
                    f"image, changed only where ablations keep one of the first {worst.pixels} pixels (regions A "
                    "and B of the proof):")
        st.dataframe(pd.DataFrame({"label": names, "before": [f"{p}" for p in worst.before],
                                   f"after changing {worst.pixels} pixels": [f"{p}" for p in worst.after]}),
                     hide_index=True)
        outcome = "is pushed out of" if worst.label_out else "stays in"
        st.markdown(f"'cat' {outcome} the top {k} at {worst.pixels} changed pixels. No sampling could tell the two "
                    "classifiers apart, so no certificate from these probabilities can promise more.")


def body() -> None:
    st.title("Learn: certified top-k robustness by randomized ablation")
    method()
    toy()
    st.caption("Source: Jia, Wang, Cao, Liu & Gong, ICLR 2022, Sections 2-3 and Appendix B.")


ui.guard(body)
