"""``lung-seg``: lung segmentation on chest X-rays.

Two mask conventions exist in public data: the *visible lung fields* (JSRT/SCR, Montgomery, Shenzhen:
the lung not hidden by the heart or diaphragm) and the *anatomical lung* of the V7 Labs masks on
``covid-chestxray-dataset`` (retro-cardiac lung included). The model has one output channel per
convention (0 = visible, 1 = V7); each training image supervises only its own channel, so the V7 images
teach the shared encoder/decoder what lungs look like in adult COVID-19 films without bending the
visible-field channel. Inference uses channel 0 (the shipped convention).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pulmo.datasets import LungSegDataset, covid_chestxray_mask_records, image_mask_records, split_by_patient
from pulmo.engine import TrainConfig, fit_best, provenance, save_run
from pulmo.errors import ConfigError, InputError
from pulmo.inference.lung_seg import DEFAULT_WEIGHTS, LungSegmenter
from pulmo.io import read_image
from pulmo.metrics import dice, iou
from pulmo.models import create_model, model_device
from pulmo.tasks.base import EvalReport, FromWeights
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.transforms.augment import segmentation_augmentation

logger = logging.getLogger(__name__)

CHANNEL_LABELS = ["lung_visible", "lung_v7"]


@dataclasses.dataclass
class LungSegConfig(TrainConfig):
    """Training settings of ``pulmo train lung-seg`` (adds data and model fields to :class:`TrainConfig`).

    Attributes:
        visible_data: roots in the ``images/`` + ``masks/`` layout (visible-lung-field masks).
        v7_data: a ``covid-chestxray-dataset`` root with ``masks_v7_lung/`` ("" = none).
        architecture: registered model name (``unet-rsna`` or ``monai-unet``).
        features: channels at the first scale.
        size: working resolution in px (square).
        val_fraction: share of patients held out, per dataset, for validation.
        split_seed: seed of the patient split.
        v7_loss_weight: weight of the V7 channel's loss relative to the visible channel.
        elastic_prob: probability of elastic deformation per sample.
        name: weight-set name written in the run folder (``<name>.safetensors`` + card).
    """

    visible_data: list[str] = dataclasses.field(default_factory=list)
    v7_data: str = ""
    architecture: str = "unet-rsna"
    features: int = 16
    size: int = 256
    val_fraction: float = 0.2
    split_seed: int = 0
    v7_loss_weight: float = 0.5
    elastic_prob: float = 0.3
    name: str = DEFAULT_WEIGHTS


def collect_records(config: LungSegConfig) -> tuple[list[dict], list[dict]]:
    """Patient-disjoint (train, val) records of every configured dataset.

    Each source (every ``visible_data`` root, ``images/`` + ``masks/``, and the ``v7_data`` covid-chestxray
    root) is split by patient on its own (``val_fraction``, ``split_seed``) and the halves concatenated.

    Returns:
        ``(train, val)`` lists of records ``{"image", "mask", "patient_id", "source", "convention", ...}``.

    Raises:
        InputError: no source is configured, or a source's folders are missing or hold no image with a mask.
        ConfigError: the split leaves the training or the validation side empty.
        ValueError: ``val_fraction`` is not in (0, 1).
    """
    train, val = [], []
    sources = [image_mask_records(root) for root in config.visible_data]
    if config.v7_data:
        sources.append(covid_chestxray_mask_records(config.v7_data))
    if not sources:
        raise InputError("no training data: give LungSegConfig.visible_data (images/ + masks/) and/or v7_data "
                         "(--visible-data / --v7-data)")
    for records in sources:
        t, v = split_by_patient(records, config.val_fraction, config.split_seed)
        train += t
        val += v
    if not val or not train:
        raise ConfigError(f"the patient split (val_fraction {config.val_fraction}) left {len(train)} training and "
                          f"{len(val)} validation images; use more data or another val_fraction")
    return train, val


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                      channel_weight: torch.Tensor) -> torch.Tensor:
    """Masked BCE-with-logits + soft Dice, each channel counted only where ``weight`` is 1.

    Shapes: ``logits``, ``label``, ``weight`` ``(B, K, H, W)``; ``channel_weight`` ``(K,)``.
    """
    logits = logits.float()
    channel_weight = channel_weight.to(logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    w = weight * channel_weight.view(1, -1, 1, 1)
    bce = (bce * w).sum() / w.sum().clamp_min(1.0)
    prob = torch.sigmoid(logits) * weight
    inter = (prob * label).sum(dim=(2, 3))
    denom = prob.sum(dim=(2, 3)) + (label * weight).sum(dim=(2, 3))
    has = (weight.sum(dim=(2, 3)) > 0).float() * channel_weight.view(1, -1)
    soft_dice = 1.0 - (2 * inter + 1.0) / (denom + 1.0)
    return bce + (soft_dice * has).sum() / has.sum().clamp_min(1.0)


def _evaluate_working(model: torch.nn.Module, dataset: LungSegDataset, batch_size: int = 16) -> dict[str, float]:
    """Dice at the working resolution per convention (thresholded sigmoid, no post-processing)."""
    scores: dict[str, list[float]] = {"visible": [], "v7": []}
    device = model_device(model)
    for start in range(0, len(dataset), batch_size):
        items = [dataset.load(i) for i in range(start, min(len(dataset), start + batch_size))]
        x = torch.from_numpy(np.stack([it[0] for it in items])).to(device)
        prob = torch.sigmoid(model(x)).cpu().numpy()
        for j, (_, label, weight) in enumerate(items):
            ch = int(weight.reshape(2, -1).max(axis=1).argmax())
            valid = weight[ch] > 0
            scores[["visible", "v7"][ch]].append(dice((prob[j, ch] > 0.5) & valid, label[ch] * valid))
    out = {f"dice_{k}": float(np.mean(v)) for k, v in scores.items() if v}
    out["dice"] = out.get("dice_visible", out.get("dice_v7", 0.0))
    return out


def train(config: LungSegConfig, command: str = "") -> dict[str, Any]:
    """Train a lung-segmentation model, then write ``<out_dir>/<name>.safetensors`` (fp16) and its card.

    ``command`` (the command line that started the run) is recorded in the card.

    Returns the card (with per-source validation metrics at the original resolution).
    """
    train_records, val_records = collect_records(config)
    logger.info("lung-seg: %d train / %d val images (patient-disjoint)", len(train_records), len(val_records))
    model = create_model(config.architecture, in_channels=1, out_channels=2, features=config.features)
    aug = segmentation_augmentation(config.size, mask_keys=("label", "weight"), elastic_prob=config.elastic_prob)
    train_ds = LungSegDataset(train_records, config.size, transform=aug)
    val_ds = LungSegDataset(val_records, config.size)
    channel_weight = torch.tensor([1.0, config.v7_loss_weight])

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return segmentation_loss(m(batch["image"]), batch["label"], batch["weight"], channel_weight)

    summary = fit_best(model, train_ds, loss_fn, lambda m: _evaluate_working(m, val_ds), config,
                       monitor="dice")
    if summary is None:
        return {}
    card = {
        "name": config.name,
        "architecture": config.architecture,
        "model_kwargs": {"in_channels": 1, "out_channels": 2, "features": config.features},
        "task": "lung-seg",
        "labels": CHANNEL_LABELS,
        "output_channel": 0,
        "thresholds": {"lung": 0.5},
        "input": {"size": [config.size, config.size], "channels": 1, "resize": "bilinear, aspect not kept",
                  "normalisation": "percentile 0.5-99.5 min-max to [0, 1] (pulmo.transforms.normalize_cxr)"},
        "postprocessing": "threshold 0.5 at original size, keep the 2 largest components >= 10 % of the largest, fill holes",
        "training": {
            "data": {"visible": config.visible_data, "v7": config.v7_data},
            "split": f"by patient, sha1(seed:{config.split_seed}:patient) < {config.val_fraction}, per dataset",
            "n_train": len(train_records), "n_val": len(val_records),
            **provenance(config, summary, command, world_size=summary["world_size"]),
        },
        "license": "Apache-2.0 (weights); training data: NLM Montgomery/Shenzhen terms, Shenzhen masks "
                   "CC BY-NC-SA 4.0, V7 masks CC BY 4.0 - non-commercial use advised",
    }
    segmenter = LungSegmenter(model=model, card=card)
    card["metrics"] = validation_metrics(segmenter, val_records, progress=config.progress)
    return save_run(model, config, card)


def validation_metrics(segmenter: LungSegmenter, records: list[dict], progress: bool = True) -> dict[str, Any]:
    """Dice/IoU at the original resolution per source, on the given (validation) records.

    For V7 records both the visible-field channel (the shipped output) and the V7 channel are scored
    against the V7 mask, ignoring V7 "ignore" regions.
    """
    per: dict[str, dict[str, list[float]]] = {}
    for r in tqdm(records, desc="validation", disable=not progress, leave=False):
        image = read_image(r["image"])
        ref = np.asarray(read_image(r["mask"]).pixels) > 127
        valid = np.ones_like(ref) if not r.get("ignore") else ~(np.asarray(read_image(r["ignore"]).pixels) > 0)
        prob = segmenter.probabilities(image)
        names = [("visible_channel", 0)] + ([("v7_channel", 1)] if r["convention"] == "v7" else [])
        for label, ch in names:
            pred = segmenter.postprocess(prob[ch]) & valid
            d = per.setdefault(f"{r['source']}/{label}", {"dice": [], "iou": []})
            d["dice"].append(dice(pred, ref & valid))
            d["iou"].append(iou(pred, ref & valid))
    return {k: {"n": len(v["dice"]), "dice_mean": float(np.mean(v["dice"])), "dice_std": float(np.std(v["dice"])),
                "iou_mean": float(np.mean(v["iou"]))} for k, v in sorted(per.items())}


Config = LungSegConfig
FORMATS = task_entry("lung-seg").formats  # the registry holds the static facts
SPLITS = task_entry("lung-seg").splits


class Predictor(FromWeights, LungSegmenter):
    """The task contract's predictor: :class:`LungSegmenter` built by :meth:`from_weights`."""

    default_weights = DEFAULT_WEIGHTS


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True) -> EvalReport:
    """Dice / IoU of a weight set at the original resolution on an ``images/`` + ``masks/`` folder (masks 0/255,
    same file names; every image is scored, ``split`` ``all``).

    Returns:
        :class:`EvalReport` with ``n`` images and the metrics ``dice_mean``, ``dice_std``, ``iou_mean`` (each
        in [0, 1]) and ``per_image`` ``[{"image", "dice", "iou"}]``.

    Raises:
        ConfigError: an unknown format or split, or an ``annotations`` file (this layout has none).
        InputError: bad layout, unreadable files or a mask of another size. WeightsError: bad weights.
    """
    format, split = evaluate_arguments("lung-seg", format, split, annotations)  # before weights or data
    records = image_mask_records(data)
    segmenter = LungSegmenter(weights or DEFAULT_WEIGHTS)
    t0 = time.perf_counter()
    rows = []
    for r in tqdm(records, desc="lung-seg evaluate", disable=not progress):
        image = read_image(r["image"])
        ref = read_image(r["mask"]).pixels > 127
        if ref.shape != image.shape:
            raise InputError(f"{r['mask']}: mask size {ref.shape} differs from image size {image.shape}")
        pred = segmenter.predict(image)
        rows.append({"image": Path(r["image"]).name, "dice": dice(pred, ref), "iou": iou(pred, ref)})
    d = np.array([r["dice"] for r in rows])
    return EvalReport(task="lung-seg", n=len(rows), weights=segmenter.card.get("name"),
                      weights_sha256=segmenter.card.get("sha256"), seconds=round(time.perf_counter() - t0, 2),
                      metrics={"dice_mean": float(d.mean()), "dice_std": float(d.std()),
                               "iou_mean": float(np.mean([r["iou"] for r in rows])), "per_image": rows})


def summary(report: EvalReport) -> str:
    """``dice=<mean>±<std> iou=<mean>``."""
    return f"dice={report['dice_mean']:.4f}±{report['dice_std']:.4f} iou={report['iou_mean']:.4f}"
