"""Certified accuracy on a test set: curves from results files, the paper's Tables 1-2, and a small live run."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from certcore.engine.sampling import default_batch_size
from certcore.evaluation.evaluate import EvaluationError, open_image_source
from certcore.evaluation.paper import PAPER_SETTINGS
from certcore.evaluation.plots import accuracy_runs_figure
from certcore.evaluation.results import ResultsError, list_result_files, read_results
from certcore.evaluation.summarize import summary_data
from certcore.models.data import EVALUATION_SIZE, INPUT_GEOMETRY
from certcore.views.default_result import (
    app_defaults,
    default_checkpoint_first,
    default_run,
    evaluate_command,
    results_dir,
)
from certcore.views.interactive import ProgressReporter, evaluate_images
from pages import _ui as ui

NAMES = {"cifar10": "CIFAR10", "imagenet": "ImageNet"}
CPU_N = {dataset: app_defaults(dataset)["n"] for dataset in NAMES}  # the Certify page's n, sized for a CPU
PIXELS = {dataset: INPUT_GEOMETRY[dataset][1] ** 2 for dataset in NAMES}  # d: the side of the model's crop, squared
FILES = "acc-files"
NEW_FILE = "acc-new-file"  # a live run's file, to select on the next run


def curves(files: list[Path]) -> None:
    """Pick results files, k values and alpha; plot and tabulate certified accuracy."""
    names = [f.name for f in files]
    if st.session_state.get(NEW_FILE) in names:
        st.session_state[FILES] = sorted({*st.session_state.get(FILES, []), st.session_state.pop(NEW_FILE)})
    if FILES not in st.session_state:  # first visit: the default checkpoint's most complete run
        main = default_run(files)
        st.session_state[FILES] = [main.name] if main else names[:1]
    chosen = st.multiselect("Results files", names, key=FILES,
                            help=f"JSON-lines files of `python -m certcore.evaluate` in `{results_dir()}`.")
    a, b, c = st.columns(3)
    ks = a.multiselect("k", list(range(1, 11)), default=[1, 3], key="acc-k",
                       help=ui.HELP["k"] + " Radii for a k the run did not store are re-certified from its counts.")
    alpha = b.number_input("alpha (empty: each run's own)", min_value=1e-12, max_value=0.5, value=None,
                           format="%g", key="acc-alpha", help=ui.HELP["alpha"] + " Another alpha re-certifies the "
                           "stored counts; no sampling.")
    r_max = c.slider("Largest r shown", 1, 50, 10, key="acc-rmax",
                     help="The number of perturbed pixels r runs from 0 to this (the paper's tables: 1 to 5).")
    if not chosen or not ks:
        st.info("Choose at least one results file and one k.")
        return
    summaries = []
    for name in chosen:
        try:
            records = read_results(results_dir() / name)
        except ResultsError as exc:
            st.error(f"{name} cannot be read: {exc}")
            continue
        if not records:
            st.warning(f"{name} holds no certified image yet.")
            continue
        summaries.append(summary_data(records, sorted(ks), alpha, r_max))
    if not summaries:
        return
    st.plotly_chart(accuracy_runs_figure(summaries), key="acc-figure")
    st.dataframe(
        [{"run": s["run"]["label"], "k": int(k), **{f"r={r}": acc[r] for r in s["r"]}}
         for s in summaries for k, acc in s["certified_accuracy"].items()],
        hide_index=True, column_config={f"r={r}": st.column_config.NumberColumn(format="%.3f")
                                        for r in range(r_max + 1)},
    )
    paper = " and ".join(f"{s.model} on {NAMES[s.dataset]} with e = {s.e:,}, n = {s.n:,}, {s.num_images} images"
                         for s in PAPER_SETTINGS.values())
    st.caption("Certified top-k accuracy at r: the fraction of test images whose true label provably stays in the "
               "top k when any r pixels change (radius >= r, confidence 1 - alpha per image). Dashed: the paper's "
               f"own numbers ({paper}), which a small model or run will not reach.")


def live_run() -> None:
    """A handful of test images certified now, with progress, into a results file shown above on completion."""
    infos = ui.checkpoints()
    if not infos:
        st.info("No checkpoint to evaluate: see the Certify page for how to train one.")
        return
    with st.form("acc-live"):
        a, b, c = st.columns(3)
        name = a.selectbox("Checkpoint", default_checkpoint_first(i.name for i in infos), key="acc-ckpt",
                           help="The base classifier f, a CIFAR10 or an ImageNet one; the run certifies its dataset's "
                                "images with the e it was trained with (d = "
                                + ", ".join(f"{PIXELS[ds]:,} pixels on {shown}" for ds, shown in NAMES.items()) + ").")
        images = b.number_input("Test images", 1, 50, 5, key="acc-images",
                                help="The first images of the checkpoint's evaluation set: on CIFAR10 the test images "
                                     f"0, 2, 4, ... (the {EVALUATION_SIZE} even indices up to "
                                     f"{2 * EVALUATION_SIZE - 2}), on ImageNet the bundled samples "
                                     "(certcore/samples/imagenet).")
        n = c.number_input("n per image", 1, 1_000_000, 1000, step=1000, key="acc-n",
                           help=ui.HELP["n"] + " The Certify page's n for a CPU: " + ", ".join(
                               f"{CPU_N[ds]:,} on {shown}" for ds, shown in NAMES.items()) + ".")
        alpha = a.number_input("alpha", 1e-12, 0.5, 0.001, step=0.001, format="%g", key="acc-live-alpha",
                               help=ui.HELP["alpha"])
        seed = b.number_input("seed", 0, 2**53 - 1, 0, key="acc-seed", help=ui.HELP["seed"])
        device = c.selectbox("Device", ui.devices(), key="acc-device", help=ui.threads_note())
        go = st.form_submit_button("Evaluate", type="primary", icon=":material/play_arrow:")
    if not go:
        return
    info = next(i for i in infos if i.name == name)
    dataset = info.metadata["dataset"]
    out = results_dir() / f"live_{name}_n{n}_a{alpha:g}_s{seed}.jsonl"
    try:
        indices = list(open_image_source(dataset).default_indices[:images])
    except (OSError, ValueError) as exc:
        st.error(f"The {dataset} test images are not available here: {exc}")
        return
    bar = st.progress(0.0, text=f"Certifying {images} images into {out.name} ...")
    reporter = ProgressReporter(lambda fraction, text: bar.progress(fraction, text=text), unit="images")
    st.button("Stop", icon=":material/stop_circle:", help="Stops after the current image; finished images stay "
              "in the file (a later run with the same parameters continues from there).")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        evaluate_images(info.path, dataset, indices, out, n=n, alpha=alpha, ks=[1, 2, 3], seed=seed,
                        batch_size=default_batch_size(device), device=device,
                        progress=reporter)
    except EvaluationError as exc:
        st.error(f"The evaluation could not run: {exc}")
        return
    st.session_state[NEW_FILE] = out.name
    reporter.resume_interruption()
    st.rerun()


def body() -> None:
    st.title("Certified accuracy on a test set")
    st.markdown("For each test image the true label's certified radius is computed; the certified top-k accuracy "
                "at r is the share of images certified for at least r changed pixels (the paper's Tables 1-2 and "
                "Figures 1-4).")
    files = list_result_files(results_dir())
    if files:
        curves(files)
    else:
        paper_n = PAPER_SETTINGS["cifar10"].n
        st.info(f"No results files in `{results_dir()}` yet. Compute one with a command below, or run a small "
                f"evaluation now. CIFAR10 at the paper's n = {paper_n:,} takes hours on a CPU, minutes on a GPU; "
                f"the ImageNet classifier is far slower per sample, so its command uses n = {CPU_N['imagenet']:,} "
                "(the Certify page's CPU default).")
        st.code(evaluate_command("cifar10", paper_n), language="bash")
        st.code(evaluate_command("imagenet", CPU_N["imagenet"]), language="bash")
    st.subheader("Run a small evaluation now")
    live_run()


ui.guard(body)
