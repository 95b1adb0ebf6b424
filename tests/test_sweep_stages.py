"""The paper's stages in one sweep: a natural-image stage (SimCLR and supervised) shared by
every pretraining seed, in-domain SimCLR chained from it, MICLe and a matched SimCLR control
continued from that, and fine-tuning whose learning rate is chosen on validation only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers.data import write_ham_layout, write_tiny_imagenet_layout
from medssl.errors import MedsslError
from medssl.sweep import load_protocol, plan, run_sweep
from medssl.train import finetune as finetune_module
from medssl.train import pretrain as pretrain_module

TINY = {"epochs": 1, "batch_size": 8, "warmup_epochs": 1, "num_workers": 0,
        "precision": "fp32", "lr": 0.3}  # fmt: skip
FT = {"epochs": 1, "batch_size": 8, "num_workers": 0, "precision": "fp32"}
LRS = [0.0003, 0.003]


def _protocol(ham: Path, natural: Path) -> dict:
    nat = {"dataset": "tiny-imagenet", "root": str(natural), "split_scheme": "official"}
    return {
        "data": {"dataset": "ham10000", "root": str(ham)},
        "image_size": 16,
        "pretrain": {
            "natural": {"method": "simclr", "data": nat, "shared": True, **TINY},
            "supervised": {"method": "supervised", "data": nat, "shared": True, **FT},
            "derm": {"method": "simclr", "init": "natural", **TINY},
            "micle": {"method": "micle", "init": "derm", **TINY},
            "derm2": {"method": "simclr", "init": "derm", **TINY},
        },
        "pretrain_seeds": [0, 1],
        "inits": ["random", "supervised", "natural", "micle", "derm2"],
        "label_fractions": [1.0],
        "seeds": [0, 1],
        "finetune": FT,
        "finetune_grid": {"lr": LRS},
        "splits": ["test"],
        "compare": [["micle", "derm2"], ["natural", "supervised"]],
        "prune": True,
        "embedding_maps": ["random", "micle"],
        "n_boot": 10,
    }


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("stages")
    protocol = _protocol(write_ham_layout(root / "ham"), write_tiny_imagenet_layout(root / "tin"))
    run_sweep(protocol, root / "out", progress=False)
    return root / "out", protocol


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_plan_shares_the_natural_stage_and_chains_each_seed(tmp_path: Path) -> None:
    p = load_protocol(_protocol(tmp_path, tmp_path))  # roots are only read when running
    jobs = plan(p, tmp_path)
    names = [j.name for j in jobs if j.kind == "pretrain"]
    assert names == ["natural", "supervised", "derm-s0", "micle-s0", "derm2-s0",
                     "derm-s1", "micle-s1", "derm2-s1"]  # fmt: skip
    by_name = {j.name: j.config for j in jobs}
    assert by_name["derm-s1"].init == str(tmp_path / "pretrain" / "natural")
    assert by_name["micle-s1"].init == str(tmp_path / "pretrain" / "derm-s1")
    assert by_name["derm2-s1"].init == by_name["micle-s1"].init  # the matched control
    assert by_name["natural"].data["dataset"] == "tiny-imagenet"
    assert by_name["derm-s0"].data["dataset"] == "ham10000"
    assert by_name["supervised"].export_backbone is True
    assert by_name["supervised"].label_fraction == 1.0
    # fine-tuning seed 1 from the supervised init: the one shared run
    ft = by_name["supervised-f1-s1-lr0.003"]
    assert ft.init == str(tmp_path / "pretrain" / "supervised") and ft.lr == 0.003
    # the written form round-trips
    again = load_protocol(p.to_dict())
    assert again.roles == p.roles and again.finetune_grid == {"lr": LRS}


def test_staged_sweep_end_to_end(staged: tuple[Path, dict]) -> None:
    out, _ = staged
    results = pd.read_csv(out / "results.csv")
    assert set(results["init"]) == {"random", "supervised", "natural", "micle", "derm2"}
    assert len(results) == 5 * 2  # inits x seeds, one split, one row per chosen candidate
    assert set(results["selected"]) <= {"lr=0.0003", "lr=0.003"}
    assert (results["skipped_steps"] == 0).all()
    paired = pd.read_csv(out / "paired.csv")
    pairs = set(zip(paired["a"], paired["b"], strict=True))
    assert {("micle", "derm2"), ("natural", "supervised"), ("micle", "random")} <= pairs
    curves = pd.read_csv(out / "pretraining.csv")
    assert set(curves["run"]) == {"natural", "supervised", "derm-s0", "micle-s0", "derm2-s0",
                                  "derm-s1", "micle-s1", "derm2-s1"}  # fmt: skip
    assert set(curves.loc[curves["run"] == "natural", "dataset"]) == {"tiny-imagenet"}
    assert set(curves.loc[curves["run"] == "supervised", "method"]) == {"supervised"}
    assert (out / "pretraining_curves.png").is_file()
    report = (out / "report.md").read_text()
    assert "pretraining_curves.png" in report and "selection.csv" in report
    assert "one run shared by every pretraining seed" in report
    for init in ("random", "micle"):  # embedding_maps: drawn, and in the report
        assert (out / f"embedding_map_{init}.png").stat().st_size > 10_000
        assert f"embedding_map_{init}.png" in report


def test_supervised_init_loads_its_best_backbone(staged: tuple[Path, dict]) -> None:
    out, _ = staged
    sup = out / "pretrain" / "supervised"
    cfg = _config(sup)
    assert cfg["export_backbone"] is True and cfg["data"]["dataset"] == "tiny-imagenet"
    best = torch.load(sup / "best.pt", map_location="cpu", weights_only=True)["model"]
    exported = load_file(sup / "backbone.safetensors")
    expected = {k[len("backbone."):]: v for k, v in best.items() if k.startswith("backbone.")}
    assert set(exported) == set(expected)
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    # a fine-tune from it starts from exactly those weights
    from medssl.models.backbones import build_backbone
    from medssl.train.common import initialise_backbone

    backbone, _ = build_backbone("resnet18")
    initialise_backbone(backbone, str(sup))
    state = backbone.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    ft = _config(out / "finetune" / "supervised-f1-s0-lr0.003")
    assert ft["init"] == str(sup)


def test_learning_rate_is_chosen_on_validation_only(staged: tuple[Path, dict]) -> None:
    out, _ = staged
    selection = pd.read_csv(out / "selection.csv")
    assert len(selection) == 5 * 2 * len(LRS)
    for _, group in selection.groupby(["init", "mode", "label_fraction", "seed"]):
        chosen = group[group["selected"]]
        assert len(chosen) == 1
        # the chosen candidate has the best validation score its run recorded ...
        scores = {}
        for _, row in group.iterrows():
            metrics = json.loads((out / row["run"] / "metrics.json").read_text())
            scores[row["run"]] = metrics["best_val_auc_macro"]
        order = list(scores)
        best = max(order, key=lambda r: (scores[r], -order.index(r)))  # first on ties
        assert chosen["run"].iloc[0] == best
        # ... and the others were never evaluated on a test split
        for run in group.loc[~group["selected"], "run"]:
            assert not list((out / run).glob("eval_*.json"))
            assert not list((out / run).glob("predictions_*.npz"))
        assert (out / chosen["run"].iloc[0] / "eval_test.json").is_file()
        # prune: true keeps the chosen weights only, and no run's training state
        assert (out / chosen["run"].iloc[0] / "best.pt").is_file()
        for run in group["run"]:
            assert not (out / run / "checkpoints" / "last.pt").exists()
        for run in group.loc[~group["selected"], "run"]:
            assert not (out / run / "best.pt").exists()
    results = pd.read_csv(out / "results.csv")
    assert set(results["run"]) == set(selection.loc[selection["selected"], "run"])


def test_stopped_staged_sweep_resumes_without_retraining(
    staged: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, protocol = staged
    for run in ("micle-s1",):  # stopped before it wrote its final metrics
        (out / "pretrain" / run / "metrics.json").rename(out / "pretrain" / run / "m.json")
    (out / "finetune" / "micle-f1-s1-lr0.0003" / "metrics.json").unlink()
    calls: list[str] = []
    real_pretrain, real_finetune = pretrain_module.pretrain, finetune_module.finetune

    def pretrain(config):  # noqa: ANN001, ANN202
        calls.append(Path(config.out).name)
        (Path(config.out) / "m.json").rename(Path(config.out) / "metrics.json")
        return {}

    def finetune(config):  # noqa: ANN001, ANN202
        calls.append(Path(config.out).name)
        return real_finetune(config)

    monkeypatch.setattr(pretrain_module, "pretrain", pretrain)
    monkeypatch.setattr(finetune_module, "finetune", finetune)
    run_sweep(protocol, out, progress=False)
    assert calls == ["micle-s1", "micle-f1-s1-lr0.0003"]
    assert real_pretrain is not pretrain


def test_stage_keys_are_checked(tmp_path: Path) -> None:
    base = _protocol(tmp_path, tmp_path)
    bad = {**base, "pretrain": {**base["pretrain"], "derm": {**base["pretrain"]["derm"],
                                                             "shared": "yes"}}}  # fmt: skip
    with pytest.raises(MedsslError, match=r"pretrain\.derm\.shared: expected true or false"):
        load_protocol(bad)
    shared_child = {**base["pretrain"], "x": {"method": "simclr", "init": "derm", "shared": True}}
    with pytest.raises(MedsslError, match=r"pretrain\.x\.init: a shared entry cannot start"):
        load_protocol({**base, "pretrain": shared_child})
    probe = {**base["pretrain"], "supervised": {"method": "supervised", "linear_probe": True}}
    with pytest.raises(MedsslError, match=r"linear_probe.*is not a pretraining"):
        load_protocol({**base, "pretrain": probe})
    with pytest.raises(MedsslError, match=r"finetune_grid\.lr: is also set in finetune"):
        load_protocol({**base, "finetune": {**FT, "lr": 0.001}})
    with pytest.raises(MedsslError, match=r"finetune_grid"):
        load_protocol({**base, "finetune_grid": {"lr": [0.001, -1.0]}})
    with pytest.raises(MedsslError, match=r"compare: .*'nosuch' is not an init"):
        load_protocol({**base, "compare": [["micle", "nosuch"]]})
    no_seeds = {k: v for k, v in base.items() if k != "pretrain_seeds"}
    with pytest.raises(MedsslError, match=r"pretrain\.natural\.shared: needs pretrain_seeds"):
        load_protocol(no_seeds)


def test_grid_chosen_on_the_first_seed_is_reused(tmp_path: Path, monkeypatch) -> None:
    """finetune_grid_seeds: first -- later seeds fine-tune only the first seed's choice."""
    protocol = {
        "data": {"dataset": "ham10000", "root": str(write_ham_layout(tmp_path / "ham"))},
        "image_size": 16, "inits": ["random"], "label_fractions": [1.0], "seeds": [0, 1, 2],
        "finetune": FT, "finetune_grid": {"lr": LRS}, "finetune_grid_seeds": "first",
        "finetune_modes": ["finetune", "linear"], "splits": ["test"], "n_boot": 10,
    }  # fmt: skip
    out = tmp_path / "out"
    run_sweep(protocol, out, progress=False)
    selection = pd.read_csv(out / "selection.csv")
    for mode, rows in selection.groupby("mode"):
        first = rows[rows["seed"] == 0]
        assert len(first) == len(LRS) and (first["selected_on_seed"] == 0).all()
        chosen = first.loc[first["selected"], "candidate"].iloc[0]
        later = rows[rows["seed"] > 0]
        assert list(later["seed"]) == [1, 2] and (later["selected_on_seed"] == 0).all()
        assert set(later["candidate"]) == {chosen} and later["selected"].all()
        # the candidates not chosen were never trained for the later seeds
        trained = {p.name for p in (out / "finetune").iterdir()}
        suffix = "-linear" if mode == "linear" else ""
        chosen_run = Path(first.loc[first["selected"], "run"].iloc[0]).name
        for seed in (1, 2):
            of_seed = {n for n in trained if n.startswith(f"random{suffix}-f1-s{seed}-")}
            assert of_seed == {chosen_run.replace("-s0-", f"-s{seed}-")}
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 3 and set(results["selected_on_seed"]) == {0}
    notes = (out / "report.md").read_text()
    assert "tried on seed 0 only" in notes

    calls: list[str] = []
    monkeypatch.setattr(finetune_module, "finetune", lambda c: calls.append(c.out))
    run_sweep(protocol, out, progress=False)  # everything reused, nothing retrained
    assert calls == []
    with pytest.raises(MedsslError, match=r"finetune_grid_seeds: expected one of all, first"):
        load_protocol({**protocol, "finetune_grid_seeds": "some"})
    no_grid = {k: v for k, v in protocol.items() if k != "finetune_grid"}
    with pytest.raises(MedsslError, match=r"finetune_grid_seeds: needs a finetune_grid"):
        load_protocol(no_grid)


def test_a_record_resumes_the_sweep_on_a_machine_without_its_folder(
    staged: tuple[Path, dict], tmp_path: Path, monkeypatch, capsys
) -> None:
    """--record keeps results, logs, evaluations and the shared backbones, no training state;
    a new folder restored from it reuses every run, and a half-done seed is left out (of the
    record and of the tables written at a finished seed's end); a resumed sweep passes a
    recorded seed without rewriting its tables."""
    import shutil

    source, protocol = staged
    out, record = tmp_path / "out", tmp_path / "record"
    shutil.copytree(source, out)
    # seed 1 is not finished: one of its chosen fine-tunes has no metrics yet (which learning
    # rate validation chose depends on the CPU's arithmetic: read it, never assume it)
    results = pd.read_csv(source / "results.csv")
    micle = results[(results["init"] == "micle") & (results["split"] == "test")
                    & (results["mode"] == "finetune")]  # fmt: skip
    chosen = {int(r.seed): Path(r.run).name for r in micle.itertuples()}
    unfinished = out / "finetune" / chosen[1]
    (unfinished / "metrics.json").unlink()
    calls: list[str] = []
    monkeypatch.setattr(pretrain_module, "pretrain", lambda c: calls.append(c.out))

    def stopped(config) -> None:  # the machine goes away during seed 1's last fine-tune
        calls.append(config.out)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "finetune", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(protocol, out, progress=False, record=record)
    assert calls == [str(unfinished)]
    files = {p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file()}
    assert "pretrain/natural/backbone.safetensors" in files  # shared: later seeds need it
    assert "pretrain/supervised/backbone.safetensors" in files
    assert "pretrain/derm-s0/backbone.safetensors" not in files  # per seed: not kept
    assert "pretrain/derm-s0/metrics.json" in files
    assert f"finetune/{chosen[0]}/metrics.json" in files
    assert not [f for f in files if "-s1" in f]  # seed 1 is not finished: none of it
    assert not [f for f in files if "checkpoints/" in f or f.endswith(("best.pt", ".tmp"))]
    assert {"results.csv", "paired.csv", "selection.csv", "embedding_map_micle.png"} <= files
    # the tables written at seed 0's end hold seed 0 alone, though seed 1 has finished runs
    assert set(pd.read_csv(out / "results.csv")["seed"]) == {0}
    assert set(pd.read_csv(out / "pretraining.csv")["seed"].dropna()) == {0}

    written = (out / "results.csv").stat().st_mtime_ns
    capsys.readouterr()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # stopped again: seed 0 is recorded, nothing new
        run_sweep(protocol, out, progress=False, record=record)
    assert calls == [str(unfinished)]
    assert "seed 0 finished" not in capsys.readouterr().out  # no tables, no record rewritten
    assert (out / "results.csv").stat().st_mtime_ns == written

    shutil.rmtree(out)
    shutil.copytree(source, out)
    calls.clear()
    monkeypatch.setattr(finetune_module, "finetune", lambda c: calls.append(c.out))
    run_sweep(protocol, out, progress=False, record=record)  # seed 1 finished: recorded
    assert calls == []
    assert (record / "finetune" / chosen[1] / "eval_test.json").is_file()
    assert not (record / "pretrain" / "derm-s1" / "backbone.safetensors").exists()

    fresh = tmp_path / "fresh"
    run_sweep(protocol, fresh, progress=False, record=record)
    assert calls == []  # every run reused from the record
    a, b = (pd.read_csv(d / "results.csv") for d in (source, fresh))
    pd.testing.assert_frame_equal(a.drop(columns="run"), b.drop(columns="run"))
    with pytest.raises(MedsslError, match="--record .* must be a folder of its own"):
        run_sweep(protocol, fresh, progress=False, record=fresh / "rec")
