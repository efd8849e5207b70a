"""Tiny hand-written base classifiers whose label counts are known exactly or in distribution.

Both read the 2C-channel ablation encoding: a kept pixel has channel c + channel C+c == 1 (x + (1 - x)), an
ablated pixel has 0 in every channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConstantClassifier(nn.Module):
    """Always answers ``label``, whatever it is shown."""

    def __init__(self, label: int, num_classes: int = 10) -> None:
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.full((x.shape[0],), self.label, device=x.device)
        return F.one_hot(labels, self.num_classes).float()


class PixelKeptClassifier(nn.Module):
    """Answers 1 when pixel (row, col) is kept in the ablated input, else 0 (``num_classes`` logits)."""

    def __init__(self, row: int, col: int, num_classes: int = 10) -> None:
        super().__init__()
        self.row, self.col, self.num_classes = row, col, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        kept = (x[:, 0, self.row, self.col] + x[:, half, self.row, self.col]) > 0.5
        return F.one_hot(kept.long(), self.num_classes).float()


class KeptInFirstRowClassifier(nn.Module):
    """Answers the number of kept pixels in row 0 (capped at ``num_classes - 1``): many labels, so two different
    mask streams almost surely give different counts."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        kept = ((x[:, 0, 0, :] + x[:, half, 0, :]) > 0.5).sum(dim=1)
        return F.one_hot(kept.clamp(max=self.num_classes - 1), self.num_classes).float()


class OutOfMemoryAbove(nn.Module):
    """Wraps a classifier and raises ``torch.OutOfMemoryError`` for batches larger than ``limit``, as a GPU
    would when a batch does not fit."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: batch {x.shape[0]} > {self.limit}")
        return self.inner(x)
