"""The data layer: real-data figures, leak-free splits, nested fractions, MICLe bags, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.data import make_manifest, shared_dataset
from medssl.cli import main
from medssl.data.adapters import load_manifest
from medssl.data.cache import decoded_images
from medssl.data.pairs import CaseBags, PairSampler
from medssl.data.spec import DataSpec
from medssl.data.splits import (
    canonical_splits,
    cases_shared_between_splits,
    label_fraction,
    split_cases,
)
from medssl.errors import MedsslError


def summary_json(capsys, *args: str) -> dict:
    assert main(["data", "summary", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- the real data, as the "done when" states it -------------------------------


def test_ham10000_summary_matches_published_figures(capsys):
    root = shared_dataset("ham10000")
    s = summary_json(capsys, "--dataset", "ham10000", "--root", str(root))
    assert (s["images"], s["cases"], s["multi_image_cases"]) == (10015, 7470, 1956)
    assert s["classes"] == {
        "akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142
    }  # fmt: skip
    assert len(s["sources"]) == 4
    assert s["splits"]["shift"]["images"] == 2259 == s["sources"]["rosendahl"]
    assert sum(v["images"] for v in s["splits"].values()) == 10015
    assert s["cases_shared_between_splits"] == 0
    # 70/10/20 of the Vienna lesions
    vienna_cases = sum(s["splits"][k]["cases"] for k in ("train", "val", "test"))
    assert abs(s["splits"]["train"]["cases"] / vienna_cases - 0.7) < 0.01


def test_ham10000_shift_split_is_exactly_rosendahl():
    manifest, splits = _load("ham10000")
    shift_sources = set(manifest.table["source"].iloc[splits["shift"]])
    assert shift_sources == {"rosendahl"}
    other = np.concatenate([splits[k] for k in ("train", "val", "test")])
    assert "rosendahl" not in set(manifest.table["source"].iloc[other])


def test_nih_summary(capsys):
    root = shared_dataset("nih-chestxray14-1000")
    s = summary_json(capsys, "--dataset", "nih", "--root", str(root))
    assert (s["images"], s["cases"], s["multi_image_cases"]) == (1000, 264, 136)
    assert s["classes"]["Effusion"] == 170 and s["classes"]["Edema"] == 31
    assert s["cases_shared_between_splits"] == 0


def test_pneumonia_summary_warns_about_official_split_leak(capsys):
    root = shared_dataset("chest-xray-pneumonia")
    s = summary_json(capsys, "--dataset", "pneumonia", "--root", str(root))
    assert s["images"] == 5840 and s["classes"] == {"NORMAL": 1575, "PNEUMONIA": 4265}
    assert s["cases_shared_between_splits"] == 0
    assert any("170 patient numbers" in w for w in s["warnings"])


def _load(name: str):
    root = shared_dataset({"ham10000": "ham10000"}[name])
    return DataSpec(name, str(root)).load()  # the dataset's default shift sources


# --- splits: properties that must hold ------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    case_sizes=st.lists(st.integers(1, 5), min_size=3, max_size=80),
    seed=st.integers(0, 10_000),
    n_classes=st.integers(1, 4),
)
def test_no_case_in_two_splits(case_sizes, seed, n_classes):
    manifest = make_manifest(case_sizes, n_classes=n_classes)
    splits = canonical_splits(manifest, seed=seed)
    assert cases_shared_between_splits(manifest, splits) == 0
    all_rows = np.sort(np.concatenate(list(splits.indices.values())))
    np.testing.assert_array_equal(all_rows, np.arange(len(manifest)))


def test_split_is_deterministic_and_stratified():
    manifest = make_manifest([2] * 300, n_classes=3)
    a = split_cases(manifest, seed=5)
    b = split_cases(manifest, seed=5)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for cls in range(3):  # each class is split 70/10/20 of its 100 cases
        counts = [int((manifest.targets[a[n]] == cls).sum()) // 2 for n in ("train", "val", "test")]
        assert counts == [70, 10, 20]
    assert not np.array_equal(split_cases(manifest, seed=6)["train"], a["train"])


def test_source_held_out_takes_whole_cases():
    sources = ["a", "b", "a", "c"] * 10
    manifest = make_manifest([2] * 40, sources=sources)
    splits = canonical_splits(manifest, shift_sources=["b"])
    assert set(manifest.table["source"].iloc[splits["shift"]]) == {"b"}
    assert cases_shared_between_splits(manifest, splits) == 0
    with pytest.raises(MedsslError, match="unknown source.*zz"):
        canonical_splits(manifest, shift_sources=["zz"])


@settings(max_examples=40, deadline=None)
@given(case_sizes=st.lists(st.integers(1, 4), min_size=10, max_size=120), seed=st.integers(0, 99))
def test_label_fractions_are_nested_and_case_level(case_sizes, seed):
    manifest = make_manifest(case_sizes)
    train = split_cases(manifest, seed=0)["train"]
    small, mid, full = (set(label_fraction(manifest, train, f, seed)) for f in (0.1, 0.25, 1.0))
    assert small <= mid <= full == set(train)
    codes, _ = manifest.case_codes()
    for subset in (small, mid):  # a case is either fully in or fully out
        kept_cases = set(codes[list(subset)])
        assert {r for r in train if codes[r] in kept_cases} == subset


def test_label_fraction_size_and_errors():
    manifest = make_manifest([1] * 1000, n_classes=2)
    train = np.arange(1000)
    assert len(label_fraction(manifest, train, 0.1, seed=0)) == 100
    with pytest.raises(MedsslError, match="label-fraction"):
        label_fraction(manifest, train, 0.0)


# --- MICLe bags -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(case_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=60), seed=st.integers(0, 999))
def test_micle_pairs_are_distinct_images_of_one_case(case_sizes, seed):
    manifest = make_manifest(case_sizes)
    codes, _ = manifest.case_codes()
    bags = CaseBags(codes)
    partners = bags.draw_partners(np.random.default_rng(seed))
    anchors = np.arange(len(manifest))
    assert (codes[partners] == codes[anchors]).all()
    multi = bags.size_of > 1
    assert (partners[multi] != anchors[multi]).all()
    assert (partners[~multi] == anchors[~multi]).all()


def test_micle_partners_cover_the_bag_uniformly():
    bags = CaseBags(np.zeros(4, dtype=np.int64))  # one case, four images
    rng = np.random.default_rng(0)
    draws = np.stack([bags.draw_partners(rng) for _ in range(3000)])
    for anchor in range(4):
        counts = np.bincount(draws[:, anchor], minlength=4)
        assert counts[anchor] == 0
        others = np.delete(counts, anchor) / 3000
        assert np.allclose(others, 1 / 3, atol=0.04)


def test_pair_sampler_shards_partition_the_global_epoch():
    bags = CaseBags(np.repeat(np.arange(50), 2))
    single = PairSampler(bags, "micle", seed=3, global_batch_size=20)
    single.set_epoch(2)
    shards = []
    for rank in range(2):
        s = PairSampler(bags, "micle", seed=3, rank=rank, world_size=2, global_batch_size=20)
        s.set_epoch(2)
        shards.append(list(s))
    merged = sorted(shards[0] + shards[1])
    assert merged == sorted(single)
    assert len(shards[0]) == len(shards[1]) == 50
    simclr = list(PairSampler(bags, "simclr", global_batch_size=20))
    assert all(a == b for a, b, _ in simclr)


# --- bad input: one line naming the file, row or column --------------------------------


def _ham_layout(tmp_path: Path, rows: list[tuple[str, str, str]], images: list[str]) -> Path:
    pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx"]).to_csv(
        tmp_path / "HAM10000_metadata.csv", index=False
    )
    folder = tmp_path / "HAM10000_images_part_1"
    folder.mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (20, 15), (120, 80, 60)).save(folder / f"{name}.jpg")
    return tmp_path


def test_missing_image_is_named(tmp_path):
    root = _ham_layout(tmp_path, [("L1", "ISIC_1", "nv"), ("L2", "ISIC_2", "mel")], ["ISIC_1"])
    with pytest.raises(MedsslError, match=r"ISIC_2\.jpg .*row 3"):
        load_manifest("ham10000", root)


def test_missing_column_is_named(tmp_path):
    pd.DataFrame({"lesion_id": ["L1"], "image": ["ISIC_1"]}).to_csv(
        tmp_path / "HAM10000_metadata.csv", index=False
    )
    with pytest.raises(MedsslError, match="lacks column.*image_id.*dx"):
        load_manifest("ham10000", tmp_path)


def test_empty_table_is_an_error(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    with pytest.raises(MedsslError, match="no rows"):
        load_manifest("ham10000", tmp_path)


def test_label_outside_class_list_names_row(tmp_path):
    root = _ham_layout(tmp_path, [("L1", "ISIC_1", "nv"), ("L2", "ISIC_2", "tumour")], [])
    with pytest.raises(MedsslError, match="row 3: dx 'tumour'"):
        load_manifest("ham10000", root)


def test_corrupt_image_stops_or_is_skipped_and_counted(tmp_path, capsys):
    rows = [("L1", "ISIC_1", "nv"), ("L1", "ISIC_2", "nv"), ("L2", "ISIC_3", "mel")]
    root = _ham_layout(tmp_path, rows, ["ISIC_1", "ISIC_3"])
    (root / "HAM10000_images_part_1" / "ISIC_2.jpg").write_bytes(b"not a jpeg at all")
    manifest = load_manifest("ham10000", root)
    cache = tmp_path / "cache"
    with pytest.raises(MedsslError, match=r"cannot decode image .*ISIC_2\.jpg"):
        decoded_images(manifest, 16, cache_dir=cache, progress=False)
    kept, pixels = decoded_images(manifest, 16, cache_dir=cache, skip_unreadable=True)
    assert len(kept) == 2 == len(pixels) and "skipped 1 unreadable" in kept.warnings[-1]
    assert pixels.shape == (2, 16, 16, 3) and pixels[0].mean() > 50
    # the cache remembers the bad file: without the skip flag it still refuses
    with pytest.raises(MedsslError, match="unreadable image"):
        decoded_images(manifest, 16, cache_dir=cache, progress=False)


def test_cli_error_is_one_line_without_traceback(tmp_path, capsys):
    code = main(["data", "summary", "--dataset", "ham10000", "--root", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a directory" in err
    assert "Traceback" not in err


# --- the decoded-image cache ----------------------------------------------------------


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path):
    root = _ham_layout(tmp_path, [("L1", "ISIC_1", "nv")], ["ISIC_1"])
    cache = tmp_path / "cache"
    _, first = decoded_images(load_manifest("ham10000", root), 16, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1
    Image.new("RGB", (20, 15), (10, 200, 10)).save(root / "HAM10000_images_part_1/ISIC_1.jpg")
    _, second = decoded_images(load_manifest("ham10000", root), 16, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2
    assert second[0, :, :, 1].mean() > first[0, :, :, 1].mean() + 50


def test_grayscale_becomes_three_channels(tmp_path):
    root = _ham_layout(tmp_path, [("L1", "ISIC_1", "nv")], [])
    Image.new("L", (30, 20), 90).save(root / "HAM10000_images_part_1/ISIC_1.png")
    pd.DataFrame({"lesion_id": ["L1"], "image_id": ["ISIC_1.png"], "dx": ["nv"]}).to_csv(
        root / "HAM10000_metadata.csv", index=False
    )
    _, pixels = decoded_images(load_manifest("ham10000", root), 12, use_cache=False)
    assert pixels.shape == (1, 12, 12, 3)
    assert np.all(pixels[0] == pixels[0, :, :, :1])
