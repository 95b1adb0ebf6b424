"""A new user's first hour (issue 26): what the commands say, inherit and infer.

One tiny pretraining run (16 px, two epochs) on a HAM10000-layout set serves the tests that
need a run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
import torchvision
from PIL import Image

from helpers.data import write_ham_layout
from helpers.runs import tiny_finetune_config, tiny_pretrain_config
from medssl.cli import main
from medssl.data import notices
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.models.backbones import build_backbone, resnet_of_state
from medssl.models.checkpoint import load_backbone_weights
from medssl.train.finetune import finetune
from medssl.train.pretrain import pretrain
from medssl.train.run import read_config


@pytest.fixture(autouse=True)
def _fresh_notices():
    notices.forget()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=24)
    out = tmp_path_factory.mktemp("runs") / "pre"
    pretrain(tiny_pretrain_config(root, out))
    return root, out


def test_pretrain_says_what_it_runs_on_and_where_it_wrote(tmp_path, capsys):
    root = write_ham_layout(tmp_path / "ham", n_lesions=24)
    out = tmp_path / "run"
    pretrain(tiny_pretrain_config(root, out, progress=True, warmup_epochs=5))
    err = capsys.readouterr().err
    assert "init: random weights" in err
    # the pretraining images: MICLe's bags, then each source and what of it pretrains
    assert re.search(r"data: \d+ images, \d+ cases, \d+ with 2\+ images; images per case", err)
    assert re.search(r"  ham10000: \d+ images of \d+ cases, its train split", err)
    assert "device cpu, precision fp32" in err
    assert "warning: --warmup-epochs 5 is not shorter than the run's 2 epoch(s)" in err
    assert err.index("init: random") < err.index("epoch 1/2")
    assert f"wrote {out}: backbone.safetensors" in err
    assert f"next: medssl finetune --init {out} --label-fraction 0.1" in err


def test_finetune_says_what_init_loaded_and_which_epoch_is_best(pretrained, tmp_path, capsys):
    root, run = pretrained
    out = tmp_path / "ft"
    metrics = finetune(tiny_finetune_config(root, out, init=str(run), progress=True))
    err = capsys.readouterr().err
    assert f"init: {run}: " in err and " tensors loaded" in err
    assert "warning: warmup" not in err
    best = torch.load(out / "best.pt", weights_only=True)["epoch"]
    assert metrics["best_epoch"] == best
    assert f"best.pt: epoch {best} of 2 (val auc_macro " in err
    assert f"next: medssl evaluate --model {out}" in err


def test_init_report_counts_tensors_and_names_dropped_head_keys(tmp_path):
    state = torchvision.models.resnet18(num_classes=7).state_dict()
    torch.save(state, tmp_path / "r18.pt")
    backbone, _ = build_backbone("resnet18")
    report = load_backbone_weights(backbone, tmp_path / "r18.pt")
    assert report.dropped == ["fc.weight", "fc.bias"]
    counted = [k for k in state if not k.startswith("fc.")]  # num_batches_tracked too
    assert report.loaded == len(counted)
    assert "dropped 2 head key(s) (fc.weight, fc.bias)" in report.describe()


def test_finetune_inherits_the_data_of_its_init_run(pretrained, tmp_path, capsys):
    root, run = pretrained
    out = tmp_path / "ft"
    args = [
        "finetune", "--init", str(run), "--label-fraction", "0.5", "--out", str(out),
        "--epochs", "1", "--batch-size", "8", "--precision", "fp32", "--device", "cpu",
        "--num-workers", "0", "--cache-dir", str(root / "cache"),
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"data: ham10000 at {root}, as the --init run {run} used (no --dataset given)" in err
    assert read_config(out)["data"] == read_config(run)["data"]


def test_finetune_without_dataset_or_init_names_the_flag_not_a_config_file(tmp_path, capsys):
    assert main(["finetune", "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert "--config" not in err.replace("a key of --config", "")
    assert err.strip() == (
        "medssl: error: --dataset is required (a flag, or a key of --config, or --init a "
        "medssl run to inherit it from)"
    )
    (tmp_path / "run.yaml").write_text("epochs: 1\n")
    assert main(["pretrain", "--config", str(tmp_path / "run.yaml"), "--out", "x"]) == 2
    assert "medssl: error: --dataset is required" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    root, run = pretrained
    out = tmp_path_factory.mktemp("runs") / "ft"
    finetune(tiny_finetune_config(root, out, init=str(run)))
    return root, out


def test_evaluate_prints_per_class_aucs_and_the_files_it_wrote(finetuned, capsys):
    _, run = finetuned
    assert main(["evaluate", "--model", str(run), "--n-boot", "5", "--no-subgroups"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "eval_test.json").read_text())
    assert "    AUC per class:" in out
    for name, value in saved["auc_per_class"].items():
        shown = "n/a (one label only)" if value is None else f"{value:.4f}"
        assert f"      {name:<16} {shown}" in out
    assert f"wrote {run / 'eval_test.json'}, {run / 'predictions_test.npz'}" in out


def test_a_class_map_miss_lists_both_class_lists_and_names_the_option(finetuned, tmp_path, capsys):
    _, run = finetuned
    ext = tmp_path / "ext"
    ext.mkdir()
    rows = []
    for i in range(6):
        Image.new("RGB", (20, 20), (40 * i, 40, 30)).save(ext / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "label": ["naevus", "melanoma"][i % 2]})
    pd.DataFrame(rows).to_csv(ext / "labels.csv", index=False)
    args = ["evaluate", "--model", str(run), "--dataset", "csv", "--root", str(ext),
            "--n-boot", "5", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the decoding bar
    assert err.startswith("medssl: error: class mapping excludes every row")
    assert "the data's classes: melanoma, naevus; the model's: " in err
    assert "map them with --class-map FILE" in err


def test_building_the_parser_and_top_level_help_import_no_torch():
    code = (
        "import sys\n"
        "from medssl.cli import build_parser\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules\n"
        "from medssl.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'medssl --help imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pretrain" in done.stdout and "finetune" in done.stdout


def test_a_command_parser_gets_its_flags_when_looked_up():
    from medssl.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["knn", "--dataset", "synthetic", "--k", "5"])
    assert args.k == 5 and args.func.__name__ == "knn_command"
    pretrain_help = parser._subparsers._group_actions[0].choices["pretrain"].format_help()
    assert "--warmup-epochs" in pretrain_help


def test_knn_says_what_it_is_doing(pretrained, capsys):
    from medssl.commands.knn import compare_backbones

    root, run = pretrained
    spec = DataSpec("ham10000", str(root)).to_dict()
    compare_backbones(spec, [str(run)], n_boot=5, device="cpu", cache_dir=str(root / "cache"))
    err = capsys.readouterr().err
    assert "k-NN 1/2: random: embedding " in err and " train and " in err
    assert f"k-NN 2/2: {run.name}: done in " in err
    assert "k-NN: differences to random, 5 bootstrap resamples by case" in err


def _fake_resnet_file(path, name: str, small_stem: bool = False):  # noqa: ANN202
    """A state dict with the keys of torchvision's ``name`` and its stem's shape (the other
    tensors are stand-ins: only the keys and conv1 tell the architecture)."""
    with torch.device("meta"):
        model, _ = build_backbone(name, small_images=small_stem)
    state = {k: torch.zeros(1) for k in model.state_dict()}
    state["conv1.weight"] = torch.zeros(model.conv1.weight.shape)
    safetensors.torch.save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    "name, small", [("resnet18", False), ("resnet34", True), ("resnet50", False),
                    ("resnet101", False), ("resnet50_2x", False)],
)  # fmt: skip
def test_the_resnet_of_a_state_dict_is_read_from_its_keys_and_shapes(name, small):
    with torch.device("meta"):
        model, _ = build_backbone(name, small_images=small)
    assert resnet_of_state(model.state_dict()) == (name, small)
    assert resnet_of_state({"patch_embed.proj.weight": torch.zeros(1)}) is None


def test_a_checkpoint_of_another_resnet_is_named_with_the_flag(pretrained, tmp_path, capsys):
    root, _ = pretrained
    weights = _fake_resnet_file(tmp_path / "resnet50.safetensors", "resnet50")
    args = ["pretrain", "--dataset", "ham10000", "--root", str(root), "--init", str(weights),
            "--out", str(tmp_path / "run"), "--image-size", "16", "--batch-size", "8",
            "--cache-dir", str(root / "cache"), "--device", "cpu"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("medssl: error: checkpoint ")
    assert err.endswith("; the checkpoint is a resnet50: pass --backbone resnet50")


def test_finetune_infers_the_resnet_of_an_init_file(pretrained, tmp_path):
    root, _ = pretrained
    weights = _fake_resnet_file(tmp_path / "w.safetensors", "resnet34", small_stem=True)
    config = tiny_finetune_config(root, tmp_path / "ft", init=str(weights)).resolved()
    assert (config.backbone, config.small_stem) == ("resnet34", True)
    given = tiny_finetune_config(root, tmp_path / "ft", init=str(weights), backbone="resnet18")
    assert given.resolved().backbone == "resnet18"  # --backbone given: kept


def test_embed_a_dataset_with_its_classes_and_sources(pretrained, tmp_path, capsys):
    from medssl.embedding import read_embeddings

    root, run = pretrained
    out = tmp_path / "emb.parquet"
    args = ["embed", "--model", str(run), "--dataset", "ham10000", "--root", str(root),
            "--out", str(out), "--quiet", "--keep-case-ids"]  # fmt: skip
    assert main(args) == 0
    saved = read_embeddings(out)
    manifest, _ = DataSpec("ham10000", str(root)).load()
    assert len(saved.images) == len(manifest)
    assert not any(name.startswith("/") for name in saved.images)  # relative to the root
    assert saved.labels["class"] == [manifest.class_names[t] for t in manifest.targets]
    assert saved.labels["source"] == manifest.table["source"].astype(str).tolist()
    assert saved.case_ids == manifest.table["case_id"].astype(str).tolist()
    assert main([*args[:-2], "--images", str(root)]) == 2
    assert "give --images or --dataset, not both" in capsys.readouterr().err


def test_retrieval_leaves_the_query_itself_out():
    from medssl.embedding import Embeddings

    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    found = Embeddings(features, ["a/q.png", "b.png", "c.png", "d/q2.png"], None, {})
    table = found.nearest(features[0], top_k=2, query_image="/elsewhere/a/q.png")
    # q.png is the query itself; q2.png has the same features but is another file
    assert table["image"].tolist() == ["d/q2.png", "b.png"]
    assert table.attrs["left_out"] == ["a/q.png"]
    assert found.nearest(features[0], top_k=1)["image"].tolist() == ["a/q.png"]  # no file given


def test_data_summary_wraps_long_lists_and_gives_each_split_its_class_mix(capsys):
    assert main(["data", "summary", "--dataset", "synthetic", "--synthetic-cases", "40"]) == 0
    out = capsys.readouterr().out
    assert out.count("class mix: synthetic-A ") == 4  # train, val, test, shift
    summary_json = main(["data", "summary", "--dataset", "synthetic", "--synthetic-cases", "40",
                         "--json"])  # fmt: skip
    assert summary_json == 0
    splits = json.loads(capsys.readouterr().out)["splits"]
    assert sum(splits["train"]["classes"].values()) == splits["train"]["images"]

    from medssl.commands.data import format_summary

    class FakeManifest:
        name, task, num_classes, labelled = "tiny-imagenet", "multiclass", 200, True

    classes = {f"n{i:08d}": 500 for i in range(200)}
    text = format_summary(FakeManifest(), {
        "images": 100000, "cases": 100000, "multi_image_cases": 0, "classes": classes,
        "images_per_case_median": 1.0, "images_per_case_max": 1,
        "sources": {"train": 100000}, "cases_shared_between_splits": 0,
        "splits": {"train": {"images": 70000, "cases": 70000,
                             "classes": {**dict.fromkeys(classes, 350), "n00000000": 0}}},
    })  # fmt: skip
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "class mix: 199 of 200 classes present, 350-350 images each" in text


def test_help_lists_the_automatic_choice_and_every_evaluate_option_has_help(capsys):
    from medssl.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    pretrain_help = commands["pretrain"].format_help()
    assert "--optimizer {auto,lars,sgd,adamw}" in pretrain_help
    assert "--lr-scaling {auto,sqrt,linear}" in pretrain_help
    undocumented = [a.dest for a in commands["evaluate"]._actions if not a.help]
    assert undocumented == []
    assert main(["pretrain", "--dataset", "synthetic", "--out", "x", "--optimizer", "x"]) == 2
    assert "--optimizer: 'x' is not one of auto, lars, sgd, adamw" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_a_pretraining_runs_backbone_for_embedding_services(pretrained, tmp_path, capsys):
    from medssl.data.imageio import read_image, resize_square
    from medssl.embedding import embed_images

    root, run = pretrained
    files = sorted((root / "HAM10000_images_part_1").glob("*.png"))[:4]
    expected = embed_images(run, files, progress=False, device="cpu").features
    out = tmp_path / "backbone.pt"
    assert main(["export", "--model", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"features (N, {expected.shape[1]})" in printed and "classes" not in printed
    pixels = np.stack([resize_square(read_image(f, min_side=16), 16) for f in files])
    with torch.no_grad():
        got = torch.jit.load(str(out))(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-4, atol=1e-5)
    from medssl.commands.export import read_metadata

    meta = read_metadata(out)
    assert meta["task"] == "embedding" and meta["feature_dim"] == expected.shape[1]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_python_api_exports_compares_backbones_and_sweeps(pretrained, tmp_path):
    import medssl

    root, run = pretrained
    meta = medssl.export(run, "torchscript", tmp_path / "backbone.pt")
    assert meta["task"] == "embedding" and (tmp_path / "backbone.pt").is_file()
    spec = DataSpec("ham10000", str(root))
    result = medssl.knn(spec, [run], n_boot=5, device="cpu", progress=False,
                        cache_dir=str(root / "cache"))  # fmt: skip
    assert set(result["scores"]) == {"random", run.name} and run.name in result["vs_random"]
    with pytest.raises(MedsslError, match="protocol"):
        medssl.run_sweep({"name": "x"}, tmp_path / "sweep")
    assert {"export", "knn", "run_sweep"} <= set(medssl.__all__)


def test_init_report_names_the_dropped_timm_head_and_resampled_embeddings(tmp_path):
    from helpers.timm_checkpoints import TINY_VIT, save_timm_checkpoint

    save_timm_checkpoint(tmp_path / "w.safetensors", TINY_VIT[0], img_size=64, patch_size=16)
    model, _ = build_backbone(TINY_VIT[0], image_size=16, patch_size=8)  # grid 4x4 -> 2x2
    report = load_backbone_weights(model, tmp_path / "w.safetensors")
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert "pos_embed resampled 4x4 -> 2x2" in report.adapted
    assert "patch_embed.proj.weight resampled [16, 16] -> [8, 8]" in report.adapted
    line = report.describe()
    assert line.startswith(f"init: {tmp_path / 'w.safetensors'}: ") and "tensors loaded" in line
