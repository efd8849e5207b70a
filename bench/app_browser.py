"""For the app benchmarks: ``streamlit run app.py`` on loopback with the repository's checkpoints, and Debian's
Chromium through Playwright (as tests/test_browser.py, which has its own pytest fixtures)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.streamlit_server import CHROMIUM, CHROMIUM_ARGS, Server, streamlit_server

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) that process ``pid`` has used so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    """/proc/loadavg's three load averages, e.g. '7.12 6.80 6.50'."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextlib.contextmanager
def app_server(timeout: float = 180.0) -> Iterator[Server]:
    """The app on a free loopback port (results in a temporary folder); yields its URL and process id once
    healthy."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CERTCORE_RESULTS": str(Path(tmp) / "results")}
        with streamlit_server(ROOT, env, Path(tmp) / "server.log", start_timeout=timeout) as running:
            yield running


@contextlib.contextmanager
def idle_priority_chromium() -> Iterator[Path]:
    """An executable for Playwright's ``executable_path`` that starts ``CHROMIUM`` at the lowest CPU priority, the
    SCHED_IDLE policy (``chrt --idle 0``; every process and thread of the browser inherits it), so that it only
    gets CPU nothing else wants: on a load test's one machine the browsers then stand in for visitors' browsers,
    which run on the visitors' own machines. ``nice -n 19`` alone does not hold: Chromium sets its threads'
    niceness itself (run as root here: to 0, some to -8), but it leaves the scheduling policy alone."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chromium"
        path.write_text(f'#!/bin/sh\nexec chrt --idle 0 {shlex.quote(str(CHROMIUM))} "$@"\n')
        path.chmod(0o755)
        yield path


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser (Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def link(url: str, **params: object) -> str:
    """The Certify page's address with these query parameters (a link with parameters runs at once)."""
    return url + "/?" + "&".join(f"{key}={value}" for key, value in params.items())


def sampled_note(page: object, timeout_ms: float) -> str:
    """Wait for the certificate's caption of a finished run ('... sampled now in 12 s (830 samples/s) ...')."""
    note = page.get_by_text(re.compile(r"sampled now in"))
    note.first.wait_for(timeout=timeout_ms)
    return note.first.inner_text()
