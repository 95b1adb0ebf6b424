"""Every bad input is one line on stderr and exit status 2: no traceback, no misleading words.

Nothing here trains: each case fails before the first epoch (most before any data is read).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from medssl.cli import main
from medssl.errors import MedsslError
from medssl.models.checkpoint import load_backbone_state

SYNTHETIC = ["--dataset", "synthetic", "--synthetic-cases", "8", "--image-size", "8"]


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``medssl argv``; assert exit 2 with one ``medssl: error:`` line; return it."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medssl: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- run directories and the files medssl reads back ----------------------------------------


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_out_that_is_a_file_is_refused(capsys, tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    line = fails(capsys, command, *SYNTHETIC, "--out", afile, "--quiet")
    assert f"--out {afile} is not a folder" in line
    line = fails(capsys, command, *SYNTHETIC, "--out", afile / "run", "--quiet")
    assert f"{afile} is a file" in line
    assert afile.read_text() == "not a folder"


def test_sweep_out_that_is_a_file_or_unwritable_is_refused(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({
        "data": {"dataset": "synthetic", "options": {"synthetic_cases": 8}},
        "inits": ["random"], "label_fractions": [1.0], "splits": ["test"],
    }))  # fmt: skip
    assert "is not a folder" in fails(capsys, "sweep", protocol, "--out", afile)
    # an --out that cannot be created was a FileNotFoundError traceback
    line = fails(capsys, "sweep", protocol, "--out", "/proc/medssl-sweep")
    assert line.startswith("medssl: error: --out /proc/medssl-sweep: cannot create folders in ")


def _damaged_run(run: Path, config_text: str, finished: bool) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config_text)
    torch.save({"epoch": 1}, run / "checkpoints" / "last.pt")
    if finished:
        (run / "metrics.json").write_text(json.dumps({"status": "complete"}))
    return run


def test_malformed_config_yaml_on_resume(capsys, tmp_path):
    run = _damaged_run(tmp_path / "run", "epochs: [1\n", finished=False)
    line = fails(capsys, "pretrain", *SYNTHETIC, "--out", run, "--resume", "--quiet")
    assert f"{run / 'config.yaml'} is damaged: not valid YAML" in line
    (run / "config.yaml").write_text("- just\n- a list\n")
    line = fails(capsys, "pretrain", *SYNTHETIC, "--out", run, "--resume", "--quiet")
    assert "is damaged: expected a mapping" in line


def test_malformed_config_yaml_on_evaluate(capsys, tmp_path):
    run = _damaged_run(tmp_path / "run", "label_fraction: 1.0\ndata: {dataset: [\n", True)
    line = fails(capsys, "evaluate", "--model", run)
    assert "config.yaml is damaged" in line


def _finetune_run(run: Path, best: bytes) -> Path:
    """A finished finetune run's files (synthetic data) with ``best`` as its best.pt."""
    from medssl.data.spec import DataSpec

    data = DataSpec("synthetic", "", {"synthetic_cases": 8, "image_size": 8}).to_dict()
    manifest, _ = DataSpec.from_dict(data).load()
    config = {
        "data": data, "out": str(run), "init": "random", "label_fraction": 1.0, "seed": 0,
        "backbone": "resnet18", "small_stem": False, "image_size": 8, "cache_dir": None,
        "class_names": list(manifest.class_names), "task": manifest.task,
    }  # fmt: skip
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps({"status": "complete"}))
    (run / "best.pt").write_bytes(best)
    return run


def test_truncated_best_pt_on_evaluate(capsys, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, whole)
    run = _finetune_run(tmp_path / "run", whole.read_bytes()[:300])
    line = fails(capsys, "evaluate", "--model", run, "--n-boot", "0")
    assert f"cannot read checkpoint {run / 'best.pt'}" in line
    assert "pickled" not in line


def test_random_bytes_are_not_called_a_pickled_object(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(MedsslError) as caught:
        load_backbone_state(path)
    message = str(caught.value)
    assert "not a torch.save or safetensors file" in message and "pickled" not in message


@pytest.mark.parametrize("left", [".lock", "checkpoints", "log.csv"])
def test_unfinished_run_without_config_given_as_init(capsys, tmp_path, left):
    """A run that is starting (or was stopped before its config.yaml) is an unfinished run."""
    run = tmp_path / "pre"
    run.mkdir()
    (run / left).mkdir() if left == "checkpoints" else (run / left).write_text("")
    line = fails(capsys, "finetune", *SYNTHETIC, "--init", run, "--out", tmp_path / "ft")
    assert f"--init {run} is an unfinished run" in line
    assert "not a medssl run" not in line


# --- one configuration source: flags, --config files and protocols read alike ---------------


def _protocol(path: Path, **sections: object) -> Path:
    protocol = {
        "data": {"dataset": "synthetic", "options": {"synthetic_cases": 8}},
        "inits": ["random"], "label_fractions": [1.0], **sections,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(protocol))
    return path


def _problem(line: str, name: str) -> str:
    """What a message says after naming the option."""
    assert f"{name}: " in line, line
    return line.split(f"{name}: ", 1)[1]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("epochs", 0, "must be at least 1, got 0"),
        ("epochs", 1.5, "expected an integer, got 1.5"),
        ("epochs", "ten", "expected an integer, got 'ten'"),
        ("lr", -0.1, "must be greater than 0, got -0.1"),
        ("weight_decay", -1, "must be at least 0, got -1"),
        ("num_workers", -1, "must be at least 0, got -1"),
        ("precision", "half", "'half' is not one of auto, fp32, bf16, fp16"),
        ("optimizer", "adam", "'adam' is not one of lars, sgd, adamw"),
    ],
)
def test_a_bad_value_gets_the_same_message_from_a_flag_a_config_file_and_a_protocol(
    capsys, tmp_path, key, value, problem
):
    flag = "--" + key.replace("_", "-")
    out = tmp_path / "run"
    by_flag = fails(capsys, "finetune", *SYNTHETIC, "--out", out, flag, value)
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump({key: value}))
    by_file = fails(capsys, "finetune", *SYNTHETIC, "--out", out, "--config", config)
    protocol = _protocol(tmp_path / "p.yaml", finetune={key: value})
    by_protocol = fails(capsys, "sweep", protocol, "--out", tmp_path / "sweep")
    assert by_flag == f"medssl: error: {flag}: {problem}"
    assert by_file == f"medssl: error: --config {config}: {key}: {problem}"
    assert by_protocol == f"medssl: error: protocol {protocol}: finetune.{key}: {problem}"
    assert not out.exists() and not (tmp_path / "sweep").exists()  # checked before any work


def test_augmentation_values_are_checked_alike_in_all_three_places(capsys, tmp_path):
    out = tmp_path / "run"
    by_flag = fails(capsys, "pretrain", *SYNTHETIC, "--out", out, "--aug", "blur_p=2")
    config = tmp_path / "pretrain.yaml"
    config.write_text("augment:\n  preset: cxr\n  blur_p: 2\n")
    by_file = fails(capsys, "pretrain", *SYNTHETIC, "--out", out, "--config", config)
    protocol = _protocol(tmp_path / "p.yaml", pretrain={"a": {"augment": {"blur_p": 2}}})
    by_protocol = fails(capsys, "sweep", protocol, "--out", tmp_path / "sweep")
    problem = "must be at most 1, got 2"
    assert by_flag == f"medssl: error: --aug blur_p: {problem}"
    assert by_file == f"medssl: error: --config {config}: augment.blur_p: {problem}"
    assert (
        by_protocol == f"medssl: error: protocol {protocol}: pretrain.a.augment.blur_p: {problem}"
    )


def _trainer_config(*argv: str):  # noqa: ANN202 - (config, given)
    from medssl.cli import build_parser
    from medssl.cli_options import trainer_config
    from medssl.train.finetune import FinetuneConfig
    from medssl.train.pretrain import PretrainConfig

    args = build_parser().parse_args([str(a) for a in argv])
    cls = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}[argv[0]]
    return trainer_config(cls, args)


def test_a_config_files_augment_block_is_a_preset_and_overrides(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("augment:\n  preset: cxr\n  blur_p: 0.25\n  hflip_p: 0\n")
    cfg, _ = _trainer_config(
        "pretrain", *SYNTHETIC, "--out", tmp_path / "r", "--config", config, "--aug", "hflip_p=1"
    )
    assert cfg.augment == "cxr"
    assert cfg.augment_overrides == {"blur_p": 0.25, "hflip_p": 1.0}  # --aug wins per key


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_defaults_live_only_in_the_config_classes(tmp_path, command):
    """A run without options is the dataclass's defaults: the command line adds none."""
    from medssl.options import settings

    cfg, _ = _trainer_config(command, "--dataset", "synthetic", "--out", tmp_path / "r")
    for name, s in settings(type(cfg)).items():
        if name not in ("data", "out"):
            assert getattr(cfg, name) == s.default, name


def test_library_messages_name_options_as_the_user_wrote_them(tmp_path):
    from medssl.options import spelling
    from medssl.train.finetune import FinetuneConfig

    cfg = FinetuneConfig(data={"dataset": "synthetic"}, out=str(tmp_path / "r"), epochs=1.5)
    with pytest.raises(MedsslError, match=r"^--epochs: expected an integer, got 1\.5$"):
        cfg.resolved()
    with spelling(str), pytest.raises(MedsslError, match=r"^epochs: expected an integer"):
        cfg.resolved()
    cfg = FinetuneConfig(data={"dataset": "synthetic"}, out=str(tmp_path / "r"), init="nope")
    with spelling(str), pytest.raises(MedsslError, match=r"^init nope: no such file"):
        cfg.resolved()


def test_a_dataset_option_of_another_dataset_is_refused(capsys, tmp_path):
    line = fails(capsys, "pretrain", *SYNTHETIC, "--subtypes", "--out", tmp_path / "r")
    assert "--subtypes: not an option of dataset synthetic" in line


# --- what medssl knows about each dataset: one record per adapter ----------------------------


def test_each_dataset_record_names_a_preset_and_its_defaults_reach_the_spec():
    from medssl.augment import PRESETS, dataset_preset
    from medssl.data.adapters import DATASETS
    from medssl.data.spec import DataSpec

    assert all(info.preset in PRESETS for info in DATASETS.values())
    assert dataset_preset("chexpert") == "cxr" and dataset_preset("ham10000") == "derm"
    assert DataSpec("ham10000", "x").shift_sources == ["rosendahl"]
    assert DataSpec("ham10000", "x", shift_sources=[]).shift_sources == []
    assert DataSpec("nih", "x").shift_sources is None


def test_runs_that_left_the_default_shift_source_implicit_read_as_today(tmp_path):
    """HAM10000 runs made before the record named rosendahl compare equal on --resume."""
    from medssl.train.run import read_config

    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"data": {"dataset": "ham10000", "root": "/d", "shift_sources": None}})
    )
    assert read_config(tmp_path)["data"]["shift_sources"] == ["rosendahl"]


def test_data_flags_come_from_the_records_and_data_has_no_argparse():
    from medssl.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["pretrain"].format_help()
    assert "pneumonia: bacteria / virus" in help_text and "--csv-labels-sep" in help_text
    data = Path(__file__).parents[1] / "src" / "medssl" / "data"
    assert not [p for p in data.rglob("*.py") if "argparse" in p.read_text()]


def test_config_values_that_used_to_fail_after_building_the_model(capsys, tmp_path):
    """``lr: [1, 2]`` crashed in the learning-rate scaling, ``epochs: 1.5`` in the loop."""
    config = tmp_path / "pretrain.yaml"
    out = tmp_path / "run"
    for text, message in [
        ("lr: [1, 2]\n", "lr: expected a number, got [1, 2]"),
        ("epochs: 1.5\n", "epochs: expected an integer, got 1.5"),
        ("prefetch_factor: 0\n", "prefetch_factor: must be at least 1, got 0"),
        ("augment: derm\naugment_mode: fast\n", "augment_mode: 'fast' is not one of"),
    ]:
        config.write_text(text)
        line = fails(capsys, "pretrain", *SYNTHETIC, "--out", out, "--config", config)
        assert f"--config {config}: {message}" in line
        assert not out.exists()


# --- files that are not UTF-8 text ------------------------------------------------------------

NOT_UTF8 = b"epochs: 1\nname: caf\xe9 \xff\xfe\n"


def test_a_config_file_or_protocol_that_is_not_utf8_is_one_line_naming_it(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(NOT_UTF8)
    line = fails(capsys, "pretrain", *SYNTHETIC, "--out", tmp_path / "run", "--config", config)
    assert f"--config {config}: not UTF-8 text" in line
    protocol = tmp_path / "p.yaml"
    protocol.write_bytes(NOT_UTF8)
    line = fails(capsys, "sweep", protocol, "--out", tmp_path / "sweep")
    assert f"protocol {protocol}: not UTF-8 text" in line


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_class_map_that_is_not_utf8_is_one_line_naming_it(tmp_path, suffix):
    from medssl.metrics import load_class_map, load_class_mapping

    path = tmp_path / f"map{suffix}"
    path.write_bytes(b'{"caf\xe9": "nv"}\n')
    for load in (load_class_map, load_class_mapping):
        with pytest.raises(MedsslError, match=f"class mapping {path}: not UTF-8 text"):
            load(path)


def test_a_labels_csv_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    from medssl.data.adapters.generic import load_csv

    (tmp_path / "labels.csv").write_bytes(b"image,label\na.png,caf\xe9\n")
    with pytest.raises(MedsslError) as caught:
        load_csv(tmp_path)
    assert f"cannot parse {tmp_path / 'labels.csv'}" in str(caught.value)
    assert "\n" not in str(caught.value)


# --- seeds ------------------------------------------------------------------------------------

HUGE_SEED = 2**70  # overflowed torch.manual_seed (and numpy's legacy seeding) deep in a run


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (("pretrain", "--seed"), "--seed"),
        (("finetune", "--seed"), "--seed"),
        (("pretrain", "--split-seed"), "--split-seed"),
        (("knn", "--seed"), "--seed"),
        (("demo", "--budget", "smoke", "--seed"), "--seed"),
    ],
)
def test_a_seed_beyond_what_every_generator_takes_is_one_line(capsys, tmp_path, argv, name):
    from medssl.options import MAX_SEED

    out = () if argv[0] == "knn" else ("--out", tmp_path / "out")
    data = () if argv[0] == "demo" else SYNTHETIC
    line = fails(capsys, argv[0], *data, *out, *argv[1:], HUGE_SEED)
    assert f"{name}: must be at most {MAX_SEED}, got {HUGE_SEED}" in line
    assert not (tmp_path / "out").exists()


def test_a_huge_seed_in_a_config_file_a_protocol_or_the_dataset_options(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"seed: {HUGE_SEED}\n")
    line = fails(capsys, "finetune", *SYNTHETIC, "--out", tmp_path / "r", "--config", config)
    assert f"--config {config}: seed: must be at most" in line
    for key in ("seeds", "pretrain_seeds"):
        protocol = _protocol(tmp_path / "p.yaml", **{key: [0, HUGE_SEED]})
        line = fails(capsys, "sweep", protocol, "--out", tmp_path / "sweep")
        assert f"protocol {protocol}: {key}: must be at most" in line
    protocol = _protocol(tmp_path / "p.yaml")
    text = yaml.safe_load(protocol.read_text())
    text["data"]["options"]["synthetic_seed"] = HUGE_SEED
    protocol.write_text(yaml.safe_dump(text))
    assert "synthetic_seed: must be at most" in fails(capsys, "sweep", protocol, "--out", tmp_path)


def test_the_largest_seed_trains(tmp_path):
    """Every seeding path of a run takes MAX_SEED (finetune's per-epoch generator multiplies
    the seed, the data split and the augmentations hash it)."""
    from helpers.data import write_ham_layout
    from helpers.runs import tiny_finetune_config
    from medssl.options import MAX_SEED
    from medssl.train.finetune import finetune

    root = write_ham_layout(tmp_path / "ham")
    config = tiny_finetune_config(root, tmp_path / "ft", epochs=1, seed=MAX_SEED)
    config.data["split_seed"] = MAX_SEED
    assert finetune(config)["train_images"] > 0


# --- duplicate keys ---------------------------------------------------------------------------


def test_a_key_written_twice_is_an_error_naming_both(capsys, tmp_path):
    """YAML's last-wins made ``epochs: 1 ... epochs: 50`` silently a 50-epoch run."""
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\nlr: 0.1\nepochs: 50\n")
    line = fails(capsys, "finetune", *SYNTHETIC, "--out", tmp_path / "r", "--config", config)
    assert f"--config {config}: 'epochs' is written twice (lines 1 and 3)" in line
    config.write_text("batch_size: 8\nbatch-size: 64\n")
    line = fails(capsys, "finetune", *SYNTHETIC, "--out", tmp_path / "r", "--config", config)
    assert f"--config {config}: batch_size and batch-size are the same option" in line
    protocol = _protocol(tmp_path / "p.yaml")
    protocol.write_text(protocol.read_text() + "finetune:\n  epochs: 1\n  epochs: 2\n")
    line = fails(capsys, "sweep", protocol, "--out", tmp_path / "sweep")
    assert f"protocol {protocol}: 'epochs' is written twice" in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "sweep").exists()


def test_yaml_merge_keys_still_override(tmp_path):
    from medssl.options import read_yaml_mapping

    path = tmp_path / "m.yaml"
    path.write_text("base: &b {epochs: 1, lr: 0.1}\nrun:\n  <<: *b\n  epochs: 5\n")
    assert read_yaml_mapping(path, "x", "y")["run"] == {"epochs": 5, "lr": 0.1}


@pytest.mark.parametrize(
    ("suffix", "text"),
    [(".yaml", "nv: nv\nmel: mel\nnv: bkl\n"), (".json", '{"nv": "nv", "nv": "mel"}')],
)
def test_a_class_map_with_a_source_class_written_twice_is_refused(tmp_path, suffix, text):
    from medssl.metrics import load_class_map

    path = tmp_path / f"map{suffix}"
    path.write_text(text)
    with pytest.raises(MedsslError, match=f"class mapping {path}: 'nv' is written twice"):
        load_class_map(path)


# --- checkpoints that hold pickled objects ----------------------------------------------------


def _pickle_files(tmp_path: Path) -> dict[str, Path]:
    import pickle

    from helpers.pickles import CallsExec, CallsSystem, PlainObject

    marker = tmp_path / "EXECUTED"
    state = {"model": {"w": torch.zeros(2)}, "epoch": 1, "x": CallsSystem(marker)}
    files = {"zip": tmp_path / "zip.pt", "legacy": tmp_path / "legacy.pt"}
    torch.save(state, files["zip"])
    torch.save(state, files["legacy"], _use_new_zipfile_serialization=False)
    for protocol in (2, 4):
        files[f"raw{protocol}"] = tmp_path / f"raw{protocol}.pkl"
        files[f"raw{protocol}"].write_bytes(pickle.dumps(state, protocol=protocol))
    files["exec"] = tmp_path / "exec.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": CallsExec(marker)}, files["exec"])
    files["plain"] = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": PlainObject()}, files["plain"])
    return files


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw2", "raw4", "exec", "plain"])
def test_a_checkpoint_holding_pickled_objects_is_refused_in_one_line(tmp_path, kind):
    from helpers.pickles import PICKLED
    from medssl.models.checkpoint import read_checkpoint

    path = _pickle_files(tmp_path)[kind]
    with pytest.raises(MedsslError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert PICKLED in message and str(path) in message and "\n" not in message
    assert "weights_only=False" not in message and "damaged" not in message
    assert not (tmp_path / "EXECUTED").exists()
