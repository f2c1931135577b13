"""HU post-processing of CT infection labels: a tiny generated chest per rule; LIDC-IDRI-0001 end to end."""

from __future__ import annotations

import numpy as np
import pytest

from pulmo.transforms.ct_postprocess import DEFAULT_RULES, RULES, postprocess_infection
from tests.conftest import LIDC_SERIES, data_path

SPACING = (2.5, 1.0, 1.0)  # mm (z, y, x): 2.5 mm slices as LIDC-IDRI-0001
VOXEL_ML = float(np.prod(SPACING)) / 1000.0


def _chest(shape: tuple[int, int, int] = (24, 128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """``(hu, lungs)``: a box of aerated lung (-870 HU) from slice 2 and 8 mm in from the sides, in soft
    tissue (+40 HU)."""
    lungs = np.zeros(shape, bool)
    lungs[2:-2, 8:-8, 8:-8] = True
    hu = np.where(lungs, -870.0, 40.0).astype(np.float32)
    return hu, lungs


def _ball(shape: tuple[int, int, int], centre_zyx: tuple[int, int, int], radius_mm: float) -> np.ndarray:
    """bool ``shape``: voxels within ``radius_mm`` of ``centre_zyx`` (voxel indices), with :data:`SPACING`."""
    grid = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre_zyx, SPACING)) <= radius_mm ** 2


def _run(labels: np.ndarray, hu: np.ndarray, lungs: np.ndarray) -> tuple[np.ndarray, dict]:
    cleaned, report = postprocess_infection(labels.astype(np.uint8), hu, lungs, SPACING)
    assert cleaned.dtype == np.uint8 and cleaned.shape == labels.shape
    assert not cleaned[~lungs].any() and not ((cleaned > 0) & (labels == 0)).any()  # a subset, in the lungs
    assert set(report["removed_ml"]) == set(RULES)
    assert report["volume_ml"] == pytest.approx(np.count_nonzero(cleaned) * VOXEL_ML, abs=0.01)
    total = report["volume_ml"] + report["removed_total_ml"]
    assert report["model_volume_ml"] == pytest.approx(total, abs=0.02)
    return cleaned, report


def test_border_ring_removed():
    """A 3 mm rim of -600 HU along the lung boundary (the partial-volume ring at the dome) is dropped."""
    hu, lungs = _chest()
    ring = np.zeros_like(lungs)
    ring[6:18, 8:11, 20:100] = True  # the first 3 mm inside the lung's front wall
    hu[ring] = -600.0
    cleaned, report = _run(ring, hu, lungs)
    assert not cleaned.any()
    assert report["removed_ml"]["lung_border"] == pytest.approx(ring.sum() * VOXEL_ML, abs=0.01)
    assert report["components"] == {"in_lungs": 1, "kept": 0}


def test_ring_at_the_first_scanned_slice_counts_as_border():
    """Lung cut by the scanned range: the end slices are lung boundary (lung1 starts inside the dome)."""
    hu, lungs = _chest()
    lungs[:2] = True  # the lung reaches slice 0
    hu[lungs] = -870.0
    rim = np.zeros_like(lungs)
    rim[0:2, 30:90, 30:90] = True  # 5 mm at the volume's first slices, far from the in-plane boundary
    hu[rim] = -600.0
    cleaned, report = _run(rim, hu, lungs)
    assert not cleaned.any() and report["removed_ml"]["lung_border"] > 0


def test_dense_interior_blob_kept():
    """Ground-glass (-550 HU) ball of 8 mm radius in the middle of the lung: real infection, kept whole."""
    hu, lungs = _chest()
    blob = _ball(hu.shape, (12, 64, 40), 8.0)
    hu[blob] = -550.0
    labels = blob.astype(np.uint8)
    labels[blob & (np.arange(hu.shape[2]) >= 40)] = 2  # a three-class map keeps its classes
    cleaned, report = _run(labels, hu, lungs)
    np.testing.assert_array_equal(cleaned, labels)
    assert report["removed_total_ml"] == 0 and report["components"] == {"in_lungs": 1, "kept": 1}


def test_aerated_false_positive_removed():
    """A component of aerated lung (-860 HU, median below -750) is not infection."""
    hu, lungs = _chest()
    fp = np.zeros_like(lungs)
    fp[8:14, 40:70, 40:70] = True
    hu[fp] = -860.0
    hu[fp & (np.arange(hu.shape[2]) % 9 == 0)] = 40.0  # vessels: a few dense voxels do not rescue it
    cleaned, report = _run(fp, hu, lungs)
    assert not cleaned.any()
    assert report["removed_ml"]["aerated"] == pytest.approx(fp.sum() * VOXEL_ML, abs=0.01)


def test_component_below_the_minimum_volume_removed():
    hu, lungs = _chest()
    speck = np.zeros_like(lungs)
    speck[12:14, 60:66, 60:66] = True  # 72 voxels = 0.18 mL < 0.5 mL
    hu[speck] = -500.0
    assert speck.sum() * VOXEL_ML < DEFAULT_RULES.min_component_ml
    cleaned, report = _run(speck, hu, lungs)
    assert not cleaned.any() and report["removed_ml"]["min_volume"] > 0


def test_nodule_halo_removed_but_elongated_consolidation_kept():
    """A round solid nodule (6 mm radius, +40 HU) painted with its halo is dropped; an elongated consolidation
    (40 x 8 x 10 mm, 0 HU) with a ground-glass rim of the same size class is kept."""
    hu, lungs = _chest()
    nodule = _ball(hu.shape, (12, 40, 80), 6.0)
    halo = _ball(hu.shape, (12, 40, 80), 10.0)
    hu[halo] = -600.0
    hu[nodule] = 40.0
    painted = halo & ~_ball(hu.shape, (12, 40, 80), 4.0)  # the model paints the rim and halo, not the core
    consolidation = np.zeros_like(lungs)
    consolidation[10:14, 60:100, 36:44] = True
    rim = np.zeros_like(lungs)
    rim[9:15, 57:103, 33:47] = True
    hu[rim] = -600.0
    hu[consolidation] = 0.0
    labels = (painted | rim).astype(np.uint8)
    cleaned, report = _run(labels, hu, lungs)
    assert not cleaned[painted].any()
    assert report["removed_ml"]["nodule"] == pytest.approx(painted.sum() * VOXEL_ML, abs=0.01)
    np.testing.assert_array_equal(cleaned[rim], 1)  # the consolidation and its ground-glass rim stay
    assert report["components"] == {"in_lungs": 2, "kept": 1}


def test_labels_outside_the_lungs_cleared_and_reported():
    hu, lungs = _chest()
    outside = np.zeros_like(lungs)
    outside[10:14, 0:6, 30:60] = True  # in the chest wall
    cleaned, report = _run(outside, hu, lungs)
    assert not cleaned.any() and report["components"]["in_lungs"] == 0
    assert report["removed_ml"]["outside_lungs"] == pytest.approx(outside.sum() * VOXEL_ML, abs=0.01)
    assert report["rules"]["min_median_hu"] == DEFAULT_RULES.min_median_hu


def test_bad_inputs_raise():
    hu, lungs = _chest((8, 32, 32))
    labels = np.zeros(hu.shape, np.uint8)
    with pytest.raises(ValueError, match="same 3D shape"):
        postprocess_infection(labels[0], hu[0], lungs[0], SPACING)
    with pytest.raises(ValueError, match="same 3D shape"):
        postprocess_infection(labels, hu[:4], lungs, SPACING)
    with pytest.raises(ValueError, match="spacing"):
        postprocess_infection(labels, hu, lungs, (2.5, 0.0, 1.0))


def test_lidc_0001_has_at_most_5_ml_of_infection():
    """Real data: LIDC-IDRI-0001 (no infection; a 23 mm nodule) through the whole volume pipeline. Before the
    post-processing the bundled model reported 50.4 mL here (its dependent bases, the dome ring, the nodule)."""
    from pulmo.io import read_image
    from pulmo.pipeline.ct import INFECTION_SCOPE, analyze_ct_volume

    findings, masks = analyze_ct_volume(read_image(data_path(*LIDC_SERIES)))
    inf = findings.infection
    assert inf["volume_ml"] <= 5.0
    pp = inf["postprocessing"]
    assert pp["model_volume_in_lungs_ml"] > 40 and pp["volume_ml"] == pytest.approx(inf["volume_ml"], abs=0.01)
    assert all(pp["removed_ml"][rule] > 0 for rule in ("aerated", "lung_border", "nodule"))
    assert inf["scope"] == INFECTION_SCOPE and "COVID-SemiSeg" in inf["scope"]
    assert not masks["infection"][~masks["lungs"]].any()
