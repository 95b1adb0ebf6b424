"""A SYNTHETIC multi-instance "dermoscopy-like" dataset: the embedded default of ``medssl demo``.

Nothing here is a medical image. :func:`make_synthetic` draws procedural pictures that
simulate the structure of a real multi-instance dataset (HAM10000-like), so that the whole
pipeline (SimCLR/MICLe pretraining, case-level splits, fine-tuning, a source-held-out
shift test) runs end to end in seconds without downloading anything. Figures measured on it
say nothing about any clinical task.

What it simulates:

- **Cases.** Each case is one synthetic "lesion" of one "patient" with 1 to 4 images (about
  half of the cases have 2 or more). The images of a case are different views of the same
  lesion: the lesion's size, shape, position, colour and its class-specific details (border
  harmonics, streak count, dot layout) are drawn once per case; rotation, flip, zoom,
  framing, lighting, skin texture, hairs and noise are drawn per image. Two images of one
  case are therefore informative MICLe positives.
- **Classes.** Four synthetic "pathologies" with imbalanced prevalence (about 55/25/12/8 %),
  told apart by shape and texture, not by colour (the lesion colour is drawn independently
  of the class), so the signal survives random resized crops, flips and colour jitter:

  ``synthetic-A``  a smooth, evenly pigmented oval blob with a soft edge;
  ``synthetic-B``  a paler blob with a sharp dark ring at its border;
  ``synthetic-C``  an irregular (lobulated) blob with radial streaks crossing its border;
  ``synthetic-D``  a faint patch holding a cluster of 4 to 8 dark dots.

  The shapes vary from case to case (size 0.3-0.6 of the half-width, aspect ratio,
  irregularity, ring width, dot layout) and share a textured, skin-like background with
  mottling, pores and occasional hairs, so the task is learnable but not trivial.
- **Sites.** Two acquisition sites: ``site-A`` (about 75 % of the cases; neutral colour,
  sharp, little noise) and ``site-B`` (about 25 %; yellow-green colour cast, lower contrast,
  blur, vignetting, stronger and chromatic noise) with a different class mix (more of the
  rare classes), so holding out :data:`SYNTHETIC_SHIFT_SOURCE` measures distribution shift.

Generation is vectorised with numpy (about 0.5 s for the default 600 cases at 32 px) and
deterministic for a seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medssl.data.manifest import Manifest

SYNTHETIC_NAME = "synthetic"
SYNTHETIC_SHIFT_SOURCE = "site-B"
SYNTHETIC_SOURCES = ("site-A", "site-B")
SYNTHETIC_CLASSES = ("synthetic-A", "synthetic-B", "synthetic-C", "synthetic-D")
CLASS_DESCRIPTIONS = {
    "synthetic-A": "smooth evenly pigmented oval blob",
    "synthetic-B": "pale blob with a dark ring at its border",
    "synthetic-C": "irregular lobulated blob with radial streaks",
    "synthetic-D": "faint patch with a cluster of dark dots",
}

# Share of site-B cases, and the class mix of each site (overall about 55/25/12/8 %).
_SITE_B_SHARE = 0.25
_CLASS_MIX = {
    "site-A": (0.60, 0.235, 0.10, 0.065),
    "site-B": (0.40, 0.30, 0.17, 0.13),
}
# Probability of a case having 1, 2, 3 or 4 images.
_IMAGES_PER_CASE = (0.5, 0.28, 0.14, 0.08)
_N_WAVES = 6  # low-frequency skin mottling components per image
_N_DOTS = 8  # dot slots of a synthetic-D lesion
_N_HAIRS = 2  # hair slots per image
_STRENGTH = (0.7, 1.0)  # per-case range of the lesion's opacity
_CLASS_GAIN = (1.0, 1.0, 1.0, 1.0)  # per-class multiplier of the lesion's darkness
_TINT_SD = 0.02  # per-image colour cast (standard deviation per channel)
_GAIN = (0.85, 1.12)  # per-image exposure range
_CHUNK_PIXELS = 2_000_000  # rendered (supersampled) pixels per chunk, bounds the memory


def _quota_labels(n: int, probs: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """``n`` labels in the proportions ``probs`` (stratified quantiles), shuffled."""
    edges = np.cumsum(probs)[:-1] / np.sum(probs)
    labels = np.searchsorted(edges, (np.arange(n) + 0.5) / max(n, 1), side="right")
    return rng.permutation(labels).astype(np.int64)


def _blur3(x: np.ndarray) -> np.ndarray:
    """Separable binomial [1, 2, 1] / 4 blur over axes 1 and 2 with edge padding."""
    p = np.pad(x, [(0, 0), (1, 1), (0, 0)] + [(0, 0)] * (x.ndim - 3), mode="edge")
    x = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    p = np.pad(x, [(0, 0), (0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 3), mode="edge")
    return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _f32(a: np.ndarray) -> np.ndarray:
    """Floating parameters as float32 (rendering precision); others unchanged."""
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def _col(a: np.ndarray) -> np.ndarray:
    """Per-image parameters ``(n,)`` or ``(n, k)`` broadcast against ``(n, H, W)`` grids."""
    return a.reshape(a.shape[0], *([1] * (a.ndim - 1)), 1, 1)


def _draw_cases(n_cases: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-case parameters: site, class, number of images and the lesion itself."""
    n_b = int(round(_SITE_B_SHARE * n_cases)) if n_cases > 1 else 0
    site = np.zeros(n_cases, dtype=np.int64)
    site[rng.permutation(n_cases)[:n_b]] = 1
    label = np.zeros(n_cases, dtype=np.int64)
    for s, name in enumerate(SYNTHETIC_SOURCES):
        members = np.flatnonzero(site == s)
        label[members] = _quota_labels(len(members), _CLASS_MIX[name], rng)
    n = n_cases
    # Skin tone (light to darker) and a lesion pigment that does not depend on the class.
    tone = rng.uniform(0.0, 1.0, n)
    light, dark = np.array([0.93, 0.78, 0.68]), np.array([0.62, 0.44, 0.33])
    skin = light + tone[:, None] * (dark - light) + rng.normal(0, 0.025, (n, 3))
    red = rng.uniform(0.25, 0.6, n)
    pigment = red[:, None] * np.stack(
        [np.ones(n), rng.uniform(0.45, 0.75, n), rng.uniform(0.3, 0.75, n)], 1
    )
    return {
        "site": site,
        "label": label,
        "n_images": rng.choice(4, size=n, p=_IMAGES_PER_CASE) + 1,
        "skin": skin,
        "pigment": pigment,
        "strength": rng.uniform(*_STRENGTH, n),
        "centre": rng.normal(0.0, 0.12, (n, 2)),
        "radius": rng.uniform(0.30, 0.60, n),
        "aspect": rng.uniform(0.7, 1.0, n),
        "angle": rng.uniform(0.0, 2 * np.pi, n),
        # synthetic-C: border harmonics 2, 3, 5 (A uses a faint harmonic 2) and radial streaks
        "harm_amp": rng.uniform(0.08, 0.18, (n, 3)),
        "harm_phase": rng.uniform(0.0, 2 * np.pi, (n, 3)),
        "n_streaks": rng.integers(7, 13, n).astype(np.float64),
        "streak_phase": rng.uniform(0.0, 2 * np.pi, n),
        # synthetic-B: ring radius, width and contrast
        "ring_at": rng.uniform(0.75, 0.9, n),
        "ring_width": rng.uniform(0.10, 0.16, n),
        "ring_amp": rng.uniform(0.4, 0.8, n),
        # synthetic-D: dot positions (in lesion units) and how many are present
        "dot_pos": rng.uniform(-0.75, 0.75, (n, _N_DOTS, 2)),
        "dot_count": rng.integers(4, _N_DOTS + 1, n),
        "dot_size": rng.uniform(0.16, 0.22, n),
    }


def _draw_views(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image parameters: pose, zoom, framing, lighting and distractors."""
    hair_on = rng.uniform(0, 1, (n, _N_HAIRS)) < np.array([0.2, 0.06])
    return {
        "rotation": rng.uniform(0.0, 2 * np.pi, n),
        "flip": rng.uniform(0, 1, n) < 0.5,
        "zoom": np.exp(rng.uniform(np.log(0.8), np.log(1.25), n)),
        "shift": rng.normal(0.0, 0.07, (n, 2)),
        "gain": rng.uniform(*_GAIN, n),
        "tint": rng.normal(0.0, _TINT_SD, (n, 3)),
        "light_dir": rng.uniform(0.0, 2 * np.pi, n),
        "light_amp": rng.uniform(0.0, 0.12, n),
        "wave_freq": rng.uniform(0.6, 2.5, (n, _N_WAVES)),
        "wave_dir": rng.uniform(0.0, 2 * np.pi, (n, _N_WAVES)),
        "wave_phase": rng.uniform(0.0, 2 * np.pi, (n, _N_WAVES)),
        "wave_amp": rng.uniform(0.01, 0.035, (n, _N_WAVES)),
        "pore_amp": rng.uniform(0.02, 0.05, n),
        "hair_on": hair_on,
        "hair_dir": rng.uniform(0.0, np.pi, (n, _N_HAIRS)),
        "hair_offset": rng.uniform(-0.8, 0.8, (n, _N_HAIRS)),
        "hair_bend": rng.normal(0.0, 0.3, (n, _N_HAIRS)),
    }


def _lesion_darkness(
    label: int, ux: np.ndarray, uy: np.ndarray, case: dict[str, np.ndarray], px: np.ndarray
) -> np.ndarray:
    """How much pigment ``[0, 1]`` each pixel carries, in lesion coordinates ``(ux, uy)``.

    ``case`` holds the per-image copies of the case parameters; ``px`` ``(n, 1, 1)`` is the
    size of one rendered pixel in lesion units (keeps edges and dots at least a pixel wide).
    """
    rho = np.sqrt(ux**2 + uy**2)
    phi = np.arctan2(uy, ux)
    soft = np.maximum(px, 0.04)
    amp, phase = case["harm_amp"], case["harm_phase"]
    if label == 0:  # smooth blob, slightly darker towards the centre, a mildly uneven border
        border = 1.0 + 0.3 * _col(amp[:, 0]) * np.sin(2 * phi + _col(phase[:, 0]))
        body = _sigmoid((1.0 - rho / border) / (1.8 * soft))
        return body * (0.75 + 0.2 * np.clip(1.0 - rho, 0, 1))
    if label == 1:  # pale blob with a dark ring
        body = _sigmoid((1.0 - rho) / (1.5 * soft))
        at, width = _col(case["ring_at"]), _col(case["ring_width"])
        ring = np.exp(-(((rho - at) / width) ** 2))
        return np.clip(0.38 * body + _col(case["ring_amp"]) * ring, 0.0, 1.0)
    if label == 2:  # irregular, lobulated blob with radial streaks
        border = 1.0
        for j, k in enumerate((2, 3, 5)):
            border = border + _col(amp[:, j]) * np.sin(k * phi + _col(phase[:, j]))
        r = rho / border
        body = _sigmoid((1.0 - r) / soft)
        streak = 0.5 + 0.5 * np.cos(_col(case["n_streaks"]) * phi + _col(case["streak_phase"]))
        streak = streak**3 * np.exp(-(((r - 0.95) / 0.3) ** 2))
        return np.clip(0.6 * body + 0.5 * streak, 0.0, 1.0)
    # faint patch with a cluster of dark dots
    patch = 0.22 * _sigmoid((1.0 - rho) / (3.0 * soft))
    pos = case["dot_pos"]  # (n, K, 2)
    present = np.arange(_N_DOTS)[None, :] < case["dot_count"][:, None]  # (n, K)
    size = np.maximum(case["dot_size"][:, None, None, None], 2.2 * px[:, None])
    dx = ux[:, None] - pos[:, :, 0, None, None]
    dy = uy[:, None] - pos[:, :, 1, None, None]
    dots = np.exp(-(dx**2 + dy**2) / (size**2)) * present[:, :, None, None]
    return np.clip(patch + 0.95 * dots.max(axis=1), 0.0, 1.0)


def _render(
    case: dict[str, np.ndarray],
    view: dict[str, np.ndarray],
    labels: np.ndarray,
    sites: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Float32 images ``(n, size, size, 3)`` in ``[0, 1]`` for one chunk of images.

    All parameters are float32 arrays with one row per image. Only the lesion is rendered
    supersampled (its edges, rings and dots); the rest is drawn at the final size.
    """
    n = len(labels)
    f32 = np.float32
    grid = ((2.0 * np.arange(size) + 1.0) / size - 1.0).astype(f32)
    x, y = grid[None, None, :], grid[None, :, None]

    # Skin: tone x (1 + low-frequency mottling + fine pores). Each plane wave is separable,
    # sin(ax + by + c) = sin(ax) cos(by + c) + cos(ax) sin(by + c), so all waves of an image
    # are one small matrix product.
    freq = view["wave_freq"] * f32(np.pi)
    ax = (freq * np.cos(view["wave_dir"]))[:, :, None] * grid
    by = (freq * np.sin(view["wave_dir"]))[:, :, None] * grid + view["wave_phase"][:, :, None]
    amp = view["wave_amp"][:, :, None]
    rows_h = np.concatenate([amp * np.cos(by), amp * np.sin(by)], axis=1)  # (n, 2M, H)
    cols_w = np.concatenate([np.sin(ax), np.cos(ax)], axis=1)  # (n, 2M, W)
    waves = np.matmul(rows_h.transpose(0, 2, 1), cols_w)
    pores = _blur3(rng.standard_normal((n, size, size), dtype=f32))
    shade = 1.0 + waves + _col(view["pore_amp"]) * pores
    image = case["skin"][:, None, None, :] * shade[..., None]

    # Lesion, supersampled: image coordinates -> lesion coordinates (the case's shape, the
    # view's pose), then the class pattern.
    ss = 2 if size <= 64 else 1
    big = size * ss
    fine = ((2.0 * np.arange(big) + 1.0) / big - 1.0).astype(f32)
    qx = fine[None, None, :] - _col(case["centre"][:, 0] + view["shift"][:, 0])
    qy = fine[None, :, None] - _col(case["centre"][:, 1] + view["shift"][:, 1])
    theta = case["angle"] + view["rotation"]
    scale = case["radius"] * view["zoom"]
    cos, sin = _col(np.cos(theta) / scale), _col(np.sin(theta) / scale)
    ux = cos * qx + sin * qy
    uy = cos * qy - sin * qx
    ux = ux * _col(np.where(view["flip"], -1.0, 1.0).astype(f32) / case["aspect"])
    px = _col((2.0 / big) / (scale * case["aspect"]))
    dark = np.zeros((n, big, big), dtype=f32)
    for k in range(len(SYNTHETIC_CLASSES)):
        rows = np.flatnonzero(labels == k)
        if rows.size:
            sub = {key: value[rows] for key, value in case.items()}
            dark[rows] = _CLASS_GAIN[k] * _lesion_darkness(k, ux[rows], uy[rows], sub, px[rows])
    if ss > 1:
        dark = dark.reshape(n, size, ss, size, ss).mean(axis=(2, 4))
    alpha = np.clip(dark * _col(case["strength"]), 0.0, 1.0)[..., None]
    pigment = case["pigment"][:, None, None, :] * (1.0 + 0.5 * (shade[..., None] - 1.0))
    image = image * (1.0 - alpha) + pigment * alpha

    # Hairs: thin dark slightly curved lines, a distractor unrelated to the class.
    width = f32(0.5 * 2.0 / size + 0.01)
    for j in range(_N_HAIRS):
        rows = np.flatnonzero(view["hair_on"][:, j])
        if not rows.size:
            continue
        d = view["hair_dir"][rows, j]
        along = _col(np.cos(d)) * x + _col(np.sin(d)) * y
        across = _col(np.cos(d)) * y - _col(np.sin(d)) * x
        bend = _col(view["hair_bend"][rows, j])
        dist = across - _col(view["hair_offset"][rows, j]) - bend * along**2
        hair = np.exp(-((dist / width) ** 2))
        image[rows] *= 1.0 - 0.55 * hair[..., None]

    # Per-view lighting: gain, a slight tint, an illumination gradient.
    d = view["light_dir"]
    ramp = _col(np.cos(d)) * x + _col(np.sin(d)) * y
    light = _col(view["gain"]) * (1.0 + _col(view["light_amp"]) * ramp)
    image *= light[..., None] * (1.0 + view["tint"][:, None, None, :])

    # Acquisition of each site.
    b = np.flatnonzero(sites == 1)
    a = np.flatnonzero(sites == 0)
    if b.size:
        img = _blur3(image[b])
        mean = img.mean(axis=(1, 2, 3), keepdims=True)
        img = mean + f32(0.85) * (img - mean)  # lower contrast
        img = img * np.array([1.03, 1.02, 0.84], f32) + np.array([0.0, 0.03, 0.02], f32)  # cast
        img *= (1.0 - 0.06 * (x**2 + y**2))[..., None]  # vignetting
        luma = rng.standard_normal(img.shape[:3] + (1,), dtype=f32) * f32(0.018)
        chroma = rng.standard_normal(img.shape, dtype=f32) * f32(0.01)
        image[b] = img + luma + chroma
    if a.size:
        image[a] += rng.standard_normal(image[a].shape, dtype=f32) * f32(0.01)
    return np.clip(image, 0.0, 1.0)


def make_synthetic(n_cases: int = 600, image_size: int = 32, seed: int = 0) -> Manifest:
    """A SYNTHETIC multi-instance dataset of ``n_cases`` cases (see the module docstring).

    Returns a ``multiclass`` :class:`Manifest` named ``"synthetic"`` with the pixels in
    memory (``image`` = ``"array:<i>"``, pixels ``uint8 (N, image_size, image_size, 3)``),
    ``case_id`` ``"case-00017"``, ``source`` ``"site-A"``/``"site-B"``, empty ``view`` and
    ``official_split``. The same arguments always give the same dataset.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    case_rng, view_rng, pixel_rng = rng.spawn(3)
    cases = _draw_cases(n_cases, case_rng)
    case_of_image = np.repeat(np.arange(n_cases), cases["n_images"])
    n_images = len(case_of_image)
    per_image = {k: _f32(v[case_of_image]) for k, v in cases.items() if k != "n_images"}
    views = {k: _f32(v) for k, v in _draw_views(n_images, view_rng).items()}
    labels = cases["label"][case_of_image]
    sites = cases["site"][case_of_image]

    chunk = max(1, _CHUNK_PIXELS // (image_size * (2 if image_size <= 64 else 1)) ** 2)
    pixels = np.empty((n_images, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, n_images, chunk):
        part = slice(start, min(start + chunk, n_images))
        img = _render(
            {k: v[part] for k, v in per_image.items()},
            {k: v[part] for k, v in views.items()},
            labels[part],
            sites[part],
            image_size,
            pixel_rng,
        )
        pixels[part] = np.round(img * 255.0).astype(np.uint8)

    table = pd.DataFrame(
        {
            "image": [f"array:{i}" for i in range(n_images)],
            "case_id": [f"case-{c:05d}" for c in case_of_image],
            "source": np.asarray(SYNTHETIC_SOURCES)[sites],
            "view": "",
            "official_split": "",
        }
    )
    manifest = Manifest(
        SYNTHETIC_NAME,
        table,
        labels,
        list(SYNTHETIC_CLASSES),
        "multiclass",
        pixels=pixels,
    )
    manifest.warnings.append(
        "synthetic: procedurally generated demo images (4 shape classes, 2 sites), not medical "
        "data; results on it say nothing about any clinical task"
    )
    return manifest
