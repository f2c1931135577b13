"""cxr-detect-unet with the report's settings: the printed U-Net, the report's elastic deformation and
overlap-tile inference, trained for one step on real TBX11K boxes (a pipeline test, not a claim of accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pulmo.errors import ConfigError
from pulmo.tasks import cxr_detect_unet as cu
from pulmo.transforms.elastic import RandElasticReportd
from tests.conftest import tiny_tbx11k


def test_defaults_keep_the_previous_route():
    c = cu.UnetDetectConfig()
    assert (c.architecture, c.depth, c.elastic, c.tile) == ("monai-unet", 5, "monai", 0)
    assert (c.elastic_alpha, c.elastic_sigma) == (34.0, 4.0)


@pytest.mark.parametrize("bad", [{"elastic": "simard"}, {"tile": 40}, {"tile": -1}, {"patch": 72},
                                 {"depth": 1}, {"elastic_sigma": -1.0}])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        cu._check(cu.UnetDetectConfig(**{"size": 128, "patch": 64, **bad}))


def test_report_route_trains_one_step_and_predicts_with_overlap_tiles(tmp_path, monkeypatch):
    from pulmo.models.tiling import overlap_tile_inference

    calls = []

    def counting(model, image, tile, margin=None, batch_size=4):
        calls.append((tile, margin, image.shape))
        return overlap_tile_inference(model, image, tile, margin, batch_size)

    monkeypatch.setattr(cu, "overlap_tile_inference", counting)
    built = []
    real_dataset = cu._MaskDataset

    def spy(*args, **kwargs):
        ds = real_dataset(*args, **kwargs)
        built.append(ds)
        return ds

    monkeypatch.setattr(cu, "_MaskDataset", spy)
    config = cu.UnetDetectConfig(
        data=str(tiny_tbx11k(tmp_path)), format="tbx11k", annotations="annotations/json/tb.json",
        architecture="unet-rsna-pneumonia", depth=5, features=4, size=128, patch=64, tile=64,
        elastic="report", elastic_prob=1.0, epochs=1, max_steps_per_epoch=1, batch_size=2, patience=1,
        out_dir=str(tmp_path / "run"), name="tiny-rsna", progress=False)
    card = cu.train(config)
    assert card["architecture"] == "unet-rsna-pneumonia" and card["model_kwargs"]["depth"] == 5
    assert card["input"]["tile"] == 64 and card["input"]["tile_margin"] == 16
    assert card["training"]["augmentation"]["elastic"] == "report"
    assert card["training"]["augmentation"]["elastic_alpha"] == 34.0
    assert 0 < card["metrics"]["test"]["bce_loss"] < 5  # the report's metric: test BCE per pixel
    assert calls and all(c[:2] == (64, 16) and c[2] == (128, 128) for c in calls)  # validation/test used tiles
    # the training crops went through the report's elastic deformation
    (ds,) = built
    flat = []

    def walk(t):
        flat.append(t)
        for sub in getattr(t, "transforms", ()):
            walk(sub)

    walk(ds.transform)
    assert any(isinstance(t, RandElasticReportd) for t in flat)
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["label"].shape == (card["model_kwargs"]["out_channels"], 64, 64)
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])

    # the predictor reads the architecture and the tile from the card
    det = cu.UnetBoxDetector(str(tmp_path / "run" / "tiny-rsna.safetensors"))
    assert det.tile == 64 and type(det.model).__name__ == "UNet"
    assert all(m.momentum == 0.9 for m in det.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    from pulmo.io import Image2D

    n = len(calls)
    pixels = np.random.default_rng(0).integers(0, 255, (300, 260)).astype(np.uint8)
    (pred,) = det.predict_raw([Image2D(pixels=pixels, spacing=None, source={"path": "x.png"})])
    assert len(calls) == n + 1 and pred["boxes"].shape[1] == 4


def test_probability_map_modes():
    from pulmo.models import create_model

    net = create_model("unet-rsna-pneumonia", out_channels=1, features=4).eval()
    image = np.random.default_rng(0).random((96, 80)).astype(np.float32)
    for tile in (None, 0, 32):
        p = cu.probability_map(net, image, tile, patch=32, divisor=16)
        assert p.shape == (1, 96, 80) and (p >= 0).all() and (p <= 1).all()


def test_mask_bce_is_the_per_pixel_cross_entropy():
    from types import SimpleNamespace

    boxes = SimpleNamespace(boxes=[np.array([[0.0, 0.0, 4.0, 8.0]])], labels=[np.array([1])])  # as a DetectionDataset
    truth = cu.boxes_to_masks(boxes.boxes[0], boxes.labels[0], 1, 8).astype(np.float32)
    assert truth.sum() == 32
    assert cu.mask_bce([truth], boxes, 1) < 1e-6                      # perfect: ~0
    assert cu.mask_bce([np.full((1, 8, 8), 0.5)], boxes, 1) == pytest.approx(np.log(2))
    assert cu.mask_bce([1 - truth], boxes, 1) == pytest.approx(-np.log(1e-7), rel=1e-3)  # clipped, finite
