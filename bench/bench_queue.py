"""Benchmark: many sessions sampling at once on the CPU, each on its own (today's path) or through one shared
``SamplingQueue`` (certcore.engine.queue), against one session alone.

Each "session" is a thread, as Streamlit runs sessions: it certifies one bundled CIFAR-10 image (its own image
and seed) with the default checkpoint, compiled as the app compiles it, n samples. All sessions of a trial start
together (a barrier); aggregate samples/s = sessions x n / seconds until the last one finished. Variants:

* ``own threads``: every session calls ``sample_counts`` (its default 2 workers, torch's default threads each);
* ``queue W x T``: every session calls ``SamplingQueue(W, threads=T).sample_counts``: W workers, T torch
  threads each (T unset: torch's default), one queue per trial, shut down after it.

Trials run in rounds, the variant order rotating from round to round so that load from other processes on a
shared machine hits all alike; reported are the median over rounds of aggregate samples/s, its ratio to the
median of ``own threads`` with one session (the single session the issue's goal compares with), and the
sessions' finish times. On a machine shared with other processes, wall-clock rates also measure how much of the
CPU the variant's threads win from the others (more runnable threads, a larger share), so samples per CPU-second
of this process are reported too: the efficiency, what a dedicated server would turn into samples/s. Every
session's counts are checked equal to its counts alone (``own threads``, 1 worker).

    python bench/bench_queue.py [--n 3000] [--sessions 1 6 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certcore.engine.compiled import compile_for_cpu  # noqa: E402
from certcore.engine.queue import SamplingQueue  # noqa: E402
from certcore.engine.sampling import describe_device, sample_counts  # noqa: E402
from certcore.models.checkpoints import load_checkpoint  # noqa: E402
from certcore.models.data import bundled_samples  # noqa: E402
from certcore.views.default_result import DEFAULT_CHECKPOINT, checkpoint_dir  # noqa: E402

Sampler = Callable[[int], np.ndarray]  # session index -> its counts


def trial(sessions: int, sample: Sampler) -> tuple[float, float, list[float], list[np.ndarray]]:
    """Run ``sessions`` threads at once; returns the seconds until the last finished, the CPU seconds the
    process used meanwhile (all threads), each session's finish time and counts."""
    barrier = threading.Barrier(sessions + 1)
    finish: list[float] = [0.0] * sessions
    counts: list[np.ndarray] = [np.zeros(0)] * sessions
    errors: list[BaseException] = []

    def session(i: int) -> None:
        barrier.wait()
        try:
            counts[i] = sample(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finish[i] = time.perf_counter()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu
    if errors:
        raise errors[0]
    return max(finish) - started, cpu, sorted(f - started for f in finish), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 6, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queues", nargs="+", default=["2x1", "1x2", "2x"],
                        help="queue variants WxT (T empty: torch's default threads)")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    eager, meta = load_checkpoint(checkpoint_dir() / DEFAULT_CHECKPOINT)
    samples = bundled_samples("cifar10")
    images = [samples[i % len(samples)].image for i in range(max(args.sessions))]
    model = compile_for_cpu(eager, tuple(images[0].shape))
    e, n = meta["e"], args.n

    def own_threads(i: int) -> np.ndarray:
        return sample_counts(model, images[i], e, n, seed=i, num_classes=10).counts

    def queued(spec: str) -> Callable[[int], tuple[Sampler, Callable[[], None]]]:
        workers, _, threads = spec.partition("x")

        def start(_sessions: int) -> tuple[Sampler, Callable[[], None]]:
            queue = SamplingQueue(int(workers), threads=int(threads) if threads else None)

            def sample(i: int) -> np.ndarray:
                return queue.sample_counts(model, images[i], e, n, seed=i, num_classes=10, owner=f"session {i}").counts

            def stop() -> None:
                queue.close()
                torch.set_num_threads(default_threads)  # a queue's workers set torch's process-wide default

            return sample, stop

        return start

    variants: dict[str, Callable[[int], tuple[Sampler, Callable[[], None]]]] = {
        "own threads": lambda _s: (own_threads, lambda: None),
        **{f"queue {spec}": queued(spec) for spec in args.queues},
    }
    alone = [sample_counts(model, images[i], e, n, seed=i, num_classes=10, workers=1).counts
             for i in range(max(args.sessions))]
    for variant in variants.values():  # warm-up: new thread counts make Inductor compile again, once
        sample, stop = variant(1)
        try:
            trial(1, sample)
        finally:
            stop()
    loads = [Path("/proc/loadavg").read_text().split()[:3]]
    rates: dict[tuple[str, int], list[float]] = {}
    per_cpu: dict[tuple[str, int], list[float]] = {}
    finishes: dict[tuple[str, int], list[list[float]]] = {}
    mismatches = 0
    names = list(variants)
    for r in range(args.rounds):
        for sessions in args.sessions:
            for name in names[r % len(names) :] + names[: r % len(names)]:
                sample, stop = variants[name](sessions)
                try:
                    seconds, cpu, finish, counts = trial(sessions, sample)
                finally:
                    stop()
                mismatches += sum(not np.array_equal(counts[i], alone[i]) for i in range(sessions))
                rates.setdefault((name, sessions), []).append(sessions * n / seconds)
                per_cpu.setdefault((name, sessions), []).append(sessions * n / cpu)
                finishes.setdefault((name, sessions), []).append(finish)
                print(f"round {r}: {name}, {sessions} sessions: {sessions * n / seconds:,.0f} samples/s "
                      f"(last finished after {seconds:.1f} s), "
                      f"{sessions * n / cpu:,.0f} samples per CPU-second", flush=True)
        loads.append(Path("/proc/loadavg").read_text().split()[:3])

    solo = statistics.median(rates[("own threads", 1)])
    solo_cpu = statistics.median(per_cpu[("own threads", 1)])
    print(f"\n{DEFAULT_CHECKPOINT} compiled (compile_for_cpu), e = {e}, {describe_device(torch.device('cpu'))}, "
          f"torch {torch.__version__}; n = {n:,} per session, batch 100, {args.rounds} rounds; "
          f"/proc/loadavg (1, 5, 15 min) before and after each round: {loads}\n")
    print("| variant | sessions | aggregate samples/s, median (all rounds) | ratio to one session, own threads | "
          "samples per CPU-second, median (all rounds) | ratio | finish times, s (median round: first / median / "
          "last) |")
    print("|---|---|---|---|---|---|---|")
    for sessions in args.sessions:
        for name in names:
            got, cpu = rates[(name, sessions)], per_cpu[(name, sessions)]
            middle = sorted(range(len(got)), key=got.__getitem__)[len(got) // 2]
            finish = finishes[(name, sessions)][middle]
            print(f"| {name} | {sessions} | {statistics.median(got):,.0f} ({', '.join(f'{x:,.0f}' for x in got)}) | "
                  f"{statistics.median(got) / solo:.2f} | {statistics.median(cpu):,.0f} "
                  f"({', '.join(f'{x:,.0f}' for x in cpu)}) | {statistics.median(cpu) / solo_cpu:.2f} | "
                  f"{finish[0]:.1f} / {statistics.median(finish):.1f} / {finish[-1]:.1f} |")
    runs = sum(args.sessions) * args.rounds * len(names)
    print(f"\ncounts differing from the session's counts alone: {mismatches} of {runs}")


if __name__ == "__main__":
    main()
