"""pulmo.geometry.boxes: hand-computed 2-D and 3-D cases, agreement with MONAI's box utilities, and equality
with the implementations it replaced (copied here as they were, as the references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pulmo.geometry.boxes import (
    box_area,
    box_iou,
    convert_box_mode,
    cube_iou,
    cube_nms,
    cubes_to_boxes,
    cxcywh_to_xyxy,
    mask_to_box,
    nms,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

# ---------------------------------------------------------------------------------------------- the old copies


def old_metrics_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pulmo.metrics.detection.box_iou before pulmo.geometry (after its input checks)."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def old_box_iou_cubes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """pulmo.models.nodulenet.box_iou_cubes before pulmo.geometry."""
    lo = torch.maximum(a[:, None, :3] - a[:, None, 3:] / 2, b[None, :, :3] - b[None, :, 3:] / 2)
    hi = torch.minimum(a[:, None, :3] + a[:, None, 3:] / 2, b[None, :, :3] + b[None, :, 3:] / 2)
    inter = (hi - lo).clamp(min=0).prod(-1)
    return inter / (a[:, None, 3] ** 3 + b[None, :, 3] ** 3 - inter).clamp(min=1e-6)


def old_nms_cubes(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int) -> torch.Tensor:
    """pulmo.models.nodulenet.nms_cubes before pulmo.geometry."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    while order.numel() and len(keep) < max_keep:
        i = int(order[0])
        keep.append(i)
        if order.numel() == 1:
            break
        iou = old_box_iou_cubes(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return torch.as_tensor(keep, dtype=torch.long)


def old_lung_crop_box(mask2d: np.ndarray, margin: float = 0.08) -> tuple[slice, slice]:
    """pulmo.transforms.geometry.lung_crop_box before pulmo.geometry."""
    ys, xs = np.nonzero(mask2d)
    h, w = mask2d.shape
    my, mx = int((ys.max() - ys.min()) * margin) + 2, int((xs.max() - xs.min()) * margin) + 2
    return slice(max(0, ys.min() - my), min(h, ys.max() + my + 1)), slice(max(0, xs.min() - mx), min(w, xs.max() + mx + 1))


def old_classify_crop_box(lungs: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """The bounding-box part of pulmo.tasks.cxr_classify (its ``crop_box``) before pulmo.geometry."""
    h, w = lungs.shape
    ys, xs = np.nonzero(lungs)
    dy, dx = margin * (ys.max() - ys.min() + 1), margin * (xs.max() - xs.min() + 1)
    return (max(0, int(ys.min() - dy)), min(h, int(np.ceil(ys.max() + 1 + dy))),
            max(0, int(xs.min() - dx)), min(w, int(np.ceil(xs.max() + 1 + dx))))


def old_prepare_ct_box(lungs: np.ndarray, spacing: np.ndarray, shape: tuple, margin_mm: float) -> tuple:
    """The lung bounding box of pulmo.tasks.nodule.prepare_ct before pulmo.geometry."""
    idx = np.argwhere(lungs.any(axis=2).any(axis=1))[:, 0], np.argwhere(lungs.any(axis=(0, 2)))[:, 0], \
        np.argwhere(lungs.any(axis=(0, 1)))[:, 0]
    lo = np.array([max(0, int(i.min() - margin_mm / s)) for i, s in zip(idx, spacing)])
    hi = np.array([min(n, int(i.max() + 1 + margin_mm / s)) for i, s, n in zip(idx, spacing, shape)])
    return lo, hi


def random_boxes(rng: np.random.Generator, n: int, dims: int, integer: bool = False) -> np.ndarray:
    lo = rng.uniform(0, 50, (n, dims))
    size = rng.uniform(0.5, 30, (n, dims))
    b = np.concatenate([lo, lo + size], 1)
    return np.round(b) if integer else b


# ---------------------------------------------------------------------------------------------- conversions


def test_conversions_hand_computed_2d_and_3d():
    xyxy = np.array([[10.0, 20.0, 14.0, 30.0]])
    np.testing.assert_array_equal(xyxy_to_xywh(xyxy), [[10, 20, 4, 10]])
    np.testing.assert_array_equal(xyxy_to_cxcywh(xyxy), [[12, 25, 4, 10]])
    np.testing.assert_array_equal(xywh_to_xyxy(np.array([[10.0, 20.0, 4.0, 10.0]])), xyxy)
    np.testing.assert_array_equal(cxcywh_to_xyxy(np.array([[12.0, 25.0, 4.0, 10.0]])), xyxy)
    np.testing.assert_array_equal(convert_box_mode(xyxy, "xyxy", "cxcywh"), [[12, 25, 4, 10]])  # torchvision name
    xyz = np.array([[1.0, 2.0, 3.0, 5.0, 8.0, 13.0]])
    np.testing.assert_array_equal(convert_box_mode(xyz, "xyzxyz", "xyzwhd"), [[1, 2, 3, 4, 6, 10]])
    np.testing.assert_array_equal(convert_box_mode(xyz, "xyzxyz", "cccwhd"), [[3, 5, 8, 4, 6, 10]])
    np.testing.assert_array_equal(convert_box_mode(np.array([[3.0, 5, 8, 4, 6, 10]]), "cccwhd", "xyzxyz"), xyz)
    np.testing.assert_array_equal(cubes_to_boxes(np.array([[10.0, 20.0, 30.0, 4.0]])), [[8, 18, 28, 12, 22, 32]])
    t = torch.tensor([[10.0, 20.0, 4.0, 10.0]])
    out = xywh_to_xyxy(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.tolist() == [[10, 20, 14, 30]]
    same = convert_box_mode(xyxy, "xyxy", "xyxy")
    assert same is not xyxy and np.array_equal(same, xyxy)
    assert convert_box_mode(np.zeros((0, 6)), "xyzwhd", "xyzxyz").shape == (0, 6)


def test_conversion_errors():
    with pytest.raises(ValueError, match="unknown box mode"):
        convert_box_mode(np.zeros((1, 4)), "xyxy", "yxyx")
    with pytest.raises(ValueError, match="3-D|2-D|for 2-D"):
        convert_box_mode(np.zeros((1, 4)), "xyzxyz", "xyzwhd")
    with pytest.raises(ValueError, match="shape"):
        convert_box_mode(np.zeros((1, 5)), "xyxy", "xywh")


@pytest.mark.parametrize("dims,modes", [(2, ("xyxy", "xywh", "ccwh")), (3, ("xyzxyz", "xyzwhd", "cccwhd"))])
def test_conversions_match_monai(dims, modes):
    from monai.data.box_utils import convert_box_mode as monai_convert

    rng = np.random.default_rng(dims)
    boxes32 = random_boxes(rng, 200, dims).astype(np.float32)
    boxes64 = random_boxes(rng, 200, dims)
    for src in modes:
        for dst in modes:
            b32 = convert_box_mode(boxes32, "xyxy" if dims == 2 else "xyzxyz", src)
            np.testing.assert_array_equal(convert_box_mode(b32, src, dst), monai_convert(b32, src, dst))  # float32: exact
            b64 = convert_box_mode(boxes64, "xyxy" if dims == 2 else "xyzxyz", src)
            ours = convert_box_mode(b64, src, dst)
            assert ours.dtype == np.float64
            np.testing.assert_allclose(ours, monai_convert(b64, src, dst), rtol=0, atol=1e-4)  # MONAI: via float32
            np.testing.assert_allclose(convert_box_mode(ours, dst, src), b64, rtol=0, atol=1e-12)


def test_xywh_float64_exact_where_monai_rounds():
    """MONAI rounds a float64 width through float32; pulmo's conversion (and so the dataset readers) does not."""
    from monai.data.box_utils import convert_box_mode as monai_convert

    b = np.array([[10.3, 20.1, 0.1, 5.7]])
    assert xywh_to_xyxy(b).tolist() == [[10.3, 20.1, 10.3 + 0.1, 20.1 + 5.7]]
    assert monai_convert(b, "xywh", "xyxy")[0, 2] != 10.3 + 0.1


def test_dataset_xywh_reader_unchanged():
    from pulmo.datasets.detection import _xywh_to_xyxy

    rng = np.random.default_rng(5)
    for x, y, w, h in rng.uniform(0.01, 1000, (500, 4)).tolist() + [[1, 2, 3, 4], ["5.5", "0", "1e-3", "7"]]:
        xf, yf, wf, hf = (float(v) for v in (x, y, w, h))
        assert _xywh_to_xyxy([x, y, w, h], "t") == [xf, yf, xf + wf, yf + hf]


# ---------------------------------------------------------------------------------------------- IoU


def test_box_iou_hand_computed_2d():
    a = np.array([[0, 0, 2, 2]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 1], [2, 2, 4, 4], [0, 0, 2, 2], [5, 5, 5, 9]], float)
    np.testing.assert_array_equal(box_iou(a, b), [[1 / 7, 0.5, 0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(box_area(b), [4, 2, 4, 4, 0])
    assert box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0  # empty union
    assert box_iou([[2, 2, 0, 0]], [[0, 0, 2, 2]])[0, 0] == 0.0  # inverted box: area 0
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou([], b).shape == (0, 5)


def test_box_iou_hand_computed_3d():
    a = np.array([[0, 0, 0, 2, 2, 2]], float)
    b = np.array([[1, 1, 1, 3, 3, 3], [0, 0, 0, 2, 2, 1], [0, 0, 0, 1, 1, 1], [2, 0, 0, 4, 2, 2]], float)
    np.testing.assert_array_equal(box_iou(a, b), [[1 / 15, 0.5, 1 / 8, 0.0]])
    np.testing.assert_array_equal(box_area(b), [8, 4, 1, 8])
    with pytest.raises(ValueError, match="same dimensions"):
        box_iou(a, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="shape"):
        box_iou(np.zeros((2, 5)), a)


def test_box_iou_equals_the_old_metrics_implementation():
    rng = np.random.default_rng(0)
    for integer in (False, True):
        a, b = random_boxes(rng, 300, 2, integer), random_boxes(rng, 200, 2, integer)
        a[:10, 2] = a[:10, 0] - 1  # inverted
        b[:10, 3] = b[:10, 1]      # degenerate
        np.testing.assert_array_equal(box_iou(a, b), old_metrics_box_iou(a, b))
        from pulmo.metrics.detection import box_iou as metrics_box_iou

        np.testing.assert_array_equal(metrics_box_iou(a, b), old_metrics_box_iou(a, b))


@pytest.mark.parametrize("dims", [2, 3])
def test_box_iou_matches_monai(dims):
    from monai.data.box_utils import box_iou as monai_box_iou

    rng = np.random.default_rng(10 + dims)
    a, b = random_boxes(rng, 100, dims), random_boxes(rng, 80, dims)
    ours = box_iou(a, b)
    assert ours.dtype == np.float64 and ours.shape == (100, 80)
    np.testing.assert_allclose(ours, monai_box_iou(a, b), rtol=0, atol=1e-6)  # MONAI computes in float32
    np.testing.assert_allclose(box_iou(torch.from_numpy(a), torch.from_numpy(b)), ours)


def test_cube_iou_equals_the_old_nodulenet_implementation():
    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.rand(400, 3, generator=g) * 40, torch.rand(400, 1, generator=g) * 20 + 2], 1)
    b = torch.cat([torch.rand(50, 3, generator=g) * 40, torch.rand(50, 1, generator=g) * 20 + 2], 1)
    new, old = cube_iou(a, b), old_box_iou_cubes(a, b)
    assert new.dtype == torch.float32 and torch.equal(new, old)
    assert torch.equal(cube_iou(b, a), new.T)  # symmetric to the bit (NMS computes it the other way round)
    np.testing.assert_allclose(new.numpy(), box_iou(cubes_to_boxes(a.double()), cubes_to_boxes(b.double())),
                               rtol=0, atol=1e-5)
    # hand-computed: two 2-voxel cubes shifted by 1 voxel along one axis: 4 / (8 + 8 - 4)
    c = torch.tensor([[10.0, 10.0, 10.0, 2.0], [11.0, 10.0, 10.0, 2.0]])
    assert abs(float(cube_iou(c, c)[0, 1]) - 1 / 3) < 1e-7


def test_nodulenet_names_are_the_geometry_functions():
    from pulmo.models import nodulenet

    assert nodulenet.box_iou_cubes is cube_iou
    g = torch.Generator().manual_seed(1)
    cubes = torch.cat([torch.rand(300, 3, generator=g) * 30, torch.rand(300, 1, generator=g) * 10 + 2], 1)
    scores = torch.randint(0, 8, (300,), generator=g).float() / 8  # many ties
    for thr, k in ((0.1, 40), (0.0, 20), (0.5, 1000)):
        keep = nodulenet.nms_cubes(cubes, scores, thr, k)
        assert keep.device.type == "cpu" and keep.dtype == torch.long
        assert torch.equal(keep, old_nms_cubes(cubes, scores, thr, k))


# ---------------------------------------------------------------------------------------------- NMS


def test_nms_hand_computed_2d():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 81 / 119 = 0.68, IoU(0, 3) = 0.5 exactly, IoU(1, 3) = 36 / 114 = 0.32
    keep = nms(boxes, scores, 0.5)
    assert isinstance(keep, np.ndarray) and keep.dtype == np.int64
    assert keep.tolist() == [3, 0, 2]             # 0.5 is not > 0.5: box 0 stays; box 1 goes (0.68 with box 0)
    assert nms(boxes, scores, 0.49).tolist() == [3, 1, 2]  # now box 0 goes (0.5 > 0.49), box 1 overlaps 3 by 0.33
    assert nms(boxes, scores, 0.49, max_keep=2).tolist() == [3, 1]
    assert nms(boxes, scores, 0.5, max_keep=0).tolist() == []
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert nms(boxes, scores, 1.0).tolist() == [3, 0, 1, 2]
    t = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.long and t.tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, scores[:2], 0.5)


def test_nms_hand_computed_3d():
    boxes = np.array([[0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 1], [1, 1, 1, 3, 3, 3], [5, 5, 5, 6, 6, 6]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]  # IoU(0, 1) = 0.5 is kept, IoU(0, 2) = 1/15
    assert nms(boxes, scores, 0.4).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.05).tolist() == [0, 3]
    cubes = torch.tensor([[10.0, 10.0, 10.0, 2.0], [11.0, 10.0, 10.0, 2.0], [20.0, 20.0, 20.0, 4.0]])
    assert cube_nms(cubes, torch.tensor([0.5, 0.9, 0.1]), 0.3).tolist() == [1, 2]  # IoU(0, 1) = 1/3
    assert cube_nms(cubes, torch.tensor([0.5, 0.9, 0.1]), 0.34).tolist() == [1, 0, 2]


def test_nms_ties_stable_and_torch_order():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]  # stable: the first of the tied duplicates wins
    # stable=False: whichever torch's default descending argsort puts first
    assert nms(boxes, scores, 0.5, stable=False)[0] == int(torch.as_tensor(scores).argsort(descending=True)[0])


@pytest.mark.parametrize("dims", [2, 3])
def test_nms_equals_monai(dims):
    from monai.data.box_utils import box_iou as monai_box_iou
    from monai.data.box_utils import non_max_suppression

    rng = np.random.default_rng(20 + dims)
    for trial in range(5):
        boxes = random_boxes(rng, 150, dims).astype(np.float32)
        scores = (rng.integers(0, 20, 150) / 20).astype(np.float32)  # ties
        for thr, k in ((0.1, None), (0.3, 25), (0.7, None)):
            ours = nms(boxes, scores, thr, k, overlap=monai_box_iou)
            ref = non_max_suppression(boxes, scores, thr, -1 if k is None else k)
            np.testing.assert_array_equal(ours, ref)
            # with pulmo's float64 IoU the decisions agree too, away from float32 rounding at the threshold
            np.testing.assert_array_equal(nms(boxes, scores, thr, k), ref)


def test_cube_nms_equals_the_old_nms_cubes():
    g = torch.Generator().manual_seed(3)
    for n, ties in ((1, False), (2, True), (40, True), (500, False), (3000, True)):
        cubes = torch.cat([torch.rand(n, 3, generator=g) * 60, torch.rand(n, 1, generator=g) * 12 + 2], 1)
        scores = (torch.randint(0, 10, (n,), generator=g).float() / 10 if ties
                  else torch.sigmoid(torch.randn(n, generator=g) * 20))  # saturated sigmoid: ties at 0 and 1
        for thr, k in ((0.1, 40), (0.1, 20), (0.1, 12), (0.3, 400), (0.0, 5)):
            old = old_nms_cubes(cubes, scores, thr, k)
            assert torch.equal(cube_nms(cubes, scores, thr, k, stable=False), old)
            stable = cube_nms(cubes, scores, thr, k)
            assert torch.equal(torch.sort(scores[stable], descending=True, stable=True).values, scores[stable])
    assert old_nms_cubes(cubes, scores, 0.1, 0).tolist() == cube_nms(cubes, scores, 0.1, 0).tolist() == []


# ---------------------------------------------------------------------------------------------- masks


def test_mask_to_box_hand_computed():
    m = np.zeros((6, 8), bool)
    m[2:4, 3:7] = True
    assert mask_to_box(m).tolist() == [2, 3, 4, 7]
    v = np.zeros((5, 6, 7), np.uint8)
    v[1, 2, 3] = v[3, 4, 5] = 1
    assert mask_to_box(v).tolist() == [1, 2, 3, 4, 5, 6]
    lo, hi = mask_to_box(v)[:3], mask_to_box(v)[3:]
    assert v[tuple(slice(a, b) for a, b in zip(lo, hi))].sum() == 2
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(np.zeros((3, 3), bool))


def test_mask_to_box_equals_the_old_copies():
    from pulmo.transforms.geometry import lung_crop_box

    rng = np.random.default_rng(7)
    for trial in range(60):
        shape2 = tuple(rng.integers(1, 40, 2))
        m2 = rng.random(shape2) < rng.choice([0.002, 0.05, 0.5])
        if not m2.any():
            m2[tuple(rng.integers(0, s) for s in shape2)] = True
        idx = np.argwhere(m2)
        assert mask_to_box(m2).tolist() == [*idx.min(0), *(idx.max(0) + 1)]
        margin = float(rng.choice([0.0, 0.08, 0.3]))
        assert lung_crop_box(m2, margin) == old_lung_crop_box(m2, margin)
        r0, c0, r1, c1 = mask_to_box(m2)
        h, w = m2.shape
        dy, dx = margin * (r1 - r0), margin * (c1 - c0)
        assert (max(0, int(r0 - dy)), min(h, int(np.ceil(r1 + dy))), max(0, int(c0 - dx)),
                min(w, int(np.ceil(c1 + dx)))) == old_classify_crop_box(m2, margin)
        shape3 = tuple(rng.integers(1, 20, 3))
        m3 = rng.random(shape3) < 0.01
        if not m3.any():
            m3[tuple(rng.integers(0, s) for s in shape3)] = True
        spacing = rng.uniform(0.5, 3.0, 3)
        box = mask_to_box(m3)
        lo = np.array([max(0, int(b - 8.0 / s)) for b, s in zip(box[:3], spacing)])
        hi = np.array([min(n, int(b + 8.0 / s)) for b, s, n in zip(box[3:], spacing, shape3)])
        old_lo, old_hi = old_prepare_ct_box(m3, spacing, shape3, 8.0)
        assert lo.tolist() == old_lo.tolist() and hi.tolist() == old_hi.tolist()
