"""Guard of the method itself: a short SimCLR -> MICLe pretraining must beat a random backbone.

Unit tests check the augmentations, the pair sampler and the loss one by one; this test
catches a regression that leaves each of them plausible but the method broken. It runs the
demo's own pretraining (1,200 synthetic cases, 32 px, batch 64, SimCLR 16 epochs then MICLe
6 more, about 90 s on a 2-core CPU) and asks the k-NN macro AUC on the validation split to
rise over the random start by a margin.

The margin was measured over five seeds (docs/RESULTS.md, "The demo on synthetic data"):
MICLe - random start = +0.168, +0.145, +0.183, +0.201, +0.267 (SimCLR alone -0.04 to +0.18,
so the test asks nothing of SimCLR alone). The threshold is under half the smallest of them.
"""

from __future__ import annotations

from pathlib import Path

from medssl.data.spec import DataSpec
from medssl.demo import SYNTHETIC_VIEWS, demo_protocol
from medssl.train.pretrain import PretrainConfig, pretrain

MIN_GAIN = 0.07


def test_short_micle_pretraining_beats_the_random_backbone(tmp_path: Path) -> None:
    protocol = demo_protocol()
    data = protocol["data"]
    common = dict(
        data=DataSpec(data["dataset"], data["root"], data["options"]).to_dict(),
        image_size=protocol["image_size"], augment_overrides=dict(SYNTHETIC_VIEWS),
        batch_size=protocol["pretrain"]["simclr"]["batch_size"],
        warmup_epochs=protocol["pretrain"]["simclr"]["warmup_epochs"], seed=0,
        progress=False, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    simclr_epochs = protocol["pretrain"]["simclr"]["epochs"]
    micle_epochs = protocol["pretrain"]["micle"]["epochs"]
    simclr = pretrain(PretrainConfig(
        out=str(tmp_path / "simclr"), method="simclr", epochs=simclr_epochs,
        knn_every=simclr_epochs, **common,
    ))  # fmt: skip
    micle = pretrain(PretrainConfig(
        out=str(tmp_path / "micle"), method="micle", epochs=micle_epochs,
        knn_every=micle_epochs, init=str(tmp_path / "simclr"), **common,
    ))  # fmt: skip
    start, end = simclr["knn_auc_macro_init"], micle["knn_auc_macro"]
    assert micle["distinct_pair_share"] > 0.3  # MICLe pairs two images of a case
    assert end - start >= MIN_GAIN, (
        f"k-NN macro AUC {start:.3f} (random) -> {simclr['knn_auc_macro']:.3f} (SimCLR) -> "
        f"{end:.3f} (MICLe): the method no longer learns"
    )
