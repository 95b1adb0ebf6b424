"""Sweep protocol features: chained pretraining, pretraining seeds, linear probes, external
test sets (with merged model classes) and paired differences.

One tiny sweep (16 px, one epoch, batch 8, fp32) with every feature is trained once per
module; the other tests check the protocol checks and the statistics without training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

from helpers.data import write_ham_layout
from medssl.errors import MedsslError
from medssl.metrics import evaluate_predictions, load_class_map, merge_model_classes
from medssl.paired import (
    PAIRED_COLUMNS,
    paired_bootstrap,
    paired_differences,
    t_interval,
    t_quantile_975,
)
from medssl.sweep import load_protocol, plan, run_sweep
from medssl.train import pretrain as pretrain_module

MERGE = {"malignant": ["mel", "bcc", "akiec"], "benign": ["nv", "bkl", "df", "vasc"]}


def _write_external(root: Path) -> Path:
    """A labels.csv set with classes naevus / melanoma / other, two images per patient."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, label in enumerate(["naevus", "melanoma", "other"] * 6):
        colour = (180, 120, 90) if label == "naevus" else (60 + 5 * i, 40, 30)
        Image.new("RGB", (20, 20), colour).save(root / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "label": label, "patient": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _protocol(ham: Path, ext: Path) -> dict:
    tiny = {"epochs": 1, "batch_size": 8, "warmup_epochs": 1, "num_workers": 0,
            "precision": "fp32", "lr": 0.3}  # fmt: skip
    ext_data = {"dataset": "csv", "root": str(ext), "options": {"csv_case": "patient"}}
    return {
        "data": {"dataset": "ham10000", "root": str(ham)},
        "image_size": 16,
        "pretrain": {
            "simclr": {"method": "simclr", **tiny},
            "micle": {"method": "micle", "init": "simclr", **tiny},
        },
        "pretrain_seeds": [0, 1],
        "inits": ["random", "simclr", "micle"],
        "label_fractions": [1.0],
        "seeds": [0, 1],
        "finetune": {"epochs": 1, "batch_size": 8, "num_workers": 0, "precision": "fp32"},
        "finetune_modes": ["finetune", "linear"],
        "external": [
            {
                "name": "ext",
                "data": ext_data,
                "class_map": {"naevus": "nv", "melanoma": "mel", "other": None},
            },
            {
                "name": "ext-merged",
                "data": ext_data,
                "class_map": {"naevus": "benign", "melanoma": "malignant", "other": None},
                "model_classes": MERGE,
            },
        ],  # fmt: skip
        "n_boot": 20,
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sweep")
    ham = write_ham_layout(root / "ham", n_lesions=24)
    protocol = _protocol(ham, _write_external(root / "ext"))
    run_sweep(protocol, root / "out", progress=False)
    return root / "out", protocol


# --------------------------------------------------------------------------- end to end


def test_sweep_with_every_feature(sweep: tuple[Path, dict]) -> None:
    out, _ = sweep
    df = pd.read_csv(out / "results.csv")
    assert set(df["mode"]) == {"finetune", "linear"}
    assert set(df["split"]) == {"test", "shift", "external:ext", "external:ext-merged"}
    assert len(df) == 3 * 2 * 2 * 4  # inits x modes x seeds x splits
    assert not df.duplicated(["init", "mode", "label_fraction", "seed", "split"]).any()
    # run names: today's for fine-tuning, -linear for linear probes, -s<seed> for pretraining
    assert (out / "finetune" / "micle-f1-s1" / "best.pt").is_file()
    linear = yaml.safe_load((out / "finetune" / "simclr-linear-f1-s0" / "config.yaml").read_text())
    assert linear["linear_probe"] is True
    # chained and paired: micle seed s continues simclr seed s; fine-tune s starts from micle-s
    micle = yaml.safe_load((out / "pretrain" / "micle-s1" / "config.yaml").read_text())
    assert micle["init"] == str(out / "pretrain" / "simclr-s1") and micle["seed"] == 1
    ft = yaml.safe_load((out / "finetune" / "micle-f1-s1" / "config.yaml").read_text())
    assert ft["init"] == str(out / "pretrain" / "micle-s1") and ft["linear_probe"] is False
    # the external set is scored whole: 12 of 18 images (the 'other' class is unmapped)
    ext = json.loads((out / "finetune" / "random-f1-s0" / "eval_external-ext.json").read_text())
    assert ext["n"] == 12 and ext["class_mapping"]["unmapped"] == {"other": 6}
    # the report shows the external split and the paired table
    html = (out / "report.html").read_text()
    assert "External: ext-merged" in html and "Paired differences" in html
    assert "simclr (linear)" in (out / "results.md").read_text()
    assert "Paired differences" in (out / "results.md").read_text()


def test_merged_model_classes_auc_equals_summed_probabilities(sweep: tuple[Path, dict]) -> None:
    out, _ = sweep
    run = out / "finetune" / "simclr-f1-s0"
    with np.load(run / "predictions_external-ext.npz") as z:  # the model's own 7 classes
        probs, names, targets = z["probs"], list(z["class_names"]), z["targets"]
    malignant = probs[:, [names.index(c) for c in MERGE["malignant"]]].sum(axis=1)
    is_malignant = targets == names.index("mel")
    merged = json.loads((run / "eval_external-ext-merged.json").read_text())
    assert merged["auc_per_class"]["malignant"] == pytest.approx(
        roc_auc_score(is_malignant, malignant), abs=1e-12
    )
    with np.load(run / "predictions_external-ext-merged.npz") as z:
        assert list(z["class_names"]) == ["malignant", "benign"]
        np.testing.assert_allclose(z["probs"][:, 0], malignant, rtol=1e-6)


def test_paired_csv_of_the_sweep(sweep: tuple[Path, dict]) -> None:
    out, _ = sweep
    paired = pd.read_csv(out / "paired.csv")
    assert list(paired.columns) == PAIRED_COLUMNS
    pairs = set(zip(paired["a"], paired["b"], strict=True))
    assert pairs == {("simclr", "random"), ("micle", "random"), ("micle", "simclr")}
    results = pd.read_csv(out / "results.csv")
    one = paired[(paired["mode"] == "linear") & (paired["split"] == "test")
                 & (paired["metric"] == "accuracy") & (paired["a"] == "micle")
                 & (paired["b"] == "random")]  # fmt: skip
    by_seed = one.set_index("seed")

    def acc(init: str, seed: int) -> float:
        r = results[(results["init"] == init) & (results["mode"] == "linear")
                    & (results["split"] == "test") & (results["seed"] == seed)]  # fmt: skip
        return float(r["accuracy"].iloc[0])

    diffs = [acc("micle", s) - acc("random", s) for s in (0, 1)]
    assert float(by_seed.loc["1", "diff"]) == pytest.approx(diffs[1])
    assert by_seed.loc["1", "ci_kind"] == "paired-case-bootstrap"
    mean, lo, hi = t_interval(np.asarray(diffs))
    assert by_seed.loc["mean", "ci_kind"] == "t-over-seeds"
    assert float(by_seed.loc["mean", "diff"]) == pytest.approx(mean)
    if math.isfinite(lo):
        assert float(by_seed.loc["mean", "ci_low"]) == pytest.approx(lo)
        assert float(by_seed.loc["mean", "ci_high"]) == pytest.approx(hi)


def test_stopped_chained_sweep_resumes_either_entry(
    sweep: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, protocol = sweep
    calls = []

    def fake_pretrain(config) -> dict:  # noqa: ANN001
        calls.append(config)
        (Path(config.out) / "metrics.json").write_text(saved[Path(config.out).name])
        return {}

    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    saved = {}
    for name in ("simclr-s1", "micle-s0"):  # stopped before writing their final metrics
        saved[name] = (out / "pretrain" / name / "metrics.json").read_text()
        (out / "pretrain" / name / "metrics.json").unlink()
    run_sweep(protocol, out, progress=False)
    assert [Path(c.out).name for c in calls] == ["micle-s0", "simclr-s1"]
    assert all(c.resume for c in calls)
    assert calls[0].init == str(out / "pretrain" / "simclr-s0")


# --------------------------------------------------------------------------- protocol checks


def _base(**changes) -> dict:  # noqa: ANN003
    protocol = {
        "data": {"dataset": "synthetic"},
        "pretrain": {"simclr": {"method": "simclr", "epochs": 1},
                     "micle": {"method": "micle", "epochs": 1}},
        "inits": ["random", "simclr", "micle"],
        "label_fractions": [0.1, 1.0],
        "seeds": [0, 1],
    }  # fmt: skip
    protocol.update(changes)
    return protocol


def test_default_protocol_plans_todays_runs(tmp_path: Path) -> None:
    p = load_protocol(_base())
    names = [j.name for j in plan(p, tmp_path)]
    assert names[:2] == ["simclr", "micle"]
    assert names[2:5] == ["random-f0.1-s0", "simclr-f0.1-s0", "micle-f0.1-s0"]
    assert all(j.mode == "finetune" for j in plan(p, tmp_path))
    jobs = plan(p, tmp_path)
    assert jobs[-1].config.init == str(tmp_path / "pretrain" / "micle")
    assert jobs[-1].config.linear_probe is False
    assert not {"pretrain_seeds", "finetune_modes", "external"} & set(p.to_dict())


def test_chained_entries_run_after_their_parent(tmp_path: Path) -> None:
    pretrain = {"micle": {"method": "micle", "init": "simclr"}, "simclr": {"method": "simclr"}}
    p = load_protocol(_base(pretrain=pretrain, pretrain_seeds=[0, 1, 2]))
    jobs = plan(p, tmp_path)
    pre = [(j.name, j.config.init, j.config.seed) for j in jobs if j.kind == "pretrain"]
    assert pre[:2] == [
        ("simclr-s0", "random", 0), ("micle-s0", str(tmp_path / "pretrain" / "simclr-s0"), 0),
    ]  # fmt: skip
    assert [n for n, _, _ in pre] == [f"{e}-s{s}" for s in (0, 1, 2) for e in ("simclr", "micle")]
    # seed 0's fine-tunes come right after seed 0's pretraining, paired with it
    assert jobs[2].kind == "finetune" and jobs[2].seed == 0
    ft = [j for j in jobs if j.kind == "finetune" and j.init.label == "micle" and j.seed == 1]
    assert ft[0].config.init == str(tmp_path / "pretrain" / "micle-s1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"pretrain": {"a": {"init": "b"}, "b": {"init": "a"}}},
            r"pretrain\.[ab]\.init: the entries form a cycle \((a -> b -> a|b -> a -> b)\)",
        ),
        ({"pretrain": {"a": {"init": "a"}}}, r"pretrain\.a\.init: the entries form a cycle"),
        (
            {"pretrain": {"a": {"init": "simclr2"}}},
            r"pretrain\.a\.init: 'simclr2' is not 'random', a pretrain entry \(a\)",
        ),
        ({"pretrain_seeds": [0]}, r"pretrain_seeds: fine-tuning seed\(s\) 1 have no pretraining"),
        (
            {"pretrain_seeds": [0, 1], "pretrain": {"simclr": {"seed": 3}}},
            r"pretrain\.simclr\.seed: is set by the sweep from pretrain_seeds",
        ),
        ({"finetune_modes": ["finetune", "probe"]}, r"finetune_modes: 'probe' is not a mode"),
        (
            {"finetune_modes": ["linear"], "finetune": {"linear_probe": True}},
            r"finetune\.linear_probe: is set by finetune_modes",
        ),
        ({"external": [{"name": "x"}]}, r"external\[0\]: expected a mapping with name, data"),
        (
            {"external": [{"name": "x", "data": {"dataset": "csv"}}]},
            r"external\.x\.data\.root: required with dataset csv",
        ),
        (
            {"external": [{"name": "x", "data": {"dataset": "synthetic"}, "class_map": ["a"]}]},
            r"external\.x\.class_map: expected a mapping",
        ),
        (
            {
                "external": [
                    {"name": "x", "data": {"dataset": "synthetic"}, "model_classes": {"m": [1]}}
                ]
            },
            r"external\.x: model_classes\.m: expected a list of model class names",
        ),
    ],  # fmt: skip
)
def test_protocol_errors_name_the_key(changes: dict, message: str) -> None:
    with pytest.raises(MedsslError, match=message) as info:
        load_protocol(_base(**changes))
    assert "\n" not in str(info.value)


def test_external_class_map_is_checked_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(config) -> None:  # noqa: ANN001
        raise AssertionError("trained before the external set was checked")

    monkeypatch.setattr(pretrain_module, "pretrain", no_training)
    ext = _write_external(tmp_path / "ext")
    data = {"dataset": "csv", "root": str(ext), "options": {"csv_case": "patient"}}
    protocol = _base(
        data={"dataset": "synthetic", "options": {"synthetic_cases": 40}},
        external=[{"name": "e", "data": data, "class_map": {"naevus": "nosuch"}}],
    )
    with pytest.raises(MedsslError, match=r"external\.e\.class_map: 'naevus' goes to 'nosuch'"):
        run_sweep(protocol, tmp_path / "out", progress=False)
    protocol["external"][0]["class_map"] = {"naevvus": None}
    with pytest.raises(MedsslError, match=r"external\.e\.class_map: 'naevvus' is not a class"):
        run_sweep(protocol, tmp_path / "out", progress=False)
    # a map that keeps no row was refused only after pretraining and fine-tuning
    protocol["external"][0]["class_map"] = {"naevus": None, "melanoma": None, "other": None}
    with pytest.raises(MedsslError, match=r"external\.e\.class_map: class mapping excludes every"):
        run_sweep(protocol, tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- statistics


def test_t_interval_equals_a_hand_computation() -> None:
    a = np.array([0.80, 0.82, 0.78, 0.85])
    b = np.array([0.75, 0.76, 0.77, 0.79])
    diffs = a - b  # 0.05, 0.06, 0.01, 0.06
    mean, lo, hi = t_interval(diffs)
    sd = math.sqrt(sum((d - 0.045) ** 2 for d in diffs) / 3)  # 0.023804761...
    half = 3.182446 * sd / 2  # t(0.975, 3 dof) * sd / sqrt(4)
    assert mean == pytest.approx(0.045)
    assert (lo, hi) == (pytest.approx(0.045 - half), pytest.approx(0.045 + half))
    assert half == pytest.approx(0.0378785, abs=1e-6)
    assert math.isnan(t_interval(np.array([0.1]))[1])  # one seed: no interval
    assert t_quantile_975(2) == pytest.approx(4.302653)
    assert t_quantile_975(60) == pytest.approx(2.000298, abs=1e-6)  # past the table


def _predictions(seed: int, n: int = 40, classes: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=n)
    return {
        "probs": probs,
        "targets": np.arange(n) % classes,
        "case_ids": np.array([f"c{i // 2}" for i in range(n)]),
    }


def test_paired_bootstrap_of_a_model_with_itself_is_exactly_zero() -> None:
    pred = _predictions(0)
    metrics = ["accuracy", "balanced_accuracy", "auc_macro"]
    cis = paired_bootstrap(pred, pred, metrics, n_boot=200)
    assert all(cis[m] == (0.0, 0.0) for m in metrics)
    other = _predictions(1)
    other["targets"] = pred["targets"]
    other["case_ids"] = pred["case_ids"]
    lo, hi = paired_bootstrap(other, pred, ["auc_macro"], n_boot=200)["auc_macro"]
    assert lo < hi
    with pytest.raises(MedsslError, match="different images"):
        paired_bootstrap(pred, _predictions(0, n=38), ["accuracy"], n_boot=5)


def test_paired_bootstrap_matches_runs_by_case_grouping_not_by_hashed_ids() -> None:
    """Each run hashes case ids with its own salt: the same images still pair up, and the
    interval is what the clear ids give; another grouping of the rows is refused."""
    a, b = _predictions(0), _predictions(1)
    b["targets"] = a["targets"]
    clear = paired_bootstrap(a, {**b, "case_ids": a["case_ids"]}, ["auc_macro", "ece"], 50)
    hashed = {**b, "case_ids": np.array([f"h{hash(c) % 10**9}" for c in a["case_ids"]])}
    assert paired_bootstrap(a, hashed, ["auc_macro", "ece"], 50) == clear
    # another salt for the first run too (two runs of one demo): the same draws, same interval
    resalted = {**a, "case_ids": np.array([f"s{hash((c, 7)) % 10**9}" for c in a["case_ids"]])}
    assert paired_bootstrap(resalted, hashed, ["auc_macro", "ece"], 50) == clear
    regrouped = {**b, "case_ids": np.array([f"c{i // 4}" for i in range(40)])}
    with pytest.raises(MedsslError, match="different images"):
        paired_bootstrap(a, regrouped, ["auc_macro"], n_boot=5)


def test_paired_differences_on_made_up_results(tmp_path: Path) -> None:
    """Per-seed rows are a - b; the mean row is the hand-computed t interval; identical
    prediction files give a bootstrap interval of exactly [0, 0]."""
    rows = []
    values = {"random": [0.70, 0.72, 0.69], "simclr": [0.75, 0.74, 0.76]}
    for init, accs in values.items():
        for seed, acc in enumerate(accs):
            run = tmp_path / f"{init}-s{seed}"
            run.mkdir()
            np.savez_compressed(run / "predictions_external-x.npz", **_predictions(seed))
            rows.append({"init": init, "mode": "finetune", "label_fraction": 1.0, "seed": seed,
                         "split": "external:x", "accuracy": acc, "run": run.name})  # fmt: skip
    table = paired_differences(pd.DataFrame(rows), tmp_path, n_boot=50)
    assert list(table.columns) == PAIRED_COLUMNS
    per_seed = table[table["seed"] != "mean"]
    assert per_seed["diff"].tolist() == pytest.approx([0.05, 0.02, 0.07])
    # same predictions for both inits of a seed: the paired bootstrap is exactly [0, 0]
    assert per_seed["ci_low"].tolist() == [0.0] * 3 and per_seed["ci_high"].tolist() == [0.0] * 3
    mean = table[table["seed"] == "mean"].iloc[0]
    sd = float(np.std([0.05, 0.02, 0.07], ddof=1))
    half = 4.302653 * sd / math.sqrt(3)
    assert mean["diff"] == pytest.approx(0.14 / 3)
    assert (mean["ci_low"], mean["ci_high"]) == (
        pytest.approx(0.14 / 3 - half), pytest.approx(0.14 / 3 + half),
    )  # fmt: skip
    assert mean["ci_kind"] == "t-over-seeds" and (mean["a"], mean["b"]) == ("simclr", "random")


def test_merged_class_map_auc_equals_a_hand_computation() -> None:
    names = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(7), size=60)
    merged, groups = merge_model_classes(probs, names, MERGE)
    assert groups == ["malignant", "benign"]
    labels = rng.integers(0, 2, size=60)  # 0 = malignant, 1 = benign
    metrics = evaluate_predictions(merged, labels, "multiclass", groups, np.arange(60), n_boot=10)
    malignant = probs[:, [0, 1, 4]].sum(axis=1)
    benign = probs[:, [2, 3, 5, 6]].sum(axis=1)
    assert metrics["auc_per_class"]["malignant"] == pytest.approx(
        roc_auc_score(labels == 0, malignant), abs=1e-12
    )
    assert metrics["auc_per_class"]["benign"] == pytest.approx(
        roc_auc_score(labels == 1, benign), abs=1e-12
    )
    with pytest.raises(MedsslError, match="'melanoma', which is not a model class"):
        merge_model_classes(probs, names, {"malignant": ["melanoma"]})
    cmap = load_class_map({"melanoma": "malignant", "model_classes": MERGE})
    assert cmap.classes == {"melanoma": "malignant"} and cmap.model_classes == MERGE
    with pytest.raises(MedsslError, match="'mel' is in both"):
        load_class_map({"model_classes": {"a": ["mel"], "b": ["mel", "nv"]}})


@pytest.mark.parametrize("record", ["/proc/medssl-record", "/sys/medssl-record", "read-only"])
def test_an_unwritable_record_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: str
) -> None:
    """--record /proc/x trained and evaluated the whole sweep, then gave a traceback."""
    import os

    def no_training(config) -> None:  # noqa: ANN001
        raise AssertionError("trained before --record was checked")

    monkeypatch.setattr(pretrain_module, "pretrain", no_training)
    if record == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        record = str(folder / "record")
    with pytest.raises(MedsslError, match=rf"^--record {record}: cannot ") as info:
        run_sweep(_base(), tmp_path / "out", progress=False, record=record)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_damaged_evaluation_file_is_redone_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A truncated eval_test.json (a damaged copy, in the folder or restored from a record)
    was a JSONDecodeError on every resume: a finished evaluation is never redone. Now it is
    redone like a run with a damaged metrics.json, with one line saying so."""
    from medssl import evaluation
    from medssl.sweep import _evaluate, collect_results
    from medssl.train.run import is_complete

    p = load_protocol(_base())
    job = next(j for j in plan(p, tmp_path) if j.kind == "finetune")
    job.run.mkdir(parents=True)
    good = {"accuracy": 0.5, "n": 4}
    (job.run / "eval_test.json").write_text(json.dumps(good)[:9])  # truncated
    (job.run / "eval_shift.json").write_text(json.dumps(good))
    (job.run / "metrics.json").write_text('{"status": "comp')
    assert not is_complete(job.run)
    calls: list[str] = []

    def evaluate_run(run: Path, split: str, **kwargs) -> dict:  # noqa: ANN003
        calls.append(split)
        (run / f"eval_{split}.json").write_text(json.dumps(good))
        return good

    monkeypatch.setattr(evaluation, "evaluate_run", evaluate_run)
    assert _evaluate(p, job, ["test", "shift"], "where") == 1
    assert calls == ["test"]
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        f"    {job.run / 'eval_test.json'} is damaged (not a JSON object): evaluating test again"
    )
    (job.run / "eval_test.json").write_text("[")  # damaged later: left out of the table
    (job.run / "metrics.json").write_text('{"status": "complete"}')
    monkeypatch.setattr("medssl.sweep._finished_choices", lambda *a: [(None, job, None, 0)])
    rows = pd.read_csv(collect_results(p, tmp_path, ["test", "shift"]))
    assert list(rows["split"]) == ["shift"]
