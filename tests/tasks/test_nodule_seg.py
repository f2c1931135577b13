"""nodule-seg: a tiny train -> evaluate -> predict run on generated crops in the LIDC-IDRI-slices layout, and the
CLI evaluate JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pulmo.cli import main
from pulmo.datasets.lidc_slices import LidcSliceNodule
from pulmo.errors import ConfigError, InputError
from pulmo.tasks.nodule_seg import (
    NODULENET_DSC,
    NoduleSegConfig,
    NoduleSegmenter,
    evaluate,
    leave_one_reader_out,
    reader_agreement,
    train,
)
from tests.datasets.test_lidc_slices import write_nodule

SIZE = 32
KEYS = ("task", "dice_mean", "iou_mean", "n_nodules", "n_patients", "n_skipped_empty", "by_readers", "by_size",
        "weights", "weights_sha256", "seconds")


def _make_dataset(root: Path, n_patients: int = 10) -> Path:
    """Bright discs (the nodules) on a dark noisy background, 1-4 readers with jittered radii, 3-5 slices."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for p in range(n_patients):
        for k in range(1 + p % 2):
            n_slices = 3 + (p + k) % 3
            radius = rng.uniform(3, 8)
            profile = radius * np.sqrt(np.clip(1 - np.linspace(-0.8, 0.8, n_slices) ** 2, 0.05, 1))
            images = np.empty((n_slices, SIZE, SIZE), np.uint8)
            masks = np.zeros((4, n_slices, SIZE, SIZE), bool)
            n_readers = 1 + (p + k) % 4
            for i, r in enumerate(profile):
                disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 <= r ** 2
                images[i] = np.clip(np.where(disc, 130, 20) + rng.normal(0, 8, disc.shape), 0, 255).astype(np.uint8)
                for reader in range(n_readers):
                    rr = r + rng.uniform(-0.7, 0.7)
                    masks[reader, i] = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 <= rr ** 2
            write_nodule(root, f"LIDC-IDRI-{p + 1:04d}", k, images, masks)
    # one nodule nobody outlined
    write_nodule(root, "LIDC-IDRI-0001", 7, np.full((2, SIZE, SIZE), 20, np.uint8), np.zeros((4, 2, SIZE, SIZE), bool))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train through the CLI for a few optimiser steps (tiny network) and return (data root, weights path)."""
    tmp = tmp_path_factory.mktemp("nodule_seg")
    data = _make_dataset(tmp / "LIDC-IDRI-slices")
    out = tmp / "run"
    code = main(["--no-progress", "train", "nodule-seg", "--data", str(data), "--out-dir", str(out), "--epochs", "2",
                 "--max-steps-per-epoch", "3", "--batch-size", "8", "--features", "4", "--depth", "3",
                 "--size", str(SIZE), "--lr", "0.01", "--threads", "1"])
    assert code == 0
    return data, out / "nodule-seg.safetensors"


def test_train_writes_weights_and_card(trained):
    _, weights = trained
    assert weights.is_file() and weights.with_suffix(".json").is_file()
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["task"] == "nodule-seg" and card["architecture"] == "monai-unet" and card["dtype"] == "float16"
    assert card["model_kwargs"] == {"in_channels": 3, "out_channels": 1, "features": 4, "depth": 3}
    assert 0.2 <= card["thresholds"]["nodule"] <= 0.8
    split = card["training"]["split"]
    assert split["n_patients"] == {"train": 7, "validation": 1, "test": 2}
    assert not set(split["test_patients"]) & set(split["validation_patients"])
    assert card["training"]["n_skipped_empty"] == 1
    test = card["metrics"]["test"]
    assert test["n_patients"] == 2 and 0.0 <= test["dice_mean"] <= 1.0
    assert test["dice_ci95"][0] <= test["dice_mean"] <= test["dice_ci95"][1]
    assert set(test["by_readers"]) == {"1", "2", "3", "4"} and set(test["by_size"]) == {"<6mm", "6-10mm", ">10mm"}
    assert sum(g["n"] for g in test["by_readers"].values()) == test["n_nodules"]
    assert card["reference"]["NoduleNet (Tang et al., MICCAI 2019)"]["dsc"] == NODULENET_DSC
    assert set(card["scope"]) == {"classes", "trained_on", "cannot_see"}
    assert card["input"]["window_hu"] == [-1000.0, 900.0]


def test_evaluate_test_split_uses_the_held_out_patients(trained):
    data, weights = trained
    card = json.loads(weights.with_suffix(".json").read_text())
    m = evaluate(data, format="lidc-slices", weights=str(weights), split="test", progress=False)
    assert all(k in m for k in KEYS) and m["task"] == "nodule-seg"
    assert {r["patient_id"] for r in m["per_nodule"]} == set(card["training"]["split"]["test_patients"])
    assert m["n_nodules"] == card["metrics"]["test"]["n_nodules"]
    assert m["dice_mean"] == pytest.approx(card["metrics"]["test"]["dice_mean"], abs=0.02)  # fp16 weights
    everything = evaluate(data, format="lidc-slices", weights=str(weights), split="all", progress=False)
    assert everything["n_nodules"] == 15 and everything["n_patients"] == 10 and everything["n_skipped_empty"] == 1
    agree = everything["reader_agreement"]  # the generated nodules have 1-4 readers: those with >= 2 compared
    assert agree["n_nodules"] == sum(r["n_readers"] >= 2 for r in everything["per_nodule"]) > 0
    assert -1.0 <= agree["difference"] <= 1.0
    with pytest.raises(ConfigError, match="format='covid-semiseg' is not one of lidc-slices"):
        evaluate(data, format="covid-semiseg", weights=str(weights))
    with pytest.raises(ConfigError, match="split='train' is not one of test, all"):
        evaluate(data, format="lidc-slices", weights=str(weights), split="train")


def test_segmenter_predicts_the_centre_slice(trained):
    _, weights = trained
    seg = NoduleSegmenter(str(weights))
    stack = np.full((3, SIZE, SIZE), 20, np.uint8)
    mask = seg.predict(stack)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == bool
    big = np.full((5, 40, 48), 20, np.uint8)               # any size: padded to a multiple of 4 internally
    assert seg.segment_nodule(big).shape == (5, 40, 48)
    hu = np.full((3, SIZE, SIZE), -850.0)
    assert seg.predict(hu, hu=True).shape == (SIZE, SIZE)
    with pytest.raises(InputError, match="3 adjacent slices"):
        seg.predict(np.zeros((2, SIZE, SIZE), np.uint8))
    with pytest.raises(InputError, match=r"float in \[0, 1\]"):
        seg.predict(np.full((3, SIZE, SIZE), -850.0))


def test_cli_evaluate_writes_the_json_schema(trained, tmp_path):
    data, weights = trained
    out = tmp_path / "m.json"
    code = main(["--no-progress", "evaluate", "nodule-seg", "--data", str(data), "--format", "lidc-slices",
                 "--out", str(out), "--split", "all", "--weights", str(weights)])
    assert code == 0
    m = json.loads(out.read_text())
    assert all(k in m for k in KEYS)
    assert m["task"] == "nodule-seg" and m["split"] == "all" and m["n_nodules"] == 15
    assert 0.0 <= m["dice_mean"] <= 1.0 and 0.0 <= m["iou_mean"] <= m["dice_mean"] + 1e-9
    assert set(m["by_readers"]) == {"1", "2", "3", "4"}
    assert m["weights_sha256"] == json.loads(weights.with_suffix(".json").read_text())["sha256"]
    with pytest.raises(SystemExit) as exc:  # not one of the registry's splits: an argparse usage error
        main(["--no-progress", "evaluate", "nodule-seg", "--data", str(data), "--out", str(out), "--split", "train",
              "--weights", str(weights)])
    assert exc.value.code == 2


def test_leave_one_reader_out_scores_reader_and_model_against_the_other_readers():
    """Three readers of one 1-slice nodule: two agree on a 4 x 4 square, the third marks a 4 x 2 half of it."""
    masks = np.zeros((4, 1, 8, 8), bool)
    masks[0, 0, 2:6, 2:6] = masks[1, 0, 2:6, 2:6] = True   # 16 px each
    masks[2, 0, 2:6, 2:4] = True                            # 8 px, inside
    n = LidcSliceNodule("LIDC-IDRI-0009", "nodule-0", np.zeros((1, 8, 8), np.uint8), masks, [0])
    pred = masks[0].copy()
    # reader 0 vs consensus(1, 2) = 1 of 2 = the square: 1.0; reader 1 likewise 1.0; reader 2 (8 px) vs the
    # square: 2 * 8 / 24; the model (the square) scores 1.0 against all three references
    reader, model = leave_one_reader_out(n, pred)
    assert reader == pytest.approx((1 + 1 + 16 / 24) / 3) and model == pytest.approx(1.0)
    single = LidcSliceNodule("LIDC-IDRI-0009", "nodule-1", np.zeros((1, 8, 8), np.uint8),
                             np.concatenate([masks[:1], np.zeros((3, 1, 8, 8), bool)]), [0])
    assert leave_one_reader_out(single, pred) is None
    rows = [{"n_readers": 3, "reader_dice": reader, "model_dice": model},
            {"n_readers": 1, "reader_dice": None, "model_dice": None}]
    agree = reader_agreement(rows, n_resamples=50)
    assert agree["n_nodules"] == 1 and agree["difference"] == pytest.approx(model - reader)
    assert agree["by_readers"]["3"]["n"] == 1 and agree["by_readers"]["2"]["reader_dice_mean"] is None
    assert reader_agreement(rows[1:])["reader_dice_mean"] is None


def test_train_refuses_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        train(NoduleSegConfig(out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="multiple of 8"):
        train(NoduleSegConfig(data=str(tmp_path), size=60, out_dir=str(tmp_path)))


# ---------------------------------------------------------------------------------------------- CT mask refinement

def test_refine_nodule_masks_with_smoke_weights(trained):
    """The smoke-trained weights on a generated HU volume with a bright sphere: whatever they mark, the mask is the
    crop window's component at the centre, numbered as the detector's, and volume = voxels x voxel volume."""
    from scipy import ndimage

    from pulmo.tasks.nodule_seg import DETECTOR_MASK_METHOD, MASK_METHOD, refine_nodule_masks, refine_window

    _, weights = trained
    seg = NoduleSegmenter(str(weights))
    spacing, shape, centre = (2.5, 0.7, 0.7), (16, 96, 96), (8, 48, 48)
    grid = np.ogrid[:shape[0], :shape[1], :shape[2]]
    ball = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= 5.0 ** 2
    hu = np.where(ball, 40.0, -850.0).astype(np.float32)
    labels = np.zeros(shape, np.int16)
    labels[7:10, 44:53, 44:53] = 1
    nodule = {"center_zyx_index": [8.0, 48.0, 48.0], "diameter_mm": 10.0, "volume_mm3": 523.6, "probability": 0.9,
              "slice_index": 8}
    out, (row,) = refine_nodule_masks(hu, spacing, [nodule], labels, seg)
    assert out.dtype == np.int16 and set(np.unique(out)) <= {0, 1}
    assert row["mask_method"] in (MASK_METHOD, DETECTOR_MASK_METHOD)
    if row["mask_method"] == DETECTOR_MASK_METHOD:
        np.testing.assert_array_equal(out, labels)
    else:
        w = refine_window(shape, spacing, centre, 5.0)
        inside = np.zeros(shape, bool)
        inside[w.slices] = True
        mask = out == 1
        assert mask.any() and not mask[~inside].any()
        assert ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] == 1  # one component
        assert row["volume_mm3"] == pytest.approx(mask.sum() * np.prod(spacing), abs=0.05)


def test_analyze_real_lidc_example_with_smoke_nodule_seg_weights(trained, tmp_path, monkeypatch):
    """``pulmo analyze`` on the real LIDC-IDRI-0001 example (26 slices, ~5 s) with the smoke weights in place of
    bundled nodule-seg weights: real geometry end to end, findings.json consistent with nodule_mask.nii.gz."""
    from pulmo.io import read_labels
    from pulmo.pipeline import ct
    from pulmo.tasks.nodule_seg import DETECTOR_MASK_METHOD, MASK_METHOD
    from pulmo.weights import WEIGHTS_DIR
    from tests.conftest import ROOT

    example = ROOT / "examples" / "ct" / "LIDC-IDRI-0001"
    if not (example.is_dir() and any(example.iterdir())):
        pytest.skip(f"the example CT series is absent: {example}")
    if not (WEIGHTS_DIR / "nodule.json").is_file():
        pytest.skip("no bundled nodule weights: the CT pipeline finds no nodules")
    _, weights = trained
    seg = NoduleSegmenter(str(weights))
    monkeypatch.setattr(ct, "nodule_segmenter", lambda: seg)
    out = tmp_path / "ct"
    assert main(["--no-progress", "analyze", str(example), "--out", str(out)]) == 0
    f = json.loads((out / "findings.json").read_text())
    assert f["nodules"]
    labels = read_labels(out / "nodule_mask.nii.gz").labels
    voxel = float(np.prod(f["input"]["spacing_mm"]))
    assert set(np.unique(labels).astype(int)) <= set(range(len(f["nodules"]) + 1))
    for k, n in enumerate(f["nodules"], 1):
        assert n["mask_method"] in (MASK_METHOD, DETECTOR_MASK_METHOD)
        if n["mask_method"] == MASK_METHOD:
            assert n["volume_mm3"] == pytest.approx((labels == k).sum() * voxel, abs=0.05)
            assert n["diameter_mm"] == pytest.approx((6 * n["volume_mm3"] / np.pi) ** (1 / 3), abs=0.01)
    refined = any(n["mask_method"] == MASK_METHOD for n in f["nodules"])
    assert ("nodule-seg" in [m["task"] for m in f["models"]]) == refined


# ---------------------------------------------------------------------------------------------- bundled weights, real data

def test_bundled_weights_on_real_held_out_patients():
    """The bundled nodule-seg on 12 of its held-out test patients' real LIDC crops: the per-nodule Dice stays
    near the card's test figure, and every nodule gets a one-component mask at the crop centre."""
    from scipy import ndimage

    from pulmo.datasets.lidc_slices import read_lidc_slices
    from pulmo.weights import WEIGHTS_DIR
    from tests.conftest import data_path

    if not (WEIGHTS_DIR / "nodule-seg.json").is_file():
        pytest.skip("no bundled nodule-seg weights")
    archive = data_path("ct", "LIDC-IDRI-slices", "LIDC-IDRI-slices.tar.gz")
    seg = NoduleSegmenter()
    patients = seg.card["training"]["split"]["test_patients"][:12]
    nodules = read_lidc_slices(archive, patients=patients).nodules
    rows = seg.score(nodules, progress=False)
    assert {r["patient_id"] for r in rows} == set(patients)
    mean = float(np.mean([r["dice"] for r in rows]))
    assert mean >= seg.card["metrics"]["test"]["dice_ci95"][0] - 0.1, mean
    for n in nodules[:5]:
        mask = seg.segment_nodule(n.images)
        assert ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] <= 1
