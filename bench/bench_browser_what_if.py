"""What-if latency in a real browser: from a change of k, alpha, n or e to the new radius on screen.

``python bench/bench_browser_what_if.py [--ref PATH] [--repeats 10]`` starts ``streamlit run app.py`` on a loopback
port (headless; killed at the end), opens it in Debian's Chromium through Playwright and, on the What-if page,
types new values of k, alpha, n and e (each followed by Enter) for the CIFAR10 and ImageNet presets; on the Certify
page it re-certifies the stored default counts with a new k or alpha (the form, submitted with Enter). Each change is
timed in the page's own clock, from the Enter key's event to

* ``text``: the reading with the expected radius (computed here with certcore from the same counts) drawn by the
  new script run (the element no longer marked stale) and painted,
* ``idle``: the script run over (the app root's ``data-test-script-state`` back to ``notRunning``) and painted.

With ``--ref PATH`` (a git worktree of older code) a second server runs that code on another port, and every
change is made on both, interleaved, so that both see the same machine load: the table then gives the ratio
new / ref of the medians. Median and 90th percentile per (page, preset, parameter) go to a markdown table and a
JSON file under bench/results/ (``--out``), with the machine and its load average (/proc/loadavg) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certcore.engine.certificate import certificate_from_counts  # noqa: E402
from certcore.models.data import class_names  # noqa: E402
from certcore.views.default_result import load_default  # noqa: E402
from certcore.views.explain import reading  # noqa: E402
from certcore.views.sweeps import example_counts, scale_counts  # noqa: E402
from tests.streamlit_server import CHROMIUM, CHROMIUM_ARGS, Server, streamlit_server  # noqa: E402

SLOW = 180_000  # ms: a first script run imports torch and plotly on a loaded 2-core machine
CHANGE_TIMEOUT = 60_000  # ms for one change to show its radius and go idle

# Values typed one after the other (each differs from the one before; the last restores the page's default),
# after one untimed warm-up change to WARM_UP.
WHAT_IF_VALUES: dict[str, dict[str, list[Any]]] = {
    "CIFAR10": {
        "k": [4, 2, 5, 1, 6, 2, 4, 5, 2, 3],
        "alpha": [0.01, 0.0001, 0.05, 1e-05, 0.002, 0.02, 1e-06, 0.005, 0.0005, 0.001],
        "n": [50000, 200000, 20000, 1000000, 30000, 500000, 10000, 150000, 70000, 100000],
        "e": [25, 80, 40, 100, 30, 60, 20, 70, 45, 50],
    },
    "ImageNet": {
        "k": [4, 2, 5, 1, 6, 2, 4, 5, 2, 3],
        "alpha": [0.01, 0.0001, 0.05, 1e-05, 0.002, 0.02, 1e-06, 0.005, 0.0005, 0.001],
        "n": [50000, 200000, 20000, 1000000, 30000, 500000, 10000, 150000, 70000, 100000],
        "e": [500, 1500, 800, 2000, 600, 1200, 700, 1800, 900, 1000],
    },
}
WARM_UP = {"k": 7, "alpha": 0.003, "n": 40000, "e": {"CIFAR10": 35, "ImageNet": 1100}}
PRESETS = {"CIFAR10": ("cifar10", 1024, 50), "ImageNet": ("imagenet", 50176, 1000)}
WHAT_IF_FIELDS = {"k": "k", "alpha": "alpha", "n": "n: rescale counts to", "e": "e: pixels kept"}
CERTIFY_VALUES = {"k": [4, 2, 5, 1, 6, 2, 4, 5, 2, 3],
                  "alpha": [0.01, 0.0001, 0.05, 1e-05, 0.002, 0.02, 1e-06, 0.005, 0.0005, 0.001]}
CERTIFY_FIELDS = {"k": "k: certify the top-k", "alpha": "alpha: failure probability"}

# Installed in the page before each change (replacing the previous one): records, in performance.now()
# milliseconds, the Enter key (t0), the first moment the app left its idle state, the script run's start, the
# expected reading in the DOM un-stale (dom) and painted (text), the paint after the run ended (idle), and the
# browser's long tasks (over 50 ms). A MutationObserver sees every DOM change, so no poll interval blurs the times.
OBSERVE = """
expected => {
  if (window.__benchStop) window.__benchStop();
  const b = window.__bench = {t0: null, left: null, running: null, dom: null, text: null, idle: null, long: []};
  const tasks = new PerformanceObserver(list => list.getEntries().forEach(t => b.long.push([t.startTime,
                                                                                          t.duration])));
  tasks.observe({type: 'longtask'});
  const norm = s => s.replace(/\\s+/g, ' ').trim();
  const painted = key => requestAnimationFrame(() => setTimeout(() => {
    if (b[key] === null) b[key] = performance.now();
  }));
  const shown = () => [...document.querySelectorAll('[data-testid=stMarkdown]')].some(m => {
    const box = m.closest('[data-testid=stElementContainer]');
    return box && box.getAttribute('data-stale') !== 'true' && norm(m.textContent).includes(expected);
  });
  let textSeen = false, idleSeen = false;
  const check = records => {
    if (b.t0 === null) return;
    const root = document.querySelector('[data-testid=stApp]');  // looked up each time: React may replace it
    const state = root && root.getAttribute('data-test-script-state');
    // A whole run can be processed in one task: then only the records show that the state changed at all.
    const moved = records.some(r => r.attributeName === 'data-test-script-state');
    if (b.left === null && (state !== 'notRunning' || moved)) b.left = performance.now();
    if (b.left === null) return;
    if (b.running === null && state === 'running') b.running = performance.now();
    if (!textSeen && shown()) { textSeen = true; b.dom = performance.now(); painted('text'); }
    if (textSeen && !idleSeen && state === 'notRunning') { idleSeen = true; painted('idle'); }
  };
  const enter = ev => { if (ev.key === 'Enter' && b.t0 === null) b.t0 = ev.timeStamp; };
  document.addEventListener('keydown', enter, true);
  const dom = new MutationObserver(check);
  dom.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
  window.__benchStop = () => {
    tasks.disconnect(); dom.disconnect(); document.removeEventListener('keydown', enter, true);
  };
}
"""


def server(code: Path, log: Path) -> AbstractContextManager[Server]:
    """``streamlit run app.py`` of the code at ``code`` (its own checkpoints, no CERTCORE_* overrides)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CERTCORE_")}
    return streamlit_server(code, {**env, "PYTHONPATH": str(code)}, log, start_timeout=SLOW / 1000)


def _plain(markdown: str) -> str:
    """A reading as the browser shows it: bold markers gone, whitespace collapsed."""
    return " ".join(markdown.replace("**", "").split())


def what_if_expected(preset: str, values: dict[str, Any]) -> str:
    """The reading the What-if page shows for the preset's example counts at ``values`` (k, alpha, n, e)."""
    dataset, d, _ = PRESETS[preset]
    names = class_names(dataset)
    counts = example_counts(len(names))
    if values["n"] is not None:
        counts = scale_counts(counts, values["n"])
    label = int(counts.argmax())
    cert = certificate_from_counts(counts, d=d, e=values["e"], k=values["k"], alpha=values["alpha"], label=label)
    return _plain(reading(cert, names))


def certify_expected(values: dict[str, Any]) -> str:
    """The reading the Certify page shows for the stored default counts at ``values`` (k, alpha)."""
    default = load_default()
    assert default is not None, "no stored default certificate (certcore/default_certificate.json)"
    return _plain(reading(default.sampled.certificate(values["k"], values["alpha"]), class_names(default.dataset)))


def wait_idle(page: Any) -> None:
    """Until the script run is over and every plotly chart is drawn."""
    time.sleep(0.3)
    page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]", timeout=SLOW)
    charts = page.locator("[data-testid=stPlotlyChart]")
    for i in range(charts.count()):
        charts.nth(i).locator(".main-svg").first.wait_for(timeout=SLOW)


def timed_change(page: Any, field_name: str, value: Any, expected: str) -> dict[str, float]:
    """Type ``value`` into the number input named ``field_name``, press Enter, and return the milliseconds to
    the expected reading (``text``) and to the end of the run (``idle``), both painted; also to the script run's
    start, to the reading in the DOM (before paint), and the browser's long-task time before the reading showed."""
    box = page.get_by_role("spinbutton", name=field_name, exact=True)
    box.fill(str(value))
    page.evaluate(OBSERVE, expected)
    box.press("Enter")
    try:
        page.wait_for_function("() => window.__bench.idle !== null", timeout=CHANGE_TIMEOUT, polling=50)
    except Exception:
        shown = page.evaluate("[...document.querySelectorAll('[data-testid=stMarkdown]')].map(m => m.innerText)")
        raise RuntimeError(f"{field_name} = {value}: no reading {expected!r} after {CHANGE_TIMEOUT} ms; state "
                           f"{page.evaluate('window.__bench')}; markdown on the page: {shown}") from None
    b = page.evaluate("window.__bench")
    time.sleep(0.2)  # let the charts' own drawing finish before the next change
    busy = sum(duration for start, duration in b["long"] if b["t0"] <= start < b["text"])
    return {"text": b["text"] - b["t0"], "idle": b["idle"] - b["t0"], "run_started": b["left"] - b["t0"],
            "dom": b["dom"] - b["t0"], "long_tasks_before_text": busy}


@dataclass
class Site:
    """One server and a browser tab on it."""

    name: str
    url: str
    page: Any = None
    times: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    profiles: dict[str, dict[str, float]] = field(default_factory=dict)


def open_what_if(site: Site, browser: Any, preset: str) -> None:
    """A fresh tab on the What-if page with ``preset`` chosen, idle."""
    if site.page is not None:
        site.page.close()
    site.page = browser.new_page(viewport={"width": 1400, "height": 900})
    site.page.goto(f"{site.url}/what_if", timeout=SLOW)
    site.page.get_by_text("Sweeps: the radius").wait_for(timeout=SLOW)
    wait_idle(site.page)
    if preset != "CIFAR10":
        site.page.get_by_role("radio", name=preset, exact=True).click()
        site.page.get_by_text(f"of the {PRESETS[preset][1]:,} pixels").wait_for(timeout=SLOW)  # in the reading
        wait_idle(site.page)


def open_certify(site: Site, browser: Any) -> None:
    """A fresh tab on the Certify page showing the stored default certificate, idle."""
    if site.page is not None:
        site.page.close()
    site.page = browser.new_page(viewport={"width": 1400, "height": 900})
    site.page.goto(site.url, timeout=SLOW)
    site.page.get_by_text("Eq. 6 curves for").wait_for(timeout=SLOW)
    wait_idle(site.page)


def run_series(sites: list[Site], case: str, changes: list[tuple[str, Any, str]], js_profile: bool = False) -> None:
    """Make each change (field, value, expected reading) on every site in turn; one warm-up change first. With
    ``js_profile``, Chromium's sampling profiler runs in each tab over the timed changes (``js_self_time``)."""
    sessions = {}
    for i, (field_name, value, expected) in enumerate(changes):
        for site in sites if i % 2 == 0 else sites[::-1]:  # alternate who goes first
            if i == 1 and js_profile:
                sessions[site.name] = site.page.context.new_cdp_session(site.page)
                sessions[site.name].send("Profiler.enable")
                sessions[site.name].send("Profiler.start")
            t = timed_change(site.page, field_name, value, expected)
            if i > 0:  # the first change warms caches and the browser's code paths
                site.times.setdefault(case, []).append(t)
                print(f"  {site.name:3s} {case:28s} {field_name[:12]:12s} = {value!s:8s} text {t['text']:6.0f} ms  "
                      f"idle {t['idle']:6.0f} ms", flush=True)
    for site in sites:
        if site.name in sessions:
            site.profiles[case] = js_self_time(sessions[site.name].send("Profiler.stop")["profile"])
            print(f"  {site.name:3s} {case}: browser self time, ms: {site.profiles[case]}", flush=True)


def js_self_time(profile: dict[str, Any], top: int = 8) -> dict[str, float]:
    """Milliseconds of a CPU profile by script file (a built-in such as getBoundingClientRect by its name; idle,
    program and garbage collector as Chromium names them), the ``top`` largest."""
    where = {}
    for node in profile["nodes"]:
        frame = node["callFrame"]
        where[node["id"]] = frame["url"].rsplit("/", 1)[-1] or frame["functionName"]
    total: dict[str, float] = {}
    for sample, delta in zip(profile["samples"], profile["timeDeltas"], strict=True):
        total[where[sample]] = total.get(where[sample], 0.0) + delta / 1000
    return {name: round(ms) for name, ms in sorted(total.items(), key=lambda item: -item[1])[:top]}


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (linear interpolation between order statistics)."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] if len(values) > 1 \
        else values[0]


def summarise(sites: list[Site]) -> list[dict[str, Any]]:
    """Median and 90th percentile of each site's times per case, with ratios to the reference."""
    rows = []
    for case in sites[0].times:
        row: dict[str, Any] = {"case": case, "changes": len(sites[0].times[case])}
        for site in sites:
            for what in ("text", "idle"):
                values = [t[what] for t in site.times[case]]
                row[f"{site.name}_{what}_median_ms"] = statistics.median(values)
                row[f"{site.name}_{what}_p90_ms"] = quantile(values, 0.9)
        if len(sites) == 2:
            for what in ("text", "idle"):
                row[f"ratio_{what}_median"] = row[f"new_{what}_median_ms"] / row[f"ref_{what}_median_ms"]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The summary as a markdown table (milliseconds, median / 90th percentile)."""
    head = ["case", "changes"]
    for name in names:
        head += [f"{name}: to radius, median / p90", f"{name}: to idle, median / p90"]
    if len(names) == 2:
        head += ["new/ref median, radius", "new/ref median, idle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["case"], str(row["changes"])]
        for name in names:
            cells += [f"{row[f'{name}_{w}_median_ms']:.0f} / {row[f'{name}_{w}_p90_ms']:.0f} ms"
                      for w in ("text", "idle")]
        if len(names) == 2:
            cells += [f"{row['ratio_text_median']:.2f}", f"{row['ratio_idle_median']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def what_if_changes(preset: str, parameter: str, repeats: int) -> list[tuple[str, Any, str]]:
    """The changes of one parameter on the What-if page: (field, value, expected reading); others at defaults."""
    _, _, e_default = PRESETS[preset]
    values = WHAT_IF_VALUES[preset][parameter]
    warm_up = WARM_UP["e"][preset] if parameter == "e" else WARM_UP[parameter]
    values = [warm_up, *values[: repeats - 1], values[-1]]
    state = {"k": 3, "alpha": 0.001, "n": None, "e": e_default}
    return [(WHAT_IF_FIELDS[parameter], v, what_if_expected(preset, {**state, parameter: v})) for v in values]


def certify_changes(parameter: str, repeats: int) -> list[tuple[str, Any, str]]:
    """The changes of k or alpha in the Certify page's form: (field, value, expected reading)."""
    default = load_default()
    assert default is not None
    state = {"k": default.k, "alpha": default.alpha}
    values = CERTIFY_VALUES[parameter]
    values = [WARM_UP[parameter], *values[: repeats - 1], values[-1]]
    return [(CERTIFY_FIELDS[parameter], v, certify_expected({**state, parameter: v})) for v in values]


def machine() -> dict[str, Any]:
    """CPU model, cores and load average, for the record."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, help="a checkout of older code to time side by side (e.g. a git worktree)")
    parser.add_argument("--repeats", type=int, default=10, help="timed changes per parameter (at most 10)")
    parser.add_argument("--parameters", nargs="+", default=["k", "alpha", "n", "e"], choices=list(WHAT_IF_FIELDS))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--no-certify", action="store_true", help="skip the Certify page")
    parser.add_argument("--js-profile", action="store_true", help="where the browser's time goes (CPU profile)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "what_if_browser")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    repeats = max(1, min(10, args.repeats))
    before = machine()
    print(f"{before['cpu']}, {before['cores']} cores, load average {' '.join(before['loadavg'])}", flush=True)
    codes = [("new", ROOT)] + ([("ref", args.ref.resolve())] if args.ref else [])
    started = time.monotonic()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        sites = [Site(name, stack.enter_context(server(code, Path(tmp) / f"{name}.log")).url)
                 for name, code in codes]
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        for preset in args.presets:
            for site in sites:
                open_what_if(site, browser, preset)
            for parameter in args.parameters:
                run_series(sites, f"What-if {preset}, {parameter}", what_if_changes(preset, parameter, repeats),
                           args.js_profile)
        if not args.no_certify:
            for parameter in ("k", "alpha"):
                for site in sites:
                    open_certify(site, browser)
                run_series(sites, f"Certify (stored), {parameter}", certify_changes(parameter, repeats),
                           args.js_profile)
    after = machine()
    rows = summarise(sites)
    names = [site.name for site in sites]
    table = markdown_table(rows, names)
    header = (f"{before['cpu']}, {before['cores']} cores, Python {before['python']}; load average (1/5/15 min) "
              f"{' '.join(before['loadavg'])} before, {' '.join(after['loadavg'])} after; "
              f"{time.monotonic() - started:.0f} s in all.")
    print(header + "\n\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(header + "\n\n" + table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"machine_before": before, "machine_after": after, "command": " ".join(sys.argv), "summary": rows,
         "times_ms": {site.name: site.times for site in sites},
         "browser_self_time_ms": {site.name: site.profiles for site in sites}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
