"""The embedded synthetic demo dataset: structure, determinism, case views, sites, learnability."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from medssl.data.manifest import COLUMNS, Manifest
from medssl.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_SHIFT_SOURCE,
    make_synthetic,
)


@pytest.fixture(scope="module")
def default() -> Manifest:
    """The dataset ``medssl demo`` uses: default arguments."""
    return make_synthetic()


def _case_table(m: Manifest) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per case: number of images, label, source; and each row's case code."""
    codes, _ = m.case_codes()
    sizes = np.bincount(codes)
    first = np.unique(codes, return_index=True)[1]
    return sizes, m.targets[first], m.table["source"].to_numpy()[first], codes


def test_manifest_conventions(default: Manifest) -> None:
    m = default
    assert m.name == "synthetic"
    assert m.task == "multiclass"
    assert m.class_names == list(SYNTHETIC_CLASSES)
    assert all(name.startswith("synthetic-") for name in m.class_names)
    assert any("synthetic" in w for w in m.warnings)
    assert set(COLUMNS) <= set(m.table.columns)
    assert m.table["image"].tolist() == [f"array:{i}" for i in range(len(m))]
    assert m.table["case_id"].str.fullmatch(r"case-\d{5}").all()
    assert (m.table["view"] == "").all() and (m.table["official_split"] == "").all()
    assert set(m.table["source"]) == {"site-A", "site-B"}
    assert SYNTHETIC_SHIFT_SOURCE == "site-B"
    assert m.pixels is not None and m.pixels.dtype == np.uint8
    assert m.pixels.shape == (len(m), 32, 32, 3)
    assert m.targets.dtype == np.int64 and m.targets.shape == (len(m),)
    # Pixels use the range, and the images are not constant.
    assert m.pixels.min() < 60 and m.pixels.max() > 200
    assert m.pixels.reshape(len(m), -1).std(axis=1).min() > 2.0
    # A subset carries its pixels along (the Manifest convention for in-memory pixels).
    sub = m.subset([5, 0])
    assert sub.pixels is not None and np.array_equal(sub.pixels[0], m.pixels[5])


def test_cases_sites_and_classes(default: Manifest) -> None:
    sizes, labels, sources, codes = _case_table(default)
    assert len(sizes) == 600
    assert sizes.min() >= 1 and sizes.max() <= 4
    assert set(np.unique(sizes)) == {1, 2, 3, 4}
    assert 0.4 <= np.mean(sizes >= 2) <= 0.6
    # One label and one source per case.
    assert np.array_equal(default.targets, labels[codes])
    assert np.array_equal(default.table["source"].to_numpy(), sources[codes])
    share_b = np.mean(sources == "site-B")
    assert 0.2 <= share_b <= 0.3
    # Imbalanced prevalence, every class at both sites, a different mix at site-B.
    prevalence = np.bincount(labels, minlength=4) / len(labels)
    assert np.all(np.diff(prevalence) < 0), prevalence
    assert 0.45 <= prevalence[0] <= 0.65 and prevalence[3] <= 0.12
    mix = {}
    for site in ("site-A", "site-B"):
        counts = np.bincount(labels[sources == site], minlength=4)
        assert counts.min() >= 5, (site, counts)
        mix[site] = counts / counts.sum()
    assert mix["site-B"][0] < mix["site-A"][0] - 0.1  # more of the rare classes at site-B
    assert default.summary()["multi_image_cases"] == int(np.sum(sizes >= 2))


def test_deterministic_for_a_seed() -> None:
    a = make_synthetic(n_cases=40, seed=7)
    b = make_synthetic(n_cases=40, seed=7)
    c = make_synthetic(n_cases=40, seed=8)
    assert a.table.equals(b.table)
    assert np.array_equal(a.targets, b.targets)
    assert a.pixels is not None and b.pixels is not None and c.pixels is not None
    assert np.array_equal(a.pixels, b.pixels)
    assert a.pixels.shape != c.pixels.shape or not np.array_equal(a.pixels, c.pixels)


@pytest.mark.parametrize("size", [16, 48, 96])
def test_other_image_sizes(size: int) -> None:
    m = make_synthetic(n_cases=6, image_size=size, seed=1)
    assert m.pixels is not None and m.pixels.shape == (len(m), size, size, 3)
    assert m.pixels.dtype == np.uint8


def test_small_and_invalid_arguments() -> None:
    one = make_synthetic(n_cases=1)
    assert one.summary()["cases"] == 1
    with pytest.raises(ValueError):
        make_synthetic(n_cases=0)
    with pytest.raises(ValueError):
        make_synthetic(image_size=4)


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    make_synthetic(n_cases=600, image_size=32, seed=3)
    assert time.perf_counter() - start < 5.0


def test_views_of_a_case_resemble_each_other(default: Manifest) -> None:
    """Images of one case are nearer each other than images of other cases of the same
    class at the same site (so MICLe pairs are informative positives)."""
    m = default
    x = m.pixels.reshape(len(m), -1).astype(np.float32) / 255.0
    sq = (x**2).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    codes, _ = m.case_codes()
    y, src = m.targets, m.table["source"].to_numpy()
    same_case = codes[:, None] == codes[None, :]
    np.fill_diagonal(same_case, False)
    other_case_same_kind = (
        (y[:, None] == y[None, :])
        & (src[:, None] == src[None, :])
        & (codes[:, None] != codes[None, :])
    )
    within, between = dist[same_case].mean(), dist[other_case_same_kind].mean()
    assert within < 0.75 * between, (within, between)
    # Per multi-image case, too: most cases' views are nearer than that case's average
    # distance to other cases of its class and site.
    wins = []
    for row in np.flatnonzero(same_case.any(axis=1)):
        wins.append(dist[row, same_case[row]].mean() < dist[row, other_case_same_kind[row]].mean())
    assert np.mean(wins) > 0.85
    # ...but the views are not copies: pose, zoom, lighting and noise differ.
    assert dist[same_case].min() > 1.0


def test_site_b_has_a_different_acquisition(default: Manifest) -> None:
    px = default.pixels.astype(np.float32) / 255.0
    b = (default.table["source"] == SYNTHETIC_SHIFT_SOURCE).to_numpy()
    lum = px.mean(axis=-1)
    grid = np.linspace(-1.0, 1.0, px.shape[1])
    r = np.hypot(*np.meshgrid(grid, grid))
    edge_over_centre = lum[:, r > 0.9].mean(axis=1) / lum[:, r < 0.5].mean(axis=1)
    blue_over_red = px[..., 2].mean(axis=(1, 2)) / px[..., 0].mean(axis=(1, 2))
    roughness = np.abs(np.diff(lum, axis=2)).mean(axis=(1, 2))
    assert edge_over_centre[b].mean() < edge_over_centre[~b].mean() - 0.08  # vignetting
    assert blue_over_red[b].mean() < blue_over_red[~b].mean() - 0.03  # yellow cast
    assert roughness[b].mean() > 1.2 * roughness[~b].mean()  # noisier
    contrast = lum.std(axis=(1, 2))
    assert contrast[b].mean() < 0.85 * contrast[~b].mean()  # flatter


def _random_conv_features(pixels: np.ndarray) -> np.ndarray:
    """Colour-free features: per-image standardised grey levels, 32 fixed random 5x5
    zero-mean filters, ReLU, then global mean, global max and 2x2 mean pooling."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().mean(dim=1, keepdim=True)
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-3)
    w = torch.randn(32, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    w = w - w.mean(dim=(2, 3), keepdim=True)
    with torch.no_grad():
        h = torch.relu(F.conv2d(x, w, padding=2))
        pooled = F.adaptive_avg_pool2d(h, 2).flatten(1)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3)), pooled], dim=1).numpy()


def test_classes_are_learnable_from_shape(default: Manifest) -> None:
    """A linear probe on colour-free random-conv features beats the majority class on
    held-out cases by a wide margin, and falls to chance when the case labels are shuffled
    (so this check can fail)."""
    m = default
    codes, _ = m.case_codes()
    y = m.targets
    rng = np.random.default_rng(0)
    held_out = np.isin(codes, rng.permutation(codes.max() + 1)[: (codes.max() + 1) // 3])
    train = ~held_out
    majority = np.mean(y[held_out] == np.bincount(y[train]).argmax())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            feats = _random_conv_features(m.pixels)

            def probe(labels: np.ndarray) -> tuple[float, float]:
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
                clf.fit(feats[train], labels[train])
                pred = clf.predict(feats[held_out])
                return (
                    float(np.mean(pred == labels[held_out])),
                    float(balanced_accuracy_score(labels[held_out], pred)),
                )

            acc, balanced = probe(y)
            case_label = np.zeros(codes.max() + 1, dtype=np.int64)
            case_label[codes] = y
            shuffled = rng.permutation(case_label)[codes]
            acc_shuffled, balanced_shuffled = probe(shuffled)
    finally:
        torch.set_num_threads(threads)
    assert acc > majority + 0.12, (acc, majority)
    assert balanced > 0.45, balanced
    assert balanced_shuffled < 0.35, balanced_shuffled
    assert acc_shuffled < majority + 0.05, (acc_shuffled, majority)


def test_sites_are_balanced_across_case_sizes(default: Manifest) -> None:
    """Multi-image cases exist at both sites (MICLe pairs on both sides of a shift test)."""
    sizes, _, sources, _ = _case_table(default)
    per_site = Counter(sources[sizes >= 2])
    assert per_site["site-A"] > 100 and per_site["site-B"] > 30
