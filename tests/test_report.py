"""Tests for medssl.report: seed-level summaries checked against scipy, the Markdown table's
cells, ROC data against scikit-learn, and a whole report written from fake runs."""

from __future__ import annotations

import base64
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from medssl.errors import MedsslError
from medssl.metrics import multiclass_calibration
from medssl.report import (
    CASE_CI_MARK,
    markdown_table,
    plot_label_efficiency,
    plot_roc,
    plot_shift_bars,
    reliability_data,
    roc_curve_data,
    summarize,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INITS = ["random", "simclr", "micle"]
FRACTIONS = [0.1, 1.0]
SEEDS = [0, 1, 2]
SPLITS = ["test", "shift"]


def value(init: str, fraction: float, seed: int, split: str) -> float:
    """A distinct, known value per row: init, fraction and split move the mean apart."""
    base = {"random": 0.60, "simclr": 0.70, "micle": 0.75}[init]
    return base + 0.1 * fraction - (0.08 if split == "shift" else 0.0) + [0.0, 0.013, -0.021][seed]


def make_results(
    inits=INITS, fractions=FRACTIONS, seeds=SEEDS, splits=SPLITS, runs: dict | None = None
) -> pd.DataFrame:
    rows = []
    for init in inits:
        for fraction in fractions:
            for seed in seeds:
                for split in splits:
                    v = value(init, fraction, seed, split)
                    rows.append(
                        {
                            "dataset": "derm",
                            "init": init,
                            "label_fraction": fraction,
                            "seed": seed,
                            "split": split,
                            "n": 100,
                            "accuracy": v - 0.05,
                            "balanced_accuracy": v - 0.1,
                            "auc_macro": v,
                            "auc_mean_selected": np.nan,
                            "run": (runs or {}).get((init, fraction, seed), f"runs/{init}"),
                        }
                    )
    return pd.DataFrame(rows)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values)
    lo, hi = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
    return float(a.mean()), float(lo), float(hi)


# --------------------------------------------------------------------------- summarize


def test_summarize_mean_and_ci_match_scipy():
    s = summarize(make_results())
    row = s[(s.init == "simclr") & (s.label_fraction == 0.1) & (s.split == "shift")].iloc[0]
    mean, lo, hi = t_interval([value("simclr", 0.1, k, "shift") for k in SEEDS])
    assert row["auc_macro_mean"] == pytest.approx(mean)
    assert row["auc_macro_lo"] == pytest.approx(lo)
    assert row["auc_macro_hi"] == pytest.approx(hi)
    assert row["n_seeds"] == 3
    assert s.attrs["ci_method"] == "Student t"


def test_summarize_nested_grouping_every_group():
    s = summarize(make_results())
    assert len(s) == len(INITS) * len(FRACTIONS) * len(SPLITS)
    assert not s.duplicated(["init", "label_fraction", "split"]).any()
    for r in s.itertuples():
        vals = [value(r.init, r.label_fraction, k, r.split) for k in SEEDS]
        mean, lo, hi = t_interval(vals)
        assert r.auc_macro_mean == pytest.approx(mean)
        assert r.accuracy_mean == pytest.approx(mean - 0.05)
        assert r.balanced_accuracy_lo == pytest.approx(lo - 0.1)
        assert r.balanced_accuracy_hi == pytest.approx(hi - 0.1)
    # paper order: baseline first, then SimCLR, MICLe; test before shift; fractions ascending
    assert list(dict.fromkeys(s.init)) == ["random", "simclr", "micle"]
    assert list(s.split[:2]) == ["test", "shift"]
    assert list(s.label_fraction[:4]) == [0.1, 0.1, 1.0, 1.0]


def test_summarize_default_metrics_skip_empty_columns():
    s = summarize(make_results())
    assert "auc_mean_selected_mean" not in s.columns
    assert {"accuracy_mean", "auc_macro_mean", "balanced_accuracy_mean"} <= set(s.columns)
    only = summarize(make_results(), metrics=["auc_macro"])
    assert [c for c in only.columns if c.endswith("_mean")] == ["auc_macro_mean"]


def test_summarize_single_seed_has_no_ci():
    s = summarize(make_results(seeds=[1]))
    assert (s.n_seeds == 1).all()
    assert s.auc_macro_lo.isna().all() and s.auc_macro_hi.isna().all()
    assert s.auc_macro_mean.iloc[0] == pytest.approx(value("random", 0.1, 1, "test"))


def test_summarize_ignores_nan_seed_for_that_metric_only():
    df = make_results()
    hit = (df.init == "micle") & (df.label_fraction == 1.0) & (df.split == "test") & (df.seed == 2)
    df.loc[hit, "auc_macro"] = np.nan
    s = summarize(df)
    r = s[(s.init == "micle") & (s.label_fraction == 1.0) & (s.split == "test")].iloc[0]
    mean, lo, hi = t_interval([value("micle", 1.0, k, "test") for k in (0, 1)])
    assert (r.auc_macro_mean, r.auc_macro_lo, r.auc_macro_hi) == pytest.approx((mean, lo, hi))
    assert r.n_seeds == 3
    assert r.accuracy_mean == pytest.approx(
        np.mean([value("micle", 1.0, k, "test") for k in SEEDS]) - 0.05
    )


def test_summarize_normal_approximation_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # makes `from scipy import stats` fail
    monkeypatch.delattr("scipy.stats", raising=False)
    s = summarize(make_results())
    a = np.asarray([value("random", 0.1, k, "test") for k in SEEDS])
    half = 1.959964 * a.std(ddof=1) / math.sqrt(3)
    assert s.auc_macro_hi.iloc[0] == pytest.approx(a.mean() + half, rel=1e-5)
    assert s.attrs["ci_method"] == "normal approximation"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop(columns="label_fraction"), "label_fraction"),
        (
            lambda df: df.drop(
                columns=["accuracy", "balanced_accuracy", "auc_macro", "auc_mean_selected"]
            ),
            "metric",
        ),
        (lambda df: pd.concat([df, df.iloc[:1]]), "more than one row"),
        (lambda df: df.assign(dataset=["a", "b"] * (len(df) // 2)), "mix datasets"),
        (lambda df: df.assign(label_fraction=df.label_fraction * 100), "fraction in"),
        (lambda df: df.iloc[:0], "no rows"),
    ],
)
def test_summarize_rejects_bad_tables(change, message):
    with pytest.raises(MedsslError, match=message):
        summarize(change(make_results()))


def test_summarize_unknown_metric():
    with pytest.raises(MedsslError, match="auc_weird"):
        summarize(make_results(), metrics=["auc_weird"])


# --------------------------------------------------------------------------- markdown


def test_markdown_table_cells():
    s = summarize(make_results())
    md = markdown_table(s, ["auc_macro"])
    lines = md.strip().splitlines()
    assert lines[0] == (
        "| Init | Labels | In-distribution (test): AUC (macro) | "
        "Distribution shift: AUC (macro) | Seeds |"
    )
    assert len(lines) == 2 + len(INITS) * len(FRACTIONS)
    mean, lo, hi = t_interval([value("simclr", 0.1, k, "test") for k in SEEDS])
    smean, slo, shi = t_interval([value("simclr", 0.1, k, "shift") for k in SEEDS])
    expected = (
        f"| simclr | 10% | {mean:.3f} [{lo:.2f}, {hi:.2f}] | "
        f"{smean:.3f} [{slo:.2f}, {shi:.2f}] | 3 |"
    )
    assert expected in lines
    assert any(line.startswith("| micle | 100% |") for line in lines)


def test_markdown_table_single_seed_and_missing_cells():
    df = make_results(seeds=[0])
    df = df[~((df.init == "random") & (df.split == "shift"))]
    md = markdown_table(summarize(df), ["auc_macro"])
    v = value("simclr", 1.0, 0, "test")
    assert f"| simclr | 100% | {v:.3f} |" in md  # bare mean, no brackets
    assert "[" not in md
    assert re.search(r"\| random \| 10% \| [0-9.]+ \| — \| 1 \|", md)


# --------------------------------------------------------------------------- ROC data


def test_roc_macro_multiclass_auc_is_mean_of_one_vs_rest():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    probs[np.arange(60), labels] += 0.3
    cur = roc_curve_data(probs, labels, "macro")
    expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)])
    assert cur.auc == pytest.approx(expected)
    assert cur.fpr[0] == 0 and cur.tpr[0] == 0 and cur.fpr[-1] == 1 and cur.tpr[-1] == 1
    assert np.all(np.diff(cur.fpr) >= 0)
    one = roc_curve_data(probs, labels, "c1", class_names=["c0", "c1", "c2"])
    assert one.auc == pytest.approx(roc_auc_score(labels == 1, probs[:, 1]))


def test_roc_multilabel_masks_nan_and_skips_single_class_findings():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, (40, 3)).astype(float)
    targets[::5, 0] = np.nan
    targets[:, 2] = 0.0  # no positives: not evaluable
    probs = rng.random((40, 3))
    cur = roc_curve_data(probs, targets, "macro")
    known = ~np.isnan(targets[:, 0])
    expected = np.mean(
        [
            roc_auc_score(targets[known, 0], probs[known, 0]),
            roc_auc_score(targets[:, 1], probs[:, 1]),
        ]
    )
    assert cur.auc == pytest.approx(expected)
    assert "2 findings" in cur.description and "1 skipped" in cur.description
    with pytest.raises(MedsslError, match="lacks positives"):
        roc_curve_data(probs, targets, 2)


# --------------------------------------------------------------------------- plots and report


def fake_run(run_dir: Path, split: str, multilabel: bool, seed: int, skill: float) -> None:
    """A predictions_<split>.npz whose probabilities are better than chance by ``skill``."""
    rng = np.random.default_rng(seed)
    n, c = 80, 4
    names = np.array(["akiec", "bcc", "mel", "nv"])
    if multilabel:
        targets = rng.integers(0, 2, (n, c)).astype(float)
        targets[rng.random((n, c)) < 0.1] = np.nan
        probs = np.clip(rng.random((n, c)) * 0.7 + skill * np.nan_to_num(targets), 0, 1)
    else:
        targets = rng.integers(0, c, n)
        logits = rng.normal(size=(n, c))
        logits[np.arange(n), targets] += 3 * skill
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        run_dir / f"predictions_{split}.npz",
        probs=probs,
        targets=targets,
        case_ids=np.array([f"case{i // 2}" for i in range(n)]),
        class_names=names,
    )


def write_sweep(tmp_path: Path, multilabel: bool = False, splits=SPLITS) -> Path:
    """results.csv plus fake run directories (relative paths, as a sweep writes them)."""
    runs = {}
    for i, init in enumerate(INITS):
        for fraction in FRACTIONS:
            for seed in SEEDS:
                rel = f"runs/{init}-{fraction:g}-s{seed}"
                runs[(init, fraction, seed)] = rel
                for split in splits:
                    fake_run(tmp_path / rel, split, multilabel, seed, skill=0.3 + 0.2 * i)
    df = make_results(splits=splits, runs=runs)
    if multilabel:
        df["auc_mean_selected"] = df["auc_macro"] - 0.01
        df["accuracy"] = np.nan
        df["balanced_accuracy"] = np.nan
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    return path


def assert_png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"
    return data


def test_write_report_multiclass_with_shift(tmp_path):
    csv = write_sweep(tmp_path)
    out = tmp_path / "report"
    html_path = write_report(csv, out, "Dermatology sweep", notes="Pilot run.\n\nFive epochs.")
    assert html_path == out / "report.html"
    expected_pngs = [
        "label_efficiency_auc_macro.png",
        "label_efficiency_balanced_accuracy.png",
        "label_efficiency_accuracy.png",
        "shift_auc_macro.png",
        "roc_test.png",
        "roc_shift.png",
        "reliability_test.png",
        "reliability_shift.png",
    ]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(expected_pngs)
    page = html_path.read_text()
    for name in expected_pngs:
        data = assert_png(out / name)
        assert base64.b64encode(data).decode() in page, name
    assert page.count("data:image/png;base64,") == len(expected_pngs)
    assert not re.search(r'src="(?!data:)', page), "report.html must be self-contained"
    assert "<table" in page and "Dermatology sweep" in page and "Pilot run." in page
    assert "How to read this" in page and "Distribution shift" in page
    summary = pd.read_csv(out / "results_summary.csv")
    assert len(summary) == 12 and "auc_macro_lo" in summary.columns
    assert "| simclr | 10% |" in (out / "results.md").read_text()
    md = (out / "report.md").read_text()
    assert all(f"]({name})" in md for name in expected_pngs)


def test_write_report_multilabel_without_shift(tmp_path):
    csv = write_sweep(tmp_path, multilabel=True, splits=["test"])
    out = tmp_path / "r"
    write_report(csv, out, "Chest X-ray")
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "label_efficiency_auc_macro.png",
        "label_efficiency_auc_mean_selected.png",
        "reliability_test.png",
        "roc_test.png",
    ]
    summary = pd.read_csv(out / "results_summary.csv")
    assert "accuracy_mean" not in summary.columns


def test_write_report_skips_roc_when_predictions_are_missing(tmp_path):
    csv = write_sweep(tmp_path, splits=["test"])
    # one metric keeps this test to a single label-efficiency plot (matplotlib is slow-ish)
    pd.read_csv(csv).drop(columns=["accuracy", "balanced_accuracy"]).to_csv(csv, index=False)
    for f in (tmp_path / "runs").glob("micle-0.1-*/predictions_test.npz"):  # lowest fraction
        f.unlink()
    with pytest.warns(UserWarning, match="predictions_test.npz"):
        html_path = write_report(csv, tmp_path / "out", "t")
    assert not (tmp_path / "out" / "roc_test.png").exists()
    assert "ROC curves for the test split were skipped" in html_path.read_text()


def test_write_report_errors(tmp_path):
    with pytest.raises(MedsslError, match="nope.csv"):
        write_report(tmp_path / "nope.csv", tmp_path / "out", "t")
    bad = tmp_path / "results.csv"
    make_results().drop(columns="split").to_csv(bad, index=False)
    with pytest.raises(MedsslError, match=r"results\.csv.*missing column\(s\) split"):
        write_report(bad, tmp_path / "out", "t")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MedsslError, match="empty"):
        write_report(tmp_path / "empty.csv", tmp_path / "out", "t")


def test_plot_functions_errors(tmp_path):
    s = summarize(make_results(splits=["test"]))
    with pytest.raises(MedsslError, match="shift"):
        plot_shift_bars(s, "auc_macro", tmp_path / "x.png")
    with pytest.raises(MedsslError, match="auc_mean_selected"):
        plot_label_efficiency(s, "auc_mean_selected", tmp_path / "x.png")
    with pytest.raises(MedsslError, match="predictions_test.npz"):
        plot_roc({"simclr": tmp_path / "missing"}, "test", tmp_path / "x.png")


def test_shift_bars_largest_fraction_only(tmp_path):
    s = summarize(make_results(fractions=[0.01, 0.1, 1.0]))
    assert_png(plot_shift_bars(s, "auc_macro", tmp_path / "b.png", label_fraction="largest"))
    with pytest.raises(MedsslError, match="not in the summary"):
        plot_shift_bars(s, "auc_macro", tmp_path / "b.png", label_fraction=0.5)


# ------------------------------------------------------- uncertainty, calibration, subgroups


def test_one_seed_cells_show_the_case_level_interval_marked():
    df = make_results(seeds=[0], splits=["test"])
    df["auc_macro_ci_low"], df["auc_macro_ci_high"] = df["auc_macro"] - 0.05, df["auc_macro"] + 0.04
    summary = summarize(df)
    row = summary.iloc[0]
    assert row["auc_macro_ci"] == "cases"
    assert row["auc_macro_lo"] == pytest.approx(row["auc_macro_mean"] - 0.05)
    assert math.isnan(row["accuracy_lo"])  # no case interval given for accuracy: none shown
    md = markdown_table(summary, ["auc_macro"])
    assert md.count(CASE_CI_MARK) == len(summary)
    # with several seeds the interval is over seeds, unmarked, whatever the file holds
    df3 = make_results(splits=["test"])
    df3["auc_macro_ci_low"], df3["auc_macro_ci_high"] = 0.0, 1.0
    assert CASE_CI_MARK not in markdown_table(summarize(df3), ["auc_macro"])


def test_reliability_data_ece_is_the_evaluations_ece():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) * 2
    logits[np.arange(200), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rate, conf, counts, ece = reliability_data(probs, labels)
    assert ece == pytest.approx(multiclass_calibration(probs, labels)["ece"])
    assert counts.sum() == 200 and np.all((rate >= 0) & (rate <= 1))


def test_write_report_calibration_operating_point_and_subgroups(tmp_path):
    import json

    csv = write_sweep(tmp_path, splits=["test"])
    df = pd.read_csv(csv).drop(columns=["accuracy", "balanced_accuracy"])
    df["ece"], df["brier"] = 0.1, 0.3
    df["sensitivity"], df["specificity"] = 0.95, 0.4
    df.to_csv(csv, index=False)
    group = {"n": 10, "n_cases": 5, "auc_macro": 0.7, "ci": {"auc_macro": [0.5, 0.9]},
             "small": True}  # fmt: skip
    for run in (tmp_path / "runs").iterdir():
        evaluation = {"subgroups": {"sex": {"female": group, "male": {**group, "small": False}}}}
        (run / "eval_test.json").write_text(json.dumps(evaluation))
    write_report(csv, tmp_path / "out", "t")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Calibration" in md and "ECE (15 bins)" in md and "Brier score" in md
    assert "## Operating point" in md and "Sensitivity" in md
    assert "## Subgroups — In-distribution (test)" in md
    assert "| sex | female | 5 (small) | 0.700 [0.50, 0.90] |" in md
    assert "| sex | male | 5 | 0.700 [0.50, 0.90] |" in md
    assert "Reliability diagram" in (tmp_path / "out" / "report.html").read_text()


def test_write_report_names_runs_that_skipped_steps_and_draws_curves(tmp_path):
    csv = write_sweep(tmp_path, splits=["test"])
    df = pd.read_csv(csv)
    df["skipped_steps"] = 0
    df.loc[df["run"] == df["run"].iloc[0], "skipped_steps"] = 7
    df.to_csv(csv, index=False)
    curves = pd.DataFrame({
        "run": ["simclr-s0"] * 3 + ["sup"] * 2, "entry": ["simclr"] * 3 + ["sup"] * 2,
        "epoch": [0, 1, 2, 1, 2], "loss": ["", 6.1, 5.9, 2.0, 1.5],
        "knn_auc_macro": [0.70, 0.72, 0.75, "", ""], "val_auc_macro": ["", "", "", 0.6, 0.7],
        "skipped_steps": [0, 3, 0, 0, 0],
    })  # fmt: skip
    curves.to_csv(tmp_path / "pretraining.csv", index=False)
    out = tmp_path / "r"
    with pytest.warns(UserWarning, match="skipped"):
        write_report(csv, out, "t", pretraining_csv=tmp_path / "pretraining.csv")
    md = (out / "report.md").read_text()
    assert f"Fine-tune {df['run'].iloc[0]} skipped 7 optimiser step(s)" in md
    assert "Pretraining run simclr-s0 skipped 3 optimiser step(s)" in md
    assert "sup skipped" not in md
    assert_png(out / "pretraining_curves.png")


#: user text that Markdown (and the HTML that Markdown may hold) would act on
EVIL = "<img src=x onerror=alert(1)> **b** _i_ `c` [link](http://evil.example) a|b"


def _inert_markdown(text: str) -> None:
    """No raw HTML, link, emphasis, code span or table-breaking pipe survives unescaped."""
    assert "<img" not in text and "<script" not in text
    assert "](http://evil.example)" not in text
    assert "**b**" not in text and " _i_ " not in text and "`c`" not in text
    assert " a|b" not in text


def test_user_text_in_the_markdown_reports_is_escaped(tmp_path):
    """report.html escaped a protocol's title and notes, init and source names; report.md
    and results.md took them raw (a title could be a script, a name a link)."""
    import json

    csv = write_sweep(tmp_path, splits=["test"])
    df = pd.read_csv(csv)
    df["init"] = df["init"].replace("simclr", f"simclr {EVIL}")
    df["dataset"] = f"derm {EVIL}"
    df.to_csv(csv, index=False)
    group = {"n": 10, "n_cases": 5, "auc_macro": 0.7, "ci": {"auc_macro": [0.5, 0.9]}}
    for run in (tmp_path / "runs").iterdir():
        evaluation = {"subgroups": {"source": {f"site {EVIL}": group}}}
        (run / "eval_test.json").write_text(json.dumps(evaluation))
    out = tmp_path / "out"
    notes = f"# not a heading {EVIL}\n\n<script>alert(2)</script>\n\n1. not a list\n[ref]: http://x"
    write_report(csv, out, f"Title {EVIL}", notes=notes)
    report, results = (out / "report.md").read_text(), (out / "results.md").read_text()
    for text in (report, results):
        _inert_markdown(text)
        assert "simclr &lt;img src=x onerror=alert(1)&gt;" in text  # the name, still readable
    assert "site &lt;img" in results and "\n# not a heading" not in report
    assert "\n1. not a list" not in report and "\n[ref]: http" not in report
    assert report.startswith("# Title &lt;img src=x onerror=alert(1)&gt;")


def test_plots_take_an_interval_that_lies_beside_its_point(tmp_path):
    """One seed: the cell's interval is its case bootstrap, which for a biased metric (ECE)
    can exclude the point estimate; the error bars end at the point instead of failing."""
    s = summarize(make_results(splits=["test", "shift"]))
    s["auc_macro_lo"] = s["auc_macro_mean"] + 0.01  # the interval above its point
    s["auc_macro_hi"] = s["auc_macro_mean"] + 0.02
    assert_png(plot_label_efficiency(s, "auc_macro", tmp_path / "l.png"))
    assert_png(plot_shift_bars(s, "auc_macro", tmp_path / "b.png"))


def test_label_efficiency_colours_inits_apart_and_keeps_bands_in_range(tmp_path):
    """The paper protocol's eight inits get eight colours (the fine-tuned and linear rows of
    one init share its colour), and a band over two seeds never draws an AUC past [0, 1]."""
    from medssl.report.plots import _styles, _within

    inits = ["random", "supervised", "natural", "derm", "natderm", "micle", "simclr_cont",
             "simclr"]  # fmt: skip
    assert len({colour for colour, _ in _styles(inits).values()}) == len(inits)
    assert _within("auc_macro", np.array([-2.0, 0.5, 3.0])).tolist() == [0.0, 0.5, 1.0]
    s = summarize(make_results(splits=["test", "shift"]))
    linear = s.assign(init=s["init"] + " (linear)")
    both = pd.concat([s, linear], ignore_index=True)
    both["auc_macro_lo"] -= 3.0
    assert_png(plot_label_efficiency(both, "auc_macro", tmp_path / "l.png"))


# --------------------------------------------------------------------------- headline

#: the paired differences of write_paired: (a, b, fraction, split) -> (diff, low, high) of the
#: mean over seeds; simclr − random at 10% is decided, micle − random at 10% is not
PAIRED = {
    ("simclr", "random", 0.1, "test"): (0.100, 0.050, 0.150),
    ("micle", "random", 0.1, "test"): (0.020, -0.010, 0.050),
    ("simclr", "random", 0.1, "shift"): (-0.060, -0.090, -0.030),
    ("micle", "random", 0.1, "shift"): (0.010, -0.020, 0.040),
    ("micle", "simclr", 0.1, "test"): (-0.080, -0.120, -0.040),
    ("simclr", "random", 1.0, "test"): (0.004, -0.010, 0.018),
}


def write_paired(path: Path) -> Path:
    """A paired.csv as medssl.paired writes it: per seed rows and the mean row."""
    rows = []
    for (a, b, fraction, split), (diff, low, high) in PAIRED.items():
        common = {"mode": "finetune", "label_fraction": fraction, "split": split,
                  "metric": "auc_macro", "a": a, "b": b}  # fmt: skip
        for seed in SEEDS:
            rows.append({**common, "seed": seed, "diff": diff + 0.01 * (seed - 1), "ci_low": low,
                         "ci_high": high, "ci_kind": "paired-case-bootstrap"})  # fmt: skip
        rows.append({**common, "seed": "mean", "diff": diff, "ci_low": low, "ci_high": high,
                     "ci_kind": "t-over-seeds"})  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the PNG header's IHDR width


def test_report_opens_with_the_headline_and_the_forest_plot(tmp_path):
    csv = write_sweep(tmp_path)
    df = pd.read_csv(csv).drop(columns=["accuracy", "balanced_accuracy"])
    df.to_csv(csv, index=False)
    for f in (tmp_path / "runs").glob("*-1-*/predictions_*.npz"):
        f.unlink()  # only the lowest fraction's runs have predictions: that is all it needs
    paired = write_paired(tmp_path / "paired.csv")
    out = tmp_path / "out"
    write_report(csv, out, "t", notes="Backbone resnet18.", paired_csv=paired)
    md = (out / "report.md").read_text()
    headings = re.findall(r"^## (.*)$", md, re.M)
    assert headings[:3] == ["Headline: 10% of the labels", "Protocol", "How to read this"]
    head = md[md.index("## Headline") : md.index("## Protocol")]
    # each init's mean over seeds at 10%, and its paired difference to random
    simclr = make_results(fractions=[0.1])
    simclr = simclr[(simclr["init"] == "simclr") & (simclr["split"] == "test")]["auc_macro"]
    mean, low, high = t_interval(simclr.tolist())
    row = next(line for line in head.splitlines() if line.startswith("| simclr |"))
    assert row.split(" | ")[1] == f"{mean:.3f} [{low:.2f}, {high:.2f}]"
    assert row.split(" | ")[2] == "**+0.100 [+0.050, +0.150]**"  # decided: bold
    assert row.split(" | ")[4].rstrip(" |") == "**−0.060 [−0.090, −0.030]**"
    micle = next(line for line in head.splitlines() if line.startswith("| micle |"))
    assert micle.split(" | ")[2] == "+0.020 [−0.010, +0.050]"  # not decided: plain
    assert ("Fine-tuned, in-distribution (test): interval above 0 (better than random) for "
            "simclr; interval includes 0 (not decided) for micle.") in head  # fmt: skip
    assert "interval below 0 (worse than random) for simclr" in head
    # the forest plot right after the headline, the headline's splits, every comparison
    assert "![Paired differences in AUC (macro)" in head and "(forest_auc_macro.png)" in head
    assert_png(out / "forest_auc_macro.png")
    page = (out / "report.html").read_text()
    first_h2 = re.search(r"<h2>(.*?)</h2>", page).group(1)
    assert first_h2 == "Headline: 10% of the labels"
    headline_html = page[page.index("<h2>Headline") : page.index("<h2>Protocol</h2>")]
    assert '<td class="num above" title="interval above 0">+0.100 [+0.050, +0.150]</td>' in (
        headline_html)
    assert 'alt="Paired differences in AUC (macro)' in headline_html
    # ROC and reliability from the lowest fraction's runs, which the captions name
    for name in ("roc_test.png", "reliability_test.png", "roc_shift.png"):
        assert_png(out / name)
    assert "ROC curves, in-distribution (test), at the lowest label fraction (10%)" in md
    assert "seed 0 at 10% of labels for every initialisation" in md
    # small multiples: one panel per init side by side, not three lines in one square
    assert _png_width(out / "reliability_test.png") > 1.3 * _png_width(out / "roc_test.png")


def test_paired_table_highlights_decided_rows(tmp_path):
    csv = write_sweep(tmp_path, splits=["test"])
    pd.read_csv(csv).drop(columns=["accuracy", "balanced_accuracy"]).to_csv(csv, index=False)
    out = tmp_path / "out"
    write_report(csv, out, "t", paired_csv=write_paired(tmp_path / "paired.csv"))
    results = (out / "results.md").read_text()
    decided = next(line for line in results.splitlines() if "**simclr − random**" in line)
    assert "| 10% | In-distribution (test) |" in decided
    assert "**+0.100 [+0.050, +0.150]**" in decided
    undecided = next(line for line in results.splitlines() if "micle − random" in line)
    assert "**" not in undecided
    assert "**micle − simclr**" in results  # below 0 is decided too
    page = (out / "report.html").read_text()
    rows = re.findall(r"<tr( class=\"\w+\")?><td>finetune</td><td>(\d+%)</td>"
                      r"<td>In-distribution \(test\)</td><td>([^<]*)</td>", page)  # fmt: skip
    marked = {(fraction, pair): cls for cls, fraction, pair in rows}
    assert marked[("10%", "simclr − random")] == ' class="above"'
    assert marked[("10%", "micle − simclr")] == ' class="below"'
    assert marked[("10%", "micle − random")] == ""
    assert marked[("100%", "simclr − random")] == ""


def test_the_demo_headline_is_the_reports(tmp_path):
    """One function makes the demo's terminal headline and the report's: same numbers."""
    from medssl.demo import headline as demo_headline
    from medssl.report.headline import headline, headline_lines

    csv = write_sweep(tmp_path, splits=["test", "shift"])
    linear = pd.read_csv(csv).assign(mode="linear", auc_macro=lambda d: d["auc_macro"] - 0.1)
    both = pd.concat([pd.read_csv(csv).assign(mode="finetune"), linear], ignore_index=True)
    both.to_csv(csv, index=False)
    write_paired(tmp_path / "paired.csv")
    lines = demo_headline(tmp_path)
    assert lines == headline_lines(headline(csv, tmp_path / "paired.csv"))
    assert lines[0].startswith("With 10% of the labels, AUC (macro), higher is better")
    assert lines[1] == "  fine-tuned, in-distribution (test)"  # fine-tuned first
    simclr = next(line for line in lines[2:] if line.split()[0] == "simclr")
    assert "+0.100 [+0.050, +0.150]" in simclr and simclr.endswith("interval above 0")
    micle = next(line for line in lines[2:] if line.split()[0] == "micle")
    assert micle.endswith("interval includes 0")
    assert "  linear probe, in-distribution (test)" in lines
    low = both[(both["label_fraction"] == 0.1) & (both["mode"] == "linear")
               & (both["split"] == "test") & (both["init"] == "random")]  # fmt: skip
    mean, lo, hi = t_interval(low["auc_macro"].tolist())
    after = lines[lines.index("  linear probe, in-distribution (test)") + 1]
    assert after.split()[:4] == ["random", f"{mean:.3f}", f"[{lo:.2f},", f"{hi:.2f}]"]


def test_no_empty_knn_panel_without_knn_rows(tmp_path):
    from medssl.report.plots import plot_pretraining_curves

    curves = pd.DataFrame({
        "run": ["a"] * 3 + ["b"] * 3, "entry": ["simclr"] * 3 + ["micle"] * 3,
        "epoch": [1, 2, 3] * 2, "loss": [6.0, 5.5, 5.2, 4.0, 3.9, 3.7],
        "knn_auc_macro": [np.nan] * 6, "val_auc_macro": [np.nan] * 6,
    })  # fmt: skip
    loss_only = plot_pretraining_curves(curves, tmp_path / "loss.png")
    with_knn = plot_pretraining_curves(curves.assign(knn_auc_macro=0.7), tmp_path / "knn.png")
    assert _png_width(with_knn) > 1.6 * _png_width(loss_only)  # two panels against one
    csv = write_sweep(tmp_path, splits=["test"])
    pd.read_csv(csv).drop(columns=["accuracy", "balanced_accuracy"]).to_csv(csv, index=False)
    curves.to_csv(tmp_path / "pretraining.csv", index=False)
    out = tmp_path / "out"
    write_report(csv, out, "t", pretraining_csv=tmp_path / "pretraining.csv")
    md = (out / "report.md").read_text()
    assert "Pretraining: the training loss (no run logged a k-NN monitor" in md
    assert _png_width(out / "pretraining_curves.png") == _png_width(loss_only)


def test_protocol_box_prints_settings_not_python_dicts(tmp_path):
    from medssl.demo import demo_protocol
    from medssl.sweep import _notes, load_protocol, settings_text

    notes = _notes(load_protocol(demo_protocol(budget="smoke")))
    assert "{" not in notes and "[" not in notes and "Protocol: protocol" not in notes
    assert "augment_overrides: crop_scale_min = 0.3, blur_p = 0;" in notes.replace(".\n", ";\n")
    assert settings_text({}) == "defaults"
    assert settings_text({"epochs": 3, "grid": [0.1, 0.01], "augment": ""}) == (
        "epochs: 3; grid: 0.1, 0.01")
    csv = write_sweep(tmp_path, splits=["test"])
    pd.read_csv(csv).drop(columns=["accuracy", "balanced_accuracy"]).to_csv(csv, index=False)
    write_report(csv, tmp_path / "out", "t", notes=notes)
    page = (tmp_path / "out" / "report.html").read_text()
    box = page[page.index('<div class="notes">') :]
    box = box[: box.index("</div>")]
    assert "{" not in box and "augment_overrides: crop_scale_min = 0.3" in box


def test_paired_estimates_take_the_mean_over_seeds_or_the_one_seeds_interval():
    from medssl.report import interval_side, paired_estimates

    common = {"mode": "finetune", "label_fraction": 0.1, "split": "test", "metric": "auc_macro",
              "b": "random"}  # fmt: skip
    paired = pd.DataFrame([
        {**common, "a": "simclr", "seed": "0", "diff": 0.05, "ci_low": 0.01, "ci_high": 0.09},
        {**common, "a": "simclr", "seed": "1", "diff": 0.07, "ci_low": 0.03, "ci_high": 0.11},
        {**common, "a": "simclr", "seed": "mean", "diff": 0.06, "ci_low": -0.07, "ci_high": 0.19},
        {**common, "a": "micle", "seed": "0", "diff": -0.04, "ci_low": -0.06, "ci_high": -0.02},
        {**common, "a": "micle", "seed": "mean", "diff": -0.04, "ci_low": None, "ci_high": None},
    ])  # fmt: skip
    est = paired_estimates(paired, "auc_macro").set_index("a")
    # two seeds: the t-interval over seeds decides (it holds 0 though each seed's excludes it)
    assert est.loc["simclr", ["low", "high", "kind", "n_seeds", "side"]].tolist() == [
        -0.07, 0.19, "seeds", 2, 0]
    # one seed: the mean row has no interval; that seed's paired case bootstrap stands in
    assert est.loc["micle", ["low", "high", "kind", "side"]].tolist() == [-0.06, -0.02, "cases", -1]
    assert paired_estimates(paired, "accuracy").empty
    assert [interval_side(*x) for x in [(0.1, 0.2), (-0.2, -0.1), (-0.1, 0.1), (math.nan, 1)]] == [
        1, -1, 0, 0]
