"""Backbones, heads and checkpoint I/O (CPU only, small inputs, wide models on meta)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from medssl.errors import MedsslError
from medssl.models import checkpoint as ckpt
from medssl.models.backbones import BACKBONES, build_backbone, build_resnet
from medssl.models.checkpoint import (
    export_backbone,
    load_backbone_state,
    load_into_backbone,
    save_safetensors_atomic,
    save_state_dict_atomic,
)
from medssl.models.heads import Classifier, ProjectionHead, SimCLRModel


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_resnet(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_resnet(name)


def meta_backbone(name: str, small_images: bool = False) -> tuple[nn.Module, int]:
    with torch.device("meta"):
        return build_backbone(name, small_images=small_images)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


# --- backbones ---------------------------------------------------------------------------


def test_backbone_names() -> None:
    assert set(BACKBONES) == {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet50_2x",
        "resnet50_4x",
        "resnet152_2x",
    }


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_width_1_is_torchvision(name: str) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)()
    ours = meta_resnet(name)
    assert n_params(ours) == n_params(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


def test_param_counts_match_papers() -> None:
    # torchvision ResNet-50 with its 1000-class fc: 25.6M.
    assert n_params(meta_resnet("resnet50")) == 25_557_032
    # SimCLR (Chen et al. 2020, table 6) counts the backbone without fc:
    # ResNet-50 1x 24M, 2x 94M, 4x 375M.
    assert round(n_params(meta_backbone("resnet50")[0]) / 1e6) == 24
    assert round(n_params(meta_backbone("resnet50_2x")[0]) / 1e6) == 94
    assert round(n_params(meta_backbone("resnet50_4x")[0]) / 1e6) == 375
    # With a 1000-class fc on 8192 features the 4x net is 375.4M + 8.2M.
    assert n_params(meta_resnet("resnet50_4x")) == 375_378_176 + 8192 * 1000 + 1000
    assert 230e6 < n_params(meta_backbone("resnet152_2x")[0]) < 235e6


def test_width_multiplier_widens_every_stage_and_stem() -> None:
    base, _ = meta_backbone("resnet50")
    wide, _ = meta_backbone("resnet50_4x")
    assert wide.conv1.weight.shape == (256, 3, 7, 7)
    assert wide.bn1.weight.shape == (256,)
    base_state, wide_state = base.state_dict(), wide.state_dict()
    assert base_state.keys() == wide_state.keys()  # torchvision key layout kept
    for key, t in base_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        w = wide_state[key]
        expected = (t.shape[0] * 4,) + ((t.shape[1] * 4,) if t.dim() == 4 else ())
        if t.dim() == 4 and key == "conv1.weight":
            expected = (t.shape[0] * 4, 3)  # the image has 3 channels whatever the width
        assert tuple(w.shape[: len(expected)]) == expected, key


@pytest.mark.parametrize(
    ("name", "dim"),
    [
        ("resnet18", 512),
        ("resnet34", 512),
        ("resnet50", 2048),
        ("resnet50_2x", 4096),
        ("resnet50_4x", 8192),
        ("resnet152_2x", 4096),
    ],
)
def test_feature_dims(name: str, dim: int) -> None:
    backbone, feat_dim = meta_backbone(name)
    assert feat_dim == dim
    assert isinstance(backbone.fc, nn.Identity)
    assert "fc.weight" not in backbone.state_dict()


def test_forward_shapes_small_stem() -> None:
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", small_images=True)
    assert backbone.conv1.weight.shape == (64, 3, 3, 3)
    assert backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, dim)
        # The stem keeps 32 px: layer4 then sees 4x4 (vs 1x1 with the ImageNet stem).
        x = backbone.relu(backbone.bn1(backbone.conv1(torch.randn(1, 3, 32, 32))))
        assert x.shape == (1, 64, 32, 32)


def test_forward_wide_tiny() -> None:
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet50_2x", small_images=True)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 8, 8)).shape == (1, dim) == (1, 4096)


def test_unknown_backbone() -> None:
    with pytest.raises(MedsslError) as err:
        build_backbone("resnet50x2")
    msg = str(err.value)
    assert "resnet50x2" in msg and "resnet50_2x" in msg and "resnet18" in msg
    assert "\n" not in msg


# --- heads -------------------------------------------------------------------------------


def test_projection_head_and_simclr_model() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(512)
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert layers[0].out_features == 512 and layers[3].out_features == 128
    assert layers[3].bias is None

    backbone, dim = build_backbone("resnet18", small_images=True)
    model = SimCLRModel(backbone, dim, hidden_dim=256, out_dim=64)
    x = torch.randn(3, 3, 16, 16)
    assert model(x).shape == (3, 64)
    assert model.features(x).shape == (3, 512)
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"backbone", "head"}


def test_projection_head_output_bn_is_scale_only_batch_norm() -> None:
    """SimCLR's reference head: a batch norm on the output layer too, a learned scale and no
    shift (center=False); it trains, its shift stays zero, also after the distributed
    batch-norm conversion."""
    from medssl.train.distributed import convert_batchnorm_for_distributed

    torch.manual_seed(0)
    head = ProjectionHead(32, out_dim=8, output_bn=True)
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear,
                                         nn.BatchNorm1d]  # fmt: skip
    out_bn = layers[-1]
    assert out_bn.num_features == 8 and out_bn.weight.requires_grad
    assert not out_bn.bias.requires_grad and not out_bn.bias.any()
    z = head(torch.randn(16, 32))
    assert z.shape == (16, 8)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), rtol=0, atol=1e-5)  # normalised
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=0.5)
    (head(torch.randn(16, 32)) * torch.randn(16, 8)).sum().backward()
    optimizer.step()
    assert not out_bn.bias.any() and not torch.equal(out_bn.weight, torch.ones(8))
    converted = convert_batchnorm_for_distributed(head)
    assert not converted.net[-1].bias.requires_grad and converted.net[-1].weight.requires_grad
    # off (the default) is the head of before: its checkpoints have no output-BN keys
    assert not any(k.startswith("net.4") for k in ProjectionHead(32).state_dict())


def test_classifier_frozen_backbone() -> None:
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", small_images=True)
    model = Classifier(backbone, dim, num_classes=7, freeze_backbone=True)
    model.train()
    assert not model.backbone.training and model.fc.training
    stats = model.backbone.bn1.running_mean.clone()
    out = model(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 7)
    out.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.fc.weight.grad is not None
    assert torch.equal(model.backbone.bn1.running_mean, stats)  # BN stats untouched

    trainable = Classifier(*build_backbone("resnet18", small_images=True), num_classes=2)
    trainable.train()
    assert trainable.backbone.training
    assert all(p.requires_grad for p in trainable.parameters())


# --- checkpoint loading ------------------------------------------------------------------


def fresh_r18() -> nn.Module:
    backbone, _ = build_backbone("resnet18")
    return backbone


def test_load_plain_torchvision(tmp_path: Path, r18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "r18.pth"
    torch.save(r18_state, path)
    state = load_backbone_state(path)
    assert "fc.weight" not in state and "fc.bias" not in state
    backbone = fresh_r18()
    load_into_backbone(backbone, state, str(path))
    loaded = backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in r18_state.items() if not k.startswith("fc."))


def test_load_simclr_converted(tmp_path: Path, r18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "simclr.pth"
    nested = {"module.encoder." + k: v for k, v in r18_state.items()}
    nested["module.projection_head.0.weight"] = torch.zeros(2, 2)
    torch.save({"state_dict": nested, "epoch": 100}, path)
    state = load_backbone_state(path)
    expected = {k: v for k, v in r18_state.items() if not k.startswith("fc.")}
    assert same_state(state, expected)


def test_load_medssl_checkpoint_and_run_dir(
    tmp_path: Path, r18_state: dict[str, torch.Tensor]
) -> None:
    backbone = fresh_r18()
    backbone.load_state_dict({k: v for k, v in r18_state.items() if not k.startswith("fc.")})
    model = SimCLRModel(backbone, 512)
    save_state_dict_atomic({"model": model.state_dict(), "step": 3}, tmp_path / "last.pt")
    state = load_backbone_state(tmp_path / "last.pt")
    assert same_state(state, backbone.state_dict())

    clf = Classifier(backbone, 512, num_classes=5)
    save_state_dict_atomic({"model": clf.state_dict()}, tmp_path / "clf.pt")
    assert same_state(load_backbone_state(tmp_path / "clf.pt"), backbone.state_dict())

    run = tmp_path / "run"
    export_backbone(backbone, run)
    assert (run / "backbone.safetensors").is_file() and (run / "backbone.pt").is_file()
    assert same_state(load_backbone_state(run), backbone.state_dict())
    assert same_state(load_backbone_state(run / "backbone.pt"), backbone.state_dict())


def test_round_trip_identical(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source, _ = build_backbone("resnet18", small_images=True)
    with torch.no_grad():  # make BN stats non-trivial
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    export_backbone(source, tmp_path)
    target, _ = build_backbone("resnet18", small_images=True)
    load_into_backbone(target, load_backbone_state(tmp_path), str(tmp_path))
    assert same_state(target.state_dict(), source.state_dict())


def test_export_loads_into_torchvision(tmp_path: Path) -> None:
    torch.manual_seed(2)
    backbone = fresh_r18()
    path = export_backbone(backbone, tmp_path, metadata={"backbone": "resnet18"})
    state = safetensors.torch.load_file(str(path))
    assert not any(k.startswith("fc.") for k in state)
    tv = torchvision.models.resnet18()
    result = tv.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    assert torch.equal(tv.layer4[1].conv2.weight, backbone.layer4[1].conv2.weight)
    pt_state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert same_state(pt_state, state)


def test_mismatched_keys_error(tmp_path: Path, r18_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in r18_state.items() if not k.startswith("fc.")}
    del state["layer1.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    backbone = fresh_r18()
    with pytest.raises(MedsslError) as err:
        load_into_backbone(backbone, state, "ckpt.pth")
    msg = str(err.value)
    assert "\n" not in msg
    assert "ckpt.pth" in msg
    assert "1 missing: layer1.0.conv1.weight" in msg
    assert "1 unexpected: layer9.weight" in msg

    # Wrong architecture: many keys, listing capped with a count.
    r34, _ = meta_backbone("resnet34")
    with pytest.raises(MedsslError) as err:
        load_into_backbone(r34, load_state_without_fc(r18_state), "r18.pth")
    msg = str(err.value)
    assert "\n" not in msg and "missing" in msg and "more)" in msg


def load_state_without_fc(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_small_stem_conv1_mismatch(r18_state: dict[str, torch.Tensor]) -> None:
    state = load_state_without_fc(r18_state)
    small, _ = build_backbone("resnet18", small_images=True)
    with pytest.raises(MedsslError) as err:
        load_into_backbone(small, state, "imagenet.pth")
    msg = str(err.value)
    assert "conv1.weight [64, 3, 7, 7] vs model [64, 3, 3, 3]" in msg
    assert "drop_mismatched_conv1" in msg and "\n" not in msg

    own_conv1 = small.conv1.weight.detach().clone()
    load_into_backbone(small, state, "imagenet.pth", drop_mismatched_conv1=True)
    assert torch.equal(small.conv1.weight, own_conv1)
    assert torch.equal(small.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_num_batches_tracked_ignored(r18_state: dict[str, torch.Tensor]) -> None:
    state = {
        k: v
        for k, v in load_state_without_fc(r18_state).items()
        if not k.endswith("num_batches_tracked")
    }
    load_into_backbone(fresh_r18(), state, "no-nbt.pth")


def test_pickled_object_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "obj": _Opaque()}, path)
    with pytest.raises(MedsslError) as err:
        load_backbone_state(path)
    msg = str(err.value)
    assert str(path) in msg and "the file holds pickled objects" in msg and "_Opaque" in msg
    assert "weights_only" not in msg
    assert "\n" not in msg


class _Opaque:
    """A class weights_only loading must refuse."""


def test_unreadable_and_not_state_dict(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 4)
    not_sd = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_sd)
    heads_only = tmp_path / "heads.pt"
    torch.save({"head.0.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, heads_only)
    for path in (junk, bad_st, not_sd, heads_only, tmp_path / "missing.pt", tmp_path):
        with pytest.raises(MedsslError) as err:
            load_backbone_state(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- atomic saves ------------------------------------------------------------------------


def test_atomic_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_state_dict_atomic({"w": torch.ones(3)}, path)

    def broken_save(obj: object, f: BinaryIO) -> None:  # medssl saves into a file object
        f.write(b"half a checkp")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict_atomic({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp files left


def test_atomic_safetensors_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    save_safetensors_atomic({"w": torch.ones(2)}, path)

    def broken(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"\x01\x02")
        raise RuntimeError("killed")

    monkeypatch.setattr(ckpt.safetensors.torch, "save_file", broken)
    with pytest.raises(RuntimeError, match="killed"):
        save_safetensors_atomic({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(safetensors.torch.load_file(str(path))["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_safetensors_shared_and_noncontiguous(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"a": base, "tied": base, "t": base.t(), "row": base[1]}
    path = save_safetensors_atomic(tensors, tmp_path / "s.safetensors")
    back = safetensors.torch.load_file(str(path))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


_EXPORT_ONE = """
import sys
import torch
from medssl.models.backbones import build_backbone
from medssl.models.checkpoint import export_backbone

torch.manual_seed(0)
backbone, _ = build_backbone("resnet18", small_images=True)
meta = {"backbone": "resnet18", "small_stem": "True", "image_size": "16", "patch_size": "0",
        "note": "caf\\u00e9 \\\\ \\"q\\""}
export_backbone(backbone, sys.argv[1], metadata=meta)
"""


def test_exported_backbone_files_are_byte_identical_across_runs(tmp_path: Path) -> None:
    """Two exports of the same weights (here: two processes) write the same bytes, so a
    file hash verifies a reproduction: safetensors' metadata is sorted (its Rust writer
    orders a hash map), backbone.pt is written without the temporary file's name."""
    import hashlib
    import json
    import subprocess
    import sys

    from safetensors import safe_open

    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", _EXPORT_ONE, str(tmp_path / name)], check=True)
    for file in ("backbone.safetensors", "backbone.pt"):
        a, b = ((tmp_path / n / file).read_bytes() for n in ("a", "b"))
        assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest(), file
    path = tmp_path / "a" / "backbone.safetensors"
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata()["note"] == 'caf\u00e9 \\ "q"'
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    state = ckpt.load_backbone_state(path)
    pt = torch.load(tmp_path / "a" / "backbone.pt", weights_only=True)
    assert state.keys() == pt.keys() and all(torch.equal(state[k], pt[k]) for k in state)
