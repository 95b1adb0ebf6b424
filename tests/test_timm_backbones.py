"""timm backbones (``--backbone timm:<name>``) with local checkpoints in timm's layout.

Every checkpoint here is made by the test (helpers.timm_checkpoints): timm's own tiny test
models, a ViT (16 px, patch 8: a 2 x 2 grid) and a ConvNeXt (32 px), so each run takes seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml

from helpers.data import write_ham_layout
from helpers.runs import tiny_finetune_config, tiny_pretrain_config
from helpers.timm_checkpoints import TINY_CONVNEXT, TINY_VIT, save_timm_checkpoint, timm_model
from medssl.cli import main
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.models.backbones import backbone_traits, build_backbone
from medssl.models.checkpoint import load_backbone_weights, read_checkpoint
from medssl.train import distributed as dist
from medssl.train.finetune import BEST, finetune
from medssl.train.pretrain import PretrainConfig, pretrain

MODELS = {"vit": TINY_VIT, "convnext": TINY_CONVNEXT}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _without(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k != head and not k.startswith(head + ".")}


@pytest.mark.parametrize("kind", ["vit", "convnext"])
@pytest.mark.parametrize(
    "file, wrap", [("w.safetensors", None), ("w.pth", None), ("w.pth", "state_dict"),
                   ("w.pt", "model")],
)  # fmt: skip
def test_a_timm_checkpoint_loads_exactly_without_its_classifier(tmp_path, kind, file, wrap):
    """timm's key layout, classifier dropped (ViT's ``head``; ConvNeXt's ``head.fc``, while
    its ``head.norm`` is part of the pooled features and is loaded)."""
    backbone, size, patch = MODELS[kind]
    kwargs = {"img_size": size, "patch_size": patch} if patch else {}
    saved = save_timm_checkpoint(tmp_path / file, backbone, wrap=wrap, **kwargs)
    model, width = build_backbone(backbone, image_size=size, patch_size=patch)
    load_backbone_weights(model, tmp_path / file)
    head = "head" if kind == "vit" else "head.fc"
    _same(model.state_dict(), _without(saved, head))
    assert width == saved[f"{head}.weight"].shape[1] and model(
        torch.rand(2, 3, size, size)
    ).shape == (2, width)
    if kind == "convnext":
        assert "head.norm.weight" in model.state_dict()


def test_vit_checkpoint_at_another_image_and_patch_size_is_resampled_with_timms_helpers(tmp_path):
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    backbone = TINY_VIT[0]
    saved = save_timm_checkpoint(tmp_path / "w.safetensors", backbone, img_size=64, patch_size=16)
    model, _ = build_backbone(backbone, image_size=16, patch_size=8)  # grid 4x4 -> 2x2
    load_backbone_weights(model, tmp_path / "w.safetensors")
    got = model.state_dict()
    expected_pos = resample_abs_pos_embed(saved["pos_embed"], [2, 2], num_prefix_tokens=1)
    expected_proj = resample_patch_embed(saved["patch_embed.proj.weight"], [8, 8])
    assert got["pos_embed"].shape == (1, 5, saved["pos_embed"].shape[-1])
    torch.testing.assert_close(got["pos_embed"], expected_pos, rtol=0, atol=0)
    torch.testing.assert_close(got["patch_embed.proj.weight"], expected_proj, rtol=0, atol=0)
    rest = {k for k in got if k not in ("pos_embed", "patch_embed.proj.weight")}
    _same({k: got[k] for k in rest}, {k: saved[k] for k in rest})


def test_a_wrong_architecture_checkpoint_is_one_line_naming_the_keys(tmp_path):
    save_timm_checkpoint(tmp_path / "convnext.safetensors", TINY_CONVNEXT[0])
    vit, _ = build_backbone(TINY_VIT[0], image_size=16, patch_size=8)
    with pytest.raises(MedsslError) as info:
        load_backbone_weights(vit, tmp_path / "convnext.safetensors")
    message = str(info.value)
    assert "\n" not in message and "does not fit the backbone" in message
    assert (
        "missing: cls_token, pos_embed" in message
        and "unexpected: stages.0.blocks.0.conv_dw.bias" in message
    )
    assert "is it a checkpoint of this timm architecture (VisionTransformer" in message
    assert "convnext.safetensors" in message
    # a torchvision ResNet checkpoint into a timm model: the same one line
    resnet, _ = build_backbone("resnet18")
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(MedsslError, match=r"r18.pth does not fit the backbone: .*conv1.weight"):
        load_backbone_weights(vit, tmp_path / "r18.pth")


@pytest.mark.parametrize(
    "call, problem",
    [
        (lambda: build_backbone("timm:vit_tiny_patch16_224", image_size=30),
         "--image-size 30 is not a multiple of the patch size 16 of timm:vit_tiny_patch16_224"),
        (lambda: build_backbone("timm:test_convnext", image_size=16),
         "--image-size 16 is smaller than timm:test_convnext's downsampling (32 px"),
        (lambda: build_backbone("timm:test_convnext", patch_size=8),
         "--patch-size 8: timm:test_convnext has no patch size"),
        (lambda: build_backbone("timm:test_vitt"), "timm:test_vitt: timm 1.0"),
        (lambda: build_backbone("timm:test_vit", small_images=True), "--small-stem is for"),
        (lambda: build_backbone("resnet18", patch_size=8), "--patch-size 8: resnet18 has no"),
    ],
)  # fmt: skip
def test_bad_timm_settings_are_one_line(call, problem):
    with pytest.raises(MedsslError) as info:
        call()
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_optimiser_defaults_follow_the_backbone_family(tmp_path):
    """lars (SimCLR's settings) for batch norm, adamw (linear scaling, wd 0.05) for layer
    norm; what the user sets wins; config files record the resolved choice."""
    spec = DataSpec("ham10000", str(write_ham_layout(tmp_path / "ham", n_lesions=6))).to_dict()

    def resolved(**kw):  # noqa: ANN003, ANN202
        return PretrainConfig(data=spec, out=str(tmp_path / "o"), image_size=32, **kw).resolved()

    chosen = {
        b: (c.optimizer, c.lr, c.lr_scaling, c.weight_decay)
        for b in ("resnet18", "timm:test_efficientnet", "timm:test_vit", "timm:test_convnext")
        for c in [resolved(backbone=b)]
    }
    assert chosen == {
        "resnet18": ("lars", 0.075, "sqrt", 1e-6),
        "timm:test_efficientnet": ("lars", 0.075, "sqrt", 1e-6),
        "timm:test_vit": ("adamw", 5e-4, "linear", 0.05),
        "timm:test_convnext": ("adamw", 5e-4, "linear", 0.05),
    }
    vit_lars = resolved(backbone="timm:test_vit", optimizer="lars", lr=0.01)
    assert (vit_lars.optimizer, vit_lars.lr, vit_lars.weight_decay) == ("lars", 0.01, 1e-6)
    assert resolved(backbone="timm:test_vit").patch_size == 16  # the model's own, recorded
    assert backbone_traits("timm:test_vit", 32, 8).patch_size == 8


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module", params=["vit", "convnext"])
def timm_runs(request, tmp_path_factory):
    """checkpoint (timm layout, a ViT made at 32 px) -> 1-epoch MICLe -> fine-tune and probe."""
    backbone, size, patch = MODELS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    root = write_ham_layout(tmp / "ham", n_lesions=24)
    kwargs = {"img_size": 2 * size, "patch_size": patch} if patch else {}
    saved = save_timm_checkpoint(tmp / "public.safetensors", backbone, **kwargs)
    arch = {"backbone": backbone, "image_size": size}
    pretrain(tiny_pretrain_config(
        root, tmp / "micle", **arch, patch_size=patch, epochs=1, lr=None,
        init=str(tmp / "public.safetensors"),
    ))  # fmt: skip
    finetune(
        tiny_finetune_config(root, tmp / "ft", init=str(tmp / "micle"), image_size=size, epochs=1)
    )
    finetune(tiny_finetune_config(
        root, tmp / "probe", init=str(tmp / "micle"), image_size=size, epochs=1, linear_probe=True
    ))  # fmt: skip
    return {"root": root, "tmp": tmp, "saved": saved, "backbone": backbone, "size": size,
            "patch": patch, "kind": request.param}  # fmt: skip


def test_micle_from_a_timm_checkpoint_records_its_choices_and_exports_timms_layout(timm_runs):
    run = timm_runs["tmp"] / "micle"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["backbone"] == timm_runs["backbone"] and config["method"] == "micle"
    assert (config["optimizer"], config["lr"], config["weight_decay"]) == ("adamw", 5e-4, 0.05)
    assert config["patch_size"] == timm_runs["patch"]
    exported = read_checkpoint(run / "backbone.safetensors")
    kwargs = (
        {"img_size": timm_runs["size"], "patch_size": timm_runs["patch"]}
        if timm_runs["patch"]
        else {}
    )
    plain = timm_model(timm_runs["backbone"], num_classes=0, **kwargs)
    assert plain.load_state_dict(exported, strict=True)  # timm's own layout, as is
    # the checkpoint was loaded (and MICLe then moved it): a random start is further away
    head = "head" if timm_runs["kind"] == "vit" else "head.fc"
    start = _without(timm_runs["saved"], head)
    key = next(k for k in exported if exported[k].ndim >= 2 and exported[k].shape == start[k].shape)
    assert (exported[key] - start[key]).abs().max() < 0.1 * start[key].abs().max(), key


def test_finetune_and_linear_probe_from_the_micle_run(timm_runs):
    tmp = timm_runs["tmp"]
    for name in ("ft", "probe"):
        config = yaml.safe_load((tmp / name / "config.yaml").read_text())
        assert (
            config["backbone"] == timm_runs["backbone"]
            and config["patch_size"] == timm_runs["patch"]
        )
        assert json.loads((tmp / name / "metrics.json").read_text())["status"] == "complete"
    probe = read_checkpoint(tmp / "probe" / BEST)["model"]
    backbone = {
        k.removeprefix("backbone."): v for k, v in probe.items() if k.startswith("backbone.")
    }
    _same(backbone, read_checkpoint(tmp / "micle" / "backbone.safetensors"))  # frozen


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_evaluate_predict_and_export_of_a_timm_classifier_agree(timm_runs, tmp_path, capsys):
    import onnxruntime

    from medssl.commands.export import export_model
    from medssl.data.imageio import read_image, resize_square
    from medssl.prediction import predict_images

    run, size = timm_runs["tmp"] / "ft", timm_runs["size"]
    assert main(["evaluate", "--model", str(run), "--split", "test", "--n-boot", "5"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    files = sorted((timm_runs["root"] / "HAM10000_images_part_1").glob("*.png"))[:5]
    expected = torch.from_numpy(predict_images(run, files, progress=False).probs)
    pixels = np.stack([resize_square(read_image(f, min_side=size), size) for f in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    tolerance = {"rtol": 1e-4, "atol": 1e-5}  # float32 rounding: other kernels, same graph
    export_model(run, "torchscript", tmp_path / "m.pt")
    with torch.no_grad():
        scripted = torch.jit.load(str(tmp_path / "m.pt"))(images)
    torch.testing.assert_close(scripted, expected, **tolerance)
    meta = export_model(run, "onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(
        str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]
    )
    (probs,) = session.run(None, {meta["input_name"]: images.float().numpy() / 255})
    torch.testing.assert_close(torch.from_numpy(probs), expected, **tolerance)
    assert meta["backbone"] == timm_runs["backbone"]


def test_knn_compares_the_timm_run_with_a_random_timm_backbone(timm_runs):
    from medssl.commands.knn import compare_backbones

    spec = DataSpec("ham10000", str(timm_runs["root"])).to_dict()
    result = compare_backbones(
        spec, [str(timm_runs["tmp"] / "micle")], n_boot=5, device="cpu", progress=False,
        cache_dir=str(timm_runs["root"] / "cache"),
    )  # fmt: skip
    assert result["backbone"] == timm_runs["backbone"] and result["image_size"] == timm_runs["size"]
    assert set(result["scores"]) == {"random", "micle"}


def test_cli_pretrain_with_a_wrong_architecture_init_is_one_line(tmp_path, capsys):
    root = write_ham_layout(tmp_path / "ham", n_lesions=6)
    save_timm_checkpoint(tmp_path / "convnext.safetensors", TINY_CONVNEXT[0])
    code = main([
        "pretrain", "--dataset", "ham10000", "--root", str(root), "--out", str(tmp_path / "r"),
        "--backbone", "timm:test_vit", "--image-size", "16", "--patch-size", "8",
        "--init", str(tmp_path / "convnext.safetensors"), "--epochs", "1", "--batch-size", "4",
        "--num-workers", "0", "--device", "cpu", "--quiet", "--cache-dir", str(root / "cache"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "does not fit the backbone" in err and "cls_token" in err
    assert "stages.0.blocks.0.conv_dw" in err
    assert not (tmp_path / "r").exists()


def test_finetune_from_a_vit_run_with_another_backbone_does_not_blame_its_patch_size(
    tmp_path, capsys
):
    """--init <ViT run> --backbone resnet18 took the run's patch size for resnet18 and blamed
    "--patch-size 8", an option never typed; now the weights that do not fit are named."""
    root = write_ham_layout(tmp_path / "ham", n_lesions=6)
    common = [
        "--dataset", "ham10000", "--root", str(root), "--image-size", "16", "--epochs", "1",
        "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--quiet",
        "--cache-dir", str(root / "cache"), "--precision", "fp32",
    ]  # fmt: skip
    vit = tmp_path / "vit"
    assert main(["pretrain", *common, "--out", str(vit), "--backbone", TINY_VIT[0],
                 "--patch-size", "8"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "ft"
    code = main(["finetune", *common, "--out", str(out), "--init", str(vit),
                 "--backbone", "resnet18"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "patch" not in err and f"checkpoint {vit} does not fit the backbone" in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- distributed


def test_global_batch_norm_keeps_timms_fused_activations_and_leaves_layer_norm_alone():
    """EfficientNet's BatchNormAct2d (norm + SiLU in one module) stays norm + SiLU; a ViT has
    no batch norm, so only the projection head's batch norms are converted."""
    from medssl.models.heads import SimCLRModel

    net, width = build_backbone("timm:test_efficientnet")
    model = SimCLRModel(net, width).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        converted = dist.convert_batchnorm_for_distributed(model).eval()
        torch.testing.assert_close(converted(x), before, rtol=0, atol=0)
        converted.train()
        model.train()
        torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-6)
    _same(converted.state_dict(), model.state_dict())
    assert any(isinstance(m, dist.GlobalBatchNormAct) for m in converted.modules())

    vit, width = build_backbone("timm:test_vit", image_size=16, patch_size=8)
    model = dist.convert_batchnorm_for_distributed(SimCLRModel(vit, width))
    kinds = {type(m).__name__ for m in model.backbone.modules()}
    assert "GlobalBatchNorm" not in kinds and "LayerNorm" in kinds
    assert any(isinstance(m, dist.GlobalBatchNorm) for m in model.head.modules())
    assert asdict(backbone_traits("timm:test_vit", 16, 8)) == {"batch_norm": False, "patch_size": 8}


def test_a_sweep_compares_a_timm_checkpoint_frozen_and_finetuned_with_random_and_micle(
    tmp_path, monkeypatch
):
    """The foundation-model workflow: the public checkpoint continued with MICLe, both
    fine-tuned and probed, beside random, in one protocol."""
    import pandas as pd

    import medssl.report
    from medssl.sweep import run_sweep

    # the report is another test's subject (at one fraction and one seed on 6 test images
    # its error bars can fail on a point estimate outside the bootstrap interval)
    monkeypatch.setattr(medssl.report, "write_report", lambda *a, **k: None)

    backbone, size, patch = TINY_VIT
    root = write_ham_layout(tmp_path / "ham", n_lesions=24)
    save_timm_checkpoint(tmp_path / "public.safetensors", backbone, img_size=32, patch_size=patch)
    common = {"cache_dir": str(root / "cache"), "precision": "fp32", "num_workers": 0}
    protocol = {
        "data": DataSpec("ham10000", str(root)).to_dict(), "backbone": backbone,
        "image_size": size, "patch_size": patch, "device": "cpu",
        "pretrain": {"micle": {"method": "micle", "epochs": 1, "batch_size": 8,
                               "init": str(tmp_path / "public.safetensors"), **common}},
        "inits": ["random", {"public": str(tmp_path / "public.safetensors")}, "micle"],
        "label_fractions": [1.0], "seeds": [0], "finetune_modes": ["finetune", "linear"],
        "finetune": {"epochs": 1, "batch_size": 8, **common}, "splits": ["test"], "n_boot": 5,
    }  # fmt: skip
    results = pd.read_csv(run_sweep(protocol, tmp_path / "sweep", progress=False))
    cells = set(zip(results["init"], results["mode"], strict=True))
    assert cells == {(i, m) for i in ("random", "public", "micle") for m in ("finetune", "linear")}
    for run in (tmp_path / "sweep" / "finetune").iterdir():
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["backbone"], config["patch_size"]) == (backbone, patch), run.name
    probe = read_checkpoint(tmp_path / "sweep" / "finetune" / "public-linear-f1-s0" / BEST)
    public = read_checkpoint(tmp_path / "public.safetensors")
    # the frozen public checkpoint: its blocks as saved (pos_embed resampled to 16 px)
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(probe["model"][f"backbone.{key}"], public[key])


def test_the_python_api_takes_a_timm_backbone_and_checkpoint(tmp_path, monkeypatch):
    import medssl

    monkeypatch.chdir(tmp_path)
    backbone, size, patch = TINY_VIT
    save_timm_checkpoint(tmp_path / "public.pth", backbone, wrap="model")
    data = medssl.data.load("synthetic", synthetic_cases=24)
    common = {"image_size": size, "epochs": 1, "batch_size": 8, "progress": False,
              "precision": "fp32", "device": "cpu"}  # fmt: skip
    medssl.pretrain(data, "micle", backbone=backbone, patch_size=patch, init="public.pth", **common)
    medssl.finetune(data, "ft", init="micle", **common)
    assert medssl.evaluate("ft", "test", n_boot=5)["n"] > 0
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["backbone"] == backbone
