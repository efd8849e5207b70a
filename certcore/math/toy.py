"""Tiny worlds where randomized ablation is enumerated exactly (the tests' ground truth and the Learn page's toy).

An image is a tuple of d pixel values from a small alphabet. An ablated input is the same tuple with ``None`` at
every ablated position; all C(d, e) ablations are equally likely. A base classifier is any function from ablated
inputs to labels, here usually a lookup table, so the smoothed classifier's label probabilities are exact
fractions and every perturbation of up to r pixels can be tried by brute force.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

Pixels = tuple[int, ...]
Ablated = tuple[int | None, ...]
BaseClassifier = Callable[[Ablated], int]


def ablations(image: Pixels, e: int) -> Iterator[Ablated]:
    """Every ablated input of ``image`` that keeps exactly ``e`` pixels (C(d, e) of them, each equally likely)."""
    d = len(image)
    for kept in itertools.combinations(range(d), e):
        keep = set(kept)
        yield tuple(v if i in keep else None for i, v in enumerate(image))


def label_counts(f: BaseClassifier, image: Pixels, e: int, num_classes: int) -> list[int]:
    """How many of the C(d, e) ablations of ``image`` the base classifier sends to each label."""
    counts = [0] * num_classes
    for a in ablations(image, e):
        counts[f(a)] += 1
    return counts


def label_probabilities(f: BaseClassifier, image: Pixels, e: int, num_classes: int) -> list[Fraction]:
    """The smoothed classifier's exact label probabilities p_j for ``image``."""
    counts = label_counts(f, image, e, num_classes)
    total = sum(counts)
    return [Fraction(c, total) for c in counts]


def in_top_k(probabilities: Sequence[Fraction], label: int, k: int) -> bool:
    """Whether ``label`` is certainly in the top-k: its probability exceeds the k-th largest of the others (Eq. 2)."""
    others = sorted((p for j, p in enumerate(probabilities) if j != label), reverse=True)
    return len(others) < k or probabilities[label] > others[k - 1]


def perturbations(image: Pixels, max_pixels: int, alphabet: Sequence[int]) -> Iterator[Pixels]:
    """Every image that differs from ``image`` in 1..max_pixels positions, values from ``alphabet``."""
    for r in range(1, max_pixels + 1):
        for positions in itertools.combinations(range(len(image)), r):
            choices = [[v for v in alphabet if v != image[i]] for i in positions]
            for values in itertools.product(*choices):
                changed = list(image)
                for i, v in zip(positions, values, strict=True):
                    changed[i] = v
                yield tuple(changed)


def find_attack(
    f: BaseClassifier, image: Pixels, e: int, num_classes: int, label: int, k: int, max_pixels: int,
    alphabet: Sequence[int],
) -> Pixels | None:
    """A perturbation of at most ``max_pixels`` pixels that pushes ``label`` out of the exact top-k, or None."""
    for changed in perturbations(image, max_pixels, alphabet):
        if not in_top_k(label_probabilities(f, changed, e, num_classes), label, k):
            return changed
    return None


@dataclass
class LookupClassifier:
    """A random base classifier: a lookup table from ablated inputs to labels, filled lazily and reproducibly.

    Each new ablated input gets label 0 with probability ``favourite``, else with probability ``structure`` a label
    computed from its kept pixels (their sum modulo the number of classes, so perturbations matter), else a
    uniformly random label.
    """

    num_classes: int
    seed: int
    favourite: float = 0.5
    structure: float = 0.5

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._table: dict[Ablated, int] = {}

    def __call__(self, ablated: Ablated) -> int:
        if ablated not in self._table:
            u = self._rng.random()
            if u < self.favourite:
                label = 0
            elif u < self.favourite + (1 - self.favourite) * self.structure:
                label = sum(v for v in ablated if v is not None) % self.num_classes
            else:
                label = self._rng.randrange(self.num_classes)
            self._table[ablated] = label
        return self._table[ablated]
