"""Results files without a model: reading and checking, certified accuracy, summaries, the paper's tables."""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import certcore.evaluation.paper
import certcore.evaluation.results
from certcore.evaluation.paper import PAPER_ROWS, paper_rows, paper_table_markdown
from certcore.evaluation.results import (
    FORMAT,
    IncompleteLineWarning,
    ResultsError,
    accuracy_table,
    certified_accuracy,
    describe_run,
    format_accuracy_table,
    list_result_files,
    most_complete_run,
    read_results,
    record_line,
    scan_results,
)
from certcore.evaluation.summarize import png_bytes, write_summary
from certcore.math.radius import certify_counts

D, E, ALPHA = 1024, 50, 0.001


def figure_in_html(html: str) -> dict:
    """The figure a plotly HTML file draws (the data and layout passed to its last ``Plotly.newPlot`` call),
    parsed: compare values, not the text, which spells non-ASCII characters as escapes without orjson."""
    decoder, pos, values = json.JSONDecoder(), html.rindex("Plotly.newPlot(") + len("Plotly.newPlot("), []
    for _ in range(3):  # the div's id, data, layout
        while html[pos] in " \t\r\n,":
            pos += 1
        value, pos = decoder.raw_decode(html, pos)
        values.append(value)
    return {"data": values[1], "layout": values[2]}


def make_record(index: int, label: int, counts: list[int], radii: dict[str, int] | None = None, **run) -> dict:
    """A complete record; radii default to the true ones from the counts."""
    record = {
        "format": FORMAT, "dataset": "cifar10", "data_source": "cifar10-test", "checkpoint": "handmade",
        "checkpoint_sha256": "0" * 64, "n": sum(counts), "e": E, "d": D, "alpha": ALPHA, "k": [1, 3], "seed": 0,
        "index": index, "label": label, "counts": counts, "image_seed": index, "top_k": [0, 1, 2],
        "elapsed_s": 1.0, "device": "cpu", "batch_size": 1000, "torch_version": "x", "certcore_version": "x",
        "data_file": "handmade",
    }
    record.update(run)
    record["radii"] = radii if radii is not None else {
        str(k): certify_counts(counts, label, D, E, k, record["alpha"]) for k in record["k"]}
    return record


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(record_line(r) for r in records))
    return path


COUNTS = [900, 60, 30, 10]  # n = 1000


@pytest.fixture
def handmade(tmp_path: Path) -> Path:
    """Four images with hand-set radii for k=1 (-1, 0, 2, 5) and k=3 (1, 3, 6, 9)."""
    radii = [(-1, 1), (0, 3), (2, 6), (5, 9)]
    return write_records(tmp_path / "run.jsonl", [
        make_record(i, 0, COUNTS, {"1": r1, "3": r3}) for i, (r1, r3) in enumerate(radii)])


def test_certified_accuracy_of_hand_made_file(handmade: Path) -> None:
    records = read_results(handmade)
    # fraction with radius >= r; radius -1 (not certified) fails even at r = 0
    assert certified_accuracy(records, 1, r_max=6).tolist() == [0.75, 0.5, 0.5, 0.25, 0.25, 0.25, 0.0]
    assert certified_accuracy(records, 3, r_max=10).tolist() == [1, 1, 0.75, 0.75, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0]
    table = accuracy_table(records, [1, 3], r_max=2)
    assert format_accuracy_table(table, "csv") == "k,r=0,r=1,r=2\n1,0.750,0.500,0.500\n3,1.000,1.000,0.750\n"
    markdown = format_accuracy_table(table, "markdown").splitlines()
    assert markdown[2] == "| top-1 | 0.750 | 0.500 | 0.500 |" and markdown[3] == "| top-3 | 1.000 | 1.000 | 0.750 |"


def test_other_k_and_alpha_are_recertified_from_counts(tmp_path: Path) -> None:
    counts = [[9000, 500, 300, 200], [6000, 3000, 900, 100], [4000, 3500, 2000, 500], [9900, 50, 30, 20]]
    records = [make_record(i, i % 2, c) for i, c in enumerate(counts)]
    for k, alpha in [(1, None), (2, None), (3, 0.05), (1, 1e-6)]:
        radii = np.array([certify_counts(r["counts"], r["label"], D, E, k, alpha or ALPHA) for r in records])
        expected = [(radii >= r).mean() for r in range(16)]
        assert certified_accuracy(records, k, alpha, r_max=15).tolist() == expected
    # stored radii are used as stored when k and alpha match (here deliberately wrong ones)
    fake = [make_record(0, 0, counts[2], {"1": 7, "3": 7})]  # truly not certified
    assert certified_accuracy(fake, 1, r_max=7)[-1] == 1.0
    assert certified_accuracy(fake, 1, alpha=0.01, r_max=7)[-1] == 0.0


def test_corrupt_middle_line_names_file_and_line(handmade: Path) -> None:
    lines = handmade.read_bytes().splitlines(keepends=True)
    handmade.write_bytes(lines[0] + b'{"index": 1, "cou\n' + b"".join(lines[2:]))
    with pytest.raises(ResultsError, match=rf"{handmade}:2: corrupt line"):
        read_results(handmade)


def test_incomplete_last_line_is_ignored_with_a_warning(handmade: Path) -> None:
    full = handmade.read_bytes()
    handmade.write_bytes(full[:-30])
    with pytest.warns(IncompleteLineWarning, match=":4: incomplete"):
        assert [r["index"] for r in read_results(handmade)] == [0, 1, 2]
    scan = scan_results(handmade)
    assert scan.incomplete_line == 4 and scan.valid_bytes == len(b"".join(full.splitlines(keepends=True)[:3]))
    handmade.write_bytes(full[:-1])  # only the final newline missing: the record is complete
    assert len(scan_results(handmade).records) == 4 and scan_results(handmade).valid_bytes == len(full)


def test_mixed_parameters_and_missing_keys_are_refused(tmp_path: Path) -> None:
    mixed = write_records(tmp_path / "mixed.jsonl", [make_record(0, 0, COUNTS), make_record(1, 0, COUNTS, alpha=0.01)])
    with pytest.raises(ResultsError, match=r"mixed.jsonl:2: written with other parameters: alpha=0.01 where line 1"):
        read_results(mixed)
    broken = make_record(0, 0, COUNTS)
    del broken["counts"]
    with pytest.raises(ResultsError, match=r"bad.jsonl:1: missing keys counts"):
        read_results(write_records(tmp_path / "bad.jsonl", [broken]))
    with pytest.raises(ResultsError, match="no such results file"):
        read_results(tmp_path / "absent.jsonl")


def test_list_result_files_skips_shards(tmp_path: Path, handmade: Path) -> None:
    for name in ("b.jsonl", "b.rank0.jsonl", "a.jsonl", "notes.txt"):
        (tmp_path / name).write_text("")
    assert [p.name for p in list_result_files(tmp_path)] == ["a.jsonl", "b.jsonl", "run.jsonl"]
    assert list_result_files(tmp_path / "missing") == []


def test_describe_run(handmade: Path) -> None:
    run = describe_run(read_results(handmade))
    assert (run["model"], run["n"], run["alpha"], run["e"], run["num_images"]) == ("handmade", 1000, ALPHA, E, 4)
    assert run["label"] == "handmade · n=1,000 · α=0.001 · e=50 · 4 images"


def test_summary_files(handmade: Path) -> None:
    written = write_summary(handmade, ks=[1, 3], r_max=6, png=False)
    assert sorted(written) == ["csv", "html", "json", "md"]
    summary = json.loads(written["json"].read_text())
    assert summary["certified_accuracy"]["1"] == [0.75, 0.5, 0.5, 0.25, 0.25, 0.25, 0.0]
    assert summary["recertified"] is False and summary["run"]["num_images"] == 4
    assert "| top-3 | 1.000 | 1.000 | 0.750 | 0.750 | 0.500 | 0.500 | 0.500 |" in written["md"].read_text()
    html = written["html"].read_text()
    offline = '<script src="https' not in html and len(html) > 1_000_000  # plotly.js embedded, no CDN
    assert offline and any(trace["name"].startswith("paper Table 1, top-3") for trace in figure_in_html(html)["data"])
    assert not list(handmade.parent.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("google-chrome") is None,
                    reason="static export needs Chrome or Chromium")
def test_summary_png(handmade: Path) -> None:
    written = write_summary(handmade, r_max=5, prefix=handmade.parent / "fig")
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_a_browser_says_what_to_install(handmade: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(handmade.parent / "no-such-chromium"))  # kaleido's browser override
    with pytest.warns(UserWarning, match="PNG export skipped: .*apt-get install chromium.*BROWSER_PATH"):
        written = write_summary(handmade, r_max=5, prefix=handmade.parent / "fig")
    assert "png" not in written and written["html"].exists()


def test_png_export_tries_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed kaleido export (a page-load race on a loaded machine) is tried once more; a second failure is raised."""
    import plotly.graph_objects as go

    outcomes = [RuntimeError("ReferenceError: kaleido_scopes is not defined"), b"\x89PNG drawn"]
    calls = []

    def to_image(self, **kwargs):
        calls.append(kwargs)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(go.Figure, "to_image", to_image)
    assert png_bytes(go.Figure()) == b"\x89PNG drawn" and len(calls) == 2
    outcomes[:] = [RuntimeError("first"), RuntimeError("second"), b"never reached"]
    with pytest.raises(RuntimeError, match="second"):
        png_bytes(go.Figure())
    assert len(outcomes) == 1


def test_paper_tables() -> None:
    assert len(PAPER_ROWS) == 14 and all(len(row.accuracy) == 5 for row in PAPER_ROWS)
    # the numbers the paper's text quotes: top-1 63.6% and top-3 78.0% at 5 pixels on CIFAR10
    assert [row.accuracy[4] for row in paper_rows("cifar10", method="ours")] == [0.636, 0.780]
    for dataset in ("cifar10", "imagenet"):  # L&F + SimuEM uses the paper's own top-1 radius: equal rows
        assert paper_rows(dataset, 1, "ours")[0].accuracy == paper_rows(dataset, 1, "levine_feizi_simuem")[0].accuracy
        assert all(list(row.accuracy) == sorted(row.accuracy, reverse=True) for row in paper_rows(dataset))
    assert "| top-3 | Our method | 0.740 | 0.730 | 0.712 | 0.698 | 0.692 |" in paper_table_markdown("imagenet")
    with pytest.raises(ValueError, match="dataset must be one of"):
        paper_rows("mnist")


@pytest.mark.parametrize("module", [certcore.evaluation.results, certcore.evaluation.paper])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_most_complete_run_picks_the_checkpoints_file_with_most_images_then_larger_n(tmp_path: Path) -> None:
    def run(name: str, images: int, checkpoint: str, scale: int = 1, **more: str) -> Path:
        counts = [c * scale for c in COUNTS]
        records = [make_record(i, 0, counts, checkpoint=checkpoint, **more) for i in range(images)]
        return write_records(tmp_path / name, records)

    files = [run("a.jsonl", 9, "other"), run("b.jsonl", 2, "mine"), run("c.jsonl", 3, "mine"),
             run("d.jsonl", 3, "mine", scale=10)]
    corrupt = tmp_path / "e.jsonl"
    corrupt.write_text("not json\n{}\n")
    assert most_complete_run([*files, corrupt], "mine") == tmp_path / "d.jsonl"  # 3 images, the larger n
    assert most_complete_run(files[:3], "mine") == tmp_path / "c.jsonl"
    assert most_complete_run(files, "absent") is None
    snapshot = run("f.jsonl", 5, "mine", checkpoint_sha256="1" * 64)  # the most images, but another file's run
    assert most_complete_run([*files, snapshot], "mine") == snapshot
    assert most_complete_run([*files, snapshot], "mine", "0" * 64) == tmp_path / "d.jsonl"
