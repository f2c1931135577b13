"""lesion-seg: the COVID-SemiSeg adapter, the bundled model on its held-out slices, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pulmo.cli import main
from pulmo.datasets import covid_semiseg_records
from pulmo.datasets.covid_ct import read_mask
from pulmo.errors import InputError
from pulmo.metrics import binary_metrics, confusion_counts
from pulmo.tasks.lesion_seg import LesionSegmenter
from pulmo.weights import resolve_card
from tests.conftest import data_path


def test_semiseg_layout_counts():
    root = data_path("ct", "COVID-SemiSeg")
    binary = covid_semiseg_records(root, "train", "binary")
    multi = covid_semiseg_records(root, "train", "multiclass")
    assert len(binary) == 50 and len(multi) == 50
    assert set(np.unique(read_mask(multi[0]["mask"]))) <= {0, 1, 2}
    assert set(np.unique(read_mask(binary[0]["mask"]))) <= {0, 1}
    # binary mask = union of the three-class mask
    b = {r["slice_index"]: r for r in binary}
    for r in multi[:5]:
        assert ((read_mask(r["mask"]) > 0) == (read_mask(b[r["slice_index"]]["mask"]) > 0)).all()


def test_missing_split_is_clear(tmp_path):
    with pytest.raises(InputError, match="Imgs/ and GT/"):
        covid_semiseg_records(tmp_path, "test", "binary")
    with pytest.raises(InputError, match="train\\|test"):
        covid_semiseg_records(tmp_path, "dev", "binary")


def test_bundled_model_on_its_held_out_slices():
    """Golden test: the bundled weights on the validation slices named in their card (never trained on)."""
    root = data_path("ct", "COVID-SemiSeg")
    card = resolve_card("lesion-seg")
    held_out = set(card["training"]["val_images"])
    records = [r for r in covid_semiseg_records(root, "train", "binary") if r["image"].split("/")[-1] in held_out]
    assert len(records) == len(held_out) >= 5
    seg = LesionSegmenter()
    totals = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for r in records:
        image = np.asarray(Image.open(r["image"]).convert("L"), dtype=np.float32) / 255.0
        pred = seg.predict([image])[0] > 0
        assert pred.shape == image.shape
        for k, v in confusion_counts(pred, read_mask(r["mask"]) > 0).items():
            totals[k] += v
    m = binary_metrics(totals)
    assert m["f1"] > 0.6 and m["specificity"] > 0.95


def test_evaluate_cli_writes_the_documented_keys(tmp_path):
    out = tmp_path / "m.json"
    code = main(["--no-progress", "evaluate", "lesion-seg", "--data", str(data_path("ct", "COVID-SemiSeg")),
                 "--format", "covid-semiseg", "--split", "train", "--out", str(out)])
    assert code == 0
    m = json.loads(out.read_text())
    assert m["task"] == "lesion-seg" and m["n"] == 50
    for k in ("dice_mean", "dice_global", "accuracy", "precision", "sensitivity", "specificity", "f1"):
        assert 0.0 <= m[k] <= 1.0
    # the global Dice is 2 TP / (2 TP + FP + FN) over every pixel: the harmonic mean of pixel precision and recall
    p, r = m["precision"], m["sensitivity"]
    assert m["dice_global"] == pytest.approx(2 * p * r / (p + r), abs=2e-4)
    assert m["dice_global"] != pytest.approx(m["dice_mean"], abs=1e-6)  # pooled over pixels, not a slice mean


def test_lung_crop_box_grows_and_clips():
    from pulmo.transforms import lung_crop_box

    m = np.zeros((100, 80), bool)
    m[20:70, 10:60] = True
    rows, cols = lung_crop_box(m)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (20 - 5, 70 + 5, 10 - 5, 60 + 5)  # 8 % of 49 + 2
    m[:, :] = False
    m[0:5, 75:80] = True
    rows, cols = lung_crop_box(m)
    assert rows.start == 0 and cols.stop == 80
    with pytest.raises(ValueError, match="empty"):
        lung_crop_box(np.zeros((4, 4), bool))


def test_negative_volumes_give_empty_masks_framed_like_the_pipeline(tmp_path):
    """Infection-free training slices (``--negatives``) from the real NRRD: every third lung slice, cropped to
    the lung box and lung-windowed exactly as ``analyze`` feeds the model, with empty labels."""
    from pulmo.datasets.covid_ct import LesionSliceDataset
    from pulmo.io import read_image
    from pulmo.tasks.lesion_seg import negative_records
    from pulmo.transforms import lung_crop_box, window_hu
    from pulmo.transforms.ct import lung_mask_ct

    path = data_path("ct", "pyradiomics_lung", "lung1_image.nrrd")
    (rec,) = negative_records([str(path)])
    pairs = rec["pairs"]
    vol = read_image(path)
    lungs = lung_mask_ct(vol)
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))[::3]
    rows, cols = lung_crop_box(lungs.any(axis=0))
    assert len(pairs) == len(zs) > 5
    np.testing.assert_allclose(pairs[1][0], window_hu(vol.hu[zs[1], rows, cols]), atol=1e-6)
    assert all(lab.shape == img.shape and not lab.any() for img, lab in pairs)
    ds = LesionSliceDataset([rec], 64)
    assert len(ds) == len(pairs) and float(ds[0]["label"].max()) == 0.0
    with pytest.raises(InputError, match="not found"):
        negative_records([str(tmp_path / "missing.nii.gz")])
