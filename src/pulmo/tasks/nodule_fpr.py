"""``nodule-fpr``: second-stage false-positive reduction of nodule candidates, trained on real nodules (issue 16).

The ``nodule`` detector (:mod:`pulmo.tasks.nodule`) learnt nodules from synthetic ones inserted into real lungs. This
second stage looks at each of its candidates again, as a 2.5-D axial crop, and gives the probability that it is a
real nodule; the CT pipeline and ``pulmo evaluate nodule`` then rank and threshold candidates by it (the classic
two-stage CAD design: candidates, then a false-positive reduction classifier, as in the LUNA16 challenge's FPR
track, Setio et al., Med. Image Anal. 2017).

Input: 3 adjacent axial slices (the candidate's slice and one either side) as channels, 64 x 64 px at the
LIDC-IDRI-slices crops' pixel size (~0.69 mm/px, :data:`~pulmo.datasets.lidc_slices.MM_PER_PX`; 44 mm across),
8-bit lung-windowed grey / 255 (CT in HU goes through :data:`~pulmo.datasets.lidc_slices.CROP_WINDOW_HU`).

Data:

- positives: the real LIDC-IDRI nodules of LIDC-IDRI-slices (Armato et al. 2011; 1-4 readers), every slice whose
  50 % consensus covers at least half the nodule's largest cross-section, split by patient exactly as
  ``nodule-seg`` (:func:`~pulmo.datasets.lidc_slices.split_nodules`, same fractions and seed, so both models
  hold out the same patients);
- negatives: crops of real chest CT series at points that are not nodules: the ``nodule`` detector's own
  candidates away from every reader's nodule mark, the radiologists' "non-nodule" marks (LIDC XML), and random
  lung points on vessels (HU > -500 inside the lungs), on the lung border (pleura, fissures at the mask edge) and
  in the parenchyma. Points within ``radius + 5 mm`` of any reader's nodule (any size, any number of readers) or
  a label volume's lesion are never negatives.

Model: torchvision ResNet-18 (registry ``resnet18``, 3 input channels, one logit), from scratch; BCE with
``pos_weight`` = negatives / positives; AdamW, cosine schedule (:func:`pulmo.engine.fit`), the best epoch by
validation ROC AUC (validation patients' positives against the negatives of the validation scan slices).
Operating threshold: the highest that keeps ``target_sensitivity`` (0.95) of the validation patients' nodules.

Evaluation: leave-one-scan-out (``--held-out-scan``): the negatives of one CT series are never trained on, and that
series gives the false-positive figures (its detector candidates called nodules at the threshold, and the share of
its random vessel / border / parenchyma crops called nodules); the test patients' nodules give the sensitivity, by
size. With two full series available here this is a small external check, stated as such in the card.
"""

from __future__ import annotations

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
from torch.utils.data import Dataset

from pulmo.datasets.lidc_slices import (
    CROP_WINDOW_HU,
    MM_PER_PX,
    LidcSliceNodule,
    centre_crop,
    context_stack,
    hu_to_crop_grey,
    read_lidc_slices,
    size_group,
    split_nodules,
)
from pulmo.engine import TrainConfig, fit_best, provenance, save_run
from pulmo.errors import ConfigError, InputError
from pulmo.io import Volume, read_image, read_labels
from pulmo.metrics import bootstrap_ci
from pulmo.metrics.classification import roc_auc
from pulmo.models import create_model, model_device
from pulmo.tasks.base import EvalReport, FromWeights, held_out_patients
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.weights import resolve_card

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "nodule-fpr"
#: Crop side (px at :data:`MM_PER_PX`) and slices either side of the candidate's slice.
SIDE_PX = 64
CONTEXT = 1
#: Scan pixel sizes within this relative distance of :data:`MM_PER_PX` are used unresampled (as ``nodule-seg``).
RESAMPLE_TOLERANCE = 0.25
#: Negatives are drawn no closer than ``radius + EXCLUSION_MARGIN_MM`` to a real nodule.
EXCLUSION_MARGIN_MM = 5.0
#: HU above which a lung voxel counts as a vessel point.
VESSEL_HU = -500.0
NEGATIVE_KINDS = ("detector", "non-nodule", "vessel", "border", "parenchyma")


def scan_crop(hu: np.ndarray, spacing_zyx: Sequence[float], centre_zyx: Sequence[float], side: int = SIDE_PX,
              context: int = CONTEXT, pixel_mm: float = MM_PER_PX,
              window: tuple[float, float] = CROP_WINDOW_HU) -> np.ndarray:
    """The 2.5-D crop of a CT volume at a point, in the LIDC-IDRI-slices crops' form.

    Args:
        hu: ``(Z, Y, X)`` CT in HU. spacing_zyx: voxel size in mm. centre_zyx: the point in voxels (continuous).
        side: crop side in px; context: slices either side (edge slices repeated beyond the volume).
        pixel_mm: crop pixel size; the scan's own pixels are used when within :data:`RESAMPLE_TOLERANCE` of it
            (crop centred on the nearest voxel), else bilinear resampling to it.
        window: HU window mapped to grey 0-255 (:func:`~pulmo.datasets.lidc_slices.hu_to_crop_grey`).

    Returns:
        uint8 ``(2 context + 1, side, side)``; pixels beyond the volume take the nearest edge value.
    """
    n_z = hu.shape[0]
    zi = int(np.clip(round(float(centre_zyx[0])), 0, n_z - 1))
    zs = np.clip(np.arange(zi - context, zi + context + 1), 0, n_z - 1)
    grids = []
    for c, s in zip(centre_zyx[1:], spacing_zyx[1:]):
        step = 1.0 if abs(float(s) / pixel_mm - 1.0) <= RESAMPLE_TOLERANCE else pixel_mm / float(s)
        start = (round(float(c)) if step == 1.0 else float(c)) - (side // 2) * step
        grids.append(start + np.arange(side) * step)
    coords = np.stack(np.meshgrid(*grids, indexing="ij"))
    out = np.stack([ndimage.map_coordinates(hu[z].astype(np.float32, copy=False), coords, order=1, mode="nearest")
                    for z in zs])
    return hu_to_crop_grey(out, window)


def nodule_crops(n: LidcSliceNodule, min_area_fraction: float = 0.5, side: int = SIDE_PX,
                 context: int = CONTEXT) -> np.ndarray:
    """Positive crops of one LIDC-IDRI-slices nodule: every slice whose consensus area is at least
    ``min_area_fraction`` of the largest (1.0: only the largest), centre ``side`` px, with ``context`` slices either
    side. Returns uint8 ``(K, 2 context + 1, side, side)`` (K >= 1; the largest slice first)."""
    areas = n.consensus.reshape(len(n.consensus), -1).sum(axis=1)
    if not areas.any():
        areas = np.asarray([m.reshape(len(m), -1).sum(axis=1) for m in n.masks]).max(axis=0)
    order = [int(areas.argmax())] + [i for i in range(len(areas))
                                     if i != int(areas.argmax()) and areas[i] >= min_area_fraction * areas.max()]
    images = centre_crop(n.images, side)
    if min(images.shape[-2:]) < side:
        images = np.pad(images, [(0, 0)] + [(max(0, (side - d) // 2), max(0, side - d - (side - d) // 2))
                                            for d in images.shape[-2:]], mode="edge")
    return np.stack([context_stack(images, i, context) for i in order])


@dataclasses.dataclass
class ScanCandidates:
    """The crops of one CT series for training or scoring (see :func:`scan_candidates`).

    Attributes:
        name: the series' name. crops: uint8 ``(N, 3, 64, 64)``. kinds: per crop, one of :data:`NEGATIVE_KINDS`
        or ``"reference"`` (a reference nodule, a positive from a full scan). centres_zyx: ``(N, 3)`` voxels.
        detector_probability: ``(N,)`` the detector's probability (NaN for points not from the detector).
        diameter_mm: ``(N,)`` the detector's / reference's diameter (NaN for random points).
        references: ``[(centre_zyx, diameter_mm)]`` the series' reference nodules (LUNA16: >= 3 readers).
        spacing_zyx: voxel size (mm).
    """

    name: str
    crops: np.ndarray
    kinds: list[str]
    centres_zyx: np.ndarray
    detector_probability: np.ndarray
    diameter_mm: np.ndarray
    references: list[tuple[np.ndarray, float]]
    spacing_zyx: np.ndarray

    def subset(self, keep: np.ndarray) -> ScanCandidates:
        """The crops where ``keep`` (bool ``(N,)``) is true."""
        idx = np.flatnonzero(keep)
        return dataclasses.replace(self, crops=self.crops[idx], kinds=[self.kinds[i] for i in idx],
                                   centres_zyx=self.centres_zyx[idx],
                                   detector_probability=self.detector_probability[idx],
                                   diameter_mm=self.diameter_mm[idx])


def _real_lesions(source: str, volume: Volume, label: str | None
                  ) -> tuple[list[tuple[np.ndarray, float]], list[tuple[np.ndarray, float]], list[np.ndarray]]:
    """``(references, exclusions, non_nodules)`` of a series: reference nodules ``(centre_zyx, diameter_mm)``
    (LIDC clusters of >= 3 readers; a label volume's components), every real lesion to keep negatives away from
    ``(centre_zyx, radius_mm)``, and the readers' non-nodule points ``centre_zyx``."""
    refs, excl, non = [], [], []
    src = Path(source)
    if src.is_dir():
        from pulmo.datasets.lidc import load_lidc_scan

        try:
            scan = load_lidc_scan(src, volume=volume)
        except InputError as exc:
            logger.info("%s: no LIDC reads (%s)", src, exc)
        else:
            for c in scan.clusters:
                centre = np.mean([m.centre_index for m in c.marks], axis=0)
                if c.n_readers >= 3:
                    refs.append((centre, float(c.diameter_mm)))
                excl.append((centre, float(c.diameter_mm) / 2))
            excl += [(np.asarray(p.index, float), 1.5) for p in scan.small_nodules]
            non = [np.asarray(p.index, float) for p in scan.non_nodules]
    if label:
        lab = read_labels(label)
        if lab.shape != volume.shape:
            raise InputError(f"{label}: label volume does not match {source} {volume.shape}")
        components, n = ndimage.label(lab.labels > 0)
        voxel_mm3 = float(np.prod(volume.spacing))
        for k in range(1, n + 1):
            pts = np.argwhere(components == k)
            diameter = (6 * len(pts) * voxel_mm3 / math.pi) ** (1 / 3)
            refs.append((pts.mean(axis=0), diameter))
            excl.append((pts.mean(axis=0), diameter / 2))
    return refs, excl, non


def _far_from(points_zyx: np.ndarray, exclusions: list[tuple[np.ndarray, float]], spacing: np.ndarray,
              margin_mm: float = EXCLUSION_MARGIN_MM) -> np.ndarray:
    keep = np.ones(len(points_zyx), bool)
    for centre, radius in exclusions:
        dist = np.sqrt((((points_zyx - centre) * spacing) ** 2).sum(axis=1))
        keep &= dist > radius + margin_mm
    return keep


def scan_candidates(source: str, label: str | None = None, n_random: int = 200, seed: int = 0,
                    detector_weights: str = "nodule") -> ScanCandidates:
    """Crops of a CT series (DICOM folder with an LIDC XML, NIfTI, NRRD, mhd): the reference nodules and the
    negatives of :data:`NEGATIVE_KINDS` (see the module docstring), ``n_random`` random points per random kind.

    Args:
        source: the series. label: a label volume of its lesions (e.g. pyradiomics' ``lung1_label.nrrd``).
        n_random: points per random kind (vessel, border, parenchyma). seed: their random generator.
        detector_weights: the first-stage ``nodule`` weights whose candidates become negatives.

    Raises:
        InputError: not a CT volume, no lungs, or a label volume on another grid.
    """
    from pulmo.tasks.nodule import NoduleDetector
    from pulmo.transforms.ct import lung_mask_ct

    volume = read_image(source)
    if not isinstance(volume, Volume):
        raise InputError(f"{source}: expected a CT volume")
    spacing = np.asarray(volume.spacing, float)
    refs, excl, non = _real_lesions(source, volume, label)
    lungs = lung_mask_ct(volume)
    rng = np.random.default_rng(seed)
    points: list[tuple[np.ndarray, str, float, float]] = [(c, "reference", math.nan, d) for c, d in refs]
    found = NoduleDetector(detector_weights, second_stage=None).detect(volume, lungs)
    det = np.array([n["center_zyx_index"] for n in found], float).reshape(-1, 3)
    for n, keep in zip(found, _far_from(det, excl, spacing)):
        if keep:
            points.append((np.asarray(n["center_zyx_index"], float), "detector", float(n["probability"]),
                           float(n["diameter_mm"])))
    if non:
        non_pts = np.asarray(non)
        points += [(p, "non-nodule", math.nan, math.nan) for p in non_pts[_far_from(non_pts, excl, spacing)]]
    border = lungs & ~ndimage.binary_erosion(lungs, iterations=2)
    vessel = lungs & (volume.hu > VESSEL_HU) & ~border
    parenchyma = lungs & ~vessel & ~border
    for kind, region in (("vessel", vessel), ("border", border), ("parenchyma", parenchyma)):
        pts = np.argwhere(region)
        pts = pts[_far_from(pts.astype(float), excl, spacing)]
        if len(pts):
            pick = pts[rng.choice(len(pts), size=min(n_random, len(pts)), replace=False)]
            points += [(p.astype(float), kind, math.nan, math.nan) for p in pick]
    crops = np.stack([scan_crop(volume.hu, spacing, p) for p, *_ in points])
    logger.info("%s: %d reference nodules, %d negatives (%s)", source, len(refs), len(points) - len(refs),
                ", ".join(f"{k} {sum(1 for q in points if q[1] == k)}" for k in NEGATIVE_KINDS))
    return ScanCandidates(name=Path(source).name, crops=crops, kinds=[q[1] for q in points],
                          centres_zyx=np.stack([q[0] for q in points]),
                          detector_probability=np.array([q[2] for q in points]),
                          diameter_mm=np.array([q[3] for q in points]), references=refs, spacing_zyx=spacing)


# ---------------------------------------------------------------------------------------------- model and data

def fpr_augmentation() -> Compose:
    """Training augmentation of ``{"image": (3, H, W)}``: both flips, 90-degree rotations, reversed slice order
    (p 0.5 each), intensity scale +-10 %, shift +-0.04 (p 0.5), gamma 0.8-1.25 (p 0.3), noise sd 0.01 (p 0.2)."""
    return Compose([
        RandFlipd("image", prob=0.5, spatial_axis=0),
        RandFlipd("image", prob=0.5, spatial_axis=1),
        RandRotate90d("image", prob=0.5, max_k=3),
        RandLambdad("image", func=lambda x: x.flip(0) if isinstance(x, torch.Tensor) else x[::-1].copy(), prob=0.5),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.04, prob=0.5),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.8, 1.25)),
        RandGaussianNoised("image", prob=0.2, std=0.01),
    ])


class CropDataset(Dataset):
    """``{"image": float32 (3, 64, 64) in [0, 1], "label": float32 ()}`` items of uint8 crops and 0/1 labels."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, transform=None):
        self.crops, self.labels, self.transform = crops, labels.astype(np.float32), transform

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"image": self.crops[i].astype(np.float32) / 255.0}
        if self.transform is not None:
            sample = self.transform(sample)
        return {"image": torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32),
                "label": torch.tensor(self.labels[i])}


@torch.no_grad()
def crop_probabilities(model: torch.nn.Module, crops: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Nodule probability of uint8 crops ``(N, 3, 64, 64)``: float64 ``(N,)`` in [0, 1] (run on the model's
    device)."""
    model.eval()
    device = model_device(model)
    out = [torch.sigmoid(model(torch.from_numpy(crops[i:i + batch_size].astype(np.float32) / 255.0).to(device))
                         .float())[:, 0].cpu()
           for i in range(0, len(crops), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def threshold_for_sensitivity(scores: np.ndarray, sensitivity: float) -> float:
    """The highest threshold ``t`` with ``mean(scores >= t) >= sensitivity`` (scores of positives).

    Args:
        scores: ``(N,)`` scores (probabilities in [0, 1]) of the validation positives.
        sensitivity: the required share of positives at or above the threshold, in [0, 1].

    Returns:
        One of ``scores`` (ties may keep more positives than required).

    Raises:
        ConfigError: ``scores`` is empty.
    """
    s = np.sort(np.asarray(scores, float))[::-1]
    if len(s) == 0:
        raise ConfigError("no validation positives to choose the nodule-fpr threshold on")
    return float(s[max(0, math.ceil(sensitivity * len(s)) - 1)])


class NoduleFpr:
    """The second stage with a trained weight set: the probability that a CT point is a real nodule.

    Args:
        weights: weight name or ``.safetensors`` path with its card (default ``nodule-fpr``).
        model, card: an already built model and its card (used after training).

    Raises:
        WeightsError: missing or corrupted weights.
    """

    def __init__(self, weights: str | None = DEFAULT_WEIGHTS, model: torch.nn.Module | None = None,
                 card: dict[str, Any] | None = None):
        if model is None:
            card = resolve_card(weights)
            model = create_model(card["architecture"], weights=weights)
        self.model, self.card = model.eval(), card or {}
        self.threshold = float(self.card.get("thresholds", {}).get("probability", 0.5))
        self.window = tuple(self.card.get("input", {}).get("window_hu", CROP_WINDOW_HU))

    def probabilities(self, hu: np.ndarray, spacing_zyx: Sequence[float],
                      centres_zyx: Sequence[Sequence[float]]) -> np.ndarray:
        """Nodule probability at each point ``(z, y, x)`` (voxels) of a CT volume in HU: float64 ``(N,)``."""
        if len(centres_zyx) == 0:
            return np.zeros(0)
        crops = np.stack([scan_crop(hu, spacing_zyx, c, window=self.window) for c in centres_zyx])
        return crop_probabilities(self.model, crops)


# ---------------------------------------------------------------------------------------------- training

@dataclasses.dataclass
class NoduleFprConfig(TrainConfig):
    """Settings of ``pulmo train nodule-fpr`` (adds to :class:`TrainConfig`).

    Attributes:
        data: LIDC-IDRI-slices folder or ``.tar.gz`` (the positives).
        scans: CT series for the negatives (``PATH`` or ``PATH=LABEL`` with a label volume of its lesions).
        held_out_scan: the name of one of ``scans`` whose negatives are kept out of training and scored
            (leave-one-scan-out); empty = train on all.
        n_random: random points per kind and scan. min_area_fraction: positive slices (see :func:`nodule_crops`).
        test_fraction: share of patients held out for testing. val_fraction: share of patients for
            validation. split_seed: seed of the patient split (as ``nodule-seg``).
        val_negative_fraction: share of the training scans' negatives (by axial slab) kept for validation.
        target_sensitivity: the threshold keeps this share of the validation patients' nodules.
        architecture: registered classifier (``resnet18``). name: weight-set name.
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (12, 64, 1e-3, 5).
    """

    data: str = ""
    scans: list[str] = dataclasses.field(default_factory=list)
    held_out_scan: str = ""
    n_random: int = 300
    min_area_fraction: float = 0.5
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    val_negative_fraction: float = 0.2
    target_sensitivity: float = 0.95
    architecture: str = "resnet18"
    name: str = DEFAULT_WEIGHTS
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 5


def _split_scan(sc: ScanCandidates, fraction: float) -> tuple[ScanCandidates, ScanCandidates]:
    """``(train, validation)`` of a scan's negatives: validation = the axial slab of the top ``fraction`` of
    slices (spatially apart from the training points, whose crops would otherwise overlap)."""
    neg = np.array([k != "reference" for k in sc.kinds])
    z = sc.centres_zyx[:, 0]
    cut = np.quantile(z[neg], 1.0 - fraction) if neg.any() else math.inf
    return sc.subset(neg & (z < cut - 2)), sc.subset(neg & (z >= cut))


def _scan_report(sc: ScanCandidates, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """False-positive figures of one scan at ``threshold``."""
    kinds = np.array(sc.kinds)
    called = probs >= threshold
    out: dict[str, Any] = {"scan": sc.name, "n_crops": len(kinds)}
    for k in NEGATIVE_KINDS:
        m = kinds == k
        out[k] = {"n": int(m.sum()), "called_nodule": int(called[m].sum()),
                  "rate": float(called[m].mean()) if m.any() else None}
    det = kinds == "detector"
    first = det & (sc.detector_probability >= 0.5)
    out["fp_per_scan"] = {"detector_candidates_at_0.5_before": int(first.sum()),
                          "after_second_stage": int((first & called).sum()),
                          "any_detector_candidate_after": int((det & called).sum())}
    ref = kinds == "reference"
    out["references"] = [{"diameter_mm": round(float(d), 1), "probability": round(float(p), 4),
                          "found": bool(p >= threshold)} for d, p in zip(sc.diameter_mm[ref], probs[ref])]
    return out


def _positive_report(nodules: Sequence[LidcSliceNodule], probs: np.ndarray, threshold: float,
                     seed: int = 0) -> dict[str, Any]:
    hit = probs >= threshold
    sizes = np.array([size_group(n.diameter_mm) for n in nodules])
    out = {"n_nodules": len(nodules), "n_patients": len({n.patient_id for n in nodules}),
           "sensitivity": float(hit.mean()),
           "sensitivity_ci95": list(bootstrap_ci(lambda i: float(hit[i].mean()), len(hit), 1000, seed)),
           "by_size": {g: {"n": int((sizes == g).sum()),
                           "sensitivity": float(hit[sizes == g].mean()) if (sizes == g).any() else None}
                       for g in dict.fromkeys(sizes)}}
    return out


def train(config: NoduleFprConfig, command: str = "") -> dict[str, Any]:
    """Train the second stage, choose its threshold on validation, score the held-out patients and the held-out
    scan, and write ``<out_dir>/<name>.safetensors`` (fp16) + its card.

    Returns:
        The card (``metrics``: ``validation``, ``test_positives``, ``held_out_scan``, ``training_scans``).

    Raises:
        ConfigError: bad settings. InputError: unreadable data.
    """
    if not config.data or not config.scans:
        raise ConfigError("NoduleFprConfig needs data (the LIDC-IDRI-slices folder; --data) and at least one CT series in scans (--scans)")
    data = read_lidc_slices(config.data, progress=config.progress)
    train_n, val_n, test_n = split_nodules(data.nodules, config.test_fraction, config.val_fraction, config.split_seed)
    scans = []
    for k, spec in enumerate(config.scans):
        path, _, label = spec.partition("=")
        scans.append(scan_candidates(path, label or None, config.n_random, seed=config.seed + k))
    names = [s.name for s in scans]
    if config.held_out_scan and config.held_out_scan not in names:
        raise ConfigError(f"held-out scan {config.held_out_scan!r} is not one of the scans {names}")
    held = [s for s in scans if s.name == config.held_out_scan]
    trained = [s for s in scans if s.name != config.held_out_scan]
    if not trained:
        raise ConfigError("every scan is held out: nodule-fpr needs negatives to train on")
    splits = [_split_scan(s, config.val_negative_fraction) for s in trained]
    pos_train = np.concatenate([nodule_crops(n, config.min_area_fraction) for n in train_n])
    neg_train = np.concatenate([tr.crops for tr, _ in splits])
    val_pos = np.stack([nodule_crops(n, 1.0)[0] for n in val_n])
    val_neg = np.concatenate([va.crops for _, va in splits])
    logger.info("nodule-fpr: %d positive / %d negative training crops; validation %d / %d", len(pos_train),
                len(neg_train), len(val_pos), len(val_neg))
    model = create_model(config.architecture, in_channels=2 * CONTEXT + 1, num_classes=1)
    # the negatives are fewer than the positives: repeat them (each repeat augmented anew), then weigh the rest
    repeat = max(1, round(len(pos_train) / max(1, len(neg_train))))
    dataset = CropDataset(np.concatenate([pos_train] + [neg_train] * repeat),
                          np.concatenate([np.ones(len(pos_train))] + [np.zeros(len(neg_train))] * repeat),
                          fpr_augmentation())
    pos_weight = torch.tensor(len(neg_train) * repeat / max(1, len(pos_train)))

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = m(batch["image"]).float()[:, 0]
        return F.binary_cross_entropy_with_logits(logits, batch["label"], pos_weight=pos_weight.to(logits.device))

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        p, n = crop_probabilities(m, val_pos), crop_probabilities(m, val_neg)
        m.train()
        return {"auc": roc_auc(np.concatenate([p, n]), np.r_[np.ones(len(p)), np.zeros(len(n))])}

    summary = fit_best(model, dataset, loss_fn, evaluate_fn, config, monitor="auc")
    if summary is None:
        return {}
    p_val, n_val = crop_probabilities(model, val_pos), crop_probabilities(model, val_neg)
    threshold = threshold_for_sensitivity(p_val, config.target_sensitivity)
    p_test = crop_probabilities(model, np.stack([nodule_crops(n, 1.0)[0] for n in test_n]))
    card: dict[str, Any] = {
        "name": config.name, "architecture": config.architecture,
        "model_kwargs": {"in_channels": 2 * CONTEXT + 1, "num_classes": 1}, "task": "nodule-fpr",
        "labels": ["nodule"], "thresholds": {"probability": threshold},
        "threshold_rule": f"the highest keeping {config.target_sensitivity:.0%} of the validation patients' nodules",
        "input": {"size": [SIDE_PX, SIDE_PX], "channels": 2 * CONTEXT + 1, "context": CONTEXT,
                  "pixel_mm": MM_PER_PX, "window_hu": list(CROP_WINDOW_HU),
                  "normalisation": "HU -> grey through window_hu (8-bit, as the LIDC-IDRI-slices crops), / 255",
                  "framing": "axial slices z-1, z, z+1 at the candidate, 64 x 64 px centred on it, the scan's own "
                             f"pixels when within {RESAMPLE_TOLERANCE:.0%} of pixel_mm, else resampled"},
        "training": {
            "data": config.data, "scans": list(config.scans), "held_out_scan": config.held_out_scan or None,
            "n_crops": {"train_positive": len(pos_train), "train_negative": len(neg_train),
                        "negative_repeat": repeat, "validation_positive": len(val_pos),
                        "validation_negative": len(val_neg)},
            "negatives_by_kind": {s.name: {k: s.kinds.count(k) for k in NEGATIVE_KINDS} for s in trained},
            "split": {"rule": "positives by patient as nodule-seg (split_nodules, same fractions and seed); "
                              f"negatives: the top {config.val_negative_fraction:.0%} of each training scan's "
                              "slices for validation",
                      "test_patients": sorted({n.patient_id for n in test_n}),
                      "validation_patients": sorted({n.patient_id for n in val_n})},
            "loss": "BCE with pos_weight = repeated negatives / positives",
            "augmentation": fpr_augmentation.__doc__.split(": ", 1)[1].strip(),
            **provenance(config, summary, command),
            "pretraining": "none (trained from scratch)"},
        "metrics": {
            "validation": {"auc": roc_auc(np.r_[p_val, n_val], np.r_[np.ones(len(p_val)), np.zeros(len(n_val))]),
                           "sensitivity": float((p_val >= threshold).mean()),
                           "negatives_called_nodule": float((n_val >= threshold).mean())},
            "test_positives": _positive_report(test_n, p_test, threshold),
            "training_scans": [_scan_report(s, crop_probabilities(model, s.crops), threshold) for s in trained]},
        "scope": {"classes": ["nodule"],
                  "trained_on": "real LIDC-IDRI nodules (LIDC-IDRI-slices crops) against real non-nodule points of "
                                f"{len(trained)} chest CT series ({', '.join(s.name for s in trained)})",
                  "cannot_see": "nodules < 3 mm, masses > 44 mm (larger than the crop), lesions outside the lungs; "
                                "its negatives come from few scanners and patients"},
        "license": "Apache-2.0 (weights); trained on LIDC-IDRI (CC BY 3.0: cite Armato et al. 2011)",
    }
    if held:
        card["metrics"]["held_out_scan"] = [_scan_report(s, crop_probabilities(model, s.crops), threshold)
                                            for s in held]
    logger.info("nodule-fpr: threshold %.3f; test sensitivity %.3f (n=%d)", threshold,
                card["metrics"]["test_positives"]["sensitivity"], len(test_n))
    return save_run(model, config, card)


Config = NoduleFprConfig
FORMATS = task_entry("nodule-fpr").formats  # the registry holds the static facts
SPLITS = task_entry("nodule-fpr").splits


class Predictor(FromWeights, NoduleFpr):
    """The task contract's predictor: :class:`NoduleFpr` built by :meth:`from_weights`."""

    default_weights = DEFAULT_WEIGHTS

    def predict(self, volume: Volume, centres_zyx: Sequence[Sequence[float]]) -> np.ndarray:
        """Nodule probability float64 ``(N,)`` in [0, 1] at candidate points ``(N, 3)`` (z, y, x voxels) of a CT
        volume in HU.

        Raises:
            InputError: not a CT volume.
        """
        if not isinstance(volume, Volume):
            raise InputError(f"nodule-fpr needs a CT volume (pulmo.io.Volume in HU), got {type(volume).__name__}")
        return self.probabilities(volume.hu, volume.spacing, centres_zyx)


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True,
             scans: Sequence[str] = ()) -> EvalReport:
    """Score a second-stage weight set: sensitivity on real LIDC nodule crops (the card's held-out patients with
    ``split="test"``, the default, or every nodule with ``all``) at the card's threshold, with a 95 % bootstrap
    interval and by size, and, for each of ``scans``, how many of its non-nodule points (vessels, border,
    parenchyma, the detector's own candidates) it calls a nodule.

    Args:
        data: the LIDC-IDRI-slices folder or ``.tar.gz`` (format ``lidc-slices``).
        annotations: not used; must be None.
        weights: weight name or ``.safetensors`` path (None: ``nodule-fpr``).
        scans: CT series as ``PATH`` or ``PATH=LABEL`` (a label volume of its lesions, kept out of the negatives).

    Returns:
        :class:`EvalReport` of ``n`` nodules with ``positives`` (``sensitivity``, ``sensitivity_ci95``,
        ``by_size``, ``n_nodules``, ``n_patients``), ``scans`` (per scan: counts and rates per kind of point,
        ``fp_per_scan``), ``threshold`` and ``split``.

    Raises:
        ConfigError: unknown format or split, an annotations file, or ``split="test"`` with a card that lists no
            test patients. InputError: unreadable data. WeightsError: bad weights.
    """
    format, split = evaluate_arguments("nodule-fpr", format, split, annotations)  # before weights or data
    fpr = NoduleFpr(weights or DEFAULT_WEIGHTS)
    patients = held_out_patients(fpr.card) if split == "test" else None
    t0 = time.perf_counter()
    nodules = read_lidc_slices(data, patients=patients, progress=progress).nodules
    probs = crop_probabilities(fpr.model, np.stack([nodule_crops(n, 1.0)[0] for n in nodules]))
    scan_rows = []
    for k, spec in enumerate(scans):
        path, _, label = spec.partition("=")
        sc = scan_candidates(path, label or None, seed=k)
        scan_rows.append(_scan_report(sc, crop_probabilities(fpr.model, sc.crops), fpr.threshold))
    return EvalReport(task="nodule-fpr", n=len(nodules), weights=fpr.card.get("name"),
                      weights_sha256=fpr.card.get("sha256"), seconds=round(time.perf_counter() - t0, 2),
                      metrics={"split": split, "threshold": fpr.threshold,
                               "positives": _positive_report(nodules, probs, fpr.threshold), "scans": scan_rows})


def summary(report: EvalReport) -> str:
    """Sensitivity on the nodules (95 % interval) and each scan's non-nodule points called a nodule."""
    pos = report["positives"]
    line = (f"split={report['split']} nodules={pos['n_nodules']} threshold={report['threshold']:.3f} "
            f"sensitivity={pos['sensitivity']:.4f} [{pos['sensitivity_ci95'][0]:.4f}, {pos['sensitivity_ci95'][1]:.4f}]")
    for row in report["scans"]:
        called = sum(row[k]["called_nodule"] for k in NEGATIVE_KINDS)
        line += f" {row['scan']}: {called}/{row['n_crops'] - len(row['references'])} non-nodule points called nodule"
    return line


__all__ = [
    "DEFAULT_WEIGHTS",
    "FORMATS",
    "SPLITS",
    "Config",
    "NoduleFpr",
    "NoduleFprConfig",
    "Predictor",
    "ScanCandidates",
    "crop_probabilities",
    "evaluate",
    "nodule_crops",
    "scan_candidates",
    "scan_crop",
    "summary",
    "threshold_for_sensitivity",
    "train",
]
