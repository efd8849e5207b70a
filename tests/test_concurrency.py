"""Many visitors at once: two app sessions certify at the same time on one process with one shared cached model.

Through ``AppTest`` (the real Certify page, its form and its ``st.cache_resource`` model): each session is first run
alone, then both together in two threads. While both are sampling at once through the shared queue (a barrier in
the progress callback, after each has a batch counted, proves it: if one session held a lock the other needed, the
barrier would time out), a third session loads the What-if page. Then the two are released and must end with
exactly the counts they had alone.

``AppTest`` keeps each run's state in process globals (``Runtime._instance`` and a patched ``config.get_option``
that turns on ``global.appTest``); a run ending in one thread resets them under a run still going in another, whose
widgets then stop recording their values (a ``KeyError`` on a selectbox's widget id). So the runs here take turns
(``ScriptTurns``), except while a session is inside sampling, which is the overlap this test is about.

On a GPU, sessions take turns batch by batch (``certcore.engine.sampling.device_lock``), so the device holds one batch's
activations at a time. No GPU is here: the lock's wiring and mutual exclusion are tested by handing CPU sampling the
lock a GPU would get; see README "Reliability and security".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
import torch
from streamlit import config
from streamlit.runtime import Runtime
from streamlit.testing.v1 import AppTest

import certcore.engine.sampling
from certcore.engine.ablation import ablate
from certcore.engine.queue import Job, SamplingQueue
from certcore.models.checkpoints import save_checkpoint
from certcore.models.data import bundled_samples, class_names

REPO = Path(__file__).resolve().parents[1]
N, BATCH, SEEDS = 100, 25, (11, 12)


def spread_model(image: torch.Tensor) -> torch.nn.Module:
    """A ResNet-20 whose vote varies with the ablation: its last layer is re-centred on the features of ablated
    copies of ``image``, so two seeds give different counts (an untrained model votes for one class)."""
    from certcore.models.architectures import build_model

    torch.manual_seed(3)
    model = build_model("resnet20", 10).eval()
    feats: list[torch.Tensor] = []
    hook = model.net.linear.register_forward_hook(lambda _m, inputs, _o: feats.append(inputs[0]))
    with torch.no_grad():
        model(ablate(image.expand(64, -1, -1, -1), 50, torch.Generator().manual_seed(0)))
        hook.remove()
        weight = 0.3 * torch.randn(10, 64) / (feats[0].std(0) + 1e-6)
        model.net.linear.weight.copy_(weight)
        model.net.linear.bias.copy_(-(weight @ feats[0].mean(0)))
    return model


class ScriptTurns:
    """One ``AppTest`` run at a time, except where a run steps aside (while it waits inside sampling)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # a plain Lock: the script thread releases what its caller's thread took

    def wrap(self, real_run: Any) -> Any:
        def run_in_turn(at: AppTest, *args: Any, **kwargs: Any) -> AppTest:
            with self.lock:
                return real_run(at, *args, **kwargs)
        return run_in_turn

    @contextmanager
    def step_aside(self) -> Iterator[None]:
        """Let other runs go; on return, put back this run's Streamlit globals that they reset."""
        saved = Runtime._instance, config.get_option
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()
            Runtime._instance, config.get_option = saved


@pytest.fixture()
def app_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    image_id = bundled_samples("cifar10")[1].id
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    save_checkpoint(folder / "shared.pt", spread_model(bundled_samples("cifar10")[1].image),
                    {"dataset": "cifar10", "arch": "resnet20", "e": 50, "num_classes": 10,
                     "class_names": class_names("cifar10"), "encoding": "levine-feizi-2c"})
    monkeypatch.setenv("CERTCORE_CHECKPOINTS", str(folder))
    monkeypatch.setattr(config, "get_option", config.get_option)  # interleaved AppTest runs may leave theirs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two sessions share 2 busy cores; more threads would only oversubscribe them
    st.cache_data.clear()
    st.cache_resource.clear()
    yield image_id
    st.cache_data.clear()
    st.cache_resource.clear()
    torch.set_num_threads(threads)


def certify_session(image_id: str, seed: int) -> AppTest:
    """One visitor: opens the app, picks the image, sets n, seed and batch size in the form, presses Certify."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["image"] = image_id
    at.run()
    at.number_input(key="n").set_value(N)
    at.number_input(key="seed").set_value(seed)
    next(w for w in at.number_input if w.label == "Batch size").set_value(BATCH)
    at.form_submit_button[0].click()
    at.run()
    return at


def counts_of(at: AppTest) -> tuple[int, ...]:
    assert not at.exception and not at.error, [x.value for x in (*at.exception, *at.error)]
    shown = at.session_state["certify.last"]
    assert shown.how == "sampled" and shown.sampled.samples == N and shown.sampled.run.seed in SEEDS
    return shown.sampled.counts


def test_two_sessions_certify_at_once_with_one_cached_model(app_world: str, monkeypatch) -> None:
    real_submit, real_result = SamplingQueue.submit, Job.result
    models: list[int] = []
    both_inside = threading.Event()
    barrier = threading.Barrier(2, action=both_inside.set)
    release = threading.Event()
    concurrent = threading.Event()  # set: the two-session phase (sampling runs in AppTest's script threads)
    turns = ScriptTurns()

    def submit(self, model, image, **kwargs):  # the page samples through the process's shared queue
        models.append(id(model))
        return real_submit(self, model, image, **kwargs)

    def result(self, timeout=None, *, progress=None, **kwargs):
        first = [True]

        def hooked(done: int, total: int, *counts: Any) -> Any:
            if concurrent.is_set() and first[0] and done > 0:
                first[0] = False
                with turns.step_aside():
                    barrier.wait(timeout=60)  # both sessions have a first batch classified and counted
                    release.wait(timeout=60)
            return progress(done, total, *counts) if progress is not None else None

        return real_result(self, timeout, progress=hooked, **kwargs)

    monkeypatch.setattr(SamplingQueue, "submit", submit)
    monkeypatch.setattr(Job, "result", result)
    monkeypatch.setattr(AppTest, "_run", turns.wrap(AppTest._run))

    alone, seconds_alone = {}, {}
    for seed in SEEDS:
        started = time.perf_counter()
        alone[seed] = counts_of(certify_session(app_world, seed))
        seconds_alone[seed] = time.perf_counter() - started
    assert alone[SEEDS[0]] != alone[SEEDS[1]], "the seeds must matter, or the comparison below proves nothing"

    from pages import _ui  # the module the page scripts share

    _ui.counts_store.clear()  # else the app rightly answers from its process-wide store of finished counts
    together: dict[int, AppTest] = {}
    errors: list[BaseException] = []

    def visitor(seed: int) -> None:
        try:
            together[seed] = certify_session(app_world, seed)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=visitor, args=(seed,)) for seed in SEEDS]
    concurrent.set()
    started = time.perf_counter()
    for t in threads:
        t.start()
    assert both_inside.wait(timeout=90), f"the two sessions never sampled at the same time: {errors}"
    what_if_started = time.perf_counter()
    what_if = AppTest.from_file(str(REPO / "pages" / "what_if.py"), default_timeout=60).run()
    what_if_seconds = time.perf_counter() - what_if_started
    still_sampling = not release.is_set() and all(t.is_alive() for t in threads)
    release.set()
    for t in threads:
        t.join(timeout=120)
    seconds_together = time.perf_counter() - started

    assert not errors, errors
    assert still_sampling  # the What-if page loaded while both certifications were in flight
    assert not what_if.exception and not what_if.error and what_if.title[0].value.startswith("What-if")
    assert {seed: counts_of(together[seed]) for seed in SEEDS} == alone
    assert len(models) == 4 and len(set(models)) == 1  # one cached model object served every run
    print(f"\nalone: {seconds_alone} s; together: {seconds_together:.1f} s; What-if loaded in "
          f"{what_if_seconds:.1f} s while both sampled")


def test_gpu_lock_is_one_per_device_and_none_on_cpu() -> None:
    lock = certcore.engine.sampling.device_lock(torch.device("cuda", 0))
    assert lock is certcore.engine.sampling.device_lock(torch.device("cuda", 0))
    assert lock is not certcore.engine.sampling.device_lock(torch.device("cuda", 1))
    assert not isinstance(certcore.engine.sampling.device_lock(torch.device("cpu")), type(lock))


def test_sessions_sharing_a_device_lock_take_turns_per_batch_and_keep_their_counts(monkeypatch) -> None:
    """Two threads sample under the lock a GPU would give them: never two batches at once, one lock turn per
    batch, and each thread's counts equal its single-thread counts for its seed."""
    image = bundled_samples("cifar10")[0].image
    model = spread_model(image)
    lock, inside, most_inside, turns = threading.Lock(), [0], [0], []

    class Recording:
        def __enter__(self) -> None:
            lock.acquire()
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
            turns.append(threading.get_ident())
            time.sleep(0.002)  # widen the window in which a missing lock would show as overlap

        def __exit__(self, *exc: object) -> None:
            inside[0] -= 1
            lock.release()

    def sample(seed: int) -> tuple[int, ...]:  # workers=1: one batch at a time, the path a GPU takes
        counts = certcore.engine.sampling.sample_counts(model, image, 50, N, seed=seed, batch_size=BATCH,
                                                        workers=1).counts
        return tuple(counts.tolist())

    alone = {seed: sample(seed) for seed in SEEDS}
    monkeypatch.setattr(certcore.engine.sampling, "device_lock", lambda _device: Recording())
    turns.clear()
    together: dict[int, tuple[int, ...]] = {}
    threads = [threading.Thread(target=lambda s=seed: together.__setitem__(s, sample(s))) for seed in SEEDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone
    assert most_inside[0] == 1
    assert len(turns) == len(SEEDS) * (N // BATCH)
