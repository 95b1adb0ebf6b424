"""Case bags and the MICLe pair sampler.

MICLe (Azizi et al. 2021) builds a positive pair from two *different* images of the same
case. :class:`CaseBags` lays the images of each case out contiguously (CSR-style arrays),
so drawing a partner for every image of the epoch is a handful of vectorised numpy
operations, and an item costs O(1): no DataFrame is touched in ``__getitem__``.

:class:`PairSampler` yields ``(anchor, partner)`` index pairs, one per image per epoch
(SimCLR and MICLe see the same number of pairs per epoch, so budgets compare fairly).
With ``method="simclr"`` the partner is the anchor itself (two views of one image); with
``"micle"`` it is another image of the anchor's case drawn uniformly, or the anchor itself
when the case has one image. The sampler shards the epoch across distributed ranks the way
``DistributedSampler`` does, and its draw depends only on (seed, epoch), never on the
number of processes, so runs with different world sizes see the same global pairs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

#: how a positive pair is made: two views of one image, or of two images of one case
METHODS = ("simclr", "micle")


class CaseBags:
    """Images grouped by case: ``members[offsets[c]:offsets[c + 1]]`` are case c's images."""

    def __init__(self, case_codes: np.ndarray) -> None:
        codes = np.asarray(case_codes, dtype=np.int64)
        self.case_of = codes
        self.members = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=int(codes.max()) + 1 if codes.size else 0)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.size_of = counts[codes]
        self.position = np.empty_like(codes)
        self.position[self.members] = np.arange(codes.size) - self.offsets[codes[self.members]]

    def __len__(self) -> int:
        return int(self.case_of.size)

    def images_of_case(self, case: int) -> np.ndarray:
        return self.members[self.offsets[case] : self.offsets[case + 1]]

    def draw_partners(self, rng: np.random.Generator) -> np.ndarray:
        """For every image, a different image of its case (itself if the case has one)."""
        n = self.size_of
        draw = (rng.random(n.size) * np.maximum(n - 1, 1)).astype(np.int64)
        draw += draw >= self.position  # skip the anchor's own slot
        draw = np.where(n > 1, draw, self.position)
        return self.members[self.offsets[self.case_of] + draw]

    def multi_image_share(self) -> float:
        """Share of images whose case has two or more images."""
        return float((self.size_of > 1).mean()) if self.size_of.size else 0.0


class PairSampler(Sampler[tuple[int, int, int]]):
    """Yields ``(anchor, partner, epoch)`` for one epoch, sharded across ranks.

    The epoch travels with each item so that datasets in persistent DataLoader workers can
    seed their augmentation from (seed, epoch, anchor) without being told of a new epoch.
    """

    def __init__(
        self,
        bags: CaseBags,
        method: str = "micle",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        global_batch_size: int = 1,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be simclr or micle, got {method}")
        self.bags, self.method, self.seed = bags, method, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        # the global epoch is cut to whole global batches so every rank's steps line up
        unit = global_batch_size if drop_last else world_size
        self.global_len = len(bags) // unit * unit if drop_last else -(-len(bags) // unit) * unit
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_pairs(self) -> np.ndarray:
        """All ranks' pairs of this epoch in global order, shape (global_len, 2)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.bags)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        partners = self.bags.draw_partners(rng) if self.method == "micle" else np.arange(n)
        if self.global_len > n:  # pad by wrapping, as DistributedSampler does
            order = np.resize(order, self.global_len)
        order = order[: self.global_len]
        return np.stack([order, partners[order]], axis=1)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        pairs = self.global_pairs()[self.rank :: self.world_size]
        return iter([(a, b, self.epoch) for a, b in pairs.tolist()])

    def __len__(self) -> int:
        return self.global_len // self.world_size


def bag_statistics(bags: CaseBags) -> dict[str, float]:
    """What MICLe can pair: images, cases, cases with 2+ images, images per case."""
    sizes = np.diff(bags.offsets)
    sizes = sizes[sizes > 0]
    return {
        "pretrain_images": len(bags),
        "pretrain_cases": int(sizes.size),
        "multi_image_cases": int((sizes >= 2).sum()),
        "images_per_case_median": float(np.median(sizes)) if sizes.size else 0.0,
        "images_per_case_max": int(sizes.max()) if sizes.size else 0,
    }


def describe_bags(bags: CaseBags) -> str:
    """:func:`bag_statistics` as one line."""
    s = bag_statistics(bags)
    median = s["images_per_case_median"]
    return (
        f"{s['pretrain_images']:,} images, {s['pretrain_cases']:,} cases, "
        f"{s['multi_image_cases']:,} with 2+ images; images per case median "
        f"{median:g}, max {s['images_per_case_max']}"
    )
