"""cxr-detect: splits, box-aware augmentation, the U-Net route's box <-> mask conversions, and the bundled
RetinaNet on TBX11K images it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pulmo.cli import main
from pulmo.io import Image2D
from pulmo.metrics.detection import detection_report
from pulmo.tasks import cxr_detect as cd
from pulmo.tasks import cxr_detect_unet as cu
from pulmo.weights import WEIGHTS_DIR
from tests.conftest import data_path

TBX = ("cxr", "TBX11K")
TBX_JSON = "annotations/json/TBX11K_train_only_tb.json"


def test_split_is_disjoint_and_stable():
    records = [{"patient_id": f"p{i // 2}", "image": f"{i}.png"} for i in range(200)]
    tr, va, te = cd.split_records(records, 0.2, 0.1, seed=0)
    assert len(tr) + len(va) + len(te) == 200
    pats = [{r["patient_id"] for r in s} for s in (tr, va, te)]
    assert not (pats[0] & pats[1]) and not (pats[0] & pats[2]) and not (pats[1] & pats[2])
    assert [r["image"] for r in cd.split_records(records, 0.2, 0.1, seed=0)[2]] == [r["image"] for r in te]


def test_augmentation_keeps_boxes_on_the_image(tmp_path):
    from PIL import Image

    img = np.zeros((128, 128), np.uint8)
    img[40:80, 30:70] = 200
    Image.fromarray(img).save(tmp_path / "a.png")
    rec = {"image": str(tmp_path / "a.png"), "boxes_xyxy": np.array([[30.0, 40.0, 70.0, 80.0]]), "labels": ["TB"],
           "patient_id": "a"}
    ds = cd.DetectionDataset([rec], ["TB"], 64, augment=True, progress=False)
    np.testing.assert_allclose(ds.boxes[0], [[15, 20, 35, 40]])  # scaled to the working size
    torch.manual_seed(0)
    for _ in range(20):
        it = ds[0]
        assert it["image"].shape == (1, 64, 64) and 0 <= float(it["image"].min()) <= float(it["image"].max()) <= 1
        b = it["boxes"]
        assert len(b) == len(it["labels"]) <= 1
        if len(b):
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 2] > b[:, 0]).all()
            # the bright square moved with its box: the box centre is bright
            cx, cy = int((b[0, 0] + b[0, 2]) / 2), int((b[0, 1] + b[0, 3]) / 2)
            assert it["image"][0, cy, cx] > 0.4


def test_prepare_image_rejects_colour():
    with pytest.raises(Exception, match="greyscale"):
        cd.prepare_image(Image2D(pixels=np.zeros((8, 8, 3)), spacing=None, source={"path": "x.png"}), 64)


def test_unet_route_box_mask_round_trip():
    boxes = np.array([[4.0, 6.0, 20.0, 18.0], [30.0, 30.0, 44.0, 50.0]])
    masks = cu.boxes_to_masks(boxes, np.array([1, 2]), 2, 64)
    assert masks.shape == (2, 64, 64) and masks[0].sum() == 16 * 12 and masks[1].sum() == 14 * 20
    prob = masks.astype(np.float32) * np.array([0.9, 0.7])[:, None, None]
    pred = cu.masks_to_boxes(prob, 0.5, ["a", "b"])
    np.testing.assert_allclose(pred["boxes"], boxes)
    assert pred["labels"] == ["a", "b"] and np.allclose(pred["scores"], [0.9, 0.7])
    tiny = np.zeros((1, 64, 64), np.float32)
    tiny[0, 1:3, 1:3] = 1  # 4 px: below the minimum component size
    assert len(cu.masks_to_boxes(tiny, 0.5, ["a"])["boxes"]) == 0


def test_overlap_tile_covers_the_image_with_mirrored_borders():
    from pulmo.models import create_model

    net = create_model("monai-unet", in_channels=1, out_channels=2, features=4).eval()
    prob = cu.overlap_tile_probability(net, np.random.default_rng(0).random((100, 72)).astype(np.float32), 32)
    assert prob.shape == (2, 100, 72) and (prob >= 0).all() and (prob <= 1).all()


def test_bundled_detector_on_held_out_tbx11k(tmp_path):
    if not (WEIGHTS_DIR / f"{cd.DEFAULT_WEIGHTS}.json").is_file():
        pytest.skip("no bundled cxr-detect weights")
    root = data_path(*TBX)
    card = json.loads((WEIGHTS_DIR / f"{cd.DEFAULT_WEIGHTS}.json").read_text())
    held = set(card["training"]["test_images"][:16])
    records = [r for r in cd.load_records(root, "tbx11k", TBX_JSON) if r["image"].split("/")[-1] in held]
    assert len(records) == 16
    det = cd.Detector()
    from pulmo.io import read_image
    from pulmo.metrics.detection import average_precision

    preds = [det.predict_raw([read_image(r["image"])])[0] for r in records]
    gts = [{"boxes": r["boxes_xyxy"], "labels": r["labels"]} for r in records]
    assert average_precision(preds, gts) >= 0.25  # class-agnostic AP50 on 16 unseen images (all 120: card)
    out = det.predict(read_image(records[0]["image"]))
    assert all(d["score"] >= det.threshold for d in out)
    assert all(0 <= d["box_xyxy"][0] < d["box_xyxy"][2] <= 512 for d in out)
    names = {"ActiveTuberculosis": "active TB", "ObsoletePulmonaryTuberculosis": "latent TB"}
    assert all(d["name"] == names[d["label"]] for d in out)  # each box carries its clinical name
    assert cd.display_name("Effusion") == "Effusion"  # ChestX-Det10 classes are shown as they are


def _tbx_copy(tmp_path, n: int):
    """A TBX11K-layout copy of the first ``n`` held-out images of the bundled card."""
    from PIL import Image

    root = data_path(*TBX)
    card = json.loads((WEIGHTS_DIR / f"{cd.DEFAULT_WEIGHTS}.json").read_text())
    names = card["training"]["test_images"][:n]
    src = json.loads((root / TBX_JSON).read_text())
    ids = {im["id"] for im in src["images"] if im["file_name"].split("/")[-1] in names}
    sub = {**src, "images": [im for im in src["images"] if im["id"] in ids],
           "annotations": [a for a in src["annotations"] if a["image_id"] in ids]}
    (tmp_path / "annotations" / "json").mkdir(parents=True)
    (tmp_path / "annotations" / "json" / "sub.json").write_text(json.dumps(sub))
    (tmp_path / "imgs" / "tb").mkdir(parents=True)
    for im in sub["images"]:
        Image.open(root / "imgs" / im["file_name"]).save(tmp_path / "imgs" / im["file_name"])
    return tmp_path


def test_evaluate_cli_writes_the_schema(tmp_path):
    if not (WEIGHTS_DIR / f"{cd.DEFAULT_WEIGHTS}.json").is_file():
        pytest.skip("no bundled cxr-detect weights")
    _tbx_copy(tmp_path, 3)
    out = tmp_path / "m.json"
    assert main(["--no-progress", "evaluate", "cxr-detect", "--data", str(tmp_path), "--format", "tbx11k",
                 "--annotations", "annotations/json/sub.json", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["task"] == "cxr-detect" and m["n_images"] == 3
    assert set(m) >= {"labels", "ap_50", "map_50", "ap_50_agnostic", "rsna_score"}
    assert set(m["ap_50"]) == set(m["labels"])
    assert main(["evaluate", "cxr-detect", "--data", str(tmp_path), "--out", str(out)]) == 2  # no --format


def test_evaluate_scores_a_unet_route_weight_set(tmp_path):
    """`evaluate cxr-detect --weights X.safetensors` runs the U-Net route for a cxr-detect-unet card, and the
    RetinaNet Detector refuses such weights with one clear error."""
    if not (WEIGHTS_DIR / f"{cd.DEFAULT_WEIGHTS}.json").is_file():
        pytest.skip("no bundled cxr-detect weights")
    from pulmo.errors import WeightsError
    from pulmo.models import create_model
    from pulmo.weights import save_weights

    data = _tbx_copy(tmp_path / "tbx", 2)
    kwargs = {"in_channels": 1, "out_channels": 2, "features": 4}
    card = {"name": "tiny-unet", "architecture": "monai-unet", "model_kwargs": kwargs, "task": "cxr-detect-unet",
            "labels": ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"],
            "thresholds": {"mask": 0.5, "score": 0.0}, "input": {"size": [96, 96], "patch": 64, "channels": 1}}
    weights = tmp_path / "tiny-unet.safetensors"
    save_weights(create_model("monai-unet", **kwargs), weights, card)
    with pytest.raises(WeightsError, match="cxr-detect-unet"):
        cd.Detector(str(weights))
    m = cd.evaluate(data, format="tbx11k", annotations="annotations/json/sub.json", weights=str(weights), progress=False)
    assert m["weights"] == "tiny-unet" and m["n_images"] == 2
    assert 0.0 <= m["ap_50_agnostic"] <= 1.0 and 0.0 <= m["rsna_score"] <= 1.0


def test_negative_records_of_every_layout():
    """Images without lesions from the classification and detection layouts, with their patients."""
    from collections import Counter

    from pulmo.datasets.negatives import negative_records
    from pulmo.errors import InputError

    cxr = data_path("cxr")
    det10 = negative_records("chestx-det10", cxr / "ChestX-Det10_nih_sample")
    assert len(det10) == 11 and all(r["boxes_xyxy"].shape == (0, 4) and not r["labels"] for r in det10)
    assert all(r["patient_id"].startswith("nih-") for r in det10)
    ker = negative_records("kermany", cxr / "chest_xray_pneumonia")
    assert len(ker) == 264 and all("NORMAL" in r["image"] for r in ker)
    assert Counter(r["source"] for r in negative_records("covid-chestxray", cxr / "covid-chestxray-dataset")) == {
        "covid-chestxray": 19}
    with pytest.raises(InputError, match="unknown negative-image format"):
        negative_records("vindr", cxr)
    with pytest.raises(cd.ConfigError, match="format=path"):
        cd.load_negatives(["kermany"])


def _pred(scores, boxes=None):
    scores = np.asarray(scores, float)
    boxes = np.asarray(boxes if boxes is not None else [[0, 0, 10, 10]] * len(scores), float).reshape(-1, 4)
    return {"boxes": boxes, "scores": scores, "labels": ["TB"] * len(scores)}


def test_negatives_give_false_boxes_per_image_and_image_auc():
    gts = [{"boxes": np.array([[0, 0, 10, 10]], float), "labels": ["TB"]},
           {"boxes": np.zeros((0, 4)), "labels": []}, {"boxes": np.zeros((0, 4)), "labels": []}]
    preds = [_pred([0.9]), _pred([0.6, 0.2]), _pred([])]
    m = detection_report(preds, gts, 0.5, ["tbx11k", "a", "b"], n_resamples=50)
    assert m["n_positive_images"] == 1 and m["n_negative_images"] == 2
    assert m["fp_per_negative_image"] == pytest.approx(0.5)  # one box >= 0.5 over two healthy images
    assert m["negative_images_with_boxes"] == 1
    assert m["fp_per_negative_image_by_source"]["a"]["fp_per_image"] == 1.0
    assert m["fp_per_negative_image_by_source"]["b"]["fp_per_image"] == 0.0
    assert m["image_auc"] == pytest.approx(1.0)  # 0.9 beats the negatives' max scores 0.6 and 0
    assert m["ap_50_agnostic"] == pytest.approx(1.0)  # on the images with boxes
    assert m["ap_50_agnostic_with_negatives"] < 1.0 + 1e-9
    # without negatives there are no negative-image keys
    assert "fp_per_negative_image" not in detection_report(preds[:1], gts[:1], 0.5)


def test_operating_threshold_is_raised_until_healthy_images_are_quiet():
    """RSNA-best alone would keep the 0.3 boxes; the FP rule raises the threshold above the negatives' scores."""
    gts = [{"boxes": np.array([[0, 0, 10, 10]], float), "labels": ["TB"]}] * 2 + \
          [{"boxes": np.zeros((0, 4)), "labels": []}] * 4
    preds = [_pred([0.3]), _pred([0.8])] + [_pred([0.45])] * 4
    best, _ = cd.choose_score_threshold(preds, gts)
    assert best <= 0.3
    quiet, _ = cd.choose_score_threshold(preds, gts, max_fp_per_negative=0.1)
    assert 0.45 < quiet <= 0.8


def test_resolution_drop_keeps_geometry():
    x = torch.rand(1, 64, 48)
    y = cd.degrade_resolution(x, 16)
    assert y.shape == x.shape and (y - x).abs().mean() > 0.01
    assert torch.equal(cd.degrade_resolution(x, 100), x)  # already smaller: unchanged
