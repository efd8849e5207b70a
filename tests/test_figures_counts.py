"""The counts chart: at most ``max_bars`` labels (plus the top-k and the true label) and one bar for all others."""

from __future__ import annotations

from certcore.views.figures import counts_figure
from certcore.views.sweeps import example_counts


def test_many_labels_show_the_largest_and_one_bar_for_the_rest():
    counts = example_counts(1000)
    names = [f"class {j}" for j in range(1000)]
    bar = counts_figure(counts, names, top_k=(0, 1, 2), label=500, max_bars=20).data[0]
    assert len(bar.x) == 22  # the 20 largest, the true label (far down), all others
    assert bar.x[20] == "class 500 ★" and bar.x[21] == "all 979 others"
    assert sum(bar.y) == int(counts.sum())
    assert bar.y[21] == int(counts.sum()) - int(counts[:20].sum()) - int(counts[500])


def test_few_labels_have_no_rest_bar():
    bar = counts_figure([5, 3, 2], ["a", "b", "c"], top_k=(0,), label=None).data[0]
    assert list(bar.x) == ["a", "b", "c"] and list(bar.y) == [5, 3, 2]
