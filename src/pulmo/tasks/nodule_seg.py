"""``nodule-seg``: segmentation of real lung nodules in axial CT crops (LIDC-IDRI, issue 16).

Data: the LIDC-IDRI-slices crops (:mod:`pulmo.datasets.lidc_slices`; Armato et al., Med. Phys. 2011): 8-bit
lung-windowed axial crops centred on each nodule >= 3 mm, one mask per radiologist. Target: the 50 % consensus
of the readers who outlined the nodule.

Model: a 2.5-D U-Net, MONAI's residual ``UNet`` (Kerfoot et al. 2018; registry name ``monai-unet``, channels
16-32-64-128, two residual units per scale, batch norm). Input: 3 adjacent slices as channels (i-1, i, i+1; the
end slice repeated beyond the stack), grey / 255; output: the logit of the centre slice's mask. Loss: MONAI
``DiceCELoss`` (soft Dice over the batch + binary cross-entropy). Working size 64 x 64 px at the crops' native
pixel size (~0.69 mm/px, :data:`~pulmo.datasets.lidc_slices.MM_PER_PX`), never resized, since resizing would change
the nodule size the model learns: training uses the centre 64 x 64 window of every crop (the nodule is at the
centre; 128-px crops are centre-cropped); prediction and evaluation run the fully convolutional network on the
whole crop (64 or 128 px, padded to a multiple of 8), so large nodules are scored against their full masks.
Augmentation: flips, 90-degree rotations, reversed slice order, small intensity scale/shift/gamma and noise.

Split: by patient (:func:`~pulmo.datasets.lidc_slices.split_nodules`): 20 % of the patients held out for testing,
10 % for validation (early stopping and the threshold, chosen on validation by mean per-nodule Dice), the rest for
training. Metrics: per-nodule Dice and IoU of the 3-D mask stacked from the per-slice predictions over the
nodule's slices, with percentile-bootstrap 95 % intervals over nodules, per number of readers and per estimated
size; NoduleNet (Tang et al., "NoduleNet: decoupled false positive reduction for pulmonary nodule detection and
segmentation", MICCAI 2019) reports 83.1 % DSC for its 3-D segmentation branch on LIDC-IDRI, a reference point
under another protocol (3-D, detected nodules in whole scans, its own consensus masks and folds).

CT volumes in HU become crop-like input through :data:`~pulmo.datasets.lidc_slices.CROP_WINDOW_HU`
(``hu=True`` in :meth:`NoduleSegmenter.predict`). In the CT pipeline, :func:`refine_nodule_masks` replaces the
``nodule`` detector's masks (its mask head was trained on synthetic nodules) by this model's outlines on crops
around each detected nodule, when ``nodule-seg`` weights are bundled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandLambdad,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from scipy import ndimage
from tqdm.auto import tqdm

from pulmo.datasets.lidc_slices import (
    CROP_WINDOW_HU,
    MM_PER_PX,
    SIZE_BINS_MM,
    LidcSliceNodule,
    NoduleSliceDataset,
    consensus_mask,
    context_stack,
    hu_to_crop_grey,
    read_lidc_slices,
    size_group,
    split_nodules,
)
from pulmo.engine import TrainConfig, fit_best, provenance, save_run
from pulmo.errors import ConfigError, InputError
from pulmo.metrics import bootstrap_ci, dice, iou
from pulmo.models import create_model, model_device
from pulmo.tasks.base import EvalReport, FromWeights, held_out_patients
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.weights import resolve_card

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "nodule-seg"
FORMATS = task_entry("nodule-seg").formats  # the registry holds the static facts
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.2, 0.81, 0.05))
#: NoduleNet's reported segmentation DSC on LIDC-IDRI (Tang et al., MICCAI 2019), for reference.
NODULENET_DSC = 0.831
READER_GROUPS = ("1", "2", "3", "4")
SIZE_GROUPS = (f"<{SIZE_BINS_MM[0]:g}mm", f"{SIZE_BINS_MM[0]:g}-{SIZE_BINS_MM[1]:g}mm", f">{SIZE_BINS_MM[1]:g}mm")
SIZE_UNIT = (f"estimated mm: equivalent diameter (largest axial cross-section, mean over the outlining readers) in "
             f"px x {MM_PER_PX} mm/px; the crops store no spacing (pulmo.datasets.lidc_slices.MM_PER_PX)")


@dataclasses.dataclass
class NoduleSegConfig(TrainConfig):
    """Settings of ``pulmo train nodule-seg`` (adds to :class:`TrainConfig`).

    Attributes:
        data: LIDC-IDRI-slices folder (``<patient>/nodule-<k>/{images,mask-0..3}/slice-<i>.png``) or its
            ``.tar.gz``. format: dataset layout (``lidc-slices``).
        architecture: registered model name (``monai-unet``: MONAI residual U-Net).
        features: channels at the first scale (doubled per scale). depth: scales (4: 16-32-64-128).
        size: training window in px (square, centre of each crop; a multiple of ``2 ** (depth - 1)``).
        context: slices either side of the centre slice given as channels (1: 3 channels).
        loss: ``dice-ce-batch`` (MONAI ``DiceCELoss(batch=True)``: one soft Dice over the whole batch + BCE) or
            ``dice-ce-sample`` (soft Dice per slice, averaged, + BCE: small nodules weigh as much as large ones,
            as in the per-nodule metric).
        tta: average the probabilities over the 4 in-plane flips at validation and test time (also written to the
            card, so :class:`NoduleSegmenter` does the same).
        test_fraction: share of patients held out for testing. val_fraction: share of patients for validation
            (early stopping and the threshold). split_seed: seed of the patient split (:func:`split_nodules`).
        name: weight-set name (``<out_dir>/<name>.safetensors`` + ``.json`` card).
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (30, 32, 2e-3, 10).
    """

    data: str = ""
    format: str = dataclasses.field(default="lidc-slices", metadata={"choices": ("lidc-slices",)})
    architecture: str = "monai-unet"
    features: int = 16
    depth: int = 4
    size: int = 64
    context: int = 1
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    loss: str = dataclasses.field(default="dice-ce-batch",
                                  metadata={"choices": ("dice-ce-batch", "dice-ce-sample")})
    tta: bool = True
    name: str = DEFAULT_WEIGHTS
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    patience: int = 10


def _reverse_slices(x: Any) -> Any:
    """Reverse the slice (channel) order: the nodule seen upside down in z."""
    return x.flip(0) if isinstance(x, torch.Tensor) else np.ascontiguousarray(np.asarray(x)[::-1])


AUGMENTATION = ("flips of both in-plane axes, 90-degree rotations, reversed slice order (p 0.5 each); intensity "
                "scale +-10 % (p 0.5), shift +-0.04 (p 0.5), gamma 0.8-1.25 (p 0.3), Gaussian noise sd 0.01 (p 0.2)")


def nodule_augmentation() -> Compose:
    """Training augmentation of ``{"image": (C, H, W), "label": (1, H, W)}``: flips of both in-plane axes, 90-degree
    rotations, reversed slice order (p 0.5 each), intensity scale +-10 % (p 0.5), shift +-0.04 (p 0.5), gamma
    0.8-1.25 (p 0.3), Gaussian noise sd 0.01 (p 0.2). Geometry applies to image and label alike."""
    keys = ("image", "label")
    return Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys, prob=0.5, max_k=3),
        RandLambdad("image", func=_reverse_slices, prob=0.5),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.04, prob=0.5),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.8, 1.25)),
        RandGaussianNoised("image", prob=0.2, std=0.01),
    ])


LOSSES = ("dice-ce-batch", "dice-ce-sample")
#: In-plane flips averaged by test-time augmentation (axes of the (S, H, W) stack; () = the image as it is).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))


def _model_kwargs(config: NoduleSegConfig) -> dict[str, Any]:
    return {"in_channels": 2 * config.context + 1, "out_channels": 1, "features": config.features,
            "depth": config.depth}


def _check_config(config: NoduleSegConfig) -> None:
    if config.format not in FORMATS:
        raise ConfigError(f"nodule-seg format {config.format!r}; expected one of {FORMATS}")
    if not config.data:
        raise ConfigError("NoduleSegConfig.data is empty (pulmo train nodule-seg --data): the LIDC-IDRI-slices folder or its .tar.gz")
    if config.loss not in LOSSES:
        raise ConfigError(f"nodule-seg loss {config.loss!r}; expected one of {LOSSES}")
    if config.context < 0:
        raise ConfigError(f"context {config.context}; expected 0 or more slices either side")
    divisor = 2 ** (config.depth - 1)
    if config.size <= 0 or config.size % divisor:
        raise ConfigError(f"size {config.size}; expected a positive multiple of {divisor} (2 ** (depth - 1))")


def nodule_probabilities(model: torch.nn.Module, images: np.ndarray, context: int = 1, divisor: int = 8,
                         batch_size: int = 64, bf16: bool = False, tta: bool = False) -> np.ndarray:
    """Per-slice nodule probability of a crop stack, slice by slice (2.5-D).

    Args:
        model: the network (eval mode), ``(B, 2 context + 1, H, W)`` -> ``(B, 1, H, W)`` logits.
        images: ``(S, H, W)`` uint8 grey levels, or float in [0, 1].
        context: slices either side fed as channels (edge slices repeated).
        divisor: the input is padded (edge values) to a multiple of this, then cropped back.
        batch_size: slices per forward pass.
        bf16: run the network under bfloat16 autocast (of the model's device type; inputs go to its device).
        tta: average over the 4 in-plane flips (:data:`TTA_FLIPS`; 4x the compute).

    Returns:
        float32 ``(S, H, W)`` probabilities in [0, 1].
    """
    return stacks_probabilities(model, [images], context, divisor, batch_size, bf16, tta)[0]


def stacks_probabilities(model: torch.nn.Module, stacks: Sequence[np.ndarray], context: int = 1, divisor: int = 8,
                         batch_size: int = 64, bf16: bool = False, tta: bool = False) -> list[np.ndarray]:
    """:func:`nodule_probabilities` of several stacks ``[(S_k, H_k, W_k)]``, slices of equal size batched together
    across stacks; with ``tta`` the mean over the in-plane flips :data:`TTA_FLIPS`. Returns float32
    ``[(S_k, H_k, W_k)]``."""
    if not tta:
        return _stacks_probabilities(model, stacks, context, divisor, batch_size, bf16)
    total = [np.zeros(np.shape(s), dtype=np.float32) for s in stacks]
    for axes in TTA_FLIPS:
        flipped = [np.ascontiguousarray(np.flip(s, axes)) if axes else s for s in stacks]
        for t, p in zip(total, _stacks_probabilities(model, flipped, context, divisor, batch_size, bf16)):
            t += np.flip(p, axes) if axes else p
    return [t / len(TTA_FLIPS) for t in total]


def centre_component(mask: np.ndarray) -> np.ndarray:
    """The 3-D connected component (26-connectivity) of ``mask`` at the centre voxel of the stack, or, when the
    centre is not marked, the one nearest to it (in voxels): the nodule the crop is centred on, without the vessels
    and neighbours marked elsewhere in the crop. ``mask``: bool ``(S, H, W)``; returns bool of the same shape
    (all False when ``mask`` is)."""
    if not mask.any():
        return mask.copy()
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    centre = np.array(mask.shape) // 2
    keep = labels[tuple(centre)]
    if not keep:
        pts = np.argwhere(mask)
        keep = labels[tuple(pts[((pts - centre) ** 2).sum(axis=1).argmin()])]
    return labels == keep


@torch.no_grad()
def _stacks_probabilities(model: torch.nn.Module, stacks: Sequence[np.ndarray], context: int, divisor: int,
                          batch_size: int, bf16: bool) -> list[np.ndarray]:
    inputs: dict[tuple[int, int], list[tuple[int, int, np.ndarray]]] = {}
    for k, images in enumerate(stacks):
        x01 = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        for i in range(len(x01)):
            inputs.setdefault(x01.shape[1:], []).append((k, i, context_stack(x01, i, context)))
    outs = [np.empty(np.shape(s), dtype=np.float32) for s in stacks]
    device = model_device(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for (h, w), items in inputs.items():
        ph, pw = (-h) % divisor, (-w) % divisor
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            x = torch.from_numpy(np.stack([c[2] for c in chunk])).to(device)
            if ph or pw:
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
            with autocast:
                logits = model(x)
            prob = torch.sigmoid(logits.float())[:, 0, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w].cpu().numpy()
            for (k, i, _), p in zip(chunk, prob):
                outs[k][i] = p
    return outs


def _group_summary(dices: np.ndarray, ious: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    if len(dices) == 0:
        return {"n": 0, "dice_mean": None, "dice_ci95": None, "iou_mean": None, "iou_ci95": None}
    return {"n": len(dices), "dice_mean": float(dices.mean()),
            "dice_ci95": list(bootstrap_ci(lambda i: float(dices[i].mean()), len(dices), n_resamples, seed)),
            "iou_mean": float(ious.mean()),
            "iou_ci95": list(bootstrap_ci(lambda i: float(ious[i].mean()), len(ious), n_resamples, seed))}


def overlap_report(rows: Sequence[dict[str, Any]], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Summary of per-nodule scores ``[{"dice", "iou", "n_readers", "size_group", "patient_id"}]``.

    Returns:
        ``{"dice_mean", "dice_ci95", "iou_mean", "iou_ci95", "n_nodules", "n_patients", "by_readers": {"1".."4":
        {...}}, "by_size": {"<6mm", "6-10mm", ">10mm": {...}}, "size_unit"}``; every group holds ``n``,
        ``dice_mean``, ``dice_ci95``, ``iou_mean``, ``iou_ci95`` (None when empty). Dice and IoU in [0, 1];
        intervals: percentile bootstrap over nodules.
    """
    d = np.array([r["dice"] for r in rows], dtype=np.float64)
    j = np.array([r["iou"] for r in rows], dtype=np.float64)
    overall = _group_summary(d, j, n_resamples, seed)
    out: dict[str, Any] = {k: overall[k] for k in ("dice_mean", "dice_ci95", "iou_mean", "iou_ci95")}
    out["n_nodules"] = len(rows)
    out["n_patients"] = len({r["patient_id"] for r in rows})
    readers = np.array([str(r["n_readers"]) for r in rows])
    sizes = np.array([r["size_group"] for r in rows])
    out["by_readers"] = {g: _group_summary(d[readers == g], j[readers == g], n_resamples, seed) for g in READER_GROUPS}
    out["by_size"] = {g: _group_summary(d[sizes == g], j[sizes == g], n_resamples, seed) for g in SIZE_GROUPS}
    out["size_unit"] = SIZE_UNIT
    return out


def leave_one_reader_out(n: LidcSliceNodule, pred: np.ndarray) -> tuple[float, float] | None:
    """How a reader and the model each agree with the other readers, on one nodule outlined by >= 2 readers.

    For each outlining reader r, the reference is the 50 % consensus of the *other* outlining readers
    (:func:`pulmo.datasets.lidc_slices.consensus_mask`: 1 of 1, 1 of 2, 2 of 3); reader r's mask and the model's
    ``pred`` (bool ``(S, H, W)``) are both scored against it with the 3-D Dice. The means over r are returned as
    ``(reader_dice, model_dice)``, both in [0, 1]: the model is compared with a radiologist on the same
    references, so a target above what readers reach against each other shows as such. None for a nodule with one reader (no other reader to compare with).
    """
    readers = n.readers
    if len(readers) < 2:
        return None
    reader_d, model_d = [], []
    for r in readers:
        others = consensus_mask(n.masks[[o for o in readers if o != r]])
        reader_d.append(dice(n.masks[r], others))
        model_d.append(dice(pred, others))
    return float(np.mean(reader_d)), float(np.mean(model_d))


def reader_agreement(rows: Sequence[dict[str, Any]], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The model next to a radiologist: summary of the rows' ``reader_dice`` / ``model_dice``
    (:func:`leave_one_reader_out`) over the nodules outlined by >= 2 readers.

    Returns:
        ``{"n_nodules", "reader_dice_mean", "model_dice_mean", "difference", "difference_ci95", "by_readers":
        {"2", "3", "4": {"n", "reader_dice_mean", "model_dice_mean"}}, "definition"}``; ``difference`` = model -
        reader (> 0: the model agrees with the other readers better than a held-out reader does), its interval a
        percentile bootstrap over nodules. Means are None when no nodule has >= 2 readers.
    """
    kept = [r for r in rows if r.get("reader_dice") is not None]
    rd = np.array([r["reader_dice"] for r in kept], dtype=np.float64)
    md = np.array([r["model_dice"] for r in kept], dtype=np.float64)
    k = np.array([str(r["n_readers"]) for r in kept])
    out: dict[str, Any] = {"n_nodules": len(kept), "reader_dice_mean": None, "model_dice_mean": None,
                           "difference": None, "difference_ci95": None}
    if kept:
        out.update(reader_dice_mean=float(rd.mean()), model_dice_mean=float(md.mean()),
                   difference=float((md - rd).mean()),
                   difference_ci95=list(bootstrap_ci(lambda i: float((md[i] - rd[i]).mean()), len(kept),
                                                     n_resamples, seed)))
    out["by_readers"] = {g: {"n": int((k == g).sum()),
                             "reader_dice_mean": float(rd[k == g].mean()) if (k == g).any() else None,
                             "model_dice_mean": float(md[k == g].mean()) if (k == g).any() else None}
                         for g in READER_GROUPS[1:]}
    out["definition"] = ("per nodule with >= 2 readers: each reader's mask and the model's mask scored (3-D Dice) "
                         "against the 50 % consensus of the other readers, averaged over the readers")
    return out


def _nodule_row(n: LidcSliceNodule, pred: np.ndarray) -> dict[str, Any]:
    """Per-nodule scores of the predicted mask stack ``pred`` (bool ``(S, H, W)``, already post-processed)."""
    ref = n.consensus
    agreement = leave_one_reader_out(n, pred)
    return {"nodule": n.key, "patient_id": n.patient_id, "n_readers": n.n_readers, "n_slices": len(n.images),
            "crop_px": n.crop_px, "diameter_px": round(n.diameter_px, 2), "diameter_mm_est": round(n.diameter_mm, 2),
            "size_group": size_group(n.diameter_mm), "dice": dice(pred, ref), "iou": iou(pred, ref),
            "reader_dice": None if agreement is None else agreement[0],
            "model_dice": None if agreement is None else agreement[1]}


def _dice_at(probs: Sequence[np.ndarray], nodules: Sequence[LidcSliceNodule], threshold: float) -> float:
    return float(np.mean([dice(centre_component(p >= threshold), n.consensus) for p, n in zip(probs, nodules)]))


def train(config: NoduleSegConfig, command: str = "") -> dict[str, Any]:
    """Train on the LIDC-IDRI-slices crops, choose the threshold on validation, score the held-out patients, and
    write ``<out_dir>/<name>.safetensors`` (fp16) + its card.

    ``command`` (the command line that started the run) is recorded in the card.

    Returns:
        The card (``metrics``: validation and test, see :func:`overlap_report`).

    Raises:
        ConfigError: bad settings or too few patients to split. InputError: unreadable data.
    """
    _check_config(config)
    data = read_lidc_slices(config.data, progress=config.progress)
    train_n, val_n, test_n = split_nodules(data.nodules, config.test_fraction, config.val_fraction, config.split_seed)
    if not train_n or not val_n or not test_n:
        raise ConfigError(f"the patient split left {len(train_n)} train / {len(val_n)} validation / {len(test_n)} "
                          "test nodules; every side needs one (use more patients or other fractions)")
    logger.info("nodule-seg: %d / %d / %d nodules (train / validation / test, by patient); %d all-empty skipped",
                len(train_n), len(val_n), len(test_n), data.n_skipped_empty)
    kwargs = _model_kwargs(config)
    model = create_model(config.architecture, **kwargs)
    train_ds = NoduleSliceDataset(train_n, config.size, config.context, transform=nodule_augmentation())
    criterion = DiceCELoss(sigmoid=True, batch=config.loss == "dice-ce-batch")
    divisor = 2 ** (config.depth - 1)

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return criterion(m(batch["image"]).float(), batch["label"])

    def val_probabilities(m: torch.nn.Module, bf16: bool = False) -> list[np.ndarray]:
        return stacks_probabilities(m, [n.images for n in val_n], config.context, divisor, bf16=bf16, tta=config.tta)

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        return {"dice": _dice_at(val_probabilities(m, config.bf16), val_n, 0.5)}

    summary = fit_best(model, train_ds, loss_fn, evaluate_fn, config, monitor="dice")
    if summary is None:
        return {}
    probs = val_probabilities(model)
    grid = {t: _dice_at(probs, val_n, t) for t in THRESHOLD_GRID}
    threshold = max(grid, key=lambda t: (grid[t], -abs(t - 0.5)))
    val_rows = [_nodule_row(n, centre_component(p >= threshold)) for n, p in zip(val_n, probs)]
    card: dict[str, Any] = {
        "name": config.name,
        "architecture": config.architecture,
        "model_kwargs": kwargs,
        "task": "nodule-seg",
        "labels": ["nodule"],
        "thresholds": {"nodule": threshold},
        "postprocessing": {"tta": "mean over the 4 in-plane flips" if config.tta else "none",
                           "component": "the 3-D connected component at (or nearest to) the crop's centre"},
        "threshold_grid_dice": {str(t): round(v, 4) for t, v in grid.items()},
        "input": {"size": [config.size, config.size], "channels": 2 * config.context + 1, "context": config.context,
                  "slices": "channels = slices i-context .. i+context of the nodule's stack (end slice repeated); "
                            "output = mask of slice i",
                  "normalisation": "8-bit crop grey / 255; CT in HU -> grey through the window below, then / 255",
                  "window_hu": list(CROP_WINDOW_HU),
                  "window_evidence": "estimated statistically (pulmo.datasets.lidc_slices.CROP_WINDOW_HU)",
                  "pixel_mm_est": MM_PER_PX,
                  "framing": f"axial crop centred on the nodule at the crops' native pixel size; training on the "
                             f"centre {config.size} px window, inference on the whole crop (padded to a multiple "
                             f"of {divisor})"},
        "training": {
            "data": config.data, "format": config.format,
            "split": {"rule": f"by patient with pulmo.datasets.split_by_patient(exact=True): test = the "
                              f"{config.test_fraction:.0%} of patients with the smallest patient_fold(seed "
                              f"{config.split_seed}), validation = {config.val_fraction:.0%} of all patients "
                              f"from the rest, train = the others",
                      "n_patients": {"train": len({n.patient_id for n in train_n}),
                                     "validation": len({n.patient_id for n in val_n}),
                                     "test": len({n.patient_id for n in test_n})},
                      "n_nodules": {"train": len(train_n), "validation": len(val_n), "test": len(test_n)},
                      "validation_patients": sorted({n.patient_id for n in val_n}),
                      "test_patients": sorted({n.patient_id for n in test_n})},
            "n_train_slices": len(train_ds), "n_skipped_empty": data.n_skipped_empty,
            "target": "50 % consensus of the readers who outlined the nodule",
            "loss": (f"MONAI DiceCELoss(sigmoid=True, batch={config.loss == 'dice-ce-batch'}) "
                     f"({config.loss})"),
            "augmentation": AUGMENTATION,
            **provenance(config, summary, command, world_size=summary["world_size"]),
            "pretraining": "none (trained from scratch)"},
        "metrics": {"validation": overlap_report(val_rows), "threshold_from": "validation"},
        "reference": {"NoduleNet (Tang et al., MICCAI 2019)": {
            "dsc": NODULENET_DSC, "note": "3-D segmentation branch on LIDC-IDRI, detected nodules in whole scans, "
                                          "own consensus masks and cross-validation: a reference point, not the "
                                          "same protocol"}},
        "scope": {
            "classes": ["nodule"],
            "trained_on": "LIDC-IDRI-slices: 8-bit lung-windowed axial crops centred on LIDC nodules >= 3 mm "
                          "(~0.69 mm/px), 1-4 radiologists' outlines, 50 % consensus masks",
            "cannot_see": "whole CT slices or scans (it outlines a nodule already found and centred in a crop; it "
                          "does not detect), nodules < 3 mm and non-nodules (never outlined in LIDC), CT values not "
                          "mapped through input.window_hu, crops at a very different pixel size (resample to ~0.7 mm/px), "
                          "3-D context beyond one slice either side"},
        "license": "Apache-2.0 (weights); trained on LIDC-IDRI (CC BY 3.0: cite Armato et al. 2011)",
    }
    seg = NoduleSegmenter(model=model, card=card)
    test_rows = seg.score(test_n, progress=config.progress)
    card["metrics"]["test"] = overlap_report(test_rows)
    card["metrics"]["test"]["n_skipped_empty"] = data.n_skipped_empty
    logger.info("nodule-seg: threshold %.2f; validation dice %.4f; test dice %.4f (n=%d)", threshold,
                card["metrics"]["validation"]["dice_mean"], card["metrics"]["test"]["dice_mean"], len(test_rows))
    return save_run(model, config, card)


class NoduleSegmenter:
    """Nodule segmentation of axial crops centred on a nodule, with a trained weight set.

    Args:
        weights: weight name or ``.safetensors`` path with its card (default ``nodule-seg``).
        model, card: an already built model and its card (used after training).

    Raises:
        WeightsError: missing or corrupted weights.
    """

    def __init__(self, weights: str | None = DEFAULT_WEIGHTS, model: torch.nn.Module | None = None,
                 card: dict[str, Any] | None = None):
        if model is None:
            card = resolve_card(weights)
            model = create_model(card["architecture"], weights=weights)
        self.model = model.eval()
        self.card = card or {}
        inp = self.card.get("input", {})
        self.context = int(inp.get("context", 1))
        self.window = tuple(inp.get("window_hu", CROP_WINDOW_HU))
        self.threshold = float(self.card.get("thresholds", {}).get("nodule", 0.5))
        self.divisor = 2 ** (int(self.card.get("model_kwargs", {}).get("depth", 4)) - 1)
        self.tta = str(self.card.get("postprocessing", {}).get("tta", "none")) != "none"

    def _grey(self, array: np.ndarray, hu: bool) -> np.ndarray:
        a = np.asarray(array)
        if hu:
            return hu_to_crop_grey(a, self.window)
        if a.dtype == np.uint8:
            return a
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise InputError(f"nodule-seg input: expected uint8 grey levels or float in [0, 1] (or hu=True for "
                             f"HU), got {a.dtype} in [{a.min()}, {a.max()}]")
        return a.astype(np.float32)

    def probabilities(self, images: np.ndarray, hu: bool = False) -> np.ndarray:
        """Nodule probability of every slice of a crop stack: float32 ``(S, H, W)`` in [0, 1].

        Args:
            images: ``(S, H, W)`` consecutive axial slices centred on the nodule: uint8 crop grey levels, float in
                [0, 1], or HU with ``hu=True`` (mapped through the card's ``window_hu``). H, W any size.

        Raises:
            InputError: not a 3-D stack, or values outside the expected range.
        """
        a = np.asarray(images)
        if a.ndim != 3 or min(a.shape) < 1:
            raise InputError(f"nodule-seg input: expected a slice stack (S, H, W), got shape {a.shape}")
        return nodule_probabilities(self.model, self._grey(a, hu), self.context, self.divisor, tta=self.tta)

    def predict(self, stack: np.ndarray, hu: bool = False) -> np.ndarray:
        """Mask of the centre slice of ``2 context + 1`` adjacent slices (3 for the default model).

        Args:
            stack: ``(2 context + 1, H, W)`` slices i-1, i, i+1 (uint8 grey, float in [0, 1], or HU with ``hu=True``).

        Returns:
            bool ``(H, W)`` nodule mask of slice i (probability >= the card's validation threshold).

        Raises:
            InputError: wrong number of slices or values out of range.
        """
        a = np.asarray(stack)
        k = 2 * self.context + 1
        if a.ndim != 3 or a.shape[0] != k:
            raise InputError(f"nodule-seg predict: expected {k} adjacent slices (shape ({k}, H, W)), got {a.shape}")
        prob = self.probabilities(a, hu)[self.context]
        return prob >= self.threshold

    def segment_nodule(self, images: np.ndarray, hu: bool = False) -> np.ndarray:
        """Mask of the nodule a crop stack is centred on, slice by slice: bool ``(S, H, W)``, the probabilities at
        or above the card's threshold, then only the 3-D component at the centre (:func:`centre_component`).

        Args:
            images: ``(S, H, W)`` as in :meth:`probabilities`.
        """
        return centre_component(self.probabilities(images, hu) >= self.threshold)

    def score(self, nodules: Sequence[LidcSliceNodule], progress: bool = True) -> list[dict[str, Any]]:
        """Per-nodule rows ``{"nodule", "patient_id", "n_readers", "n_slices", "crop_px", "diameter_px",
        "diameter_mm_est", "size_group", "dice", "iou", "reader_dice", "model_dice"}``: 3-D Dice/IoU of
        :meth:`segment_nodule` against the 50 % consensus over the nodule's slices, on the whole crop, and the
        leave-one-reader-out comparison (:func:`leave_one_reader_out`; None with one reader)."""
        rows = []
        for start in tqdm(range(0, len(nodules), 64), desc="nodule-seg evaluate", disable=not progress, leave=False):
            chunk = nodules[start:start + 64]
            probs = stacks_probabilities(self.model, [n.images for n in chunk], self.context, self.divisor,
                                         tta=self.tta)
            rows += [_nodule_row(n, centre_component(p >= self.threshold)) for n, p in zip(chunk, probs)]
        return rows


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True) -> EvalReport:
    """Score a weight set on LIDC-IDRI-slices crops.

    Args:
        data: LIDC-IDRI-slices folder or ``.tar.gz``.
        format: ``lidc-slices`` (the only one; None = it).
        annotations: not used (the reader masks are in the layout); must be None.
        weights: weight name or ``.safetensors`` path with its card (None: the bundled ``nodule-seg``).
        split: ``test`` (default: only the patients the card lists as held out, ``training.split.test_patients``) or ``all``.

    Returns:
        :class:`EvalReport` of ``n`` nodules with ``{"split", "dice_mean", "dice_ci95", "iou_mean", "iou_ci95", "n", "n_nodules",
        "n_patients", "n_skipped_empty", "by_readers", "by_size", "size_unit", "reader_agreement", "threshold",
        "reference", "weights", "weights_sha256", "seconds", "per_nodule"}`` (see :func:`overlap_report` and
        :func:`reader_agreement`; ``n`` = ``n_nodules``).

    Raises:
        ConfigError: unknown format or split, or ``split="test"`` with a card that lists no test patients.
        InputError: unreadable data, or none of the card's test patients in ``data``. WeightsError: bad weights.
    """
    format, split = evaluate_arguments("nodule-seg", format, split, annotations)  # before weights or data
    seg = NoduleSegmenter(weights or DEFAULT_WEIGHTS)
    patients = held_out_patients(seg.card) if split == "test" else None
    t0 = time.perf_counter()
    try:
        ds = read_lidc_slices(data, patients=patients, progress=progress)
    except InputError:
        if patients is None:
            raise
        raise InputError(f"{data}: none of the {len(patients)} held-out test patients of weights "
                         f"{seg.card.get('name')!r} is in the data (e.g. {patients[0]})") from None
    rows = seg.score(ds.nodules, progress=progress)
    report = overlap_report(rows)
    return EvalReport.from_metrics({"task": "nodule-seg", "split": split, **report, "n": report["n_nodules"],
            "reader_agreement": reader_agreement(rows),
            "n_skipped_empty": ds.n_skipped_empty, "threshold": seg.threshold,
            "reference": {"nodulenet_dsc": NODULENET_DSC, "source": "Tang et al., MICCAI 2019 (3-D, other protocol)"},
            "weights": seg.card.get("name"), "weights_sha256": seg.card.get("sha256"),
            "seconds": round(time.perf_counter() - t0, 2), "per_nodule": rows}, task="nodule-seg")


def summary(report: EvalReport) -> str:
    """Dice with its 95 % interval, IoU, the nodules skipped for empty masks, and the model next to a reader."""
    line = (f"split={report['split']} nodules={report['n_nodules']} patients={report['n_patients']} "
            f"dice_mean={report['dice_mean']:.4f} [{report['dice_ci95'][0]:.4f}, {report['dice_ci95'][1]:.4f}] "
            f"iou_mean={report['iou_mean']:.4f} skipped_empty={report['n_skipped_empty']}")
    agree = report.get("reader_agreement") or {}
    if agree.get("n_nodules"):
        lo, hi = agree["difference_ci95"]
        line += (f"; vs the other readers ({agree['n_nodules']} nodules with >= 2 readers): "
                 f"reader_dice={agree['reader_dice_mean']:.4f} model_dice={agree['model_dice_mean']:.4f} "
                 f"difference={agree['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    return line


Config = NoduleSegConfig
SPLITS = task_entry("nodule-seg").splits


class Predictor(FromWeights, NoduleSegmenter):
    """The task contract's predictor: :meth:`predict` outlines the nodule a crop stack is centred on
    (:meth:`NoduleSegmenter.segment_nodule`); :meth:`NoduleSegmenter.predict` gives one centre slice."""

    default_weights = DEFAULT_WEIGHTS

    def predict(self, images: np.ndarray, hu: bool = False) -> np.ndarray:  # type: ignore[override]
        """bool ``(S, H, W)`` mask of the nodule at the centre of an axial crop stack ``(S, H, W)`` (uint8 crop
        grey, float in [0, 1], or HU with ``hu=True``).

        Raises:
            InputError: not a 3-D stack, or values outside the expected range.
        """
        return self.segment_nodule(images, hu)




# ---------------------------------------------------------------------------------------------- CT pipeline

#: ``mask_method`` of a detected nodule whose mask :func:`refine_nodule_masks` replaced.
MASK_METHOD = "nodule-seg (2.5-D U-Net, real LIDC crops)"
#: ``mask_method`` of a detected nodule that keeps the mask of the detector's mask head (:mod:`pulmo.tasks.nodule`).
DETECTOR_MASK_METHOD = "nodule (NoduleNet mask head)"
#: Axial margin (mm) around the detected sphere: slices within ``radius + margin`` of the centre are segmented.
REFINE_MARGIN_MM = 3.0
#: In-plane pixel sizes within this relative distance of the crops' (:data:`MM_PER_PX`) are used as they are (the
#: crops are at the scans' native spacing, 0.46-0.98 mm in LIDC, so the model has seen this spread); beyond it the
#: slice crops are resampled to the crops' pixel size.
RESAMPLE_TOLERANCE = 0.25
#: Crop sides (px at the crops' scale) of the dataset: the first that holds the detected sphere + margin is used.
REFINE_CROP_PX = (64, 128)


@dataclasses.dataclass(frozen=True)
class RefineWindow:
    """Where :func:`refine_nodule_masks` looks for one nodule, in the volume's voxel grid.

    Attributes:
        z: ``(z0, z1)`` the axial slices segmented (``z0 <= z < z1``, centre ± radius + margin, clipped to the
            volume); ``z_context`` ``(c0, c1)`` the slices read for them (one more either side for 3-slice context
            where the volume has them).
        side: crop side in px (64 or 128, :data:`REFINE_CROP_PX`).
        origin_yx: voxel coordinates (continuous) of crop pixel ``(0, 0)``; ``step_yx``: voxels per crop pixel
            (1.0 = native spacing, no resampling). Crop pixel ``(i, j)`` is at voxel ``origin + (i, j) * step``.
        rows, cols: ``(lo, hi)`` the voxel rows / columns (``lo <= y < hi``) whose centres the crop covers
            (clipped to the volume): the refined mask never leaves ``z x rows x cols``.
        pixel_mm: ``(y, x)`` crop pixel size in mm.
    """

    z: tuple[int, int]
    z_context: tuple[int, int]
    side: int
    origin_yx: tuple[float, float]
    step_yx: tuple[float, float]
    rows: tuple[int, int]
    cols: tuple[int, int]
    pixel_mm: tuple[float, float]

    @property
    def resampled(self) -> bool:
        """True when the crop is resampled (another pixel size than the scan's)."""
        return self.step_yx != (1.0, 1.0)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The window as index slices of the volume ``(z, rows, cols)``."""
        return slice(*self.z), slice(*self.rows), slice(*self.cols)


def refine_window(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], centre_zyx: Sequence[float],
                  radius_mm: float, context: int = 1, pixel_mm: float = MM_PER_PX,
                  margin_mm: float = REFINE_MARGIN_MM, resample_tolerance: float = RESAMPLE_TOLERANCE) -> RefineWindow:
    """The crop window of one nodule (see :class:`RefineWindow` and :func:`refine_nodule_masks`).

    Axially: slices whose centre is within ``radius_mm + margin_mm`` of the nodule centre's slice (at least one
    either side), plus ``context`` slices either side for the 2.5-D input. In-plane: a square of
    :data:`REFINE_CROP_PX` side (the smallest holding ``2 (radius_mm + margin_mm)``) centred on the nodule; at the
    scan's own pixel size when it is within ``resample_tolerance`` (relative) of ``pixel_mm``, with the crop
    centred on the centre voxel (no interpolation); else resampled to ``pixel_mm`` and centred on the continuous
    centre.
    """
    zc, yc, xc = (float(v) for v in centre_zyx)
    n_z, n_y, n_x = (int(v) for v in shape_zyx)
    sz, sy, sx = (float(v) for v in spacing_zyx)
    reach_mm = max(float(radius_mm), 0.0) + margin_mm
    zi = int(np.clip(round(zc), 0, n_z - 1))
    half_z = max(1, math.ceil(reach_mm / sz))
    z0, z1 = max(0, zi - half_z), min(n_z, zi + half_z + 1)
    steps = tuple(1.0 if abs(s / pixel_mm - 1.0) <= resample_tolerance else pixel_mm / s for s in (sy, sx))
    px_mm = (sy * steps[0], sx * steps[1])
    need = 2.0 * reach_mm / min(px_mm)
    side = next((s for s in REFINE_CROP_PX if need <= s), REFINE_CROP_PX[-1])
    origin, ranges = [], []
    for c, step, n in zip((yc, xc), steps, (n_y, n_x)):
        a = (round(c) if step == 1.0 else c) - (side // 2) * step
        lo = max(0, math.ceil(a - 0.5 * step - 1e-9))
        hi = min(n, math.floor(a + (side - 0.5) * step - 1e-9) + 1)
        origin.append(float(a))
        ranges.append((int(lo), int(max(lo, hi))))
    return RefineWindow(z=(z0, z1), z_context=(max(0, z0 - context), min(n_z, z1 + context)), side=side,
                        origin_yx=(origin[0], origin[1]), step_yx=(float(steps[0]), float(steps[1])),
                        rows=ranges[0], cols=ranges[1], pixel_mm=(float(px_mm[0]), float(px_mm[1])))


def _refine_one(hu: np.ndarray, spacing: np.ndarray, nodule: dict[str, Any], segmenter: NoduleSegmenter,
                pixel_mm: float, margin_mm: float, resample_tolerance: float
                ) -> tuple[RefineWindow, np.ndarray | None]:
    """One nodule's refined mask: ``(window, bool (len z, len rows, len cols) or None)``; None when the
    network marks no component at (or within the detected radius of) the centre."""
    centre = np.asarray(nodule["center_zyx_index"], np.float64)
    radius = float(nodule.get("diameter_mm") or 0.0) / 2.0
    w = refine_window(hu.shape, spacing, centre, radius, segmenter.context, pixel_mm, margin_mm, resample_tolerance)
    (z0, z1), (c0, c1) = w.z, w.z_context
    if z1 <= z0 or w.rows[1] <= w.rows[0] or w.cols[1] <= w.cols[0]:
        return w, None
    # the crop stack in HU, at the crops' scale (exact voxel copies when not resampled; edge values beyond the scan)
    grid = [a + np.arange(w.side) * s for a, s in zip(w.origin_yx, w.step_yx)]
    coords = np.stack(np.meshgrid(*grid, indexing="ij"))
    stack = np.stack([ndimage.map_coordinates(hu[z].astype(np.float32, copy=False), coords, order=1,
                                              mode="nearest") for z in range(c0, c1)])
    prob = segmenter.probabilities(stack, hu=True)[z0 - c0:z1 - c0]     # crop window -> grey, 2.5-D, slice by slice
    # back onto the volume grid: the voxels whose centres the crop covers, bilinear in the probabilities
    back = [(np.arange(lo, hi) - a) / s for (lo, hi), a, s in zip((w.rows, w.cols), w.origin_yx, w.step_yx)]
    back_coords = np.stack(np.meshgrid(*back, indexing="ij"))
    mask = np.stack([ndimage.map_coordinates(p, back_coords, order=1, mode="nearest") for p in prob])
    mask = mask >= segmenter.threshold
    if not mask.any():
        return w, None
    components, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    offset = np.array([z0, w.rows[0], w.cols[0]])
    ci = np.rint(centre).astype(int) - offset
    if all(0 <= i < n for i, n in zip(ci, mask.shape)) and components[tuple(ci)]:
        keep = components[tuple(ci)]
    else:                                          # centre voxel not marked: the nearest component within the radius
        pts = np.argwhere(mask)
        dist = np.sqrt((((pts + offset - centre) * spacing) ** 2).sum(axis=1))
        nearest = int(dist.argmin())
        if dist[nearest] > max(radius, float(spacing[1:].max())):
            return w, None
        keep = components[tuple(pts[nearest])]
    return w, components == keep


def refine_nodule_masks(hu_volume: np.ndarray, spacing_zyx: Sequence[float], nodules: Sequence[dict[str, Any]],
                        label_mask: np.ndarray, segmenter: NoduleSegmenter, margin_mm: float = REFINE_MARGIN_MM,
                        resample_tolerance: float = RESAMPLE_TOLERANCE) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Replace the detector's nodule masks by ``nodule-seg``'s outlines (the CT pipeline's mask refinement).

    For each nodule (number ``k`` = its position in ``nodules`` + 1 = label ``k`` of ``label_mask``), with its
    detected centre ``center_zyx_index`` and sphere ``diameter_mm``:

    1. **crop** (:func:`refine_window`): the axial slices within ``radius + margin_mm`` of the centre slice (at
       least one either side), each cropped to a 64 x 64 square (128 x 128 when the sphere + margin does not fit)
       centred on the nodule, the crops' framing. Pixel size: the scan's own when within ``resample_tolerance``
       of the crops' ``input.pixel_mm_est`` (~0.69 mm, :data:`MM_PER_PX`; the crops are at native spacing, no
       interpolation then), else bilinear resampling of the HU slices to that pixel size;
    2. **window**: HU -> 8-bit grey through the card's ``input.window_hu`` (:data:`CROP_WINDOW_HU`,
       :func:`~pulmo.datasets.lidc_slices.hu_to_crop_grey`), exactly as the training crops;
    3. **segment** slice by slice with 3-slice context (slices i-1, i, i+1 of the scan; the slices either side
       of the window are read for context where the volume has them), probability >= the card's threshold,
       mapped back onto the volume grid (bilinear in the probabilities when resampled);
    4. **component**: the 3-D connected component (26-connectivity) containing the centre voxel; when the
       centre voxel is not marked, the component nearest to the centre if within the detected radius (at least
       one in-plane voxel). No component: the detector's mask is kept;
    5. **labels**: the nodules are written in order, a voxel keeping the first (most probable) nodule that claims
       it, as the detector does; a refined nodule's voxels are its kept component only (its old mask is
       dropped), an unrefined nodule keeps its old voxels.

    Recomputed for every refined nodule from its voxels in the returned label mask: ``volume_mm3`` = voxels x
    voxel volume (mm³, rounded to 0.1) and ``diameter_mm`` = the equivalent-sphere diameter ``(6 V / pi)^(1/3)``
    (mm, rounded to 0.01; the detector's definition). The centre, ``probability`` and ``slice_index`` stay the
    detector's. Every nodule gets ``mask_method``: :data:`MASK_METHOD` (refined) or :data:`DETECTOR_MASK_METHOD`.

    Args:
        hu_volume: float ``(Z, Y, X)`` CT in Hounsfield units.
        spacing_zyx: ``(z, y, x)`` voxel size in mm, each > 0.
        nodules: the detector's findings entries (each with ``center_zyx_index`` ``[z, y, x]`` continuous voxel
            indices and ``diameter_mm``), most probable first; not modified.
        label_mask: int ``(Z, Y, X)``, 0 background, ``k`` = nodule ``k`` (1..len(nodules)); not modified.
        segmenter: a :class:`NoduleSegmenter` (``nodule-seg`` weights).
        margin_mm: axial and in-plane margin (mm) beyond the detected radius, >= 0.
        resample_tolerance: relative pixel-size difference up to which the scan's pixels are used as they are, >= 0.

    Returns:
        ``(label_mask, nodules)``: a new label map of ``label_mask``'s shape and dtype, and new nodule dicts (copies
        with ``mask_method`` and, when refined, new ``diameter_mm`` and ``volume_mm3``), in the same order.

    Raises:
        InputError: ``hu_volume`` not 3-D or not finite-valued floats/ints, ``label_mask`` of another shape or with
            labels beyond ``len(nodules)``, a spacing that is not three positive numbers, a nodule without a
            3-value ``center_zyx_index``, or a negative ``margin_mm`` / ``resample_tolerance``.
    """
    hu = np.asarray(hu_volume)
    labels = np.asarray(label_mask)
    spacing = np.asarray(spacing_zyx, np.float64).ravel()
    if hu.ndim != 3 or not (np.issubdtype(hu.dtype, np.floating) or np.issubdtype(hu.dtype, np.integer)):
        raise InputError(f"refine_nodule_masks: expected a (Z, Y, X) HU volume, got {hu.dtype} of shape {hu.shape}")
    if labels.shape != hu.shape or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"refine_nodule_masks: label mask {labels.dtype} {labels.shape}; expected integer labels of "
                         f"the volume's shape {hu.shape}")
    if spacing.shape != (3,) or not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise InputError(f"refine_nodule_masks: spacing {list(spacing)}; expected three positive mm (z, y, x)")
    if margin_mm < 0 or resample_tolerance < 0:
        raise InputError(f"refine_nodule_masks: margin_mm {margin_mm} and resample_tolerance {resample_tolerance} "
                         "must be >= 0")
    n_labels = int(labels.max()) if labels.size else 0
    if n_labels > len(nodules) or (labels.size and labels.min() < 0):
        raise InputError(f"refine_nodule_masks: label mask holds labels up to {n_labels} for {len(nodules)} nodules")
    for k, n in enumerate(nodules, 1):
        c = n.get("center_zyx_index")
        if c is None or np.shape(c) != (3,) or not np.isfinite(np.asarray(c, np.float64)).all():
            raise InputError(f"refine_nodule_masks: nodule {k} has no finite center_zyx_index [z, y, x] ({c!r})")
    pixel_mm = float(segmenter.card.get("input", {}).get("pixel_mm_est", MM_PER_PX))
    voxel_mm3 = float(np.prod(spacing))
    boxes = ndimage.find_objects(labels, max_label=len(nodules)) if len(nodules) else []
    out = np.zeros_like(labels)
    rows = []
    for k, n in enumerate(nodules, 1):
        window, refined = _refine_one(hu, spacing, n, segmenter, pixel_mm, margin_mm, resample_tolerance)
        row = dict(n)
        if refined is None:
            if boxes[k - 1] is not None:
                region, old = out[boxes[k - 1]], labels[boxes[k - 1]] == k
                region[old & (region == 0)] = k
            row["mask_method"] = DETECTOR_MASK_METHOD
            logger.info("nodule %d: nodule-seg marks nothing at its centre; the detector's mask is kept", k)
        else:
            region = out[window.slices]
            claimed = refined & (region == 0)
            region[claimed] = k
            vol_mm3 = float(claimed.sum()) * voxel_mm3
            row.update(diameter_mm=round((6.0 * vol_mm3 / math.pi) ** (1.0 / 3.0), 2), volume_mm3=round(vol_mm3, 1),
                       mask_method=MASK_METHOD)
        rows.append(row)
    return out, rows
