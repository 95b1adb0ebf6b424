"""Feature extraction and the k-NN monitor of representation quality.

The monitor classifies the labeled validation images by a weighted vote of their k nearest
training images in the backbone's feature space (cosine similarity, weights
``exp(sim / 0.07)`` as in Wu et al. 2018). No training is involved, so it shows whether
pretraining improves the representation at a glance; a randomly initialised backbone,
measured at epoch 0, is the reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.augment import IMAGENET_MEAN, IMAGENET_STD

#: What the k-NN monitor reports per task. Top-1 alone mostly tracks the majority class on
#: imbalanced data, so multiclass also gets balanced accuracy and macro AUC.
KNN_METRICS = {
    "multiclass": ("accuracy", "balanced_accuracy", "auc_macro"),
    "multilabel": ("auc_macro",),
}


def normalize_batch(batch_uint8: torch.Tensor) -> torch.Tensor:
    """NHWC uint8 -> NCHW float normalised with the ImageNet statistics."""
    x = batch_uint8.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def model_outputs(
    model: nn.Module,
    pixels: np.ndarray,
    rows: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
) -> torch.Tensor:
    """``model`` outputs (features or logits) for rows of the uint8 image array, on the CPU.

    ``precision`` ``bf16``/``fp16`` runs the model under autocast (the k-NN monitor and
    ``medssl evaluate`` keep fp32 so that their figures compare across runs).
    """
    from medssl.train.common import autocast

    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(rows), batch_size):
        chunk = np.sort(rows[start : start + batch_size])
        order = np.argsort(np.argsort(rows[start : start + batch_size]))
        batch = torch.from_numpy(np.asarray(pixels[chunk])).to(device)
        x = normalize_batch(batch).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out = model(x)
        outputs.append(out.float().cpu()[order])
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def knn_scores(
    train_features: torch.Tensor,
    train_targets: np.ndarray,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """Per-class scores of each query from its k nearest training images.

    Multiclass targets ``(N,)`` vote with one-hot; multilabel ``(N, K)`` vote with their
    multi-hot vectors (NaN as 0), giving a score per finding.
    """
    train = F.normalize(train_features, dim=1)
    query = F.normalize(query_features, dim=1)
    k = min(k, len(train))
    if np.asarray(train_targets).ndim == 1:
        votes = F.one_hot(torch.as_tensor(train_targets, dtype=torch.long), num_classes).float()
    else:
        votes = torch.nan_to_num(torch.as_tensor(train_targets, dtype=torch.float32))
    scores = []
    for start in range(0, len(query), 1024):
        sim = query[start : start + 1024] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores.append(torch.einsum("qk,qkc->qc", weights, votes[top_idx]) / weights.sum(1, True))
    return torch.cat(scores).numpy()


def backbone_knn_scores(
    backbone: nn.Module,
    pixels: np.ndarray,
    train_rows: np.ndarray,
    query_rows: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    device: torch.device,
    k: int = 20,
) -> np.ndarray:
    """:func:`knn_scores` of ``query_rows`` from ``train_rows``, both embedded by ``backbone``."""
    train_f = model_outputs(backbone, pixels, train_rows, device)
    query_f = model_outputs(backbone, pixels, query_rows, device)
    return knn_scores(train_f, targets[train_rows], query_f, num_classes, k=k)


def knn_metrics(
    task: str, scores: np.ndarray, targets: np.ndarray, class_names: list[str]
) -> dict[str, float | None]:
    """The :data:`KNN_METRICS` of the task for k-NN ``scores`` (None where undefined)."""
    from medssl.metrics import multiclass_metrics, multilabel_metrics  # sklearn: load late

    if task == "multiclass":
        found = multiclass_metrics(scores, targets, class_names)
    else:
        found = multilabel_metrics(scores, targets, class_names, None)
    return {key: found[key] for key in KNN_METRICS[task]}


#: images embedded for :func:`feature_spread` (a fixed sample: the check costs seconds)
SPREAD_SAMPLE = 2048


def feature_spread(
    backbone: nn.Module, pixels: np.ndarray, rows: np.ndarray, device: torch.device
) -> float:
    """The collapse check of a run without labels: the mean per-dimension standard deviation
    of the L2-normalised backbone features of a fixed sample of ``rows``, times sqrt(d).

    Features spread evenly over the unit sphere give about 1; a collapsed embedding (every
    image mapped to one point, the failure of contrastive training without negatives or with
    a broken augmentation) gives 0.
    """
    rng = np.random.default_rng(0)
    sample = rng.choice(rows, size=min(len(rows), SPREAD_SAMPLE), replace=False)
    features = F.normalize(model_outputs(backbone, pixels, np.sort(sample), device), dim=1)
    return float(features.std(dim=0).mean() * features.shape[1] ** 0.5)
