"""The margin behind tests/test_method_guard.py: SimCLR then MICLe (continuing from it) on the
demo's synthetic data; k-NN macro AUC of the random start, SimCLR and MICLe per seed.

    python bench/method_guard_margin.py CASES SIZE SIMCLR_EPOCHS MICLE_EPOCHS BATCH SEED...
    python bench/method_guard_margin.py 1200 32 16 6 128 0 1 2 3 4   # the demo's budget
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from medssl.data.spec import DataSpec
from medssl.demo import SYNTHETIC_VIEWS
from medssl.train.pretrain import PretrainConfig, pretrain


def one_seed(cases: int, size: int, simclr_epochs: int, micle_epochs: int, batch: int,
             seed: int) -> str:  # fmt: skip
    started, root = time.time(), Path(tempfile.mkdtemp())
    options = {"synthetic_cases": cases, "image_size": size}
    common = dict(
        data=DataSpec("synthetic", "", options).to_dict(), image_size=size, batch_size=batch,
        warmup_epochs=1.0, seed=seed, progress=False, augment_overrides=dict(SYNTHETIC_VIEWS),
        cache_dir=str(root / "cache"),
    )  # fmt: skip
    a = pretrain(PretrainConfig(
        out=str(root / "simclr"), method="simclr", epochs=simclr_epochs,
        knn_every=simclr_epochs, **common,
    ))  # fmt: skip
    b = pretrain(PretrainConfig(
        out=str(root / "micle"), method="micle", epochs=micle_epochs, knn_every=micle_epochs,
        init=str(root / "simclr"), **common,
    ))  # fmt: skip
    start, mid, end = a["knn_auc_macro_init"], a["knn_auc_macro"], b["knn_auc_macro"]
    return (
        f"seed {seed}: random {start:.3f} simclr {mid:.3f} micle {end:.3f} "
        f"gain {end - start:+.3f} ({time.time() - started:.0f}s)"
    )


def main() -> None:
    cases, size, simclr_epochs, micle_epochs, batch = (int(x) for x in sys.argv[1:6])
    for seed in (int(s) for s in sys.argv[6:]):
        print(one_seed(cases, size, simclr_epochs, micle_epochs, batch, seed), flush=True)


if __name__ == "__main__":
    main()
