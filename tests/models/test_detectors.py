"""RetinaNet (chest X-ray boxes) and the NoduleNet-style 3D network: outputs, losses, box algebra, weights."""

from __future__ import annotations

import pytest
import torch

from pulmo.models import create_model, list_models
from pulmo.models.detection import init_backbone
from pulmo.models.nodulenet import box_iou_cubes, decode, encode, nms_cubes, roi_sample, rpn_loss, rpn_targets
from pulmo.weights import save_weights


def test_detectors_are_registered():
    tasks = {m["name"]: m["task"] for m in list_models()}
    assert tasks["retinanet-r18-fpn"] == tasks["retinanet-r34-fpn"] == "detection"
    assert tasks["nodulenet-3d"] == "nodule"


@pytest.mark.parametrize("name", ["retinanet-r18-fpn", "retinanet-r34-fpn"])
def test_retinanet_losses_and_predictions(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, min_size=128, max_size=128, fpn_channels=32)
    images = [torch.rand(1, 128, 128), torch.rand(1, 128, 128)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 70.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long)}]  # a normal image
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(1, 256, 200)])  # a non-square image of another size: boxes come back in its px
    assert set(out[0]) == {"boxes", "scores", "labels"}
    if len(out[0]["boxes"]):
        assert out[0]["boxes"][:, 2].max() <= 200 + 1e-3 and out[0]["boxes"][:, 3].max() <= 256 + 1e-3
        assert set(out[0]["labels"].tolist()) <= {1, 2}
    kwargs = {"num_classes": 2, "min_size": 128, "max_size": 128, "fpn_channels": 32}
    save_weights(model, tmp_path / "d.safetensors", {"name": "d", "architecture": name, "model_kwargs": kwargs,
                                                     "task": "cxr-detect"})
    loaded = create_model(name, weights=str(tmp_path / "d.safetensors"))
    assert not loaded.training


def test_init_backbone_from_classifier():
    clf = create_model("resnet18", num_classes=4)
    det = create_model("retinanet-r18-fpn")
    assert init_backbone(det, clf.state_dict()) == len([k for k in clf.state_dict() if not k.startswith("fc.")])
    torch.testing.assert_close(det.backbone.body.conv1.weight, clf.conv1.weight)
    with pytest.raises(ValueError, match="no classifier tensor"):
        init_backbone(det, {"x": torch.zeros(3)})


def test_cube_iou_encode_decode_and_nms():
    a = torch.tensor([[10.0, 10.0, 10.0, 4.0], [10.0, 10.0, 12.0, 4.0], [30.0, 30.0, 30.0, 8.0]])
    iou = box_iou_cubes(a, a)
    torch.testing.assert_close(torch.diagonal(iou), torch.ones(3))
    assert abs(float(iou[0, 1]) - (2 * 4 * 4) / (64 + 64 - 32)) < 1e-6  # half overlap along x
    assert float(iou[0, 2]) == 0.0
    anchors = torch.tensor([[8.0, 9.0, 10.0, 5.0]] * 3)
    torch.testing.assert_close(decode(encode(a, anchors), anchors), a)
    keep = nms_cubes(a, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.1, max_keep=10)
    assert keep.tolist() == [0, 2]  # the second cube overlaps the first by IoU 1/3


def test_rpn_targets_force_the_best_anchor_and_ignore_the_middle():
    net = create_model("nodulenet-3d")
    anchors = net.anchors((4, 4, 4))
    assert anchors.shape == (4 * 4 * 4 * 4, 4)
    gt = torch.tensor([[9.0, 9.0, 9.0, 3.0]])  # small and off the anchor grid: no anchor reaches IoU 0.3
    labels, targets = rpn_targets(anchors, gt)
    assert int((labels == 1).sum()) >= 1
    best = int(box_iou_cubes(anchors, gt)[:, 0].argmax())
    assert labels[best] == 1
    torch.testing.assert_close(decode(targets[best:best + 1], anchors[best:best + 1]), gt)
    loss = rpn_loss(torch.zeros(len(anchors)), torch.zeros(len(anchors), 4), labels, targets)
    assert torch.isfinite(loss) and loss > 0


def test_roi_sample_reads_the_box_contents():
    image = torch.zeros(1, 1, 32, 32, 32)
    image[0, 0, 10:20, 10:20, 10:20] = 1.0
    inside = roi_sample(image, torch.tensor([0]), torch.tensor([[14.5, 14.5, 14.5, 10.0]]), 10, 1.0, expand=1.0)
    torch.testing.assert_close(inside, torch.ones_like(inside))
    outside = roi_sample(image, torch.tensor([0]), torch.tensor([[25.0, 25.0, 25.0, 4.0]]), 4, 1.0, expand=1.0)
    assert float(outside.abs().max()) == 0.0



def test_roi_sample_matches_per_roi_sampling_for_mixed_batches():
    """Grouping ROIs by image (no per-ROI copy of the map) gives the values and gradients of sampling
    ``feature[batch_index]``, in the input order."""
    import torch.nn.functional as F

    from pulmo.models.nodulenet import _roi_grid

    torch.manual_seed(0)
    f = torch.randn(3, 5, 12, 10, 14, requires_grad=True)
    bi = torch.tensor([2, 0, 2, 1, 0])
    boxes = torch.tensor([[5.0, 4, 6, 3], [3, 3, 3, 4], [8, 6, 10, 5], [6, 5, 7, 2], [1, 1, 1, 6]]) * 2
    out = roi_sample(f, bi, boxes, 4, 2.0)
    ref = F.grid_sample(f[bi], _roi_grid(boxes, 4, f.shape[2:], 2.0, 1.5), padding_mode="zeros", align_corners=False)
    assert out.shape == (5, 5, 4, 4, 4)
    torch.testing.assert_close(out, ref)
    (g_out,) = torch.autograd.grad(out.square().sum(), f)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), f)
    torch.testing.assert_close(g_out, g_ref)

def test_nodulenet_shapes_and_backward():
    torch.manual_seed(0)
    net = create_model("nodulenet-3d", channels=[8, 16, 16], mask_size=8, roi_size=4)
    x = torch.rand(1, 1, 32, 32, 32)
    out = net.features(x)
    assert out["cls"].shape == (1, 4, 8, 8, 8) and out["reg"].shape == (1, 16, 8, 8, 8)
    cls, reg = net.flat_rpn(out)
    assert cls.shape == (1, 8 * 8 * 8 * 4) and reg.shape == (1, 8 * 8 * 8 * 4, 4)
    boxes = torch.tensor([[16.0, 16.0, 16.0, 6.0]])
    logit, delta = net.fpr_head(out["f2"], x, torch.tensor([0]), boxes)
    masks = net.mask_head(out["f2"], out["f4"], x, torch.tensor([0]), boxes)
    assert logit.shape == (1,) and delta.shape == (1, 4) and masks.shape == (1, 8, 8, 8)
    (cls.mean() + logit.sum() + masks.mean()).backward()
    with pytest.raises(ValueError, match="multiples of 8"):
        net.features(torch.rand(1, 1, 30, 32, 32))
