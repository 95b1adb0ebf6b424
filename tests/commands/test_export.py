"""``medssl export``: the exported TorchScript and ONNX models predict what medssl predicts."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from helpers.data import write_ham_layout
from helpers.runs import tiny_finetune_config
from medssl.cli import main
from medssl.commands.export import export_model, read_metadata
from medssl.commands.predict import predict_images
from medssl.data.imageio import read_image, resize_square
from medssl.errors import MedsslError
from medssl.train.finetune import finetune

#: exported vs medssl's own probabilities: the same float32 operations, but in other kernels
#: (contiguous instead of channels-last memory, onnxruntime's convolutions), so they agree to
#: float32 rounding, not bit for bit (measured: at most 1e-7 apart at 16 px)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=24)
    out = tmp_path_factory.mktemp("runs") / "ft"
    finetune(tiny_finetune_config(root, out, epochs=1))
    files = sorted((root / "HAM10000_images_part_1").glob("*.png"))[:6]
    expected = predict_images(out, files, progress=False).probs
    # the images as the exported model takes them: medssl's decoding and resizing, NCHW uint8
    pixels = np.stack([resize_square(read_image(f, min_side=16), 16) for f in files])
    return out, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), expected


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_matches_medssl_for_uint8_and_unit_float(finetuned, tmp_path):
    run, images, expected = finetuned
    path = tmp_path / "model.pt"
    meta = export_model(run, "torchscript", path)
    model = torch.jit.load(str(path))
    with torch.no_grad():
        from_uint8 = model(images)
        from_float = model(images.float() / 255)
    torch.testing.assert_close(from_uint8, torch.from_numpy(expected), **TOLERANCE)
    torch.testing.assert_close(from_float, torch.from_numpy(expected), **TOLERANCE)
    assert read_metadata(path) == meta
    assert meta["image_size"] == 16 and len(meta["class_names"]) == expected.shape[1]
    with pytest.raises(Exception, match=r"expected RGB images of shape \(N, 3, 16, 16\)"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_onnx_matches_medssl_with_onnxruntime(finetuned, tmp_path):
    import onnxruntime

    run, images, expected = finetuned
    path = tmp_path / "model.onnx"
    meta = export_model(run, "onnx", path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {meta["input_name"]: images.float().numpy() / 255})
    torch.testing.assert_close(torch.from_numpy(probs), torch.from_numpy(expected), **TOLERANCE)
    stored = session.get_modelmeta().custom_metadata_map
    assert json.loads(stored["medssl"]) == meta == read_metadata(path)
    assert json.loads(stored["class_names"]) == meta["class_names"]


def test_cli_export_and_user_errors(finetuned, tmp_path, capsys, monkeypatch):
    run, _, _ = finetuned
    out = tmp_path / "m.pt"
    assert main(["export", "--model", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert "uint8 in [0, 255] or float in [0, 1]" in capsys.readouterr().out and out.is_file()
    code = main(["export", "--model", str(tmp_path), "--format", "torchscript",
                 "--out", str(tmp_path / "x.pt")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "is not a medssl run directory" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    with pytest.raises(MedsslError, match="--format onnx needs the onnx package: pip install"):
        export_model(run, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_an_opset_the_exporter_does_not_support_is_one_line(finetuned, tmp_path, capsys):
    """``--opset 1`` was a traceback from onnx's checker; 21 is past the TorchScript-based
    exporter's range (torch only warns). The bounds themselves export."""
    from medssl.commands.export import OPSETS

    run, _, _ = finetuned
    low, high = OPSETS
    for opset in (1, low - 1, high + 1):
        out = tmp_path / f"m{opset}.onnx"
        argv = ["export", "--model", run, "--format", "onnx", "--out", out, "--opset", opset]
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert f"medssl: error: --opset: must be from {low} to {high}, got {opset}" in err, err
        assert not out.exists()
    for opset in OPSETS:
        assert export_model(run, "onnx", tmp_path / f"m{opset}.onnx", opset=opset)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_multilabel_models_export_a_sigmoid_per_finding():
    from medssl.commands.export import ExportedClassifier
    from medssl.models.backbones import build_backbone
    from medssl.models.heads import Classifier
    from medssl.train.finetune import probabilities
    from medssl.train.monitor import normalize_batch

    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18", small_images=True)
    model = Classifier(backbone, dim, 5).eval()
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        expected = probabilities("multilabel", model(normalize_batch(images)))
        wrapper = ExportedClassifier(model.backbone, model.fc, "multilabel", 16, True).eval()
        got = torch.jit.script(wrapper)(images.permute(0, 3, 1, 2))
    torch.testing.assert_close(got, torch.from_numpy(expected), **TOLERANCE)
    assert not torch.allclose(got.sum(1), torch.ones(3))  # not a softmax


def test_an_out_over_the_run_or_where_nothing_can_be_written_is_refused(
    finetuned, tmp_path, capsys
):
    run, _, _ = finetuned
    (tmp_path / "file").write_text("in the way")
    originals = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for out, says in (
        (run / "best.pt", "is the input --model"),
        (run / "checkpoints" / "last.pt", "is the input --model"),
        (run / "config.yaml", "is the input --model"),
        (tmp_path / "file" / "sub" / "m.pt", "is a file"),
    ):
        code = main(["export", "--model", str(run), "--format", "torchscript", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"medssl: error: --out {out}"), (out, err)
        assert says in err
        assert len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == originals


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_full_disk_during_export_is_one_line_and_leaves_no_temporary_file(
    finetuned, tmp_path, fmt
):
    """TorchScript's C++ writer aborted the process on a full disk and left its .tmp; the
    model is now serialised in memory first. Here a 1 MB file-size limit stands for the disk."""
    import subprocess

    run, _, _ = finetuned
    out = tmp_path / "model.bin"
    out.write_bytes(b"an earlier export")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))\n"
        "from medssl.cli import main\n"
        f"sys.exit(main(['export', '--model', {str(run)!r}, '--format', {fmt!r}, "
        f"'--out', {str(out)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"medssl: error: cannot write {out}: File too large (over the file-size limit: "
        "ulimit -f); the existing file is unchanged"
    )
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
