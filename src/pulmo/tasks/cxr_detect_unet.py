"""``cxr-detect-unet``: the U-Net lesion route of seed 1 (SEEDS.md), compared with RetinaNet on the same split.

Method, as seed 1 describes it (Ronneberger et al. 2015 for the U-Net and the overlap-tile strategy):

1. each ground-truth box is rasterised into a binary mask, one channel per class (boxes of different classes
   may overlap, so the channels are independent sigmoid outputs);
2. a U-Net (MONAI residual U-Net, :func:`pulmo.models.unet.monai_unet`) is trained on random ``patch`` x
   ``patch`` crops (half centred on a lesion, MONAI ``RandCropByPosNegLabeld``) with elastic deformation (MONAI ``Rand2DElasticd``), affine and contrast augmentation and
   a per-pixel BCE-with-logits loss;
3. inference is overlap-tile: the image is padded by mirroring (``numpy.pad(mode="reflect")``) and scored in
   overlapping ``patch`` tiles (MONAI ``sliding_window_inference``, Gaussian blending), then cropped back;
4. the probability map is thresholded (the threshold chosen by grid search on the validation split, as seed 1
   does) and each connected component (scikit-image ``label`` / ``regionprops``) becomes a box scored by the
   highest probability inside it.

Data, splits (the same test and validation images as the RetinaNet run with the same ``split_seed``) and
metrics come from :mod:`pulmo.tasks.cxr_detect`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from pulmo.datasets.detection import label_counts
from pulmo.engine import TrainConfig, fit, save_config
from pulmo.errors import ConfigError, InputError
from pulmo.io import Image2D
from pulmo.metrics.detection import detection_metrics
from pulmo.models import create_model
from pulmo.tasks.cxr_detect import (
    DetectionDataset,
    _metrics,
    _round,
    dataset_ground_truth,
    load_records,
    prepare_image,
    split_records,
)
from pulmo.weights import resolve_card, save_weights

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "cxr-detect-unet"
MASK_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.81, 0.05))
MIN_COMPONENT_PX = 16


@dataclasses.dataclass
class UnetDetectConfig(TrainConfig):
    """Settings of ``pulmo train cxr-detect-unet`` (adds to :class:`TrainConfig`).

    Attributes:
        data, format, annotations: as :class:`pulmo.tasks.cxr_detect.DetectConfig`.
        size: the image is resized to ``size`` x ``size`` px. patch: training crop and inference tile (px).
        features: first-scale channels of the U-Net. elastic_prob: probability of elastic deformation.
        test_fraction, val_fraction, split_seed: the hold-outs (keep them equal to the RetinaNet run's).
    """

    data: str = ""
    format: str = "tbx11k"
    annotations: str = ""
    size: int = 384
    patch: int = 192
    features: int = 16
    elastic_prob: float = 0.3
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    name: str = DEFAULT_WEIGHTS
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 15


def boxes_to_masks(boxes: np.ndarray, labels: np.ndarray, n_classes: int, size: int) -> np.ndarray:
    """Rasterise xyxy boxes (working px) into uint8 ``(n_classes, size, size)`` masks; ``labels`` in 1..K."""
    masks = np.zeros((n_classes, size, size), np.uint8)
    for (x1, y1, x2, y2), k in zip(boxes, labels):
        c0, r0 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        c1, r1 = min(size, int(np.ceil(x2))), min(size, int(np.ceil(y2)))
        masks[int(k) - 1, r0:r1, c0:c1] = 1
    return masks


def masks_to_boxes(prob: np.ndarray, threshold: float, classes: Sequence[str],
                   min_px: int = MIN_COMPONENT_PX) -> dict[str, Any]:
    """Scored boxes from per-class probability maps ``(K, H, W)`` in [0, 1]: one box per connected component
    of ``prob[k] >= threshold`` (8-connected, at least ``min_px`` pixels), scored by its highest probability.

    Returns:
        ``{"boxes": float64 (N, 4) xyxy px of the map, "scores": (N,), "labels": [class names]}``.
    """
    from skimage.measure import label, regionprops

    boxes, scores, labels = [], [], []
    for k, name in enumerate(classes):
        components = label(prob[k] >= threshold, connectivity=2)
        for region in regionprops(components, intensity_image=prob[k]):
            if region.area < min_px:
                continue
            r0, c0, r1, c1 = region.bbox
            boxes.append([c0, r0, c1, r1])
            scores.append(float(region.intensity_max))
            labels.append(name)
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": np.asarray(scores, np.float64),
            "labels": labels}


class _MaskDataset(Dataset):
    """Random ``patch`` crops of the images and their box masks, with seed 1's augmentation."""

    def __init__(self, base: DetectionDataset, n_classes: int, patch: int, elastic_prob: float):
        from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

        from pulmo.transforms.augment import segmentation_augmentation

        self.base = base
        self.masks = [boxes_to_masks(b, lab, n_classes, base.size) for b, lab in zip(base.boxes, base.labels)]
        self.transform = Compose([
            RandCropByPosNegLabeld(("image", "label", "fg"), label_key="fg", spatial_size=(patch, patch), pos=1,
                                   neg=1, num_samples=1),
            RandFlipd(("image", "label"), prob=0.5, spatial_axis=1),
            segmentation_augmentation(patch, mask_keys=("label",), elastic_prob=elastic_prob),
        ])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.base.images[i][None].astype(np.float32) / 255.0, "label": self.masks[i].astype(np.float32),
                "fg": self.masks[i].max(0, keepdims=True)}
        out = self.transform(item)
        out = out[0] if isinstance(out, list) else out
        return {"image": torch.as_tensor(np.asarray(out["image"]), dtype=torch.float32),
                "label": torch.as_tensor(np.asarray(out["label"]), dtype=torch.float32)}


@torch.no_grad()
def overlap_tile_probability(model: torch.nn.Module, image01: np.ndarray, patch: int,
                             overlap: float = 0.5) -> np.ndarray:
    """Sigmoid probabilities ``(K, H, W)`` of a ``(H, W)`` image in [0, 1] by overlap-tile inference:
    mirrored padding of ``patch // 4`` px, ``patch`` tiles with ``overlap``, Gaussian blending."""
    from monai.inferers import sliding_window_inference

    margin = patch // 4
    padded = np.pad(image01, margin, mode="reflect")
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None]
    logits = sliding_window_inference(x, (patch, patch), sw_batch_size=4, predictor=model, overlap=overlap,
                                      mode="gaussian", padding_mode="reflect")
    prob = torch.sigmoid(logits[0].float()).numpy()
    return prob[:, margin:margin + image01.shape[0], margin:margin + image01.shape[1]]


def _probabilities(model: torch.nn.Module, dataset: DetectionDataset, patch: int) -> list[np.ndarray]:
    model.eval()
    return [overlap_tile_probability(model, im.astype(np.float32) / 255.0, patch) for im in dataset.images]


def train(config: UnetDetectConfig, command: str = "") -> dict[str, Any]:
    """Train the U-Net route, choose the mask threshold on validation, score the test hold-out, write
    ``<out_dir>/<name>.safetensors`` (fp16) + card."""
    if config.patch > config.size:
        raise ConfigError(f"patch ({config.patch}) must not exceed size ({config.size})")
    out = Path(config.out_dir)
    save_config(config, out / "config.yaml")
    records = load_records(config.data, config.format, config.annotations or None)
    classes = sorted(label_counts(records))
    if not classes:
        raise InputError(f"{config.data}: no boxes in the {config.format} labels; nothing to train on")
    train_r, val_r, test_r = split_records(records, config.test_fraction, config.val_fraction, config.split_seed)
    kwargs = {"in_channels": 1, "out_channels": len(classes), "features": config.features}
    model = create_model("monai-unet", **kwargs)
    base = DetectionDataset(train_r, classes, config.size, progress=config.progress)
    train_ds = _MaskDataset(base, len(classes), config.patch, config.elastic_prob)
    val_ds = DetectionDataset(val_r, classes, config.size, progress=config.progress)
    val_gt = dataset_ground_truth(val_ds, classes)
    criterion = torch.nn.BCEWithLogitsLoss()

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return criterion(m(batch["image"]).float(), batch["label"])

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        # the best AP50 over the mask-threshold grid: plain BCE on small lesions gives low probabilities early
        # on, so a fixed 0.5 would read 0 for many epochs and stop training before it learned anything
        prob = _probabilities(m, val_ds, config.patch)
        grid = {t: detection_metrics([masks_to_boxes(p, t, classes) for p in prob], val_gt) for t in MASK_GRID}
        t = max(grid, key=lambda k: grid[k]["ap_50_agnostic"])
        return {"ap_50_agnostic": grid[t]["ap_50_agnostic"], "map_50": grid[t]["map_50"], "mask_threshold": t}

    summary = fit(model, train_ds, loss_fn, evaluate_fn, config, monitor="ap_50_agnostic")
    if summary["rank"] != 0:
        return {}
    model.load_state_dict(load_file(str(out / "best.safetensors")))
    model.eval()
    val_prob = _probabilities(model, val_ds, config.patch)
    grid = {t: detection_metrics([masks_to_boxes(p, t, classes) for p in val_prob], val_gt)["ap_50_agnostic"]
            for t in MASK_GRID}
    threshold = max(grid, key=lambda t: (grid[t], -abs(t - 0.5)))
    val_metrics = _metrics([masks_to_boxes(p, threshold, classes) for p in val_prob], val_gt, 0.0)
    test_ds = DetectionDataset(test_r, classes, config.size, progress=config.progress)
    test_preds = [masks_to_boxes(p, threshold, classes) for p in _probabilities(model, test_ds, config.patch)]
    test_metrics = _metrics(test_preds, dataset_ground_truth(test_ds, classes), 0.0)
    card = {
        "name": config.name,
        "architecture": "monai-unet",
        "model_kwargs": kwargs,
        "task": "cxr-detect-unet",
        "labels": classes,
        "thresholds": {"mask": threshold, "score": 0.0},
        "threshold_grid_ap_50_agnostic": {str(t): round(v, 4) for t, v in grid.items()},
        "input": {"size": [config.size, config.size], "patch": config.patch, "channels": 1,
                  "normalisation": "normalize_cxr (0.5-99.5 percentile -> [0, 1]), squashed to size x size",
                  "inference": "overlap-tile, mirrored borders, Gaussian blending"},
        "training": {"data": config.data, "format": config.format, "annotations": config.annotations,
                     "n_train": len(train_r), "n_val": len(val_r), "n_test": len(test_r),
                     "split": f"as cxr-detect: test {config.test_fraction:.0%}, validation {config.val_fraction:.0%}, "
                              f"split seed {config.split_seed}",
                     "test_images": [Path(r["image"]).name for r in test_r],
                     "command": command, "seed": config.seed, "epochs_run": summary["epochs_run"],
                     "best_epoch": summary["best_epoch"], "seconds": summary["seconds"],
                     "loss": "BCE with logits on box masks (seed 1)",
                     "pretraining": "none: trained from scratch"},
        "metrics": {"validation": _round(val_metrics), "test": _round(test_metrics)},
        "license": "Apache-2.0 (weights); trained on TBX11K: research use with citation (Liu et al., CVPR 2020)",
    }
    return save_weights(model, out / f"{config.name}.safetensors", card)


class UnetBoxDetector:
    """Boxes from the U-Net route (a ``cxr-detect-unet`` weight set), same output as
    :meth:`pulmo.tasks.cxr_detect.Detector.predict`."""

    def __init__(self, weights: str = DEFAULT_WEIGHTS):
        self.card = resolve_card(weights)
        self.model = create_model(self.card["architecture"], weights=weights).eval()
        self.size = int(self.card["input"]["size"][0])
        self.patch = int(self.card["input"]["patch"])
        self.labels = list(self.card["labels"])
        self.mask_threshold = float(self.card["thresholds"]["mask"])
        self.threshold = float(self.card["thresholds"]["score"])  # box score, as Detector.threshold

    def predict_raw(self, images: Sequence[Image2D]) -> list[dict[str, Any]]:
        """Scored boxes per image, in original px."""
        preds = []
        for image in images:
            x, (sx, sy) = prepare_image(image, self.size)
            p = masks_to_boxes(overlap_tile_probability(self.model, x, self.patch), self.mask_threshold, self.labels)
            p["boxes"] = p["boxes"] * np.array([sx, sy, sx, sy])
            preds.append(p)
        return preds
