"""``cxr-detect``: lesion boxes on chest X-rays (after the TB / ChestX-Det10 RetinaNet report and the RSNA
pneumonia report's U-Net).

Two routes share the data, splits and metrics of this module:

* **RetinaNet** (:mod:`pulmo.models.detection`; Lin et al. 2017): torchvision's detector with focal loss,
  trained here with box-aware augmentation from ``torchvision.transforms.v2`` (flip, affine, contrast; boxes
  follow the image and boxes pushed out of it are dropped by ``SanitizeBoundingBoxes``).
* **The U-Net lesion route** of the RSNA pneumonia report (:mod:`pulmo.tasks.cxr_detect_unet`): boxes
  rasterised to masks, a U-Net, masks turned back into scored boxes.

Data: TBX11K (``--format tbx11k``: COCO JSON + ``imgs/``), ChestX-Det10, RSNA Pneumonia and NIH ChestX-ray14
box lists (:mod:`pulmo.datasets.detection`). Every image is read through :func:`pulmo.io.read_image`,
normalised with :func:`pulmo.transforms.normalize_cxr` and resized (squashed) to ``size`` x ``size``;
boxes are scaled with it and mapped back to the original pixels at the end.

Splits: by patient (TBX11K publishes none, so by image): a test hold-out (``test_fraction``) that training never
sees, then a validation hold-out for model selection and the score threshold. The card lists the held-out
images so ``pulmo evaluate cxr-detect --split test`` scores exactly them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pulmo.datasets import split_by_patient
from pulmo.datasets.detection import (
    chestx_det10_folder_records,
    label_counts,
    nih_bbox_records,
    rsna_pneumonia_records,
    tbx11k_records,
)
from pulmo.datasets.negatives import NEGATIVE_FORMATS, negative_records
from pulmo.engine import TrainConfig, fit_best, provenance, save_run
from pulmo.errors import ConfigError, InputError
from pulmo.inference.cxr_detect import (  # noqa: F401 - re-exported
    DEFAULT_WEIGHTS,
    Detector,
    _to_numpy_predictions,
    detection_rows,
    display_name,
    prepare_image,
)
from pulmo.io import read_image
from pulmo.metrics import round_floats
from pulmo.metrics.detection import above, detection_metrics, detection_report, rsna_score
from pulmo.models import create_model, model_device
from pulmo.tasks.base import EvalReport, FromWeights
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.weights import resolve_card

logger = logging.getLogger(__name__)

FORMATS = task_entry("cxr-detect").formats  # the registry holds the static facts
SCORE_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


@dataclasses.dataclass
class DetectConfig(TrainConfig):
    """Settings of ``pulmo train cxr-detect`` (adds to :class:`TrainConfig`).

    Attributes:
        data: dataset root. format: dataset layout, one of :data:`FORMATS`. annotations: the label file
            (relative to ``data`` for TBX11K; required for the other formats).
        architecture: ``retinanet-r18-fpn``, ``retinanet-r34-fpn`` (P4-P7), ``retinanet-r50-fpn`` or
            ``retinanet-r101-fpn`` (P3-P7, 1024 px).
        size: working resolution (px, square). fpn_channels: FPN / head width.
        test_fraction, val_fraction, split_seed: the patient-grouped hold-outs.
        init_backbone: optional ``.safetensors`` of a torchvision ResNet classifier of the same depth (e.g. a
            ``pulmo train cxr-classify --architecture resnet18`` run) to initialise the body from.
        negatives: images with no lesion, each ``format=path`` (formats of
            :data:`pulmo.datasets.negatives.NEGATIVE_FORMATS`, e.g. ``covid-radiography=DATA/cxr/COVID-19_Radiography_Dataset``):
            split by patient like the positives and trained as images without boxes.
        init_weights: a ``cxr-detect`` weight set (name or ``.safetensors``) of the same architecture and classes to
            fine-tune from (e.g. the TB-only model, trained on the same TBX11K split).
        max_fp_per_negative: the operating threshold is the RSNA-best validation threshold, raised until the
            validation false-positive boxes per negative image are at most this.
        degrade_p: probability of the resolution augmentation (down to 160-320 px and back up), so the low
            resolution of one source is not a cue for "no lesion".
        name: name of the weight file and card written to ``out_dir``.
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (16, 4, 5e-4, 8).
    """

    data: str = ""
    format: str = dataclasses.field(default="tbx11k", metadata={"choices": FORMATS})
    annotations: str = ""
    architecture: str = "retinanet-r18-fpn"
    size: int = 512
    fpn_channels: int = 128
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    init_backbone: str = ""
    negatives: list[str] = dataclasses.field(default_factory=list)
    init_weights: str = ""
    max_fp_per_negative: float = 0.1
    degrade_p: float = 0.3
    name: str = DEFAULT_WEIGHTS
    epochs: int = 16
    batch_size: int = 4
    lr: float = 5e-4
    patience: int = 8


# ---------------------------------------------------------------------------------------------- data

def load_records(data: str | Path, format: str, annotations: str | Path | None = None,
                 counts: dict | None = None) -> list[dict[str, Any]]:
    """Box records (see :mod:`pulmo.datasets.detection`) of a dataset in one of :data:`FORMATS`.

    ``chestx-det10``: ``annotations`` is optional (default: the train and test JSON of ``data/labels`` or
    ``data``, see :func:`pulmo.datasets.detection.chestx_det10_label_files`); the NIH-named and the renamed JSON
    both work; images in ``data/images`` when that folder exists, else in ``data``.

    Raises:
        ConfigError: unknown format, or a format that needs ``annotations`` without it.
        InputError: as the adapters (missing or malformed label files).
    """
    data = Path(data)
    if format == "tbx11k":
        return tbx11k_records(data, annotations or None, counts=counts)
    if format not in FORMATS:
        raise ConfigError(f"unknown cxr-detect format {format!r}; expected one of {FORMATS}")
    if format == "chestx-det10":
        return chestx_det10_folder_records(data, annotations or None, counts=counts)
    if not annotations:
        raise ConfigError(f"format {format!r} needs an annotations file (annotations; --annotations on the command line): RSNA "
                          f"stage_2_train_labels.csv or NIH BBox_List_2017.csv")
    ann = Path(annotations)
    if not ann.is_absolute() and (data / ann).is_file():
        ann = data / ann
    if format == "rsna":
        return rsna_pneumonia_records(ann, data, counts=counts)
    return nih_bbox_records(ann, data, counts=counts)


def split_records(records: Sequence[dict], test_fraction: float, val_fraction: float,
                  seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test), disjoint by ``patient_id``: the test share first, then validation out of
    the rest (``val_fraction`` of the whole)."""
    rest, test = split_by_patient(records, test_fraction, seed, exact=True)
    train, val = split_by_patient(rest, val_fraction / max(1e-9, 1 - test_fraction), seed + 1, exact=True)
    return train, val, test


def load_negatives(specs: Sequence[str]) -> list[dict[str, Any]]:
    """Negative records (no boxes) of ``format=path`` specs (see :func:`pulmo.datasets.negatives.negative_records`).

    Raises:
        ConfigError: a spec without ``=`` or with an unknown format. InputError: as ``negative_records``.
    """
    records = []
    for spec in specs:
        fmt, sep, path = spec.partition("=")
        if not sep or fmt not in NEGATIVE_FORMATS:
            raise ConfigError(f"negatives entry {spec!r}: expected format=path with a format of {NEGATIVE_FORMATS}")
        records += negative_records(fmt, path)
    return records


def negative_key(record: dict[str, Any]) -> str:
    """``source/file name``: how a card lists a held-out negative image."""
    return f"{record['source']}/{Path(record['image']).name}"


def split_by_source(records: Sequence[dict], test_fraction: float, val_fraction: float,
                    seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """:func:`split_records` within each ``source`` (so every source has held-out images), concatenated."""
    parts: tuple[list[dict], list[dict], list[dict]] = ([], [], [])
    for source in sorted({r["source"] for r in records}):
        for part, chunk in zip(parts, split_records([r for r in records if r["source"] == source], test_fraction,
                                                    val_fraction, seed)):
            part += chunk
    return parts


class DetectionDataset(Dataset):
    """Images (uint8, working size, in memory) and their boxes in working px.

    Item: ``{"image": float32 (1, size, size) in [0, 1], "boxes": float32 (N, 4) xyxy, "labels": int64 (N,)
    in 1..K}``; with ``augment`` the image and boxes go through the same random flip / affine / contrast.
    """

    def __init__(self, records: Sequence[dict], classes: Sequence[str], size: int, augment: bool = False,
                 progress: bool = True, degrade_p: float = 0.0):
        self.size, self.augment, self.degrade_p = size, augment, degrade_p
        index = {c: i + 1 for i, c in enumerate(classes)}
        self.images, self.boxes, self.labels = [], [], []
        for r in tqdm(records, desc="load images", disable=not progress, leave=False):
            x, (sx, sy) = prepare_image(read_image(r["image"]), size)
            self.images.append(np.round(x * 255).astype(np.uint8))
            b = np.asarray(r["boxes_xyxy"], np.float32).reshape(-1, 4) / np.array([sx, sy, sx, sy], np.float32)
            self.boxes.append(b)
            self.labels.append(np.array([index[c] for c in r["labels"]], np.int64))
        self.transform = _augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = torch.from_numpy(self.images[i]).float()[None] / 255.0
        boxes, labels = torch.from_numpy(self.boxes[i]), torch.from_numpy(self.labels[i])
        if self.augment and self.degrade_p > 0 and torch.rand(()) < self.degrade_p:
            image = degrade_resolution(image, int(torch.randint(160, 321, ())))
        if self.transform is not None:
            from torchvision import tv_tensors

            out = self.transform({"image": tv_tensors.Image(image),
                                  "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY",
                                                                    canvas_size=image.shape[-2:]),
                                  "labels": labels})
            image, boxes, labels = out["image"].as_subclass(torch.Tensor), out["boxes"].as_subclass(torch.Tensor), out["labels"]
        return {"image": image.clamp(0, 1), "boxes": boxes.float().reshape(-1, 4), "labels": labels.long()}


def degrade_resolution(image: torch.Tensor, low: int) -> torch.Tensor:
    """``image`` (C, H, W) resized down to ``low`` px on its long side (antialiased) and back up (bilinear):
    same geometry, less detail, as a low-resolution source (e.g. the 224-px COVID-19 Radiography normals)."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    scale = low / max(h, w)
    if scale >= 1:
        return image
    small = F.interpolate(image[None], size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                          antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def _augmentation():
    """Box-aware augmentation (torchvision.transforms.v2): horizontal flip, small affine, contrast /
    brightness; boxes leaving the image or shrinking below 4 px are removed."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.RandomAffine(degrees=7, translate=(0.06, 0.06), scale=(0.85, 1.15))], p=0.7),
        v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.25)], p=0.6),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=4),
    ])


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images ``(B, 1, H, W)``; keep the per-image ``targets`` as a list of dicts."""
    return {"image": torch.stack([it["image"] for it in items]),
            "targets": [{"boxes": it["boxes"], "labels": it["labels"]} for it in items]}


# ---------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset: DetectionDataset, classes: Sequence[str],
                    batch_size: int = 4) -> list[dict[str, Any]]:
    """Predictions (working px) for every image of ``dataset``, in order (run on the model's device)."""
    model.eval()
    device = model_device(model)
    preds = []
    for s in range(0, len(dataset), batch_size):
        images = [dataset[i]["image"].to(device) for i in range(s, min(len(dataset), s + batch_size))]
        preds += _to_numpy_predictions(model(images), classes)
    return preds


def dataset_ground_truth(dataset: DetectionDataset, classes: Sequence[str]) -> list[dict[str, Any]]:
    """The reference boxes of every image of ``dataset`` (not augmented), in dataset order.

    Args:
        dataset: the loaded images and boxes.
        classes: class names in model order (label ``k`` is ``classes[k - 1]``).

    Returns:
        One ``{"boxes": float64 (N, 4) xyxy in working px, "labels": list of N class names}`` per image.
    """
    return [{"boxes": b.astype(np.float64), "labels": [classes[k - 1] for k in lab]}
            for b, lab in zip(dataset.boxes, dataset.labels)]


def choose_score_threshold(preds: list[dict[str, Any]], gts: list[dict[str, Any]],
                           max_fp_per_negative: float | None = None) -> tuple[float, dict[str, float]]:
    """The operating score threshold on validation, over :data:`SCORE_GRID`: the one maximising the RSNA score
    (mean over IoU 0.40-0.75 of TP / (TP + FP + FN), on the images with boxes), raised when needed to the lowest
    threshold whose false-positive boxes per negative image (images without boxes) are at most
    ``max_fp_per_negative``. Returns ``(threshold, {threshold: RSNA score})``."""
    pos = [i for i, g in enumerate(gts) if len(g["labels"])]
    neg = [i for i, g in enumerate(gts) if not len(g["labels"])]
    grid = {t: rsna_score(above([preds[i] for i in pos], t), [gts[i] for i in pos]) for t in SCORE_GRID}
    grid = {t: (0.0 if np.isnan(v) else v) for t, v in grid.items()}
    best = max(grid, key=lambda t: (grid[t], -abs(t - 0.5)))
    if max_fp_per_negative is not None and neg:
        quiet = [t for t in SCORE_GRID
                 if np.mean([np.sum(preds[i]["scores"] >= t) for i in neg]) <= max_fp_per_negative]
        if quiet:
            best = max(best, min(quiet))
    return best, grid


#: the licence note of a card, by training format
_DATA_CITATION = {
    "tbx11k": "TBX11K: research use with citation (Liu et al., CVPR 2020)",
    "chestx-det10": "ChestX-Det10 (NIH ChestX-ray14 images): research use with citation (Liu et al. 2020; Wang "
                    "et al., CVPR 2017)",
    "rsna": "the RSNA Pneumonia Detection Challenge data: its competition terms (research, non-commercial)",
    "nih": "NIH ChestX-ray14: research use with citation (Wang et al., CVPR 2017)",
}


def train(config: DetectConfig, command: str = "") -> dict[str, Any]:
    """Train RetinaNet (optionally with negative images and from a previous weight set), choose the operating
    threshold on validation, score the test hold-out, and write ``<out_dir>/<name>.safetensors`` (fp16) + card.

    The positives are split as before (so a model fine-tuned from the TB-only weights never sees their test
    images); each negative source is split by patient with the same fractions.

    Returns:
        The model card (a dict; empty on DDP ranks other than 0).

    Raises:
        InputError: no boxes in the labels, or unreadable labels or images.
        ConfigError: ``init_weights`` of another architecture or other labels, or bad negatives specs.
    """
    counts: dict[str, int] = {}
    records = load_records(config.data, config.format, config.annotations or None, counts)
    classes = sorted(label_counts(records))
    if not classes:
        raise InputError(f"{config.data}: no boxes in the {config.format} labels; nothing to train on")
    train_r, val_r, test_r = split_records(records, config.test_fraction, config.val_fraction, config.split_seed)
    negatives = load_negatives(config.negatives)
    neg_train, neg_val, neg_test = split_by_source(negatives, config.test_fraction, config.val_fraction,
                                                   config.split_seed)
    logger.info("cxr-detect: classes %s; %d train / %d val / %d test images (+ %d / %d / %d negatives)", classes,
                len(train_r), len(val_r), len(test_r), len(neg_train), len(neg_val), len(neg_test))
    kwargs = {"num_classes": len(classes), "fpn_channels": config.fpn_channels, "min_size": config.size,
              "max_size": config.size}
    if config.init_weights:
        init_card = resolve_card(config.init_weights)
        if (init_card.get("architecture"), init_card.get("labels")) != (config.architecture, classes):
            raise ConfigError(f"init_weights {config.init_weights!r} is a {init_card.get('architecture')} with labels "
                              f"{init_card.get('labels')}; expected {config.architecture} with {classes}")
        model = create_model(config.architecture, weights=config.init_weights)
    else:
        model = create_model(config.architecture, **kwargs)
    if config.init_backbone:
        from pulmo.models.detection import init_backbone

        n = init_backbone(model, load_file(config.init_backbone))
        logger.info("initialised %d backbone tensors from %s", n, config.init_backbone)
    train_ds = DetectionDataset(train_r + neg_train, classes, config.size, augment=True, progress=config.progress,
                                degrade_p=config.degrade_p)
    val_all = val_r + neg_val
    val_ds = DetectionDataset(val_all, classes, config.size, progress=config.progress)
    val_gt = dataset_ground_truth(val_ds, classes)

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        losses = m(list(batch["image"]), batch["targets"])
        return sum(v.float() for v in losses.values())

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        # AP over every validation image: false boxes on the negatives lower the precision
        met = detection_metrics(predict_dataset(m, val_ds, classes), val_gt)
        return {"ap_50_agnostic": met["ap_50_agnostic"], "map_50": met["map_50"]}

    summary = fit_best(model, train_ds, loss_fn, evaluate_fn, config, monitor="ap_50_agnostic",
                       collate_fn=collate)
    if summary is None:
        return {}
    val_preds = predict_dataset(model, val_ds, classes)
    threshold, grid = choose_score_threshold(val_preds, val_gt, config.max_fp_per_negative if negatives else None)
    val_metrics = detection_report(val_preds, val_gt, threshold, [r["source"] for r in val_all])
    test_all = test_r + neg_test
    test_ds = DetectionDataset(test_all, classes, config.size, progress=config.progress)
    test_metrics = detection_report(predict_dataset(model, test_ds, classes), dataset_ground_truth(test_ds, classes),
                            threshold, [r["source"] for r in test_all])
    neg_sources = sorted({r["source"] for r in negatives})
    card = {
        "name": config.name,
        "architecture": config.architecture,
        "model_kwargs": kwargs,
        "task": "cxr-detect",
        "labels": classes,
        "thresholds": {"score": threshold,
                       "rule": "RSNA-best on validation" + (f", raised to <= {config.max_fp_per_negative} false "
                                                            "boxes per validation negative image" if negatives else "")},
        "threshold_grid_rsna_score": {str(t): round(v, 4) for t, v in grid.items()},
        "input": {"size": [config.size, config.size], "channels": 1,
                  "normalisation": "normalize_cxr (0.5-99.5 percentile -> [0, 1]), squashed to size x size"},
        "training": {"data": config.data, "format": config.format, "annotations": config.annotations,
                     "negatives": list(config.negatives),
                     "label_counts": dict(label_counts(train_r)), "n_train": len(train_r), "n_val": len(val_r),
                     "n_test": len(test_r),
                     "n_negatives": {"train": len(neg_train), "val": len(neg_val), "test": len(neg_test),
                                     "by_source": {s: sum(r["source"] == s for r in negatives) for s in neg_sources}},
                     "split": f"by patient (TBX11K: by image; negatives within each source): test "
                              f"{config.test_fraction:.0%}, validation {config.val_fraction:.0%}, split seed "
                              f"{config.split_seed}",
                     "val_images": [Path(r["image"]).name for r in val_r],
                     "test_images": [Path(r["image"]).name for r in test_r],
                     "test_negatives": [negative_key(r) for r in neg_test],
                     **provenance(config, summary, command),
                     "loss": "sigmoid focal loss (alpha 0.25, gamma 2) + L1 box regression (torchvision RetinaNet); "
                             "negative images contribute focal loss only",
                     "augmentation": f"flip, affine, brightness/contrast; resolution drop p={config.degrade_p}",
                     "pretraining": ("fine-tuned from " + config.init_weights) if config.init_weights else
                     ("backbone initialised from " + config.init_backbone) if config.init_backbone
                     else "none: ImageNet weights cannot be downloaded here; trained from scratch"},
        "metrics": {"validation": round_floats(val_metrics), "test": round_floats(test_metrics)},
        "scope": {"classes": classes,
                  "trained_on": f"{config.format} images with boxes ({len(train_r)} train)" + (
                      f" and {len(neg_train)} images without lesions from {', '.join(neg_sources)}" if negatives else
                      " only (no image without lesions was seen in training)"),
                  "cannot_see": "lesions of any class not listed in classes; lateral views" + (f"; on held-out images without lesions it draws "
                                                   f"{test_metrics['fp_per_negative_image']:.2f} boxes per image"
                                                   if "fp_per_negative_image" in test_metrics else "")},
        "license": f"Apache-2.0 (weights); trained on {_DATA_CITATION.get(config.format, config.format)}"
                   + ("; negatives from " + ", ".join(neg_sources) + " (see their licences)" if negatives else ""),
    }
    return save_run(model, config, card)


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True,
             negatives: Sequence[str] = ()) -> EvalReport:
    """Detection metrics of a weight set (RetinaNet ``cxr-detect``; a ``cxr-detect-unet`` card is handed to that
    task's ``evaluate`` through the registry) on a labelled dataset, in original pixels: an :class:`EvalReport`
    of ``n`` images (positives and negatives) with ``{"n_images", "n_positive_images",
    "n_negative_images", "labels", "ap_50": {label: AP}, "map_50", "ap_50_agnostic" (+ ``_ci95``),
    "rsna_score", "score_threshold"}`` on the images with boxes (AP over every candidate; the RSNA score over
    the boxes above the card's threshold), and ChestX-Det10's metric over all images, every candidate:
    ``"average_recall_at_fp": {"0.05", "0.1", "0.2": recall at that many false positives per image, mean over
    classes; "mean": their mean}`` and ``"average_recall_at_fp_per_class": {label: {same keys}}``. When some
    images have no boxes (negatives of the dataset itself,
    e.g. RSNA ``Target`` 0, or ``negatives``): ``fp_per_negative_image`` (+ CI, per source) at the card's
    threshold, ``image_auc`` (max box score as the image score, + CI) and ``ap_50_agnostic_with_negatives``.

    Args:
        format: one of :data:`FORMATS` (default ``tbx11k``).
        annotations: the label file (TBX11K: the COCO JSON relative to ``data``; ChestX-Det10 JSON; RSNA
            ``stage_2_train_labels.csv``; NIH ``BBox_List_2017.csv``); default: the format's usual place.
        split: ``all`` (default: every image with its file present) or ``test`` (only the images the card lists as
            held out from training, e.g. to re-score TBX11K on the images the model never saw).
        negatives: ``format=path`` specs of images without lesions (see :func:`load_negatives`); with
            ``split="test"`` only those the card lists as held out.

    Raises:
        ConfigError: unknown format / split / negatives format. InputError: unreadable labels or images.
        WeightsError: bad weights.
    """
    format, split = evaluate_arguments("cxr-detect", format, split, annotations)  # before weights or data
    weights = weights or DEFAULT_WEIGHTS
    if resolve_card(weights).get("task") == "cxr-detect-unet":  # the U-Net route: same outputs and scoring
        from pulmo.tasks.registry import get_task

        return get_task("cxr-detect-unet").evaluate(data, format=format, annotations=annotations, split=split,
                                                    weights=weights, progress=progress, negatives=negatives)
    return score_detector(Detector(weights), data, format=format, annotations=annotations, split=split,
                          progress=progress, negatives=negatives)


def score_detector(det: Any, data: str | Path, *, format: str, split: str,
                   annotations: str | Path | None = None, progress: bool = True,
                   negatives: Sequence[str] = (), task: str = "cxr-detect") -> EvalReport:
    """The scoring of :func:`evaluate` for any detector with ``card``, ``threshold`` and ``predict_raw(images)``
    (:class:`Detector`, :class:`pulmo.tasks.cxr_detect_unet.UnetBoxDetector`); arguments as :func:`evaluate`, with
    ``format`` and ``split`` already resolved by :func:`pulmo.tasks.registry.evaluate_arguments`.

    Raises:
        ConfigError: unknown format / split / negatives format. InputError: unreadable labels or images.
    """
    records = load_records(data, format, annotations)
    negs = load_negatives(negatives)
    if split == "test":
        held = set(det.card["training"].get("test_images", []))
        records = [r for r in records if Path(r["image"]).name in held]
        if not records:
            raise InputError(f"{data}: none of the {len(held)} held-out images of {det.card['name']!r} is here")
        held_neg = set(det.card["training"].get("test_negatives", []))
        if negs and not held_neg:
            raise InputError(f"{det.card['name']!r} lists no held-out negative images; use split='all' to score "
                             "negatives it never trained on")
        negs = [r for r in negs if negative_key(r) in held_neg]
    records = records + negs
    t0 = time.perf_counter()
    preds, gts = [], []
    for r in tqdm(records, desc="cxr-detect evaluate", disable=not progress):
        preds += det.predict_raw([read_image(r["image"])])
        gts.append({"boxes": r["boxes_xyxy"], "labels": r["labels"]})
    m = detection_report(preds, gts, det.threshold, [r["source"] for r in records])
    return EvalReport(task=task, n=len(records), weights=det.card["name"], weights_sha256=det.card.get("sha256"),
                      seconds=round(time.perf_counter() - t0, 2), metrics={**round_floats(m), "split": split})


def summary(report: EvalReport) -> str:
    """AP50 (class-agnostic, mean and per class), the RSNA score, false boxes per negative image, image AUC and
    ChestX-Det10's average recall, where the report has them."""
    aps = " ".join(f"AP50[{k}]={v:.4f}" for k, v in report.get("ap_50", {}).items())
    line = (f"ap_50_agnostic={report.get('ap_50_agnostic', float('nan')):.4f} "
            f"map_50={report.get('map_50', float('nan')):.4f} {aps} "
            f"rsna_score={report.get('rsna_score', float('nan')):.4f}")
    if "fp_per_negative_image" in report:
        line += f" fp_per_negative_image={report['fp_per_negative_image']:.3f} (n={report['n_negative_images']})"
    if "image_auc" in report:
        line += f" image_auc={report['image_auc']:.4f}"
    ar = report.get("average_recall_at_fp") or {}
    if ar:  # ChestX-Det10's official metric: recall at 0.05 / 0.1 / 0.2 false positives per image
        line += " " + " ".join(f"recall@{k}fp={v:.4f}" if k != "mean" else f"average_recall={v:.4f}"
                               for k, v in ar.items() if isinstance(v, float))
    return line


Config = DetectConfig
SPLITS = task_entry("cxr-detect").splits


class Predictor(FromWeights, Detector):
    """The task contract's predictor: :class:`Detector` built by :meth:`from_weights`."""

    default_weights = DEFAULT_WEIGHTS
