"""nodule-fpr: the crop geometry, the threshold rule, a tiny training run through the CLI on a real CT series
(negatives) and generated LIDC-IDRI-slices crops (positives), and the bundled second stage on the real LIDC
series."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pulmo.cli import main
from pulmo.datasets.lidc_slices import MM_PER_PX, read_lidc_slices
from pulmo.errors import ConfigError
from pulmo.tasks.nodule import NoduleDetector
from pulmo.tasks.nodule_fpr import NoduleFpr, nodule_crops, scan_crop, threshold_for_sensitivity
from pulmo.weights import WEIGHTS_DIR
from tests.conftest import LIDC_SERIES, data_path
from tests.tasks.test_nodule_seg import _make_dataset


def _sphere_volume(spacing: tuple[float, float, float], centre_mm=(20.0, 30.0, 25.0), radius_mm=5.0):
    shape = (20, 80, 80)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    inside = (zz - centre_mm[0]) ** 2 + (yy - centre_mm[1]) ** 2 + (xx - centre_mm[2]) ** 2 <= radius_mm ** 2
    return np.where(inside, 40.0, -850.0).astype(np.float32), np.array(centre_mm) / np.array(spacing)


@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (2.5, 1.4, 1.4)])
def test_scan_crop_centres_the_point_at_the_crops_pixel_size(spacing):
    hu, centre = _sphere_volume(spacing)
    crop = scan_crop(hu, spacing, centre)
    assert crop.shape == (3, 64, 64) and crop.dtype == np.uint8
    mid = crop[1]
    assert mid[32, 32] > 120 and mid[0, 0] < 40          # 40 HU nodule at the centre (grey 140), lung (20) around
    bright = mid > 80
    diameter_px = 2 * np.sqrt(bright.sum() / np.pi)
    assert abs(diameter_px * (spacing[1] if spacing[1] == 0.7 else MM_PER_PX) - 10.0) < 1.5   # 10 mm across


def test_threshold_keeps_the_target_share_of_positives():
    scores = np.linspace(0.0, 1.0, 101)
    t = threshold_for_sensitivity(scores, 0.95)
    assert np.mean(scores >= t) >= 0.95 and np.mean(scores >= t + 0.011) < 0.95
    with pytest.raises(ConfigError):
        threshold_for_sensitivity(np.array([]), 0.9)


def test_nodule_crops_take_the_largest_slices_first(tmp_path):
    data = read_lidc_slices(_make_dataset(tmp_path / "slices", n_patients=2))
    n = data.nodules[0]
    crops = nodule_crops(n, 0.5)
    areas = n.consensus.reshape(len(n.consensus), -1).sum(1)
    assert crops.shape[1:] == (3, 64, 64) and crops.dtype == np.uint8
    assert 1 <= len(crops) <= len(n.images) and len(nodule_crops(n, 1.0)) == int((areas == areas.max()).sum())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    image = data_path("ct", "pyradiomics_lung", "lung1_image.nrrd")
    label = image.with_name("lung1_label.nrrd")
    tmp = tmp_path_factory.mktemp("fpr")
    data = _make_dataset(tmp / "slices", n_patients=12)
    out = tmp / "run"
    code = main(["--no-progress", "train", "nodule-fpr", "--data", str(data), "--scans", f"{image}={label}",
                 "--n-random", "10", "--out-dir", str(out), "--epochs", "1", "--max-steps-per-epoch", "2",
                 "--batch-size", "8", "--threads", "1"])
    assert code == 0
    return image, out / "nodule-fpr.safetensors"


def test_train_cli_writes_a_card_with_its_threshold_and_negatives(tiny_run):
    _, weights = tiny_run
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["task"] == "nodule-fpr" and 0.0 <= card["thresholds"]["probability"] <= 1.0
    kinds = card["training"]["negatives_by_kind"]["lung1_image.nrrd"]
    assert kinds["vessel"] == kinds["border"] == kinds["parenchyma"] == 10
    # the labelled lung1 lesion is a reference, never a negative
    scan = card["metrics"]["training_scans"][0]
    assert len(scan["references"]) == 1 and abs(scan["references"][0]["diameter_mm"] - 13.8) < 0.5
    assert 0.0 <= card["metrics"]["test_positives"]["sensitivity"] <= 1.0


def test_detector_with_a_second_stage_reranks_by_it(tiny_run):
    from pulmo.io import read_image

    image, weights = tiny_run
    volume = read_image(image)
    det = NoduleDetector(second_stage=str(weights))
    assert det.threshold == NoduleFpr(str(weights)).threshold
    found = det.detect(volume)
    assert found and all("detector_probability" in n for n in found)
    probs = [n["probability"] for n in found]
    assert probs == sorted(probs, reverse=True)
    first = NoduleDetector(second_stage=None).detect(volume)
    assert sorted(n["probability"] for n in first) == sorted(n["detector_probability"] for n in found)


@pytest.mark.skipif(not (WEIGHTS_DIR / "nodule-fpr.json").is_file(), reason="no bundled nodule-fpr weights")
def test_bundled_second_stage_keeps_the_lidc_nodule_and_at_most_two_false_positives():
    from pulmo.datasets.lidc import load_lidc_scan

    scan = load_lidc_scan(data_path(*LIDC_SERIES))
    det = NoduleDetector()
    assert det.second_stage is not None
    found = [n for n in det.detect(scan.volume) if n["probability"] >= det.threshold]
    ref = [c for c in scan.clusters if c.n_readers >= 3]
    assert len(ref) == 1
    hits = [n for n in found if np.linalg.norm(np.array(n["center_xyz_mm"]) - ref[0].centre_world)
            <= ref[0].diameter_mm / 2]
    assert hits, "the 4-reader LIDC-IDRI-0001 nodule was dropped by the second stage"
    assert len(found) - len(hits) <= 2
