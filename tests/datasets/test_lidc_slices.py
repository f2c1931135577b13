"""LIDC-IDRI-slices reader: real nodules from the shared tar.gz, the consensus rule, skipping, the patient split,
the size and window helpers."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulmo.datasets.lidc_slices import (
    CROP_WINDOW_HU,
    MM_PER_PX,
    NoduleSliceDataset,
    consensus_mask,
    equivalent_diameter_px,
    fit_crop_window,
    hu_to_crop_grey,
    read_lidc_slices,
    size_group,
    split_nodules,
)
from pulmo.errors import ConfigError, InputError
from tests.conftest import data_path

PATIENTS = ("LIDC-IDRI-0004", "LIDC-IDRI-0005")


def _tarball() -> Path:
    return data_path("ct", "LIDC-IDRI-slices", "LIDC-IDRI-slices.tar.gz")


def write_nodule(root: Path, patient: str, nodule: int, images: np.ndarray, masks: np.ndarray) -> None:
    """Write one nodule in the release layout: ``images`` uint8 (S, H, W), ``masks`` bool (R, S, H, W)."""
    base = root / patient / f"nodule-{nodule}"
    (base / "images").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(base / "images" / f"slice-{i}.png")
    for r, m in enumerate(masks):
        (base / f"mask-{r}").mkdir()
        for i, sl in enumerate(m):
            Image.fromarray(sl.astype(np.uint8) * 255).save(base / f"mask-{r}" / f"slice-{i}.png")


def test_real_nodules_from_the_tarball_match_the_index():
    """A few real nodules read straight from the shared .tar.gz agree with nodule_index.csv (slices, readers,
    mask pixels per reader); stacks are uint8 in slice order, masks binary."""
    tar = _tarball()
    with open(tar.parent / "nodule_index.csv", newline="") as fh:
        index = {(r["patient"], r["nodule"]): r for r in csv.DictReader(fh) if r["patient"] in PATIENTS}
    data = read_lidc_slices(tar, patients=PATIENTS)
    assert data.patients == list(PATIENTS) and data.n_skipped_empty == 0
    assert {n.key for n in data.nodules} == {f"{p}/{k}" for p, k in index}
    for n in data.nodules:
        row = index[(n.patient_id, n.nodule)]
        assert n.images.dtype == np.uint8 and n.images.shape == (int(row["n_slices"]), 64, 64)
        assert n.slice_ids == list(range(len(n.images)))
        assert n.n_readers == int(row["n_readers_with_mask"])
        assert [int(n.masks[r].sum()) for r in range(4)] == [int(row[f"mask_px_reader{r}"]) for r in range(4)]
        votes = n.masks[n.readers].sum(axis=0)
        np.testing.assert_array_equal(n.consensus, votes >= n.n_readers / 2)
        assert n.consensus.any() and 2 < n.diameter_px < 40
        assert n.diameter_mm == pytest.approx(n.diameter_px * MM_PER_PX)


def test_extracted_subset_reads_like_the_tarball(tmp_path):
    """The extracted folder (here: one patient's members extracted into tmp_path) and the tar.gz give the same
    nodules; a folder holding LIDC-IDRI-slices/ is accepted too."""
    tar = _tarball()
    with tarfile.open(tar) as t:
        members = [m for m in t if f"/{PATIENTS[1]}/" in m.name]
        t.extractall(tmp_path, members=members, filter="data")
    from_folder = read_lidc_slices(tmp_path)
    from_root = read_lidc_slices(tmp_path / "LIDC-IDRI-slices")
    from_tar = read_lidc_slices(tar, patients=[PATIENTS[1]])
    assert [n.key for n in from_folder.nodules] == [n.key for n in from_tar.nodules] == [n.key for n in from_root.nodules]
    for a, b in zip(from_folder.nodules, from_tar.nodules):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.masks, b.masks)


def test_consensus_counts_only_readers_who_outlined():
    """Hand-made example: 3 outlining readers need 2 votes; 2 outlining readers need 1; empty readers do not vote."""
    m = np.zeros((4, 1, 3, 3), bool)
    m[0, 0, 0, :] = True          # reader 0: top row
    m[1, 0, 0, :2] = True         # reader 1: top-left two
    m[2, 0, 1, 0] = True          # reader 2: one pixel on the middle row
    # reader 3 is empty: it did not outline the nodule
    c = consensus_mask(m)
    expected = np.zeros((1, 3, 3), bool)
    expected[0, 0, :2] = True     # 2 of 3 votes
    np.testing.assert_array_equal(c, expected)
    two = m.copy()
    two[2] = False                # now 2 readers: 1 vote of 2 is enough (would be 1 < 2 if empty readers voted)
    np.testing.assert_array_equal(consensus_mask(two), m[0] | m[1])
    assert not consensus_mask(np.zeros((4, 2, 3, 3), bool)).any()
    np.testing.assert_array_equal(consensus_mask(m, level=1.0), np.zeros((1, 3, 3), bool))
    with pytest.raises(ConfigError, match="level"):
        consensus_mask(m, level=0)


def test_empty_nodules_are_skipped_and_counted(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 36
    images = np.full((2, 64, 64), 20, np.uint8)
    masks = np.zeros((4, 2, 64, 64), bool)
    masks[1, 0] = disc
    write_nodule(tmp_path, "LIDC-IDRI-0100", 0, images, masks)
    write_nodule(tmp_path, "LIDC-IDRI-0100", 1, images, np.zeros_like(masks))     # nobody outlined it
    big = np.full((3, 128, 128), 20, np.uint8)
    big_masks = np.zeros((4, 3, 128, 128), bool)
    big_masks[:, 1, 30:100, 30:100] = True
    write_nodule(tmp_path, "LIDC-IDRI-0101", 0, big, big_masks)
    data = read_lidc_slices(tmp_path)
    assert data.n_skipped_empty == 1 and data.skipped_empty == ["LIDC-IDRI-0100/nodule-1"]
    assert [n.key for n in data.nodules] == ["LIDC-IDRI-0100/nodule-0", "LIDC-IDRI-0101/nodule-0"]
    small, large = data.nodules
    assert small.n_readers == 1 and small.readers == [1] and (small.consensus == masks[1]).all()
    assert large.crop_px == 128 and large.n_readers == 4
    ds = NoduleSliceDataset(data.nodules, size=64, context=1)
    assert len(ds) == 5
    item = ds[3]                                   # large nodule, slice 1, centre-cropped to 64
    assert tuple(item["image"].shape) == (3, 64, 64) and tuple(item["label"].shape) == (1, 64, 64)
    assert float(item["label"].min()) == 1.0       # the 70 px square covers the whole centre window
    assert float(ds[0]["image"].max()) == pytest.approx(20 / 255)


def test_layout_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_lidc_slices(tmp_path / "missing")
    with pytest.raises(InputError, match="no nodule found"):
        read_lidc_slices(tmp_path)
    images = np.zeros((2, 64, 64), np.uint8)
    masks = np.ones((4, 2, 64, 64), bool)
    write_nodule(tmp_path, "LIDC-IDRI-0200", 0, images, masks)
    (tmp_path / "LIDC-IDRI-0200" / "nodule-0" / "mask-2" / "slice-1.png").unlink()
    with pytest.raises(InputError, match="mask-2/slice-1.png missing"):
        read_lidc_slices(tmp_path)


def _fake_nodules(n_patients: int):
    from pulmo.datasets.lidc_slices import LidcSliceNodule

    masks = np.zeros((4, 1, 8, 8), bool)
    masks[0, 0, 2:5, 2:5] = True
    return [LidcSliceNodule(f"LIDC-IDRI-{p:04d}", f"nodule-{k}", np.zeros((1, 8, 8), np.uint8), masks, [0])
            for p in range(n_patients) for k in range(1 + p % 3)]


def test_patient_split_is_disjoint_and_sized():
    nodules = _fake_nodules(100)
    train, val, test = split_nodules(nodules, 0.2, 0.1, seed=0)
    sides = [{n.patient_id for n in s} for s in (train, val, test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(train) + len(val) + len(test) == len(nodules)
    assert (len(sides[0]), len(sides[1]), len(sides[2])) == (70, 10, 20)
    again = split_nodules(list(reversed(nodules)), 0.2, 0.1, seed=0)
    assert {n.patient_id for n in again[2]} == sides[2]
    assert {n.patient_id for n in split_nodules(nodules, 0.2, 0.1, seed=1)[2]} != sides[2]
    with pytest.raises(ConfigError, match="at least 3 patients"):
        split_nodules(_fake_nodules(2))
    with pytest.raises(ConfigError, match="sum"):
        split_nodules(nodules, 0.6, 0.5)


def test_diameter_and_size_groups():
    yy, xx = np.mgrid[:64, :64]
    masks = np.zeros((4, 3, 64, 64), bool)
    masks[0, 1] = (yy - 32) ** 2 + (xx - 32) ** 2 <= 10 ** 2      # r = 10 px on reader 0
    masks[2, 0] = (yy - 32) ** 2 + (xx - 32) ** 2 <= 6 ** 2       # r = 6 px on reader 2
    assert equivalent_diameter_px(masks) == pytest.approx((20 + 12) / 2, rel=0.03)
    assert equivalent_diameter_px(np.zeros_like(masks)) == 0.0
    assert [size_group(d) for d in (3.0, 6.0, 10.0, 10.1)] == ["<6mm", "6-10mm", "6-10mm", ">10mm"]


def test_window_fit_recovers_a_known_window():
    """HU samples of lung (-880 +- 40) and soft tissue (+50 +- 30) windowed with a known window: the grid search
    finds it back; the default constant maps air to 0 and lung parenchyma near grey 15."""
    rng = np.random.default_rng(0)
    hu = np.concatenate([rng.normal(-880, 40, 40000), rng.normal(50, 30, 20000)])
    true = (-1000.0, 900.0)
    crop = np.bincount(hu_to_crop_grey(hu[rng.permutation(len(hu))[:30000]], true), minlength=256)
    fit = fit_crop_window(crop, hu, lows=range(-1100, -899, 20), highs=range(600, 1201, 50))
    assert (fit["low"], fit["high"]) == true and fit["distance"] < 1.0
    assert CROP_WINDOW_HU == (-1000.0, 900.0)
    assert hu_to_crop_grey(np.array([-1100, -1000, -880, 900, 3000])).tolist() == [0, 0, 16, 255, 255]
    with pytest.raises(InputError, match="256-bin"):
        fit_crop_window(np.ones(10), hu)
