"""RetinaNet (chest X-ray boxes) and the NoduleNet-style 3D network: outputs, losses, box algebra, weights."""

from __future__ import annotations

import pytest
import torch

from pulmo.errors import ConfigError
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
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    for k, v in saved.items():  # stored as fp16: equal to fp16 precision
        if v.is_floating_point():
            torch.testing.assert_close(back[k].float(), v.float(), rtol=2e-3, atol=1e-4, msg=k)


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


@pytest.mark.parametrize("name", ["retinanet-r50-fpn", "retinanet-r101-fpn"])
def test_report_retinanet_has_five_levels_p3_to_p7_with_p6_from_c5(name):
    """The TB / ChestX-Det report's RetinaNet: P3-P5 from C3-C5, P6 by a stride-2 3x3 conv on C5 (2048
    channels), P7 by ReLU + stride-2 conv on P6; heads of four 3x3 convs; 1024-px input by default."""
    from torch import nn

    model = create_model(name, num_classes=10).eval()
    assert model.transform.min_size == (1024,) and model.transform.max_size == 1024
    fpn = model.backbone.fpn
    p6, p7 = fpn.extra_blocks.p6, fpn.extra_blocks.p7
    assert (p6.in_channels, p6.out_channels, p6.kernel_size, p6.stride) == (2048, 256, (3, 3), (2, 2))
    assert (p7.in_channels, p7.kernel_size, p7.stride) == (256, (3, 3), (2, 2)) and not fpn.extra_blocks.use_P5
    assert [b[0].in_channels for b in fpn.inner_blocks] == [512, 1024, 2048]  # C3, C4, C5
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 1, 256, 256))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # strides 8-128
    assert all(f.shape[1] == 256 for f in feats.values())
    for head in (model.head.classification_head, model.head.regression_head):
        convs = [m for m in head.conv.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 4 and all(c.kernel_size == (3, 3) for c in convs)
    assert model.head.classification_head.cls_logits.out_channels == 11 * 9  # K x A (A = 3 scales x 3 ratios)
    assert len(model.anchor_generator.sizes) == 5


def test_init_backbone_takes_a_local_three_channel_imagenet_resnet():
    from torchvision.models import resnet50

    model = create_model("retinanet-r50-fpn", num_classes=2)
    state = resnet50(weights=None).state_dict()  # the layout of an ImageNet file (random values here)
    n = init_backbone(model, state)
    assert n == len([k for k in state if not k.startswith("fc.")])
    torch.testing.assert_close(model.backbone.body.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_nodulenet_full_width_feature_net_option():
    from pulmo.models.nodulenet import ResBlock3d

    def n_blocks(module):
        return sum(isinstance(m, ResBlock3d) for m in module.modules())

    net = create_model("nodulenet-3d", channels=[32, 64, 128], blocks=[2, 3, 3])
    assert [n_blocks(s) for s in (net.stage2, net.stage4, net.stage8)] == [2, 3, 3]
    assert net.stage8[0].conv1.out_channels == 128 and net.size_divisor == 8
    out = net.features(torch.rand(1, 1, 32, 32, 32))
    assert out["cls"].shape == (1, len(net.anchor_sizes), 8, 8, 8)
    assert create_model("nodulenet-3d").stage2.__class__ is ResBlock3d  # the bundled layout (1-2-2) unchanged
    assert not hasattr(create_model("nodulenet-3d"), "stage16")


def test_nodulenet_four_stage_feature_net_with_its_top_down_path():
    """NoduleNet's released feature net: 32-64-64-64 at strides 2-16, 2-2-3-3 blocks, top-down fusions of
    64 (stride 8) then 128 channels (stride 4), 3 blocks each; the RPN reads the 128-channel stride-4 map."""
    from pulmo.models.nodulenet import ResBlock3d

    net = create_model("nodulenet-3d", channels=[32, 64, 64, 64], blocks=[2, 2, 3, 3], back_channels=[64, 128],
                       back_blocks=[3, 3], mask_size=8, roi_size=4)
    counts = [sum(isinstance(m, ResBlock3d) for m in s.modules())
              for s in (net.stage2, net.stage4, net.stage8, net.stage16, net.fuse8, net.fuse)]
    assert counts == [2, 2, 3, 3, 3, 3] and net.size_divisor == 16
    assert net.fuse[0].conv1.in_channels == 64 + 64 + 3 and net.rpn_cls.in_channels == 128
    seen = {}
    net.stage16.register_forward_hook(lambda m, i, o: seen.update(f16=o.shape))  # returns None: output kept
    out = net.features(torch.rand(1, 1, 32, 32, 32))
    assert seen["f16"] == (1, 64, 2, 2, 2)                      # the stride-16 stage ran
    assert out["f4"].shape == (1, 128, 8, 8, 8) and out["cls"].shape == (1, len(net.anchor_sizes), 8, 8, 8)
    boxes = torch.tensor([[16.0, 16.0, 16.0, 8.0]])
    masks = net.mask_head(out["f2"], out["f4"], torch.rand(1, 1, 32, 32, 32), torch.tensor([0]), boxes)
    assert masks.shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="multiples of 16"):
        net.features(torch.rand(1, 1, 24, 32, 32))
    with pytest.raises(ConfigError, match="back_channels"):
        create_model("nodulenet-3d", channels=[32, 64, 64, 64], blocks=[2, 2, 3, 3], back_channels=[64])


def test_res_attention_unet_full_decoder_and_a_local_resnet34_encoder():
    from torchvision.models import resnet34

    from pulmo.models.lesion_unet import DECODER_CHANNELS, init_resnet34_encoder

    model = create_model("res-attention-unet", decoder_channels=list(DECODER_CHANNELS["full"]))
    assert [u.out_channels for u in model.up] == [256, 128, 64, 64]  # deep to shallow: as wide as the skips
    state = resnet34(weights=None).state_dict()
    n = init_resnet34_encoder(model, state)
    assert n == len([k for k in state if not k.startswith("fc.")])
    torch.testing.assert_close(model.encoder.layer0[0].weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.encoder.layer4[2].conv2.weight, state["layer4.2.conv2.weight"])
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
