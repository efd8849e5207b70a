"""Results files of ``python -m certcore.evaluate``: reading, checking and certified accuracy (no torch).

A results file is JSON lines, one complete line per certified image, appended with flush + fsync, so a crash
loses at most the image in flight and at worst leaves an incomplete last line. Every line carries the run's
parameters (``RUN_KEYS``) and the image's label counts, so any k or alpha is re-certified from the file alone
(``certcore.math.radius.certify_counts``: the SimuEM bounds of Eq. 8 then Theorem 1, the functions behind a fresh
run's ``certificate_from_counts``; tests check that both give the stored radii exactly).

Record keys: ``RUN_KEYS`` (identical on every line of a file) and ``index`` (position in the data source),
``label`` (true label), ``counts`` (label counts, summing to n), ``image_seed`` (the sampling seed of this
image, derived from ``seed`` and ``index``), ``radii`` (``{str(k): certified radius of the true label in the
top-k}``; -1 = not certified, d = trivially in the top-k), ``top_k`` (the max(k) labels with the largest
counts), ``elapsed_s``, ``device``, ``batch_size``, ``torch_version``, ``certcore_version``, ``data_file``.
Optional: ``inference`` (``"eager"`` or ``"compiled"``: which form of the model sampled, ``certcore.engine.compiled``;
absent in files written before it was recorded, which were all eager).
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from certcore.math.radius import certify_counts
from certcore.math.validation import check_alpha, check_int, check_k

FORMAT = "certcore-eval-v1"
RUN_KEYS = ("format", "dataset", "data_source", "checkpoint", "checkpoint_sha256", "n", "e", "d", "alpha", "k", "seed")
RECORD_KEYS = (*RUN_KEYS, "index", "label", "counts", "image_seed", "radii", "top_k", "elapsed_s", "device",
               "batch_size", "torch_version", "certcore_version", "data_file")
VOLATILE_KEYS = ("elapsed_s",)
SHARD_PATTERN = re.compile(r"^(?P<stem>.+)\.rank(?P<rank>\d+)\.jsonl$")

Record = dict[str, Any]


class ResultsError(ValueError):
    """A results file is corrupt, inconsistent, or was written by a run with other parameters."""


class IncompleteLineWarning(UserWarning):
    """The last line of a results file is incomplete (a write was interrupted) and is ignored or removed."""


@dataclass(frozen=True)
class ResultsScan:
    """A results file as read: its complete ``records``, the byte length ``valid_bytes`` they occupy, and
    ``incomplete_line`` (1-based number of an unreadable last line, or None)."""

    path: Path
    records: list[Record]
    valid_bytes: int
    incomplete_line: int | None


def _check_record(record: object, where: str) -> Record:
    if not isinstance(record, dict):
        raise ResultsError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise ResultsError(f"{where}: missing keys {', '.join(missing)}")
    if record["format"] != FORMAT:
        raise ResultsError(f"{where}: format is {record['format']!r}, expected {FORMAT!r}")
    counts = record["counts"]
    valid = isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
    if not valid or sum(counts) != record["n"]:
        raise ResultsError(f"{where}: counts must be non-negative integers summing to n={record['n']}")
    if len(counts) < 2 or record["n"] < 1:
        raise ResultsError(f"{where}: counts must hold at least 2 labels and n >= 1 samples, got {len(counts)} "
                           f"labels and n={record['n']}")
    label = record["label"]
    if not (isinstance(label, int) and 0 <= label < len(counts)):
        raise ResultsError(f"{where}: label must be an integer in [0, {len(counts) - 1}] (one count per class), "
                           f"got {label!r}")
    if sorted(record["radii"]) != sorted(str(k) for k in record["k"]):
        raise ResultsError(f"{where}: radii must have one entry per k in {record['k']}")
    return record


def scan_results(path: str | Path) -> ResultsScan:
    """Read a results file (missing file: no records). An unreadable *last* line is reported in
    ``incomplete_line`` (an interrupted write); a bad line anywhere else raises ``ResultsError`` naming the
    file and line, as does a record lacking keys or disagreeing with the first line's run parameters.
    ``valid_bytes`` is where the next line goes (it may lack the newline of a last line cut just before it)."""
    path = Path(path)
    if not path.exists():
        return ResultsScan(path, [], 0, None)
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":  # the file ends with a newline (or is empty)
        lines.pop()
    records: list[Record] = []
    valid_bytes = 0
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if number == len(lines):
                return ResultsScan(path, records, valid_bytes, number)
            raise ResultsError(f"{path}:{number}: corrupt line (not JSON: {exc}); only the last line of a results "
                               "file may be incomplete. Fix or delete the line by hand.") from None
        records.append(_check_record(record, f"{path}:{number}"))
        check_same_run(records[0], records[-1], f"{path}:{number}")
        if len(records[-1]["counts"]) != len(records[0]["counts"]):
            raise ResultsError(f"{path}:{number}: {len(records[-1]['counts'])} label counts where line 1 has "
                               f"{len(records[0]['counts'])}; every image of a run has one count per class")
        valid_bytes += len(raw) + 1
    return ResultsScan(path, records, valid_bytes, None)


def read_results(path: str | Path) -> list[Record]:
    """The records of a results file; an incomplete last line (run in progress or interrupted) is skipped with
    an ``IncompleteLineWarning``; a corrupt line elsewhere raises ``ResultsError`` naming file and line."""
    if not Path(path).is_file():
        raise ResultsError(f"{path}: no such results file")
    scan = scan_results(path)
    if scan.incomplete_line is not None:
        warnings.warn(f"{path}:{scan.incomplete_line}: incomplete last line ignored (write in progress or "
                      "interrupted)", IncompleteLineWarning, stacklevel=2)
    return scan.records


def run_params(record: Record) -> dict[str, Any]:
    """The parameters that must agree between all records of one file (``RUN_KEYS``)."""
    return {key: record[key] for key in RUN_KEYS}


def check_same_run(expected: Record, record: Record, where: str, reference: str = "line 1") -> None:
    """Raise ``ResultsError`` if ``record`` (found at ``where``) has other run parameters than ``expected``
    (described as ``reference`` in the message)."""
    differences = [f"{key}={record[key]!r} where {reference} has {expected[key]!r}"
                   for key in RUN_KEYS if record[key] != expected[key]]
    if differences:
        raise ResultsError(f"{where}: written with other parameters: {'; '.join(differences)}. "
                           "One results file holds one run; use another --out for other parameters.")


def list_result_files(directory: str | Path = "results") -> list[Path]:
    """The results files (``*.jsonl``) in ``directory``, sorted by name, without per-rank shard files
    (``NAME.rankR.jsonl``, which exist only until a multi-process run merges them into ``NAME.jsonl``)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.jsonl") if not SHARD_PATTERN.match(p.name))


def most_complete_run(
    files: Iterable[str | Path], checkpoint: str, checkpoint_sha256: str | None = None
) -> Path | None:
    """Of the results ``files``, the one holding the most images of ``checkpoint`` (its name without ``.pt``, as
    results record it), the larger n on a tie, the first file on a further tie; None if none holds that
    checkpoint. With ``checkpoint_sha256`` only runs of exactly that file count (not, e.g., a snapshot of its
    training saved under the same name). Files that cannot be read are passed over (the pages that list them
    say why)."""
    best: tuple[int, int] | None = None
    chosen = None
    for path in files:
        try:
            records = scan_results(path).records
        except (OSError, ResultsError):
            continue
        if (records and records[0]["checkpoint"] == checkpoint
                and checkpoint_sha256 in (None, records[0]["checkpoint_sha256"])):
            rank = (len(records), records[0]["n"])
            if best is None or rank > best:
                best, chosen = rank, Path(path)
    return chosen


def shard_files(path: str | Path) -> list[Path]:
    """The per-rank shard files ``NAME.rankR.jsonl`` next to results file ``NAME.jsonl``, by rank."""
    path = Path(path)
    found = []
    for candidate in path.parent.glob(f"{path.stem}.rank*.jsonl"):
        match = SHARD_PATTERN.match(candidate.name)
        if match and match["stem"] == path.stem:
            found.append((int(match["rank"]), candidate))
    return [p for _, p in sorted(found)]


def true_label_radius(record: Record, k: int, alpha: float | None = None) -> int:
    """The certified radius of the record's true label in the top-k at ``alpha`` (default: the stored one):
    read from the record when it holds that k and alpha, else re-certified from its counts."""
    if (alpha is None or alpha == record["alpha"]) and str(k) in record["radii"]:
        return int(record["radii"][str(k)])
    return certify_counts(record["counts"], record["label"], d=record["d"], e=record["e"], k=k,
                          alpha=record["alpha"] if alpha is None else alpha)


def certified_accuracy(records: Sequence[Record], k: int, alpha: float | None = None, r_max: int = 10) -> np.ndarray:
    """Certified top-k accuracy at r = 0..r_max: the fraction of images whose true label has radius >= r.

    An uncertified image (radius -1) fails even at r = 0. Radii are re-certified from the counts when ``k`` or
    ``alpha`` differ from what the records store.

    >>> rec = {"radii": {"1": 2}, "alpha": 0.001, "counts": [], "label": 0, "d": 1024, "e": 50}
    >>> certified_accuracy([rec, {**rec, "radii": {"1": -1}}], k=1, r_max=3).tolist()
    [0.5, 0.5, 0.5, 0.0]
    """
    k = check_k(k)
    r_max = check_int(r_max, "r_max", 0)
    if alpha is not None:
        alpha = check_alpha(alpha)
    if not records:
        raise ValueError("no records: certified accuracy needs at least one certified image")
    radii = np.array([true_label_radius(record, k, alpha) for record in records])
    return (radii[None, :] >= np.arange(r_max + 1)[:, None]).mean(axis=1)


def accuracy_table(
    records: Sequence[Record], ks: Iterable[int], alpha: float | None = None, r_max: int = 10
) -> dict[int, np.ndarray]:
    """``certified_accuracy`` for each k: rows of the paper's Tables 1-2 (rows k, columns #perturbed pixels)."""
    return {int(k): certified_accuracy(records, k, alpha, r_max) for k in ks}


def describe_run(records: Sequence[Record]) -> dict[str, Any]:
    """What produced ``records``, for legends and captions: model, dataset, n, alpha, e, d, k, seed, images."""
    if not records:
        raise ValueError("no records to describe")
    first = records[0]
    params = run_params(first)
    images = len({record["index"] for record in records})
    label = f"{first['checkpoint']} · n={first['n']:,} · α={first['alpha']:g} · e={first['e']} · {images} images"
    return {
        "model": first["checkpoint"],
        "checkpoint_sha256": first["checkpoint_sha256"],
        "dataset": first["dataset"],
        "data_source": first["data_source"],
        "n": first["n"],
        "alpha": first["alpha"],
        "e": first["e"],
        "d": first["d"],
        "k": list(first["k"]),
        "seed": first["seed"],
        "num_images": images,
        "devices": sorted({record["device"] for record in records}),
        "params": params,
        "label": label,
    }


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_line(record: Record) -> bytes:
    """One record as a complete JSON line (keys sorted, so equal records give equal bytes)."""
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


def format_accuracy_table(table: dict[int, np.ndarray], style: str = "markdown") -> str:
    """An ``accuracy_table`` in the paper's layout (rows: k, columns: #perturbed pixels r = 0, 1, ...) as
    ``markdown`` or ``csv`` text, accuracies with three decimals.

    >>> print(format_accuracy_table({1: np.array([0.5, 0.25])}, "csv"), end="")
    k,r=0,r=1
    1,0.500,0.250
    """
    if style == "markdown":
        return accuracy_rows_markdown({f"top-{k}": acc for k, acc in table.items()})
    if style != "csv":
        raise ValueError(f"style must be 'markdown' or 'csv', got {style!r}")
    width = len(next(iter(table.values())))
    rows = [[str(k), *(f"{a:.3f}" for a in acc)] for k, acc in table.items()]
    return "\n".join(",".join(cells) for cells in [["k", *(f"r={r}" for r in range(width))], *rows]) + "\n"


def accuracy_rows_markdown(
    rows: Mapping[str, Sequence[float]], corner: str = "certified accuracy \\ #perturbed pixels"
) -> str:
    """Named rows of certified accuracy at r = 0, 1, ... as a markdown table (three decimals), ``corner`` in the
    top-left cell.

    >>> print(accuracy_rows_markdown({"top-1": [0.5, 0.25]}, corner="k"), end="")
    | k | 0 | 1 |
    | --- | --- | --- |
    | top-1 | 0.500 | 0.250 |
    """
    width = len(next(iter(rows.values())))
    header = [corner, *(str(r) for r in range(width))]
    lines = [header, ["---"] * len(header), *([name, *(f"{a:.3f}" for a in acc)] for name, acc in rows.items())]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"
