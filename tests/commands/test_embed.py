"""``medssl embed``: backbone features equal the backbone run by hand; retrieval; bad inputs."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch
import torchvision
from PIL import Image
from torch import nn

import medssl
from helpers.data import write_ham_layout
from helpers.runs import tiny_finetune_config, tiny_pretrain_config
from medssl.case_ids import hash_case_ids, run_salt
from medssl.cli import main
from medssl.embedding import read_embeddings
from medssl.inference import load_classifier
from medssl.train.common import load_eval_data
from medssl.train.finetune import finetune
from medssl.train.pretrain import pretrain

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, written out


def by_hand(net: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """``net`` on ``(N, H, W, 3)`` uint8 images, normalised here, in eval mode."""
    x = torch.from_numpy(np.asarray(pixels)).permute(0, 3, 1, 2).double() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.eval()(x.float()).numpy()


def small_stem_resnet18() -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool or fc, built here."""
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool, net.fc = nn.Identity(), nn.Identity()
    return net


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A small-stem ResNet-18 weights file with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    net = small_stem_resnet18()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "backbone.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(path))
    return path, net.eval()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """Six 16x16 PNGs, a CSV listing them with two images per patient, and their pixels."""
    folder = tmp_path_factory.mktemp("pictures")
    pixels = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"img{i}.png")
    csv = folder.parent / f"{folder.name}.csv"
    frame = pd.DataFrame({
        "image": [str(folder / f"img{i}.png") for i in range(6)],
        "patient": [f"patient{i // 2}" for i in range(6)],
        "label": ["nv", "mel", "nv", "bkl", "mel", "nv"], "site": ["a", "b"] * 3,
    })  # fmt: skip
    frame.to_csv(csv, index=False)
    return folder, csv, pixels


@pytest.fixture(scope="module")
def ham(tmp_path_factory) -> Path:
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=24)


def test_features_of_a_weights_file_equal_the_backbone_run_by_hand(
    weights, pictures, tmp_path, capsys
):
    path, net = weights
    folder, csv, pixels = pictures
    out = tmp_path / "emb.parquet"
    args = ["embed", "--model", path, "--images", csv, "--case-column", "patient"]
    assert main([str(a) for a in [*args, "--image-size", "16", "--out", out, "--quiet"]]) == 0
    assert "6 embeddings (512 features" in capsys.readouterr().out
    table = pq.read_table(out)  # read with pyarrow, not medssl
    assert table.column_names == ["image", "case_id", "embedding"]
    features = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert features.shape == (6, 512)
    np.testing.assert_allclose(features, by_hand(net, pixels), rtol=1e-4, atol=1e-5)
    assert table.column("image").to_pylist() == [str(folder / f"img{i}.png") for i in range(6)]
    # case ids: HMAC-SHA256 under a salt beside the output (owner-only), never in clear
    salt_file = tmp_path / "emb.case_id_salt"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = bytes.fromhex(salt_file.read_text().strip())
    expected = [hmac.new(salt, f"patient{i // 2}".encode(), hashlib.sha256).hexdigest()[:32]
                for i in range(6)]  # fmt: skip
    assert table.column("case_id").to_pylist() == expected
    assert b"patient" not in out.read_bytes()
    meta = json.loads(table.schema.metadata[b"medssl"])
    assert (meta["kind"], meta["small_stem"], meta["case_ids"]) == ("file", True, "hmac-sha256")

    # .npy through the Python API: the same matrix, a sidecar CSV of the rows, the same ids
    npy = tmp_path / "emb.npy"
    result = medssl.embed(path, csv, npy, case_column="patient", image_size=16, progress=False)
    matrix = np.load(npy)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, features, rtol=1e-5, atol=1e-6)
    rows = pd.read_csv(tmp_path / "emb.images.csv")
    assert rows["image"].tolist() == result.images and rows["case_id"].tolist() == expected
    assert json.loads((tmp_path / "emb.meta.json").read_text())["feature_dim"] == 512


def test_finetune_run_embeds_as_evaluate_prepares_images(ham, tmp_path):
    """Features of a finetune run are its classifier's backbone on exactly the images
    evaluation scores (resized and cropped from 24x18), with the run's hashed case ids."""
    run = tmp_path / "ft"
    finetune(tiny_finetune_config(ham, run, epochs=1))
    files = sorted((ham / "HAM10000_images_part_1").glob("*.png"))[:8]
    csv = tmp_path / "list.csv"
    patients = [f"p{i // 2}" for i in range(len(files))]
    labels = ["nv", "mel", "bkl", "nv"] * 2
    pd.DataFrame({"image": [str(f) for f in files], "patient": patients,
                  "label": labels}).to_csv(csv, index=False)  # fmt: skip
    result = medssl.embed(run, csv, case_column="patient", progress=False)

    spec = medssl.DataSpec("csv", str(csv), {"csv_case": "patient"}).to_dict()
    _, _, pixels = load_eval_data(spec, 16, 1.0, str(tmp_path / "cache"), progress=False)
    classifier = load_classifier(run, 7, torch.device("cpu"))
    expected = by_hand(classifier.backbone.to(memory_format=torch.contiguous_format), pixels)
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-5)
    assert result.case_ids == hash_case_ids(np.array(patients), run_salt(run)).tolist()
    assert result.meta["kind"] == "finetune"


def test_retrieval_leaves_the_query_out_from_a_file_and_on_the_fly(ham, pictures, tmp_path, capsys):
    run = tmp_path / "pre"
    pretrain(tiny_pretrain_config(ham, run, epochs=1))
    folder, _, pixels = pictures
    # the pretraining run's backbone, loaded by hand from its safetensors
    net = torchvision.models.resnet18(weights=None)  # the tiny run's ImageNet stem
    net.fc = nn.Identity()
    net.load_state_dict(safetensors.torch.load_file(str(run / "backbone.safetensors")))
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--model", str(run), "--images", str(folder), "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    saved = read_embeddings(out)
    assert saved.images == [f"img{i}.png" for i in range(6)]
    np.testing.assert_allclose(saved.features, by_hand(net, pixels), rtol=1e-4, atol=1e-5)
    capsys.readouterr()

    query = folder / "img4.png"
    neighbours = tmp_path / "nn.csv"
    assert main(["embed", "--embeddings", str(out), "--query", str(query), "--top-k", "3",
                 "--neighbours-out", str(neighbours)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "nearest 3 (cosine)" in printed
    assert printed.splitlines()[1] == "  (the query itself, img4.png, is left out)"
    table = pd.read_csv(neighbours)
    assert "img4.png" not in table["image"].tolist() and len(table) == 3  # not its own neighbour
    assert table["distance"].is_monotonic_increasing
    # the similarities are the cosines of the features, computed here
    unit = saved.features / np.linalg.norm(saved.features, axis=1, keepdims=True)
    cosines = unit @ unit[4]
    assert table["image"].tolist() == [f"img{i}.png" for i in np.argsort(-cosines)[1:4]]
    np.testing.assert_allclose(table["similarity"], np.sort(cosines)[::-1][1:4], atol=1e-5)

    # on the fly (no file written), and through the API from the in-memory result
    assert main(["embed", "--model", str(run), "--images", str(folder), "--query", str(query),
                 "--top-k", "2", "--quiet", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert "img4.png" not in [n["image"] for n in summary["neighbours"]]
    api = medssl.nearest(query, saved, top_k=6)
    assert "img4.png" not in api["image"].tolist() and len(api) == 5  # the 5 others


def fails(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    """Run ``medssl argv``; assert exit 2 with one ``medssl: error:`` line; return it."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medssl: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_are_one_line(weights, pictures, tmp_path, capsys):
    path, _ = weights
    folder, csv, _ = pictures
    size = ["--image-size", "16", "--quiet"]
    line = fails(capsys, "embed", "--images", folder, "--out", tmp_path / "e.parquet")
    assert "--model is required" in line
    line = fails(capsys, "embed", "--model", path, "--images", folder, "--out", tmp_path / "e.csv")
    assert "unknown extension '.csv'" in line and not (tmp_path / "e.csv").exists()
    # an output that is an input: the .npy's sidecar would overwrite the image list read
    listing = tmp_path / "e.images.csv"
    listing.write_bytes(csv.read_bytes())
    line = fails(capsys, "embed", "--model", path, "--images", listing, "--out",
                 tmp_path / "e.npy", *size)  # fmt: skip
    assert "is the input --images" in line and listing.read_bytes() == csv.read_bytes()
    line = fails(capsys, "embed", "--model", path, "--images", csv, "--query", folder / "img0.png",
                 "--neighbours-out", csv, *size)  # fmt: skip
    assert "is the input --images" in line
    # a weights file of another stem is not silently half-loaded
    imagenet_stem = tmp_path / "imagenet_stem.pt"
    full = torchvision.models.resnet18(weights=None)
    torch.save({k: v for k, v in full.state_dict().items() if not k.startswith("fc.")},
               imagenet_stem)  # fmt: skip
    line = fails(capsys, "embed", "--model", imagenet_stem, "--images", folder, "--small-stem",
                 "--out", tmp_path / "x.parquet", *size)  # fmt: skip
    assert "conv1.weight" in line
    # the query must be embedded by the model that made the file
    out = tmp_path / "ok.parquet"
    assert main([str(a) for a in ["embed", "--model", path, "--images", folder, "--out", out,
                                  *size]]) == 0  # fmt: skip
    line = fails(capsys, "embed", "--embeddings", out, "--model", imagenet_stem,
                 "--query", folder / "img0.png")  # fmt: skip
    assert "not the model the embeddings were made with" in line
    # unreadable images: one line naming it, or left out and listed with --skip-unreadable
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("img0.png", "img1.png"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "bad.png").write_bytes(b"not a png")
    line = fails(capsys, "embed", "--model", path, "--images", broken, "--out",
                 tmp_path / "b.parquet", *size)  # fmt: skip
    assert "bad.png" in line and "--skip-unreadable" in line
    args = ["embed", "--model", path, "--images", broken, "--out", tmp_path / "b.parquet"]
    assert main([str(a) for a in [*args, "--skip-unreadable", *size]]) == 0
    assert pd.read_csv(tmp_path / "b.skipped.csv")["image"].tolist() == ["bad.png"]
    assert pq.read_table(tmp_path / "b.parquet").num_rows == 2


def test_a_timm_vit_checkpoint_embeds_as_timm_computes_it(pictures, tmp_path):
    """A ViT weights file in timm's own layout (classifier included, as public checkpoints
    ship it): the features are timm's pooled features of the same model, by hand."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=16,
                            patch_size=8)  # fmt: skip
    path = tmp_path / "vit.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in vit.state_dict().items()},
                                str(path))  # fmt: skip
    folder, _, pixels = pictures
    result = medssl.embed(path, folder, backbone="timm:test_vit", image_size=16, patch_size=8,
                          progress=False)  # fmt: skip
    vit.reset_classifier(0)
    np.testing.assert_allclose(result.features, by_hand(vit, pixels), rtol=1e-4, atol=1e-5)
    assert result.meta["patch_size"] == 8 and result.features.shape[1] == vit.num_features
    nearest = result.nearest(result.features[2], top_k=1)
    assert nearest["image"].tolist() == ["img2.png"]


def test_map_of_embeddings_by_class_and_source(weights, pictures, tmp_path, capsys):
    path, _ = weights
    _, csv, _ = pictures
    out, png = tmp_path / "emb.npy", tmp_path / "map.png"
    assert main([str(a) for a in ["embed", "--model", path, "--images", csv, "--image-size", "16",
                                  "--class-column", "label", "--source-column", "site",
                                  "--out", out, "--map", png, "--quiet"]]) == 0  # fmt: skip
    assert "t-SNE map of 6 embeddings" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = read_embeddings(out)  # the labels travel with the file
    assert saved.labels == {"class": ["nv", "mel", "nv", "bkl", "mel", "nv"],
                            "source": ["a", "b"] * 3}  # fmt: skip
    again = tmp_path / "again.png"
    assert main(["embed", "--embeddings", str(out), "--map", str(again)]) == 0
    assert again.is_file()
    line = fails(capsys, "embed", "--embeddings", out, "--map", tmp_path / "map.jpg")
    assert "give a .png file" in line


def test_tsne_keeps_separated_clusters_apart():
    from medssl.report.plots import embedding_map_coordinates

    rng = np.random.default_rng(0)
    centres = np.eye(8)[:2] * 10
    features = np.concatenate([c + rng.normal(size=(12, 8)) for c in centres])
    xy = embedding_map_coordinates(features, seed=0)
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(1)
    assert ((nearest < 12) == (np.arange(24) < 12)).all()


def test_a_timm_pretraining_run_embeds_as_its_exported_backbone(ham, pictures, tmp_path):
    import timm

    run = tmp_path / "vit-run"
    pretrain(tiny_pretrain_config(ham, run, epochs=1, backbone="timm:test_vit", patch_size=8))
    folder, _, pixels = pictures
    result = medssl.embed(run, folder, progress=False)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=16,
                            patch_size=8)  # fmt: skip
    vit.load_state_dict(safetensors.torch.load_file(str(run / "backbone.safetensors")))
    np.testing.assert_allclose(result.features, by_hand(vit, pixels), rtol=1e-4, atol=1e-5)
    assert (result.meta["kind"], result.meta["patch_size"]) == ("pretrain", 8)


def test_case_ids_of_a_weights_file_without_out_are_refused_before_embedding(
    weights, pictures, capsys, monkeypatch
):
    """--case-column with a weights file and no --out (no place for the salt) was refused
    only after every image was embedded."""
    import medssl.inference

    def no_decoding(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("images embedded before the options were checked")

    monkeypatch.setattr(medssl.inference, "decode_images", no_decoding)
    path, _ = weights
    folder, csv, _ = pictures
    line = fails(capsys, "embed", "--model", path, "--images", csv, "--case-column", "patient",
                 "--query", folder / "img0.png", "--image-size", "16", "--small-stem",
                 "--quiet")  # fmt: skip
    assert "--case-column with a weights file as --model" in line and "give --out" in line
