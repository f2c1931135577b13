"""Nodule mask refinement with ``nodule-seg`` (:func:`pulmo.tasks.nodule_seg.refine_nodule_masks`) and its use in
the CT pipeline: generated HU volumes with bright spheres, a hand-made "network" (a threshold at -400 HU on the
centre slice, through the crops' window) so the expected masks are known exactly, and a fake detector."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pulmo.datasets.lidc_slices import CROP_WINDOW_HU, MM_PER_PX
from pulmo.errors import InputError
from pulmo.io import Volume
from pulmo.pipeline import ct
from pulmo.tasks.nodule_seg import (
    DETECTOR_MASK_METHOD,
    MASK_METHOD,
    NoduleSegmenter,
    refine_nodule_masks,
    refine_window,
)

SPACING = (2.5, 0.7, 0.7)  # z, y, x mm: native pixels at the crops' scale (no resampling)
LUNG_HU, NODULE_HU, EDGE_HU = -850.0, 40.0, -400.0


class _ThresholdNet(torch.nn.Module):
    """``(B, 3, H, W)`` grey/255 -> logit of ``centre slice > EDGE_HU`` (CROP_WINDOW_HU), the context unused."""

    def __init__(self) -> None:
        super().__init__()
        lo, hi = CROP_WINDOW_HU
        self.edge = (EDGE_HU - lo) / (hi - lo)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return 200.0 * (x[:, 1:2] - self.edge)


def _segmenter() -> NoduleSegmenter:
    card = {"name": "nodule-seg-test", "architecture": "threshold", "task": "nodule-seg", "sha256": None,
            "model_kwargs": {"depth": 4}, "thresholds": {"nodule": 0.5},
            "input": {"context": 1, "window_hu": list(CROP_WINDOW_HU), "pixel_mm_est": MM_PER_PX},
            "scope": {"classes": ["nodule"], "trained_on": "a threshold", "cannot_see": "anything"}}
    return NoduleSegmenter(model=_ThresholdNet(), card=card)


def _ball(shape, centre_zyx, radius_mm, spacing=SPACING) -> np.ndarray:
    grid = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre_zyx, spacing)) <= radius_mm ** 2


def _nodule(centre_zyx, diameter_mm, p=0.9) -> dict:
    return {"center_xyz_mm": [0.0, 0.0, 0.0], "center_zyx_index": [float(c) for c in centre_zyx],
            "diameter_mm": diameter_mm, "volume_mm3": round(math.pi / 6 * diameter_mm ** 3, 1), "probability": p,
            "slice_index": round(centre_zyx[0])}


def _box(shape, centre_zyx, half) -> np.ndarray:
    """The detector's (bad) mask: a box of half-side ``half`` voxels around the centre."""
    m = np.zeros(shape, bool)
    m[tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(centre_zyx, half))] = True
    return m


def _check_consistent(labels: np.ndarray, nodules: list[dict], spacing=SPACING) -> None:
    """Numbering 1..N in order; refined nodules' volume = voxels x voxel volume, diameter = equivalent sphere."""
    assert labels.dtype == np.int16 and set(np.unique(labels)) <= set(range(len(nodules) + 1))
    voxel = float(np.prod(spacing))
    for k, n in enumerate(nodules, 1):
        assert n["mask_method"] in (MASK_METHOD, DETECTOR_MASK_METHOD)
        if n["mask_method"] == MASK_METHOD:
            assert n["volume_mm3"] == pytest.approx((labels == k).sum() * voxel, abs=0.05)
            assert n["diameter_mm"] == pytest.approx((6 * n["volume_mm3"] / math.pi) ** (1 / 3), abs=0.01)


def test_refined_mask_is_the_centre_component_and_metrics_follow_it():
    shape = (24, 96, 96)
    hu = np.full(shape, LUNG_HU, np.float32)
    centre = (12, 48, 44)
    nodule = _ball(shape, centre, 6.0)
    neighbour = _ball(shape, (12, 48, 72), 4.0)  # 19.6 mm away, in the same crop: another component
    hu[nodule | neighbour] = NODULE_HU
    labels = _box(shape, centre, (1, 4, 4)).astype(np.int16)  # a too-small detector mask
    nodules = [_nodule(centre, 5.0)]
    before = [dict(n) for n in nodules], labels.copy()

    out, rows = refine_nodule_masks(hu, SPACING, nodules, labels, _segmenter())

    np.testing.assert_array_equal(out == 1, nodule)  # the centre's component only, the box's voxels dropped
    assert not out[neighbour].any()
    assert rows[0]["mask_method"] == MASK_METHOD
    assert rows[0]["volume_mm3"] == pytest.approx(nodule.sum() * np.prod(SPACING), abs=0.05)
    assert rows[0]["diameter_mm"] == pytest.approx(12.0, rel=0.05)  # equivalent sphere of the 6 mm-radius ball
    assert {k: v for k, v in rows[0].items() if k not in ("diameter_mm", "volume_mm3", "mask_method")} == \
        {k: v for k, v in nodules[0].items() if k not in ("diameter_mm", "volume_mm3")}
    _check_consistent(out, rows)
    assert nodules == before[0] and np.array_equal(labels, before[1])  # inputs untouched


def test_refined_mask_stays_inside_the_crop_window():
    """A 30 mm-radius blob detected as 10 mm: the mask is cut at the 64 x 64 px crop and at centre ± (r + 3 mm)."""
    shape = (30, 128, 128)
    hu = np.full(shape, LUNG_HU, np.float32)
    centre = (15, 64, 60)
    blob = _ball(shape, centre, 30.0)
    hu[blob] = NODULE_HU
    seg = _segmenter()
    out, rows = refine_nodule_masks(hu, SPACING, [_nodule(centre, 10.0)], np.zeros(shape, np.int16), seg)

    w = refine_window(shape, SPACING, centre, 5.0)
    assert not w.resampled and w.side == 64 and w.pixel_mm == (0.7, 0.7)
    assert w.z == (11, 20) and w.z_context == (10, 21)  # ceil(8 mm / 2.5 mm) = 4 slices either side
    assert w.rows == (32, 96) and w.cols == (28, 92)
    inside = np.zeros(shape, bool)
    inside[w.slices] = True
    np.testing.assert_array_equal(out == 1, blob & inside)  # the blob, cut at the window's edges
    assert not out[~inside].any() and (out[inside] == 1).mean() > 0.95
    assert seg.model.calls == [(11, 3, 64, 64)]  # one 2.5-D pass over the window's slices with their context
    _check_consistent(out, rows)


def test_resampled_crop_for_a_fine_pixel_spacing():
    """0.35 mm pixels (half the crops' 0.69 mm): the slices are resampled to 0.69 mm and the mask mapped back."""
    spacing = (1.25, 0.35, 0.35)
    shape = (20, 160, 160)
    hu = np.full(shape, LUNG_HU, np.float32)
    centre = (10.0, 80.3, 79.6)
    ball = _ball(shape, centre, 5.0, spacing)
    hu[ball] = NODULE_HU
    w = refine_window(shape, spacing, centre, 5.0)
    assert w.resampled and w.step_yx == pytest.approx((MM_PER_PX / 0.35,) * 2) and w.pixel_mm == (MM_PER_PX,) * 2
    assert w.side == 64 and w.rows[1] - w.rows[0] == pytest.approx(64 * MM_PER_PX / 0.35, abs=1)

    out, rows = refine_nodule_masks(hu, spacing, [_nodule(centre, 10.0)], np.zeros(shape, np.int16), _segmenter())
    mask = out == 1
    dice = 2 * (mask & ball).sum() / (mask.sum() + ball.sum())
    assert dice > 0.95 and rows[0]["volume_mm3"] == pytest.approx(ball.sum() * np.prod(spacing), rel=0.05)
    inside = np.zeros(shape, bool)
    inside[w.slices] = True
    assert not mask[~inside].any()
    _check_consistent(out, rows, spacing)


def test_numbering_priority_and_fallback_to_the_detector_mask():
    """Three detections: two real spheres (refined, numbers kept) and one in plain lung, where the model marks
    nothing (it keeps the detector's mask, volume and diameter)."""
    shape = (24, 96, 96)
    hu = np.full(shape, LUNG_HU, np.float32)
    a, b, empty = (8, 40, 30), (15, 60, 66), (12, 20, 70)
    ball_a, ball_b = _ball(shape, a, 5.0), _ball(shape, b, 3.5)
    hu[ball_a | ball_b] = NODULE_HU
    labels = np.zeros(shape, np.int16)
    for k, c in enumerate((a, b, empty), 1):
        labels[_box(shape, c, (1, 3, 3))] = k
    nodules = [_nodule(a, 9.0, 0.95), _nodule(b, 6.0, 0.8), _nodule(empty, 4.0, 0.6)]

    out, rows = refine_nodule_masks(hu, SPACING, nodules, labels, _segmenter())

    assert [r["mask_method"] for r in rows] == [MASK_METHOD, MASK_METHOD, DETECTOR_MASK_METHOD]
    np.testing.assert_array_equal(out == 1, ball_a)
    np.testing.assert_array_equal(out == 2, ball_b)
    np.testing.assert_array_equal(out == 3, labels == 3)
    assert rows[2] == {**nodules[2], "mask_method": DETECTOR_MASK_METHOD}
    _check_consistent(out, rows)


def test_centre_off_the_nodule_takes_the_nearest_component_within_the_radius():
    shape = (20, 80, 80)
    hu = np.full(shape, LUNG_HU, np.float32)
    ball = _ball(shape, (10, 40, 40), 5.0)
    hu[ball] = NODULE_HU
    hu[10, 40, 40] = LUNG_HU  # a one-voxel hole at the centre (a cavity)
    out, rows = refine_nodule_masks(hu, SPACING, [_nodule((10, 40, 40), 10.0)], np.zeros(shape, np.int16),
                                    _segmenter())
    assert rows[0]["mask_method"] == MASK_METHOD and (out == 1).sum() == ball.sum() - 1
    far, _ = refine_nodule_masks(hu, SPACING, [_nodule((10, 40, 62), 4.0)], np.zeros(shape, np.int16),
                                 _segmenter())  # 15 mm from the ball, radius 2 mm: not this nodule's outline
    assert not far.any()


def test_bad_inputs_are_refused():
    hu = np.full((8, 32, 32), LUNG_HU, np.float32)
    labels = np.zeros(hu.shape, np.int16)
    seg, n = _segmenter(), [_nodule((4, 16, 16), 5.0)]
    with pytest.raises(InputError, match="shape"):
        refine_nodule_masks(hu, SPACING, n, labels[:4], seg)
    with pytest.raises(InputError, match="spacing"):
        refine_nodule_masks(hu, (2.5, 0.0, 0.7), n, labels, seg)
    labels[0, 0, 0] = 2
    with pytest.raises(InputError, match="labels up to 2"):
        refine_nodule_masks(hu, SPACING, n, labels, seg)
    with pytest.raises(InputError, match="center_zyx_index"):
        refine_nodule_masks(hu, SPACING, [{"diameter_mm": 5.0}], np.zeros(hu.shape, np.int16), seg)
    with pytest.raises(InputError, match="HU volume"):
        refine_nodule_masks(hu[0], SPACING, n, labels[0], seg)


# ---------------------------------------------------------------------------------------------- the CT pipeline

def _tiny_chest() -> tuple[Volume, np.ndarray]:
    """A 20 x 112 x 112 chest (two box lungs of air in soft tissue) with a 10 mm solid nodule in the left lung."""
    shape = (20, 112, 112)
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 6:-6, 6:-6] = 40.0
    lungs = np.zeros(shape, bool)
    lungs[1:-1, 16:-16, 14:52] = lungs[1:-1, 16:-16, 60:98] = True
    hu[lungs] = LUNG_HU
    ball = _ball(shape, (10, 56, 33), 5.0)
    hu[ball] = NODULE_HU
    return Volume(hu=hu, spacing=SPACING, source={"path": "tiny", "format": "generated"}), ball


class _FakeDetector:
    """Finds the tiny chest's nodule with a box-shaped mask (as the detector's findings(): rows + int16 labels)."""

    def __init__(self) -> None:
        self.card = {"name": "nodule-fake", "architecture": "fake", "task": "nodule", "sha256": None, "scope": None}
        self.threshold = 0.5
        self.second_stage = None  # no false-positive reduction stage

    def findings(self, volume, lungs):
        labels = _box(volume.shape, (10, 56, 33), (1, 5, 5)).astype(np.int16)
        return [_nodule((10, 56, 33), 8.0)], labels


@pytest.fixture
def fake_detector(monkeypatch):
    monkeypatch.setattr(ct, "nodule_detector", lambda: _FakeDetector())


def test_pipeline_without_nodule_seg_weights_is_unchanged(fake_detector, monkeypatch, tmp_path):
    ct.nodule_segmenter.cache_clear()
    # as if no nodule-seg weights were bundled: the weight choice names a file that does not exist
    monkeypatch.setenv("PULMO_WEIGHTS", json.dumps({"nodule-seg": str(tmp_path / "missing.safetensors")}))
    monkeypatch.setattr(ct, "REFINE_NODULE_MASKS", True)
    try:
        assert ct.nodule_segmenter() is None
    finally:
        ct.nodule_segmenter.cache_clear()
    monkeypatch.setattr(ct, "nodule_segmenter", lambda: None)
    vol, _ = _tiny_chest()
    findings, masks = ct.analyze_ct_volume(vol)
    rows, labels = _FakeDetector().findings(vol, None)
    assert findings.nodules == [{**r, "mask_method": DETECTOR_MASK_METHOD} for r in rows]
    np.testing.assert_array_equal(masks["nodules"], labels)
    assert [m["task"] for m in findings.models][-1] == "nodule"
    assert "nodule-seg" not in [m["task"] for m in findings.models]


def test_refinement_is_opt_in_even_with_bundled_weights(monkeypatch):
    """The pipeline keeps the detector's masks unless PULMO_REFINE_NODULES=1 (the mask head measured closer to the
    reference on the two whole scans here); with the switch on, bundled weights are used."""
    from pulmo.weights import WEIGHTS_DIR

    ct.nodule_segmenter.cache_clear()
    try:
        monkeypatch.setattr(ct, "REFINE_NODULE_MASKS", False)
        assert ct.nodule_segmenter() is None
        ct.nodule_segmenter.cache_clear()
        monkeypatch.setattr(ct, "REFINE_NODULE_MASKS", True)
        if (WEIGHTS_DIR / "nodule-seg.json").is_file():
            assert ct.nodule_segmenter() is not None
    finally:
        ct.nodule_segmenter.cache_clear()


def test_pipeline_refines_with_bundled_nodule_seg_weights(fake_detector, monkeypatch):
    seg = _segmenter()
    monkeypatch.setattr(ct, "nodule_segmenter", lambda: seg)
    vol, ball = _tiny_chest()
    findings, masks = ct.analyze_ct_volume(vol)
    (n,) = findings.nodules
    assert n["mask_method"] == MASK_METHOD
    np.testing.assert_array_equal(masks["nodules"] == 1, ball)
    assert masks["nodules"].dtype == np.int16 and masks["nodules"].shape == vol.shape
    assert n["volume_mm3"] == pytest.approx(ball.sum() * np.prod(SPACING), abs=0.05)
    entry = findings.models[-1]
    assert entry["task"] == "nodule-seg" and entry["name"] == "nodule-seg-test" and entry["threshold"] == 0.5
    assert entry["scope"]["classes"] == ["nodule"]
    assert findings.to_dict()["nodules"][0]["mask_method"] == MASK_METHOD
