"""For the app benchmarks: ``streamlit run app.py`` on loopback with the repository's checkpoints, and Debian's
Chromium through Playwright (as tests/test_browser.py, which has its own pytest fixtures)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) that process ``pid`` has used so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    """/proc/loadavg's three load averages, e.g. '7.12 6.80 6.50'."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextlib.contextmanager
def app_server(timeout: float = 180.0) -> Iterator[tuple[str, int]]:
    """The app on a free loopback port (results in a temporary folder); yields its URL and process id once
    healthy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        env = {**os.environ, "CERTCORE_RESULTS": str(Path(tmp) / "results")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(OSError):
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start:\n{(Path(tmp) / 'server.log').read_text()}")
                time.sleep(0.5)
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser (Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
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
