"""Torch datasets over the decoded-image array.

Both datasets read from the ``(N, S, S, 3)`` uint8 array of :mod:`medssl.data.cache` and
seed each item's augmentation from ``(seed, epoch, row, view)``. That makes an item's views
independent of DataLoader workers, of the number of processes and of what ran before, so
a resumed or distributed run draws exactly the augmentations of an uninterrupted
single-process run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

Transform = Callable[[torch.Tensor], torch.Tensor]


def _seeded(transform: Transform, image: torch.Tensor, seed: int) -> torch.Tensor:
    """Run ``transform`` with the CPU generator seeded, then restore the generator.

    torchvision's transforms draw from the default CPU generator. Seeding only that one
    (not ``torch.manual_seed``, which also seeds every CUDA generator and costs ~1 ms in a
    CUDA build) keeps the per-item overhead in the tens of microseconds.
    """
    generator = torch.random.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return transform(image)
    finally:
        generator.set_state(state)


def unchanged(image: torch.Tensor) -> torch.Tensor:
    """The per-sample transform in batch augmentation mode: the uint8 image itself (the
    trainer makes the views of the whole batch)."""
    return image


def _item_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _chw(pixels: np.ndarray, row: int) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels[row])).permute(2, 0, 1)


class PairViews(Dataset):
    """Item ``(anchor, partner, epoch)`` -> ``(view_a, view_b, distinct)``.

    ``view_a`` is an augmentation of the anchor image, ``view_b`` of the partner (the same
    image for SimCLR, another image of the case for MICLe); each crop is drawn on its own.
    """

    def __init__(
        self, pixels: np.ndarray, transform_a: Transform, transform_b: Transform, seed: int = 0
    ) -> None:
        self.pixels, self.transform_a, self.transform_b, self.seed = (
            pixels, transform_a, transform_b, seed,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        anchor, partner, epoch = item
        view_a = _seeded(
            self.transform_a, _chw(self.pixels, anchor), _item_seed(self.seed, epoch, anchor, 0)
        )
        view_b = _seeded(
            self.transform_b, _chw(self.pixels, partner), _item_seed(self.seed, epoch, anchor, 1)
        )
        return view_a, view_b, anchor != partner


class LabeledImages(Dataset):
    """Item ``i`` -> ``(image, target, i)``; the epoch for seeding is set by the trainer.

    Used with ``persistent_workers=False`` (a fresh iterator each epoch carries the new
    epoch into the workers).
    """

    def __init__(
        self,
        pixels: np.ndarray,
        targets: np.ndarray,
        rows: np.ndarray,
        transform: Transform,
        seed: int = 0,
    ) -> None:
        self.pixels, self.targets, self.rows = pixels, targets, np.asarray(rows, dtype=np.int64)
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row = int(self.rows[i])
        image = _seeded(
            self.transform, _chw(self.pixels, row), _item_seed(self.seed, self.epoch, row)
        )
        return image, torch.as_tensor(self.targets[row]), i
