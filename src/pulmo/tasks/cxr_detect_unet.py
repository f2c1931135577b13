"""``cxr-detect-unet``: the U-Net lesion route of the RSNA Pneumonia Detection Challenge U-Net report,
compared with RetinaNet on the same split.

What is implemented (config fields of :class:`UnetDetectConfig` in brackets):

1. each ground-truth box is rasterised into a binary mask, one channel per class (boxes of different classes
   may overlap, so the channels are independent sigmoid outputs);
2. the network [``architecture``, ``depth``, ``features``]: ``"monai-unet"`` (the default, what this route has
   always trained: MONAI's residual U-Net with PReLU, :func:`pulmo.models.unet.monai_unet`) or
   ``"unet-rsna-pneumonia"`` (the report's U-Net as printed: five scales of two 3x3 conv -> BatchNorm
   (momentum 0.9, PyTorch semantics) -> LeakyReLU(0.03), stride-2 transposed convs, skip concatenation, 1x1
   output; :mod:`pulmo.models.unet`); any other registered segmentation model with the same arguments works;
3. training on random ``patch`` x ``patch`` crops (half centred on a lesion, MONAI ``RandCropByPosNegLabeld``)
   with a horizontal flip, an affine, an elastic deformation [``elastic``, ``elastic_alpha``, ``elastic_sigma``,
   ``elastic_prob``], contrast/intensity/noise (:func:`pulmo.transforms.augment.segmentation_augmentation`)
   and a per-pixel BCE-with-logits loss. ``elastic="monai"`` (default) is MONAI ``Rand2DElasticd`` (coarse
   control grid), ``"report"`` the report's Simard et al. 2003 deformation (per-pixel U(-1, 1) fields,
   Gaussian-smoothed by sigma, scaled by alpha, bilinear; :mod:`pulmo.transforms.elastic`). Only the elastic
   step follows the report; the flip, affine and intensity augmentations are pulmo's;
4. inference [``tile``] on the ``size`` x ``size`` image: ``0`` = the whole image in one pass (mirror-padded to a
   multiple of ``2 ** (depth - 1)``); ``> 0`` = Ronneberger et al. 2015's overlap-tile strategy as the report
   uses it (:func:`pulmo.models.tiling.overlap_tile_inference`): ``tile`` px input tiles with mirrored
   (reflected) borders, of which only the central ``tile // 2`` px valid region is kept (a ``tile // 4`` margin
   is discarded on every side) and stitched without blending. Weight cards written before ``tile`` existed
   (no ``input.tile``) are still scored as they were trained: MONAI ``sliding_window_inference`` over ``patch``
   tiles with Gaussian blending after a ``patch // 4`` mirrored padding (:func:`overlap_tile_probability`);
5. the probability map is thresholded (the threshold chosen by grid search on the validation split, as the
   report's first hyper-parameter search) and each connected component (scikit-image ``label`` /
   ``regionprops``) becomes a box scored by the highest probability inside it.

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
from torch.utils.data import Dataset

from pulmo.datasets.detection import label_counts
from pulmo.engine import TrainConfig, fit_best, provenance, save_run
from pulmo.errors import ConfigError, InputError, WeightsError
from pulmo.io import Image2D
from pulmo.metrics import round_floats
from pulmo.metrics.detection import detection_metrics, detection_report
from pulmo.models import create_model, model_device
from pulmo.models.tiling import overlap_tile_inference, whole_image_inference
from pulmo.tasks.base import EvalReport, FromWeights
from pulmo.tasks.cxr_detect import (
    FORMATS,
    DetectionDataset,
    dataset_ground_truth,
    detection_rows,
    load_records,
    prepare_image,
    score_detector,
    split_records,
    summary,
)
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.transforms.elastic import DEFAULT_ALPHA, DEFAULT_SIGMA
from pulmo.weights import resolve_card

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "cxr-detect-unet"
MASK_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.81, 0.05))
MIN_COMPONENT_PX = 16


@dataclasses.dataclass
class UnetDetectConfig(TrainConfig):
    """Settings of ``pulmo train cxr-detect-unet`` (adds to :class:`TrainConfig`).

    Attributes:
        data, format, annotations: as :class:`pulmo.tasks.cxr_detect.DetectConfig`.
        size: the image is resized to ``size`` x ``size`` px. patch: training crop (px).
        architecture: registered segmentation model: ``"monai-unet"`` (default, MONAI residual U-Net) or
            ``"unet-rsna-pneumonia"`` (the report's U-Net as printed).
        depth: number of U-Net scales (5, the report's). features: first-scale channels of the U-Net.
        elastic: ``"monai"`` (default, MONAI ``Rand2DElasticd``) or ``"report"`` (the report's / Simard et al.'s
            deformation). elastic_alpha, elastic_sigma: its scale and Gaussian smoothing in px, used by
            ``"report"``; the report states neither, so the defaults are 34 and 4, the values commonly used for
            Simard et al.'s 28-px MNIST digits (mild here: a displacement s.d. of about 1.4 px).
        elastic_prob: probability of the elastic deformation per crop.
        tile: inference: 0 = the whole image in one pass; > 0 = overlap-tile inference with ``tile`` px input
            tiles and mirrored borders, keeping each tile's central ``tile // 2`` px (a multiple of
            ``2 ** (depth - 1)``).
        test_fraction, val_fraction, split_seed: the hold-outs (keep them equal to the RetinaNet run's).
        name: name of the weight file and card written to ``out_dir``.
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (40, 8, 1e-3, 15).
    """

    data: str = ""
    format: str = dataclasses.field(default="tbx11k", metadata={"choices": FORMATS})
    annotations: str = ""
    size: int = 384
    patch: int = 192
    architecture: str = "monai-unet"
    depth: int = 5
    features: int = 16
    elastic: str = dataclasses.field(default="monai", metadata={"choices": ("monai", "report")})
    elastic_alpha: float = DEFAULT_ALPHA
    elastic_sigma: float = DEFAULT_SIGMA
    elastic_prob: float = 0.3
    tile: int = 0
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
    """Random ``patch`` crops of the images and their box masks, with the RSNA pneumonia report's
    augmentation."""

    def __init__(self, base: DetectionDataset, n_classes: int, patch: int, elastic_prob: float,
                 elastic: str = "monai", elastic_alpha: float = DEFAULT_ALPHA, elastic_sigma: float = DEFAULT_SIGMA):
        from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

        from pulmo.transforms.augment import segmentation_augmentation

        self.base = base
        self.masks = [boxes_to_masks(b, lab, n_classes, base.size) for b, lab in zip(base.boxes, base.labels)]
        self.transform = Compose([
            RandCropByPosNegLabeld(("image", "label", "fg"), label_key="fg", spatial_size=(patch, patch), pos=1,
                                   neg=1, num_samples=1),
            RandFlipd(("image", "label"), prob=0.5, spatial_axis=1),
            segmentation_augmentation(patch, mask_keys=("label",), elastic_prob=elastic_prob, elastic=elastic,
                                      elastic_alpha=elastic_alpha, elastic_sigma=elastic_sigma),
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
    """Sigmoid probabilities ``(K, H, W)`` of a ``(H, W)`` image in [0, 1] as weight cards without ``input.tile``
    were scored: mirrored padding of ``patch // 4`` px, then MONAI sliding-window inference over ``patch`` tiles
    with ``overlap`` and Gaussian blending (not the valid-region stitching of :func:`probability_map`)."""
    from monai.inferers import sliding_window_inference

    margin = patch // 4
    padded = np.pad(image01, margin, mode="reflect")
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None].to(model_device(model))
    logits = sliding_window_inference(x, (patch, patch), sw_batch_size=4, predictor=model, overlap=overlap,
                                      mode="gaussian", padding_mode="reflect")
    prob = torch.sigmoid(logits[0].float()).cpu().numpy()
    return prob[:, margin:margin + image01.shape[0], margin:margin + image01.shape[1]]


@torch.no_grad()
def probability_map(model: torch.nn.Module, image01: np.ndarray, tile: int | None, patch: int,
                    divisor: int = 16) -> np.ndarray:
    """Sigmoid probabilities ``(K, H, W)`` of a ``(H, W)`` image in [0, 1]: ``tile == 0`` the whole image in one
    pass (mirror-padded to a multiple of ``divisor``), ``tile > 0`` overlap-tile inference with ``tile`` px tiles
    and a ``tile // 4`` px discarded margin, ``tile is None`` (cards from before ``tile``)
    :func:`overlap_tile_probability` over ``patch`` tiles."""
    if tile is None:
        return overlap_tile_probability(model, image01, patch)
    if tile == 0:
        logits = whole_image_inference(model, image01, multiple=divisor)
    else:
        logits = overlap_tile_inference(model, image01, tile, margin=tile // 4)
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def mask_bce(prob: Sequence[np.ndarray], dataset: DetectionDataset, n_classes: int) -> float:
    """Mean per-pixel binary cross-entropy of whole-image probability maps ``(C, S, S)`` in [0, 1] against the
    rasterised box masks of ``dataset``: the RSNA U-Net report's only result ("test loss ~ 0.15 after one
    epoch"), so the preset's re-run can be read beside it. Probabilities are clipped to [1e-7, 1 - 1e-7]."""
    total, count = 0.0, 0
    for p, (boxes, labels) in zip(prob, zip(dataset.boxes, dataset.labels)):
        y = boxes_to_masks(boxes, labels, n_classes, p.shape[-1])
        q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        total += float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).sum())
        count += y.size
    return total / max(count, 1)


def _probabilities(model: torch.nn.Module, dataset: DetectionDataset, tile: int | None, patch: int,
                   divisor: int) -> list[np.ndarray]:
    model.eval()
    return [probability_map(model, im.astype(np.float32) / 255.0, tile, patch, divisor) for im in dataset.images]


def _check(config: UnetDetectConfig) -> int:
    """Validate the route's settings; returns the network's size divisor ``2 ** (depth - 1)``."""
    if config.patch > config.size:
        raise ConfigError(f"patch ({config.patch}) must not exceed size ({config.size})")
    if config.depth < 2:
        raise ConfigError(f"depth must be >= 2, got {config.depth}")
    divisor = 2 ** (config.depth - 1)
    if config.patch % divisor:
        raise ConfigError(f"patch ({config.patch}) must be a multiple of 2 ** (depth - 1) = {divisor}")
    if config.elastic not in ("monai", "report"):
        raise ConfigError(f"elastic must be 'monai' or 'report', got {config.elastic!r}")
    if config.elastic_alpha < 0 or config.elastic_sigma < 0:
        raise ConfigError("elastic_alpha and elastic_sigma must be >= 0")
    if config.tile < 0 or (config.tile and config.tile % divisor):
        raise ConfigError(f"tile ({config.tile}) must be 0 (whole image) or a positive multiple of {divisor}")
    return divisor


def _inference_text(tile: int) -> str:
    if tile == 0:
        return "whole image in one pass (mirror-padded to the network's size divisor)"
    return (f"overlap-tile (Ronneberger et al. 2015): {tile} px tiles with mirrored borders, the central "
            f"{tile - 2 * (tile // 4)} px valid region of each kept and stitched without blending")


def train(config: UnetDetectConfig, command: str = "") -> dict[str, Any]:
    """Train the U-Net route, choose the mask threshold on validation, score the test hold-out, write
    ``<out_dir>/<name>.safetensors`` (fp16) + card.

    Returns:
        The model card (a dict; empty on DDP ranks other than 0).

    Raises:
        ConfigError: bad settings (size, patch, depth, elastic mode; see ``_check``).
        InputError: no boxes in the labels, or unreadable labels or images.
    """
    divisor = _check(config)
    records = load_records(config.data, config.format, config.annotations or None)
    classes = sorted(label_counts(records))
    if not classes:
        raise InputError(f"{config.data}: no boxes in the {config.format} labels; nothing to train on")
    train_r, val_r, test_r = split_records(records, config.test_fraction, config.val_fraction, config.split_seed)
    kwargs = {"in_channels": 1, "out_channels": len(classes), "features": config.features, "depth": config.depth}
    model = create_model(config.architecture, **kwargs)
    base = DetectionDataset(train_r, classes, config.size, progress=config.progress)
    train_ds = _MaskDataset(base, len(classes), config.patch, config.elastic_prob, config.elastic,
                            config.elastic_alpha, config.elastic_sigma)
    val_ds = DetectionDataset(val_r, classes, config.size, progress=config.progress)
    val_gt = dataset_ground_truth(val_ds, classes)
    criterion = torch.nn.BCEWithLogitsLoss()

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return criterion(m(batch["image"]).float(), batch["label"])

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        # the best AP50 over the mask-threshold grid: plain BCE on small lesions gives low probabilities early
        # on, so a fixed 0.5 would read 0 for many epochs and stop training before it learned anything
        prob = _probabilities(m, val_ds, config.tile, config.patch, divisor)
        grid = {t: detection_metrics([masks_to_boxes(p, t, classes) for p in prob], val_gt) for t in MASK_GRID}
        t = max(grid, key=lambda k: grid[k]["ap_50_agnostic"])
        return {"ap_50_agnostic": grid[t]["ap_50_agnostic"], "map_50": grid[t]["map_50"], "mask_threshold": t}

    summary = fit_best(model, train_ds, loss_fn, evaluate_fn, config, monitor="ap_50_agnostic")
    if summary is None:
        return {}
    val_prob = _probabilities(model, val_ds, config.tile, config.patch, divisor)
    grid = {t: detection_metrics([masks_to_boxes(p, t, classes) for p in val_prob], val_gt)["ap_50_agnostic"]
            for t in MASK_GRID}
    threshold = max(grid, key=lambda t: (grid[t], -abs(t - 0.5)))
    val_metrics = detection_report([masks_to_boxes(p, threshold, classes) for p in val_prob], val_gt, 0.0)
    test_ds = DetectionDataset(test_r, classes, config.size, progress=config.progress)
    test_prob = _probabilities(model, test_ds, config.tile, config.patch, divisor)
    test_preds = [masks_to_boxes(p, threshold, classes) for p in test_prob]
    test_metrics = detection_report(test_preds, dataset_ground_truth(test_ds, classes), 0.0)
    test_metrics["bce_loss"] = mask_bce(test_prob, test_ds, len(classes))
    card = {
        "name": config.name,
        "architecture": config.architecture,
        "model_kwargs": kwargs,
        "task": "cxr-detect-unet",
        "labels": classes,
        "thresholds": {"mask": threshold, "score": 0.0},
        "threshold_grid_ap_50_agnostic": {str(t): round(v, 4) for t, v in grid.items()},
        "input": {"size": [config.size, config.size], "patch": config.patch, "tile": config.tile,
                  "tile_margin": config.tile // 4, "channels": 1,
                  "normalisation": "normalize_cxr (0.5-99.5 percentile -> [0, 1]), squashed to size x size",
                  "inference": _inference_text(config.tile)},
        "training": {"data": config.data, "format": config.format, "annotations": config.annotations,
                     "n_train": len(train_r), "n_val": len(val_r), "n_test": len(test_r),
                     "split": f"as cxr-detect: test {config.test_fraction:.0%}, validation {config.val_fraction:.0%}, "
                              f"split seed {config.split_seed}",
                     "test_images": [Path(r["image"]).name for r in test_r],
                     **provenance(config, summary, command),
                     "loss": "BCE with logits on box masks (the RSNA pneumonia report's loss)",
                     "augmentation": {"elastic": config.elastic, "elastic_prob": config.elastic_prob,
                                      **({"elastic_alpha": config.elastic_alpha, "elastic_sigma": config.elastic_sigma}
                                         if config.elastic == "report" else {}),
                                      "other": "random lesion/background crop, horizontal flip, affine, "
                                               "contrast, intensity scale, Gaussian noise"},
                     "pretraining": "none: trained from scratch"},
        "metrics": {"validation": round_floats(val_metrics), "test": round_floats(test_metrics)},
        "license": "Apache-2.0 (weights); trained on TBX11K: research use with citation (Liu et al., CVPR 2020)",
    }
    return save_run(model, config, card)


class UnetBoxDetector:
    """Boxes from the U-Net route (a ``cxr-detect-unet`` weight set), same output as
    :meth:`pulmo.tasks.cxr_detect.Detector.predict`.

    Raises:
        WeightsError: missing or corrupted weights, or a card of another task.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS):
        self.card = resolve_card(weights)
        if self.card.get("task") != "cxr-detect-unet":
            raise WeightsError(f"{weights}: a {self.card.get('task')!r} weight set, expected a 'cxr-detect-unet' one "
                               "(a U-Net trained by `pulmo train cxr-detect-unet`)")
        self.model = create_model(self.card["architecture"], weights=weights).eval()
        self.size = int(self.card["input"]["size"][0])
        self.patch = int(self.card["input"]["patch"])
        tile = self.card["input"].get("tile")  # absent on cards from before overlap-tile stitching
        self.tile = None if tile is None else int(tile)
        self.divisor = 2 ** (int(self.card.get("model_kwargs", {}).get("depth", 5)) - 1)
        self.labels = list(self.card["labels"])
        self.mask_threshold = float(self.card["thresholds"]["mask"])
        self.threshold = float(self.card["thresholds"]["score"])  # box score, as Detector.threshold

    def predict_raw(self, images: Sequence[Image2D]) -> list[dict[str, Any]]:
        """Scored boxes per image, in original px."""
        preds = []
        for image in images:
            x, (sx, sy) = prepare_image(image, self.size)
            prob = probability_map(self.model, x, self.tile, self.patch, self.divisor)
            p = masks_to_boxes(prob, self.mask_threshold, self.labels)
            p["boxes"] = p["boxes"] * np.array([sx, sy, sx, sy])
            preds.append(p)
        return preds

    def predict(self, image: Image2D) -> list[dict[str, Any]]:
        """Boxes at or above the card's score threshold, as :meth:`pulmo.tasks.cxr_detect.Detector.predict`."""
        return detection_rows(self.predict_raw([image])[0], self.threshold)


Config = UnetDetectConfig
SPLITS = task_entry("cxr-detect-unet").splits


class Predictor(FromWeights, UnetBoxDetector):
    """The task contract's predictor: :class:`UnetBoxDetector` built by :meth:`from_weights`."""

    default_weights = DEFAULT_WEIGHTS


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True,
             negatives: Sequence[str] = ()) -> EvalReport:
    """Detection metrics of a U-Net route weight set, exactly as :func:`pulmo.tasks.cxr_detect.evaluate` scores a
    RetinaNet (same arguments, same report with ``task`` ``cxr-detect-unet``).

    Raises:
        ConfigError: unknown format / split / negatives format. InputError: unreadable labels or images.
        WeightsError: missing weights, or a card of another task.
    """
    format, split = evaluate_arguments("cxr-detect-unet", format, split, annotations)  # before weights or data
    return score_detector(UnetBoxDetector(weights or DEFAULT_WEIGHTS), data, format=format, annotations=annotations,
                          split=split, progress=progress, negatives=negatives, task="cxr-detect-unet")


__all__ = ["FORMATS", "SPLITS", "Config", "Predictor", "UnetBoxDetector", "UnetDetectConfig", "evaluate", "summary",
           "train"]
