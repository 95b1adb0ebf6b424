"""Sweeps and the demo: protocol validation, resume semantics, the synthetic demo end to end.

One smoke-budget demo (2 tiny pretraining runs, 12 fine-tunes and linear probes, 24
evaluations) is trained
once per module and shared; the resume tests then spy on the training functions to show
that a second run of the same sweep retrains nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medssl import evaluation
from medssl.cli import main
from medssl.data.spec import DataSpec
from medssl.data.synthetic import SYNTHETIC_SHIFT_SOURCE
from medssl.demo import demo_protocol, run_demo
from medssl.errors import MedsslError
from medssl.sweep import load_protocol, plan, run_sweep
from medssl.train import finetune as finetune_module
from medssl.train import pretrain as pretrain_module

INITS = ["random", "simclr", "micle"]
FRACTIONS = [0.1, 1.0]
SPLITS = ["test", "shift"]
MODES = ["finetune", "linear"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """A finished smoke-budget demo folder and what the demo printed."""
    root = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("MEDSSL_CACHE", str(root / "cache"))
        run_demo(root / "demo", budget="smoke", progress=False)
    return root / "demo", out.getvalue()


class _Spy:
    """Stands in for pretrain/finetune/evaluate_run and records the calls."""

    def __init__(self, real=None) -> None:  # noqa: ANN001 - any callable
        self.calls: list[tuple] = []
        self.real = real

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        self.calls.append(args)
        if self.real is None:
            raise AssertionError(f"unexpected call with {args}")
        return self.real(*args, **kwargs)


def _results(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    assert not df.duplicated(["init", "mode", "label_fraction", "seed", "split"]).any()
    return df


# --------------------------------------------------------------------------- the demo


def test_demo_smoke_makes_every_row_and_the_report(demo: tuple[Path, str]) -> None:
    out, printed = demo
    df = _results(out / "results.csv")
    assert len(df) == len(INITS) * len(FRACTIONS) * len(SPLITS) * len(MODES)
    got = set(zip(df["init"], df["mode"], df["label_fraction"], df["split"], strict=True))
    assert got == {(i, m, f, s) for i in INITS for m in MODES for f in FRACTIONS for s in SPLITS}
    assert set(df["dataset"]) == {"synthetic"}
    assert df["accuracy"].between(0, 1).all() and (df["n"] > 0).all()
    for run in df["run"]:
        assert (out / run / "best.pt").is_file()
    assert (out / "report.html").is_file() and (out / "results.md").is_file()
    assert "SYNTHETIC" in (out / "report.html").read_text()
    assert "SYNTHETIC" in (out / "report.md").read_text()
    # the comparison table is printed, and the output says the data are synthetic
    assert "| Init | Labels |" in printed and "SYNTHETIC" in printed
    assert "[14/14] finetune micle f=1 seed=0" in printed
    # the headline comes first: every init's score at the low fraction, paired differences
    # (medssl.report.headline, the same as the report's first section), fine-tuned first
    head = printed[printed.index("what pretraining buys") :].splitlines()
    assert head[1].startswith("With 10% of the labels, AUC (macro), higher is better")
    assert head[2] == "  fine-tuned, in-distribution (test)"
    low = df[(df["label_fraction"] == 0.1) & (df["mode"] == "finetune") & (df["split"] == "test")]
    scores = [f"{low.loc[low['init'] == i, 'auc_macro'].item():.3f}" for i in INITS]
    rows = [line.split()[:2] for line in head[3:6]]
    assert rows == [[init, score] for init, score in zip(INITS, scores, strict=True)]
    assert "interval" in head[4] and "baseline" in head[3]
    assert "## Headline: 10% of the labels" in (out / "report.md").read_text()
    assert head.index(next(h for h in head if h.startswith("| Init"))) > 6
    # MICLe continues from SimCLR, as in the paper
    micle = yaml.safe_load((out / "pretrain" / "micle" / "config.yaml").read_text())
    assert Path(micle["init"]) == out / "pretrain" / "simclr"
    # the shift split is the held-out synthetic site, carried by the run's data spec
    config = yaml.safe_load((out / "finetune" / "micle-f1-s0" / "config.yaml").read_text())
    assert config["data"]["shift_sources"] == [SYNTHETIC_SHIFT_SOURCE]


def test_second_run_retrains_nothing_and_redoes_only_missing_evals(
    demo: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out, _ = demo
    before = _results(out / "results.csv")
    pretrain_spy, finetune_spy = _Spy(), _Spy()
    evaluate_spy = _Spy(evaluation.evaluate_run)
    monkeypatch.setattr(pretrain_module, "pretrain", pretrain_spy)
    monkeypatch.setattr(finetune_module, "finetune", finetune_spy)
    monkeypatch.setattr(evaluation, "evaluate_run", evaluate_spy)

    # a setting that medssl gained after a run was made does not make the run stale
    config_path = out / "pretrain" / "micle" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    del config["knn_k"]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # the demo again, in the same folder: reused, said so, same table
    run_demo(out, budget="smoke", progress=False)
    printed = capsys.readouterr().out
    assert "holds a finished demo" in printed and "reused" in printed
    assert not pretrain_spy.calls and not finetune_spy.calls and not evaluate_spy.calls
    pd.testing.assert_frame_equal(_results(out / "results.csv"), before)

    # one evaluation file gone: only that evaluation is redone
    (out / "finetune" / "simclr-f0.1-s0" / "eval_shift.json").unlink()
    run_sweep(demo_protocol(budget="smoke"), out, progress=False)
    assert [(Path(a[0]).name, a[1]) for a in evaluate_spy.calls] == [("simclr-f0.1-s0", "shift")]
    assert not pretrain_spy.calls and not finetune_spy.calls
    after = _results(out / "results.csv")
    assert len(after) == len(before)
    pd.testing.assert_frame_equal(after.drop(columns="n"), before.drop(columns="n"))

    # an unfinished run is resumed (resume=True, same directory), not restarted elsewhere
    run = out / "finetune" / "random-f1-s0"
    metrics = (run / "metrics.json").read_text()
    (run / "metrics.json").unlink()

    def fake_finetune(config) -> dict:  # noqa: ANN001
        finetune_spy.calls.append((config,))
        (Path(config.out) / "metrics.json").write_text(metrics)
        return json.loads(metrics)

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    run_sweep(demo_protocol(budget="smoke"), out, progress=False)
    assert len(finetune_spy.calls) == 1
    config = finetune_spy.calls[0][0]
    assert config.resume is True and Path(config.out) == run
    assert not pretrain_spy.calls
    assert len(_results(out / "results.csv")) == len(before)


def test_finished_run_with_other_settings_is_not_reused(
    demo: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = demo
    monkeypatch.setattr(finetune_module, "finetune", _Spy())
    protocol = demo_protocol(budget="smoke")
    protocol["finetune"]["lr"] = 0.5
    with pytest.raises(MedsslError, match=r"different settings \(lr\)"):
        run_sweep(protocol, out, progress=False)


def test_a_run_made_on_data_at_another_path_names_both_roots(
    demo: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep moved to a machine whose data sits elsewhere: its finished runs are not
    taken for runs of this data (medssl cannot tell), and the error says what would do."""
    out, _ = demo
    monkeypatch.setattr(finetune_module, "finetune", _Spy())
    protocol = demo_protocol(budget="smoke")
    protocol["data"]["root"] = str(tmp_path / "moved")
    with pytest.raises(MedsslError) as caught:
        run_sweep(protocol, out, progress=False)
    message = str(caught.value)
    assert "different settings (data)" in message
    assert f"the protocol's is {tmp_path / 'moved'}" in message and "symbolic link" in message


# --------------------------------------------------------------------------- validation


def _protocol_file(tmp_path: Path, **changes) -> Path:  # noqa: ANN003
    protocol = demo_protocol(budget="smoke")
    protocol.update(changes)
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in protocol.items() if v is not None}))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lable_fractions": [0.1]}, r"unknown key\(s\) lable_fractions"),
        ({"label_fractions": [0.1, 10]}, r"label_fractions: 10 is not a fraction"),
        ({"seeds": ["one"]}, r"seeds: expected an integer"),
        ({"image_size": 4}, r"image_size: must be at least 8"),
        ({"inits": ["random", "mocle"]}, r"inits: 'mocle' is not 'random', a pretrain entry"),
        ({"inits": ["random", "random"]}, r"inits: label 'random' appears twice"),
        ({"pretrain": {"simclr": {"epoch": 3}}}, r"pretrain\.simclr\.epoch: is not a setting"),
        (
            {"pretrain": {"simclr": {"epochs": "ten"}}},
            r"pretrain\.simclr\.epochs: expected an integer, got 'ten'",
        ),
        ({"finetune": {"epochs": 0}}, r"finetune\.epochs: must be at least 1, got 0"),
        (
            {"pretrain": {"simclr": {"augment": {"blur_p": 2}}}},
            r"pretrain\.simclr\.augment\.blur_p: must be at most 1, got 2",
        ),
        ({"finetune": {"seed": 3}}, r"finetune\.seed: is set by the sweep"),
        ({"data": {"dataset": "nosuch", "root": "x"}}, r"data\.dataset: 'nosuch' is not one"),
        ({"data": {"dataset": "ham10000"}}, r"data\.root: required with dataset ham10000"),
        ({"data": None}, r"missing required key data"),
    ],
)
def test_protocol_errors_name_the_key_and_the_file(
    tmp_path: Path, changes: dict, message: str
) -> None:
    path = _protocol_file(tmp_path, **changes)
    with pytest.raises(MedsslError, match=message) as info:
        load_protocol(path)
    assert str(path) in str(info.value)


def test_protocol_split_not_in_the_data_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pretrain_module, "pretrain", _Spy())
    data = {"dataset": "synthetic", "options": {"synthetic_cases": 20}, "shift_sources": []}
    path = _protocol_file(tmp_path, data=data, splits=["test", "shift"])
    with pytest.raises(MedsslError, match=r"splits: shift not in this dataset's splits"):
        run_sweep(path, tmp_path / "out")


def test_protocol_yaml_errors_and_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(MedsslError, match=r"not valid YAML"):
        load_protocol(bad)
    path = _protocol_file(tmp_path, n_boot=-1)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "n_boot: must be at least 0" in err and str(path) in err
    assert main(["demo", "--root", str(tmp_path)]) == 2
    assert "--root needs --dataset" in capsys.readouterr().err


def test_relative_paths_resolve_against_the_protocol_file(tmp_path: Path) -> None:
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "imagenet_r18.pt").write_bytes(b"")
    path = _protocol_file(
        tmp_path,
        data={"dataset": "ham10000", "root": "data/ham"},
        inits=["random", "ckpts/imagenet_r18.pt", {"mine": "ckpts/imagenet_r18.pt"}],
    )
    p = load_protocol(path)
    assert p.data["root"] == str(tmp_path / "data" / "ham")
    assert [(i.label, i.kind) for i in p.inits] == [
        ("random", "random"), ("imagenet_r18", "path"), ("mine", "path"),
    ]  # fmt: skip
    assert p.inits[1].target == str(tmp_path / "ckpts" / "imagenet_r18.pt")


def test_plan_runs_every_comparison_of_a_seed_before_the_next_seed(tmp_path: Path) -> None:
    """An interrupted sweep must already hold whole init x fraction tables for early seeds."""
    p = load_protocol(
        {
            "data": {"dataset": "synthetic"},
            "pretrain": {"simclr": {"method": "simclr", "epochs": 1}},
            "inits": ["random", "simclr"],
            "label_fractions": [0.1, 1.0],
            "seeds": [0, 1],
        }
    )
    jobs = plan(p, tmp_path)
    assert [j.kind for j in jobs[:1]] == ["pretrain"]
    order = [(j.seed, j.fraction, j.init.label) for j in jobs[1:]]
    assert order == [(s, f, i) for s in (0, 1) for f in (0.1, 1.0) for i in ("random", "simclr")]


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_dataset_needs_no_root(capsys: pytest.CaptureFixture) -> None:
    rc = main(["data", "summary", "--dataset", "synthetic", "--synthetic-cases", "20", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 20 and "shift" in summary["splits"]
    assert summary["cases_shared_between_splits"] == 0
    assert main(["data", "summary", "--dataset", "ham10000"]) == 2
    assert "--root: required with dataset ham10000" in capsys.readouterr().err
    spec = DataSpec(dataset="synthetic", root="")
    assert spec.shift_sources == [SYNTHETIC_SHIFT_SOURCE]
    manifest, splits = spec.load()
    shift = manifest.table["source"].to_numpy()[splits["shift"]]
    assert set(shift) == {SYNTHETIC_SHIFT_SOURCE}
    assert SYNTHETIC_SHIFT_SOURCE not in set(manifest.table["source"].to_numpy()[splits["train"]])
