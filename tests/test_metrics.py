"""Tests for medssl.metrics: metrics checked against scikit-learn computed here, and the
case-level bootstrap checked by looking at the rows it hands to the metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score, roc_curve

from medssl.errors import MedsslError
from medssl.metrics import (
    CHEXPERT_FIVE,
    _WeightedAUC,
    bootstrap_ci,
    bootstrap_cis,
    case_level,
    evaluate_predictions,
    expected_calibration_error,
    load_class_mapping,
    map_classes,
    multiclass_calibration,
    multiclass_metrics,
    multilabel_calibration,
    multilabel_metrics,
    reliability_points,
    sensitivity_specificity,
    threshold_for_sensitivity,
)

NAMES4 = ["akiec", "bcc", "mel", "nv"]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _multiclass_data(
    seed: int, n: int = 120, n_classes: int = 4, missing: int | None = None, signal: float = 1.0
):
    rng = np.random.default_rng(seed)
    present = [c for c in range(n_classes) if c != missing]
    labels = rng.choice(present, size=n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), labels] += signal
    return _softmax(logits), labels


def _multilabel_data(
    seed: int, n: int = 150, names: list[str] | None = None, nan_frac: float = 0.3
):
    names = names or CHEXPERT_FIVE + ["Nodule"]
    rng = np.random.default_rng(seed)
    k = len(names)
    targets = (rng.random((n, k)) < 0.35).astype(float)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, k)) + 1.2 * targets - 0.5)))
    targets[rng.random((n, k)) < nan_frac] = np.nan
    return probs, targets, names


# --------------------------------------------------------------------------- multiclass


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_multiclass_matches_sklearn_with_missing_class(seed: int) -> None:
    probs, labels = _multiclass_data(seed, missing=2)
    m = multiclass_metrics(probs, labels, NAMES4)

    preds = probs.argmax(1)
    assert m["n"] == len(labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["balanced_accuracy"] == pytest.approx(
        np.mean([np.mean(preds[labels == c] == c) for c in np.unique(labels)])
    )
    assert m["auc_skipped_classes"] == ["mel"]
    assert m["auc_per_class"]["mel"] is None
    expected = {NAMES4[c]: roc_auc_score(labels == c, probs[:, c]) for c in (0, 1, 3)}
    for name, v in expected.items():
        assert m["auc_per_class"][name] == pytest.approx(v)
    assert m["auc_macro"] == pytest.approx(np.mean(list(expected.values())))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_all_present_equals_sklearn_ovr(seed: int) -> None:
    probs, labels = _multiclass_data(seed)
    m = multiclass_metrics(probs, labels, NAMES4)
    assert m["auc_skipped_classes"] == []
    assert m["auc_macro"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))


def test_multiclass_single_class_only_has_no_auc() -> None:
    probs, _ = _multiclass_data(0, n=10)
    m = multiclass_metrics(probs, np.zeros(10, dtype=int), NAMES4)
    assert m["auc_macro"] is None
    assert m["auc_skipped_classes"] == NAMES4


@pytest.mark.parametrize(
    ("probs", "labels", "names", "match"),
    [
        (np.ones((3, 4)), np.array([0, 1, 4]), NAMES4, "outside"),
        (np.ones((3, 4)), np.array([0, 1]), NAMES4, "shape"),
        (np.ones((3, 4)), np.array([0, 1, 2]), NAMES4[:3], "names"),
        (np.full((3, 4), np.nan), np.array([0, 1, 2]), NAMES4, "NaN"),
        (np.ones((3, 4)), np.array([0.5, 1, 2]), NAMES4, "integer"),
    ],
)
def test_multiclass_bad_input(probs, labels, names, match) -> None:
    with pytest.raises(MedsslError, match=match):
        multiclass_metrics(probs, labels, names)


def _rank_auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """Mann-Whitney AUC, quick enough to call per resample (sklearn's is slow)."""
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    return float((rankdata(scores)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_weighted_auc_equals_sklearn_on_repeated_rows() -> None:
    """The bootstrap's fast AUC (rows weighted by multiplicity, ties, unlabelled rows)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = rng.integers(0, 5, size=(40, 3)).astype(float)  # many ties
        target = (rng.random((40, 3)) < 0.4).astype(float)
        target[rng.random((40, 3)) < 0.2] = np.nan
        w = rng.integers(0, 3, size=40).astype(float)
        got = _WeightedAUC(scores, target == 1, target == 0)(w)
        rows = np.repeat(np.arange(40), w.astype(int))
        for j in range(3):
            known = rows[~np.isnan(target[rows, j])]
            assert got[j] == pytest.approx(roc_auc_score(target[known, j], scores[known, j]))
            assert _rank_auc(scores[known, j], target[known, j] == 1) == pytest.approx(got[j])
    only_pos = _WeightedAUC(np.array([[0.1], [0.2]]), np.ones((2, 1), bool), np.zeros((2, 1), bool))
    assert np.isnan(only_pos(np.ones(2))).all()


# --------------------------------------------------------------------------- multilabel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_nan_masking_matches_hand_computation(seed: int) -> None:
    probs, targets, names = _multilabel_data(seed)
    m = multilabel_metrics(probs, targets, names)

    by_hand = {}
    for j, name in enumerate(names):
        rows = [i for i in range(len(targets)) if not np.isnan(targets[i, j])]
        by_hand[name] = roc_auc_score(targets[rows, j].astype(int), probs[rows, j])
        assert m["auc_per_finding"][name] == pytest.approx(by_hand[name])
        assert m["n_labelled_per_finding"][name] == len(rows)
    assert m["auc_macro"] == pytest.approx(np.mean(list(by_hand.values())))
    assert m["mean_over"] == CHEXPERT_FIVE
    assert m["auc_mean_selected"] == pytest.approx(np.mean([by_hand[n] for n in CHEXPERT_FIVE]))
    # NaN must not be read as a negative: filling it with 0 changes the answer.
    filled = np.nan_to_num(targets, nan=0.0)
    assert multilabel_metrics(probs, filled, names)["auc_macro"] != pytest.approx(m["auc_macro"])


def test_multilabel_skips_findings_without_both_classes() -> None:
    probs, targets, names = _multilabel_data(0)
    targets[:, names.index("Nodule")] = np.where(np.isnan(targets[:, -1]), np.nan, 0.0)
    targets[:, names.index("Edema")] = np.nan
    m = multilabel_metrics(probs, targets, names)
    assert m["auc_skipped_findings"] == ["Edema", "Nodule"]
    assert m["auc_per_finding"]["Nodule"] is None
    ok = ["Atelectasis", "Cardiomegaly", "Consolidation", "Effusion"]
    assert m["auc_macro"] == pytest.approx(np.mean([m["auc_per_finding"][n] for n in ok]))
    # Edema is one of the selected five, so their mean is undefined, not a mean of four.
    assert m["auc_mean_selected"] is None
    sel = multilabel_metrics(probs, targets, names, mean_over=["Cardiomegaly", "Effusion"])
    assert sel["auc_mean_selected"] == pytest.approx(
        (m["auc_per_finding"]["Cardiomegaly"] + m["auc_per_finding"]["Effusion"]) / 2
    )


def test_multilabel_mean_over_errors_and_default() -> None:
    probs, targets, names = _multilabel_data(0)
    with pytest.raises(MedsslError, match="Pneumonia.*available: Atelectasis"):
        multilabel_metrics(probs, targets, names, mean_over=["Pneumonia"])
    # Without the five findings the default simply selects nothing.
    other = multilabel_metrics(probs[:, :2], targets[:, :2], ["a", "b"])
    assert other["auc_mean_selected"] is None and other["mean_over"] is None
    bad = targets.copy()
    bad[0, 0] = -1.0
    with pytest.raises(MedsslError, match="0, 1 or NaN"):
        multilabel_metrics(probs, bad, names)


# --------------------------------------------------------------------------- bootstrap


def _record_resamples(case_ids: np.ndarray, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    seen: list[np.ndarray] = []

    def metric(rows: np.ndarray) -> float:
        seen.append(rows.copy())
        return 0.0

    bootstrap_ci(metric, case_ids, n_boot=n_boot, seed=seed)
    return seen


def _assert_whole_cases(case_ids: np.ndarray, resamples: list[np.ndarray]) -> None:
    rows_of = {c: np.flatnonzero(case_ids == c) for c in np.unique(case_ids)}
    for rows in resamples:
        counts = np.bincount(rows, minlength=len(case_ids))
        draws = 0
        for case_rows in rows_of.values():
            mult = counts[case_rows]
            # all rows of a case appear equally often: together (k times) or not at all
            assert np.all(mult == mult[0])
            draws += int(mult[0])
        assert draws == len(rows_of)  # as many cases drawn as there are


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_bootstrap_resamples_whole_cases(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    case_ids = np.repeat([f"p{i}" for i in range(len(sizes))], sizes)
    case_ids = case_ids[rng.permutation(len(case_ids))]  # a case's rows need not be adjacent
    resamples = _record_resamples(case_ids, n_boot=10, seed=seed)
    assert len(resamples) == 10
    _assert_whole_cases(case_ids, resamples)


@settings(max_examples=20, deadline=None)
@given(
    values=st.lists(st.floats(0, 1), min_size=2, max_size=15),
    seed=st.integers(0, 2**16),
)
def test_duplicating_every_case_image_leaves_case_ci_unchanged(
    values: list[float], seed: int
) -> None:
    """Twice the images per case carry no new information about cases, so a case-level CI
    of a per-image mean must not narrow (an image-level bootstrap would)."""
    x = np.asarray(values)
    ids = np.arange(len(x))
    once = bootstrap_ci(lambda r: float(x[r].mean()), ids, n_boot=50, seed=seed)
    x2, ids2 = np.concatenate([x, x]), np.concatenate([ids, ids])
    twice = bootstrap_ci(lambda r: float(x2[r].mean()), ids2, n_boot=50, seed=seed)
    # fp64 means of at most 30 values in [0, 1], whatever hypothesis draws: each rounds by at
    # most about 30 * 2^-53 = 3.3e-15, so 1e-9 holds for every draw
    assert twice == pytest.approx(once, abs=1e-9)


def test_bootstrap_ci_contains_point_and_narrows_with_more_cases() -> None:
    widths = []
    for n_cases in (40, 640):
        rng = np.random.default_rng(n_cases)
        case_ids = np.repeat(np.arange(n_cases), 3)
        y = np.repeat(rng.random(n_cases) < 0.4, 3)
        score = y + rng.normal(scale=1.0, size=y.shape)
        point = roc_auc_score(y, score)
        lo, hi = bootstrap_ci(
            lambda r, y=y, s=score: _rank_auc(s[r], y[r]),
            case_ids,
            n_boot=200,
            seed=1,
        )
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_drops_undefined_resamples() -> None:
    ids = np.arange(20)
    calls = iter(range(10_000))
    # a third undefined: still an interval, computed from the defined ones only
    lo, hi = bootstrap_ci(lambda r: None if next(calls) % 3 == 0 else 0.5, ids, n_boot=30)
    assert (lo, hi) == (0.5, 0.5)
    # exactly half defined is still enough, one fewer is not
    calls = iter(range(10_000))
    lo, hi = bootstrap_ci(lambda r: 0.5 if next(calls) % 2 else None, ids, n_boot=20)
    assert (lo, hi) == (0.5, 0.5)
    calls = iter(range(10_000))
    lo, hi = bootstrap_ci(lambda r: 0.5 if next(calls) < 9 else None, ids, n_boot=20)
    assert np.isnan(lo) and np.isnan(hi)
    # all but a few undefined: no interval
    lo, hi = bootstrap_ci(lambda r: 1.0 if next(calls) % 10 == 0 else float("nan"), ids, n_boot=30)
    assert np.isnan(lo) and np.isnan(hi)


def test_bootstrap_is_seeded_and_validates() -> None:
    x = np.random.default_rng(0).random(30)
    ids = np.arange(30) // 2

    def fn(r: np.ndarray) -> float:
        return float(x[r].mean())

    assert bootstrap_ci(fn, ids, n_boot=50, seed=4) == bootstrap_ci(fn, ids, n_boot=50, seed=4)
    assert bootstrap_ci(fn, ids, n_boot=50, seed=4) != bootstrap_ci(fn, ids, n_boot=50, seed=5)
    with pytest.raises(MedsslError, match="n_boot"):
        bootstrap_ci(fn, ids, n_boot=0)
    with pytest.raises(MedsslError, match="alpha"):
        bootstrap_ci(fn, ids, alpha=1.5)
    with pytest.raises(MedsslError, match="case_ids"):
        bootstrap_ci(fn, np.array([]))


# --------------------------------------------------------------------------- evaluate_predictions


def test_evaluate_multiclass_json_and_ci_match_sklearn_bootstrap() -> None:
    probs, labels = _multiclass_data(7, n=90, missing=1)
    probs = np.round(probs, 1)  # ties, which the rank-based AUC must handle like sklearn
    case_ids = np.array([f"case{i // 3}" for i in range(90)], dtype=object)
    out = evaluate_predictions(probs, labels, "multiclass", NAMES4, case_ids, n_boot=30, seed=3)
    json.dumps(out, allow_nan=False)
    assert out["n_cases"] == 30 and out["task"] == "multiclass"
    assert out["accuracy"] == multiclass_metrics(probs, labels, NAMES4)["accuracy"]
    assert set(out["ci"]) == {"accuracy", "balanced_accuracy", "auc_macro", "ece", "brier"}

    def reference(r: np.ndarray) -> dict:
        return {**multiclass_metrics(probs[r], labels[r], NAMES4),
                **multiclass_calibration(probs[r], labels[r])}  # fmt: skip

    for name, (lo, hi) in out["ci"].items():
        assert type(lo) is float and lo <= out[name] <= hi
        # the fast bootstrap path agrees with sklearn-based metrics on the same resamples
        ref = bootstrap_ci(lambda r, name=name: reference(r)[name], case_ids, n_boot=30, seed=3)
        assert (lo, hi) == pytest.approx(ref, abs=1e-9)


def test_evaluate_multilabel_json_and_ci_match_sklearn_bootstrap() -> None:
    probs, targets, names = _multilabel_data(5, n=80)
    probs = np.round(probs, 1)
    case_ids = np.arange(80) // 2
    out = evaluate_predictions(probs, targets, "multilabel", names, case_ids, n_boot=25, seed=2)
    json.dumps(out, allow_nan=False)
    assert set(out["ci"]) == {"auc_macro", "auc_mean_selected", "ece", "brier"}

    def reference(r: np.ndarray) -> dict:
        return {**multilabel_metrics(probs[r], targets[r], names),
                **multilabel_calibration(probs[r], targets[r], names)}  # fmt: skip

    for name, ci in out["ci"].items():
        ref = bootstrap_ci(lambda r, name=name: reference(r)[name], case_ids, n_boot=25, seed=2)
        assert ci == pytest.approx(list(ref), abs=1e-9)
        assert ci[0] <= out[name] <= ci[1]


def test_evaluate_undefined_ci_is_none_and_bad_task() -> None:
    probs, targets, names = _multilabel_data(0, n=20)
    targets[:, :] = 0.0
    out = evaluate_predictions(probs, targets, "multilabel", names, np.arange(20), n_boot=10)
    assert out["auc_macro"] is None and out["ci"]["auc_macro"] == [None, None]
    json.dumps(out, allow_nan=False)
    with pytest.raises(MedsslError, match="task"):
        evaluate_predictions(probs, targets, "regression", names, np.arange(20))  # type: ignore[arg-type]
    with pytest.raises(MedsslError, match="case_ids"):
        evaluate_predictions(probs, targets, "multilabel", names, np.arange(5))


# --------------------------------------------------------------------------- class mapping

SOURCE = ["melanoma", "nevus", "bkl", "vascular", "dermatofibroma"]
MODEL = ["mel", "nv", "bkl_model", "other"]


def test_map_classes_excludes_and_reports_unmapped() -> None:
    labels = np.array([0, 1, 1, 2, 3, 3, 3, 4, 0])
    mapping = {"melanoma": "mel", "nevus": "nv", "bkl": "bkl_model", "vascular": None}
    mapped, keep, report = map_classes(labels, SOURCE, mapping, MODEL)
    assert keep.tolist() == [True, True, True, True, False, False, False, False, True]
    assert mapped[keep].tolist() == [0, 1, 1, 2, 0]
    assert (mapped[~keep] == -1).all()
    # explicitly null and missing-from-mapping are both excluded and counted
    assert report["unmapped"] == {"vascular": 3, "dermatofibroma": 1}
    assert report["not_in_mapping"] == ["dermatofibroma"]
    assert report["n_kept"] == 5 and report["n_excluded"] == 4
    assert report["model_classes_without_source"] == ["other"]
    json.dumps(report)


def test_map_classes_bad_mapping() -> None:
    labels = np.array([0, 1])
    with pytest.raises(MedsslError, match="'melanoma'.*'melanocytic'"):
        map_classes(labels, SOURCE, {"melanoma": "melanocytic"}, MODEL)
    with pytest.raises(MedsslError, match="melanomma"):
        map_classes(labels, SOURCE, {"melanomma": "mel"}, MODEL)
    with pytest.raises(MedsslError, match="excludes every row"):
        map_classes(labels, SOURCE, {"bkl": "bkl_model"}, MODEL)
    with pytest.raises(MedsslError, match="outside"):
        map_classes(np.array([7]), SOURCE, {"melanoma": "mel"}, MODEL)


def test_load_class_mapping_json_and_yaml(tmp_path: Path) -> None:
    j = tmp_path / "m.json"
    j.write_text(json.dumps({"melanoma": "mel", "vascular": None}))
    assert load_class_mapping(j) == {"melanoma": "mel", "vascular": None}
    pytest.importorskip("yaml")
    y = tmp_path / "m.yaml"
    y.write_text("melanoma: mel\nvascular: null\nnevus: nv\n")
    assert load_class_mapping(y) == {"melanoma": "mel", "vascular": None, "nevus": "nv"}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.json", "{not json"),
        ("list.json", '["mel"]'),
        ("num.json", '{"melanoma": 3}'),
    ],
)
def test_load_class_mapping_errors_name_file(tmp_path: Path, name: str, text: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(MedsslError, match=name):
        load_class_mapping(p)
    with pytest.raises(MedsslError, match="missing.yaml"):
        load_class_mapping(tmp_path / "missing.yaml")


def test_load_class_mapping_bad_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    p = tmp_path / "bad.yml"
    p.write_text("melanoma: [mel\n")
    with pytest.raises(MedsslError, match="bad.yml") as e:
        load_class_mapping(p)
    assert "\n" not in str(e.value)
    p.write_text("1: mel\n")
    with pytest.raises(MedsslError, match="not a class name"):
        load_class_mapping(p)


def test_bootstrap_cis_equals_bootstrap_ci_per_metric():
    rng = np.random.default_rng(5)
    cases = np.repeat(np.arange(40), rng.integers(1, 4, size=40))
    values = rng.normal(size=cases.size)

    def mean(rows: np.ndarray) -> float:
        return float(values[rows].mean())

    def spread(rows: np.ndarray) -> float:
        return float(values[rows].std())

    together = bootstrap_cis(
        lambda rows: {"mean": mean(rows), "spread": spread(rows)}, ["mean", "spread"], cases,
        n_boot=200, seed=3,
    )  # fmt: skip
    assert together["mean"] == bootstrap_ci(mean, cases, n_boot=200, seed=3)
    assert together["spread"] == bootstrap_ci(spread, cases, n_boot=200, seed=3)
    assert together["mean"][0] < values.mean() < together["mean"][1]


# --------------------------------------------------------------------------- calibration

# four two-class predictions: confidences 0.9 (right), 0.85 (wrong), 0.63 (right), 0.65
# (wrong); with 15 bins the last two share the bin (0.6, 0.667]
CAL_PROBS = np.array([[0.9, 0.1], [0.85, 0.15], [0.37, 0.63], [0.35, 0.65]])
CAL_LABELS = np.array([0, 1, 1, 0])


def test_ece_and_brier_by_hand() -> None:
    out = multiclass_calibration(CAL_PROBS, CAL_LABELS)
    # bins: {0.9: right}, {0.85: wrong}, {0.63: right, 0.65: wrong}
    ece = 0.25 * abs(1 - 0.9) + 0.25 * abs(0 - 0.85) + 0.5 * abs(0.5 - 0.64)
    assert out["ece"] == pytest.approx(ece)
    # binary Brier score: squared error of the class-1 probability
    brier = np.mean([(0.1 - 0) ** 2, (0.15 - 1) ** 2, (0.63 - 1) ** 2, (0.65 - 0) ** 2])
    assert out["brier"] == pytest.approx(brier)
    # three classes: the summed squared error (not halved)
    probs = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    three = multiclass_calibration(probs, np.array([1, 2]))
    assert three["brier"] == pytest.approx(((0.04 + 0.25 + 0.09) + (0.01 + 0.01 + 0.04)) / 2)
    # perfectly confident and right: calibrated
    sure = multiclass_calibration(np.eye(3), np.arange(3))
    assert sure["ece"] == 0 and sure["brier"] == 0


def test_ece_uses_the_bins_of_sklearn_calibration_curve() -> None:
    rng = np.random.default_rng(0)
    conf = rng.random(500)
    outcome = (rng.random(500) < conf**2).astype(int)
    rate, mean_conf = calibration_curve(outcome, conf, n_bins=15, strategy="uniform")
    counts = np.histogram(conf, bins=np.linspace(0, 1, 16))[0]
    counts = counts[counts > 0]
    assert expected_calibration_error(conf, outcome) == pytest.approx(
        float(np.sum(counts / 500 * np.abs(rate - mean_conf)))
    )
    rate10, conf10, n10 = reliability_points(np.stack([1 - conf, conf], 1), outcome, n_bins=10)
    assert n10.sum() == 500 and len(rate10) == len(conf10) == len(n10)


def test_multilabel_calibration_ignores_unknown_targets() -> None:
    probs = np.array([[0.8, 0.3], [0.2, 0.9], [0.6, 0.1]])
    targets = np.array([[1.0, np.nan], [0.0, 1.0], [np.nan, 0.0]])
    out = multilabel_calibration(probs, targets, ["a", "b"])
    assert out["brier_per_finding"]["a"] == pytest.approx((0.2**2 + 0.2**2) / 2)
    assert out["brier_per_finding"]["b"] == pytest.approx((0.1**2 + 0.1**2) / 2)
    # a: 0.8 (present) and 0.2 (absent) in separate bins: |1 - .8| and |0 - .2|, halved
    assert out["ece_per_finding"]["a"] == pytest.approx(0.2)
    assert out["ece"] == pytest.approx(np.mean([0.2, 0.1]))


# --------------------------------------------------------------------------- operating point


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_threshold_is_the_largest_reaching_the_target_sensitivity(seed: int, target: float):
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.4
    scores = np.round(rng.random(60) * 0.6 + 0.4 * y, 2)  # ties included
    t = threshold_for_sensitivity(scores, y, target)
    fpr, tpr, thresholds = roc_curve(y, scores, drop_intermediate=False)
    assert t == pytest.approx(thresholds[np.flatnonzero(tpr >= target)[0]])
    got = sensitivity_specificity(scores, y, ~y, t)
    assert got["sensitivity"] >= target
    assert got["specificity"] == pytest.approx(np.mean(scores[~y] < t))
    with pytest.raises(MedsslError, match="target-sensitivity"):
        threshold_for_sensitivity(scores, y, 1.5)


def test_operating_point_in_evaluate_predictions() -> None:
    probs, labels = _multiclass_data(3, n=80, n_classes=2, signal=2.0)
    names = ["benign", "malignant"]
    out = evaluate_predictions(probs, labels, "multiclass", names, np.arange(80) // 2,
                               n_boot=20, positive_class="malignant", threshold=0.3)  # fmt: skip
    pos = labels == 1
    assert out["sensitivity"] == pytest.approx(np.mean(probs[pos, 1] >= 0.3))
    assert out["specificity"] == pytest.approx(np.mean(probs[~pos, 1] < 0.3))
    assert out["operating_point"]["auc"] == pytest.approx(roc_auc_score(pos, probs[:, 1]))
    assert out["ci"]["sensitivity"][0] <= out["sensitivity"] <= out["ci"]["sensitivity"][1]
    with pytest.raises(MedsslError, match="positive-class 'mel'"):
        evaluate_predictions(probs, labels, "multiclass", names, np.arange(80),
                             positive_class="mel", threshold=0.5)  # fmt: skip


# --------------------------------------------------------------------------- cases


def test_case_level_prediction_is_the_mean_of_the_case_images() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=9)
    labels = np.array([0, 0, 1, 2, 2, 2, 1, 0, 1])
    cases = np.array(["b", "b", "a", "c", "c", "c", "d", "d", "e"])  # d disagrees
    p, y, ids, conflicting = case_level(probs, labels, cases, "multiclass")
    assert list(ids) == ["a", "b", "c", "e"] and conflicting == 1
    np.testing.assert_allclose(p[1], probs[:2].mean(0))
    np.testing.assert_allclose(p[2], probs[3:6].mean(0))
    assert list(y) == [1, 0, 2, 1]
    targets = np.array([[1, 0], [1, np.nan], [0, 1], [np.nan, np.nan]], dtype=float)
    p, y, ids, conflicting = case_level(np.full((4, 2), 0.5), targets, np.array([0, 0, 1, 1]),
                                        "multilabel")  # fmt: skip
    assert conflicting == 0
    np.testing.assert_array_equal(y, [[1, 0], [0, 1]])
    targets[1, 1] = 1.0  # case 0: finding 1 absent on one image, present on the other
    _, y, _, conflicting = case_level(np.full((4, 2), 0.5), targets, np.array([0, 0, 1, 1]),
                                      "multilabel")  # fmt: skip
    assert conflicting == 1 and np.isnan(y[0, 1]) and y[0, 0] == 1


def test_merged_float32_probabilities_past_one_by_rounding_are_scored():
    """A float32 softmax summed over merged model classes can reach 1.0000001 (the PH2
    benign/malignant evaluation of a sweep stopped on it: scikit-learn's Brier score refused
    it); the sum is clipped, while values truly outside [0, 1] are a clear error."""
    from medssl.metrics import merge_model_classes

    row = np.array([[0.004392745904624462, 0.029222125187516212, 0.07638240605592728,
                     0.0005886911530978978, 0.8888260722160339, 7.154522609198466e-05,
                     0.0005164812901057303]], dtype=np.float32)  # fmt: skip
    names = [f"c{i}" for i in range(7)]
    assert (row @ np.ones((7, 1), np.float32))[0, 0] > 1  # the rounding the fix is about
    merged, groups = merge_model_classes(row, names, {"all": names, "none": []})
    assert groups == ["all", "none"] and merged.dtype == np.float32
    assert merged[0, 0] == 1.0 and merged[0, 1] == 0.0
    probs = np.vstack([merged, [[0.0, 1.0]]]).astype(np.float32)
    probs[0, 0] = np.nextafter(np.float32(1), np.float32(2))  # as an unclipped sum gives
    assert multiclass_calibration(probs, np.array([0, 1]))["brier"] == pytest.approx(0.0)
    with pytest.raises(MedsslError, match=r"must lie in \[0, 1\].*logits"):
        multiclass_calibration(np.array([[2.5, -1.5], [0.0, 1.0]]), np.array([0, 1]))
