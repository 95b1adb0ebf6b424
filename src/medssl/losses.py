"""Contrastive losses for SimCLR / MICLe pretraining."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.dist import gather_with_grad, is_distributed, rank, world_size

__all__ = ["NTXentLoss"]


class NTXentLoss(torch.nn.Module):
    """SimCLR's normalised temperature-scaled cross-entropy (NT-Xent) loss.

    ``forward(z_a, z_b)`` takes the projections of two views of the same ``B`` items (for
    MICLe: two images of the same patient); row ``i`` of ``z_a`` and row ``i`` of ``z_b``
    form a positive pair. Rows are L2-normalised, so similarities are cosines. Each of the
    ``2N`` embeddings of the (global) batch is an anchor; its positive is its partner view
    and its negatives are the other ``2N - 2`` embeddings. The loss for one anchor is the
    cross-entropy of a ``(2N - 1)``-way softmax over cosine / temperature that should pick
    the positive; the result is the mean over this process's ``2B`` anchors (both the
    ``z_a -> z_b`` and the ``z_b -> z_a`` direction).

    **Temperature.** Cosines lie in ``[-1, 1]``; dividing by a small temperature (SimCLR
    uses 0.1 for large batches, up to 0.5 for small ones) sharpens the softmax so that the
    gradient concentrates on the *hard* negatives, those most similar to the anchor. Too
    small a value makes training unstable; too large a value treats every negative alike
    and learns weaker features.

    **Global negatives.** Contrastive learning improves with the number of negatives, which
    is why SimCLR relies on very large batches. With data-parallel training each process
    only holds ``B`` of the ``N = B * world_size`` pairs; with ``gather_distributed=True``
    the embeddings of all processes are gathered (differentiably) so every anchor is
    contrasted against all ``2N - 2`` negatives, not just the ``2B - 2`` local ones. Combined
    with DDP's averaging of gradients over processes, this makes a run on ``k`` processes
    with ``B`` pairs each compute the same loss and gradients as one process with ``k * B``
    pairs. (Batch-norm statistics still need ``SyncBatchNorm`` for that to hold.)

    The similarity computation runs in float32 (float64 inputs stay float64) even under
    autocast: half precision loses too much in ``exp(cos / temperature)``.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        if z_a.ndim != 2 or z_b.ndim != 2:
            raise ValueError(
                "NT-Xent expects two (batch, dim) tensors, got shapes "
                f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
            )
        if z_a.shape != z_b.shape:
            raise ValueError(
                "NT-Xent views must have the same shape, got "
                f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
            )
        if z_a.shape[0] < 1 or z_a.shape[1] < 1:
            raise ValueError(
                f"NT-Xent needs at least one pair of non-empty rows, got {tuple(z_a.shape)}"
            )

        with torch.autocast(device_type=z_a.device.type, enabled=False):
            both_double = z_a.dtype == torch.float64 and z_b.dtype == torch.float64
            dtype = torch.float64 if both_double else torch.float32
            z_a, z_b = z_a.to(dtype), z_b.to(dtype)
            z_a = F.normalize(z_a, dim=1)
            z_b = F.normalize(z_b, dim=1)

            if self.gather_distributed and is_distributed() and world_size() > 1:
                all_a = gather_with_grad(z_a)
                all_b = gather_with_grad(z_b)
                offset = rank() * z_a.shape[0]
            else:
                all_a, all_b, offset = z_a, z_b, 0

            # Candidates for anchors from view a are [all_a, all_b]; for view b, [all_b, all_a].
            # In both cases the anchor itself sits at offset + i and its positive at
            # n + offset + i, so one target vector and one self-mask serve both directions.
            b, n = z_a.shape[0], all_a.shape[0]
            logits_a = z_a @ torch.cat([all_a, all_b]).T
            logits_b = z_b @ torch.cat([all_b, all_a]).T
            logits = torch.cat([logits_a, logits_b]) / self.temperature

            rows = torch.arange(b, device=z_a.device)
            self_idx = torch.cat([rows, rows]) + offset
            logits = logits.index_put(
                (torch.arange(2 * b, device=z_a.device), self_idx),
                torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device),
            )
            return F.cross_entropy(logits, self_idx + n)
