"""``nodule``: lung nodule detection, false-positive reduction and segmentation on chest CT (after NoduleNet,
Tang et al., MICCAI 2019).

Pipeline (:class:`NoduleDetector`):

1. **pre-processing** (:func:`pulmo.transforms.ct.prepare_ct`): CT lung mask
   (:func:`pulmo.transforms.ct.lung_mask_ct`), crop to the lungs' bounding box (+ 8 mm), trilinear resampling
   of HU to an isotropic ``spacing_mm`` grid (``torch.nn.functional.interpolate``), HU window -1200..600 ->
   [0, 1], padding to a multiple of 8 (mirrored along z at inference);
2. **the network** (:class:`pulmo.models.nodulenet.NoduleNet3d`) on the whole crop: RPN proposals -> 3D NMS ->
   decoupled FPR head (probability and refined box) -> NMS -> mask head on the kept nodules;
3. **mapping back** to the input geometry: centres to voxel indices and world mm (LPS), masks resampled
   (``scipy.ndimage.map_coordinates``) onto the original voxel grid.

Training (:func:`train`, loss :func:`nodule_loss`) uses synthetic nodules inserted into the lungs of real CT
volumes, in random ``patch``^3 crops (:mod:`pulmo.datasets.synthetic_nodules`: :func:`load_backgrounds`,
:class:`SyntheticNoduleDataset`); real nodules and the region around them are excluded from the training crops
and kept for evaluation (:func:`evaluate`: LUNA16 FROC / CPM on LIDC-IDRI series
with their XML reads, or LUNA16 ``.mhd`` + ``annotations.csv``; Dice against the LIDC 50 % consensus masks).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from pulmo.datasets.synthetic_nodules import SyntheticNoduleDataset, collate, load_backgrounds
from pulmo.engine import TrainConfig, fit_best, provenance, save_run
from pulmo.errors import ConfigError, InputError
from pulmo.io import Volume
from pulmo.metrics.froc import FROC_FP_RATES, MAX_CANDIDATES_PER_SCAN, froc
from pulmo.models import create_model, model_device
from pulmo.models.nodulenet import NoduleNet3d
from pulmo.tasks.base import EvalReport, FromWeights
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.transforms.ct import NODULE_HU_WINDOW, PreparedCT, lung_distance, prepare_ct
from pulmo.weights import WEIGHTS_DIR, resolve_card

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "nodule"
#: The bundled second stage (:mod:`pulmo.tasks.nodule_fpr`), used when present.
FPR_WEIGHTS = "nodule-fpr"
FORMATS = task_entry("nodule").formats  # the registry holds the static facts


# ---------------------------------------------------------------------------------------------- inference
# (pre-processing: pulmo.transforms.ct.prepare_ct)

@torch.no_grad()
def detect_prepared(model: NoduleNet3d, prep_image: np.ndarray, max_proposals: int = 40, nms_iou: float = 0.1,
                    min_probability: float = 0.02, max_detections: int = 20,
                    lung_dist: np.ndarray | None = None, lung_margin: float = 1.5) -> dict[str, torch.Tensor]:
    """Candidates on a prepared image ``(D, H, W)`` in [0, 1]: ``{"boxes": (N, 4) z, y, x, d grid voxels,
    "probability": (N,) FPR probability, "rpn": (N,) RPN probability, "masks": (N, m, m, m) mask logits}``.

    With ``lung_dist`` (:func:`lung_distance` of the grid's lung mask), proposals whose centre is farther from
    the lungs than their radius + ``lung_margin`` voxels are dropped before false-positive reduction: a lung
    nodule touches the lung (juxta-pleural ones included), while the body wall, the diaphragm dome at the
    scan's end and the mediastinum do not.

    The network runs on its own device; the returned tensors are on the CPU.
    """
    model.eval()
    device = model_device(model)
    x = torch.from_numpy(np.ascontiguousarray(prep_image))[None, None].to(device)
    det = model(x, max_proposals=max_proposals, nms_iou=nms_iou, min_probability=min_probability,
                max_detections=max_detections, lung_margin=lung_margin,
                lung_dist=None if lung_dist is None else torch.from_numpy(lung_dist))
    return {k: v.cpu() for k, v in det.items()}


def _mask_to_original(mask_logits: np.ndarray, box: np.ndarray, prep: PreparedCT, shape: tuple[int, int, int],
                      expand: float = 1.5) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A mask on a box's ROI grid (logits ``(m, m, m)``) -> bool crop on the original voxel grid and its offset."""
    m = mask_logits.shape[0]
    side = box[3] * expand
    lo_g, hi_g = box[:3] - side / 2, box[:3] + side / 2
    lo_o = np.floor(prep.to_original(lo_g)[0]).astype(int).clip(0, np.array(shape) - 1)
    hi_o = np.ceil(prep.to_original(hi_g)[0]).astype(int).clip(0, np.array(shape) - 1) + 1
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo_o, hi_o)], indexing="ij")
    pts = np.stack([g.ravel() for g in grids], 1).astype(np.float64)
    g = prep.to_grid(pts)
    roi = (g - lo_g) / side * m - 0.5                                    # ROI-grid coordinates
    vals = ndimage.map_coordinates(mask_logits, roi.T, order=1, mode="constant", cval=-10.0)
    return (vals >= 0).reshape(grids[0].shape), tuple(int(v) for v in lo_o)


class NoduleDetector:
    """Nodules in a CT volume with a bundled or trained ``nodule`` weight set.

    Args:
        weights: the first stage (``nodule`` weight name or ``.safetensors`` path).
        second_stage: the false-positive reduction stage (:class:`pulmo.tasks.nodule_fpr.NoduleFpr`): a weight
            name or path, ``"auto"`` (the bundled ``nodule-fpr`` when it exists) or None (first stage only). With
            it, each candidate's ``probability`` is the second stage's, ``detector_probability`` the first's, and
            :attr:`threshold` is the second stage's operating threshold.

    Raises:
        WeightsError: missing or corrupted weights.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS, second_stage: str | None = "auto"):
        self.card = resolve_card(weights)
        self.model = create_model(self.card["architecture"], weights=weights).eval()
        self.spacing_mm = float(self.card["input"]["spacing_mm"])
        self.detector_threshold = float(self.card["thresholds"]["probability"])
        self.second_stage = None
        if second_stage == "auto":
            second_stage = FPR_WEIGHTS if (WEIGHTS_DIR / f"{FPR_WEIGHTS}.json").is_file() else None
        if second_stage:  # the second stage is a task of its own, bound late through the registry (no import cycle)
            from pulmo.tasks.registry import get_task

            self.second_stage = get_task("nodule-fpr").Predictor.from_weights(second_stage)
        self.threshold = self.second_stage.threshold if self.second_stage else self.detector_threshold

    def detect(self, volume: Volume, lungs: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Every candidate (first-stage probability >= 0.02, for FROC) that touches the lungs, most probable
        first::

            {"center_xyz_mm": [x, y, z] world LPS, "center_zyx_index": [z, y, x] voxels, "diameter_mm",
             "volume_mm3", "probability", "slice_index", "mask": bool crop, "mask_offset": (z, y, x)}

        plus ``detector_probability`` (the first stage's) when a second stage is set; ``probability`` is then the
        second stage's.

        The centre, diameter (equivalent sphere) and volume come from the mask when it is not empty, else
        from the box.
        """
        prep = prepare_ct(volume, self.spacing_mm, lungs, mirror_z=True, divisor=self.model.size_divisor)
        det = detect_prepared(self.model, prep.image, lung_dist=lung_distance(prep.lungs))
        voxel_mm3 = float(np.prod(volume.spacing))
        found = []
        for box, p, logits in zip(det["boxes"].numpy(), det["probability"].numpy(), det["masks"].float().numpy()):
            mask, offset = _mask_to_original(logits, box, prep, volume.shape)
            if mask.any():
                centre = np.argwhere(mask).mean(0) + offset
                vol_mm3 = mask.sum() * voxel_mm3
                diameter = (6 * vol_mm3 / math.pi) ** (1 / 3)
            else:
                centre = prep.to_original(box[:3])[0]
                diameter = float(box[3] * prep.spacing_mm)
                vol_mm3 = math.pi / 6 * diameter ** 3
            world = volume.index_to_world(centre)[0]
            found.append({"center_xyz_mm": [round(float(v), 2) for v in world],
                          "center_zyx_index": [round(float(v), 2) for v in centre],
                          "diameter_mm": round(float(diameter), 2), "volume_mm3": round(float(vol_mm3), 1),
                          "probability": round(float(p), 4), "slice_index": round(centre[0]),
                          "mask": mask, "mask_offset": offset})
        if self.second_stage is not None and found:
            p2 = self.second_stage.probabilities(volume.hu, volume.spacing, [n["center_zyx_index"] for n in found])
            for n, p in zip(found, p2):
                n["detector_probability"], n["probability"] = n["probability"], round(float(p), 4)
            found.sort(key=lambda n: -n["probability"])
        return found

    def findings(self, volume: Volume, lungs: np.ndarray | None = None) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Nodules at or above the card's probability threshold (``findings.json`` entries, no masks) and an
        int16 label map ``(Z, Y, X)`` of them (1 = most probable)."""
        labels = np.zeros(volume.shape, np.int16)
        rows = []
        for n in self.detect(volume, lungs):
            if n["probability"] < self.threshold:
                continue
            m, (z, y, x) = n["mask"], n["mask_offset"]
            region = labels[z:z + m.shape[0], y:y + m.shape[1], x:x + m.shape[2]]
            region[m & (region == 0)] = len(rows) + 1
            rows.append({k: v for k, v in n.items() if k not in ("mask", "mask_offset")})
        return rows, labels


# ---------------------------------------------------------------------------------------------- training

@dataclasses.dataclass
class NoduleConfig(TrainConfig):
    """Settings of ``pulmo train nodule`` (adds to :class:`TrainConfig`).

    Attributes:
        backgrounds: CT volumes (DICOM series folders, NIfTI, mhd, NRRD) whose lungs receive the synthetic
            nodules; comma-separated.
            A background that is a folder is also read as an LIDC series when its XML is there: its real
            nodules (any reader) are then excluded from the training crops (there is no separate option).
        exclude_labels: label volumes (e.g. ``lung1_label.nrrd``), one per background in the same order (""
            for none), whose labelled voxels are excluded the same way.
        spacing_mm: isotropic grid (mm). patch: training crop side (grid voxels, multiple of 8).
        samples_per_epoch: random crops per epoch. max_nodules: synthetic nodules per crop (0..max).
        val_samples: validation crops (a fixed set, drawn with seed ``10000 + seed``).
        channels: widths of the feature net's encoder stages, three (strides 2, 4, 8) or four (2, 4, 8, 16:
            NoduleNet's depth, then ``patch`` must be a multiple of 16); 24-48-64 by default, sized for a CPU
            (the ``nodulenet-lidc`` preset: NoduleNet's 32-64-64-64).
        blocks: residual blocks per feature-net stage, one per ``channels`` value (default 1-2-2; the
            ``nodulenet-lidc`` preset: NoduleNet's 2-2-3-3).
        back_channels: widths of the top-down fusion blocks, deepest first (empty: the encoder widths;
            NoduleNet: 64, 128). back_blocks: residual blocks per top-down fusion block, deepest first (empty:
            one; NoduleNet: 3, 3).
        name: weight-set name.
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (12, 2, 2e-3, 6).
    """

    backgrounds: list[str] = dataclasses.field(default_factory=list, metadata={"comma_separated": True})
    exclude_labels: list[str] = dataclasses.field(default_factory=list, metadata={"comma_separated": True})
    spacing_mm: float = 1.5
    patch: int = 64
    samples_per_epoch: int = 240
    max_nodules: int = 3
    val_samples: int = 24
    channels: list[int] = dataclasses.field(default_factory=lambda: [24, 48, 64])
    blocks: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 2])
    back_channels: list[int] = dataclasses.field(default_factory=list)
    back_blocks: list[int] = dataclasses.field(default_factory=list)
    name: str = DEFAULT_WEIGHTS
    epochs: int = 12
    batch_size: int = 2
    lr: float = 2e-3
    patience: int = 6


# (training data: pulmo.datasets.synthetic_nodules.load_backgrounds / SyntheticNoduleDataset / collate)

def nodule_loss(model: NoduleNet3d | torch.nn.Module, batch: dict[str, Any],
                rng: torch.Generator | None = None) -> torch.Tensor:
    """RPN focal + box loss, FPR head loss on proposals and jittered ground truth (BCE + smooth L1), mask
    Dice + BCE on jittered ground-truth boxes: ``model(batch["image"], targets=batch, rng=rng)`` (the network's
    own training contract, :meth:`NoduleNet3d.forward` / :func:`pulmo.models.nodulenet.nodulenet_loss`), so
    ``model`` may be a ``DistributedDataParallel`` wrapper. ``model`` must be in training mode.

    Every tensor of ``batch`` must be on the model's device; the targets are built there (the jitter is drawn on
    the CPU, from ``rng`` or the global generator, then moved)."""
    return model(batch["image"], targets=batch, rng=rng)


def _patch_froc(model: NoduleNet3d, dataset: SyntheticNoduleDataset, spacing_mm: float) -> dict[str, float]:
    """FROC / CPM over a fixed set of synthetic validation crops (each crop counted as a scan)."""
    cands, refs = {}, {}
    for i in range(len(dataset)):
        s = dataset[i]
        det = detect_prepared(model, s["image"][0])
        cands[str(i)] = (det["boxes"][:, [2, 1, 0]].numpy() * spacing_mm, det["probability"].numpy())
        refs[str(i)] = (s["boxes"][:, [2, 1, 0]] * spacing_mm, s["boxes"][:, 3] * spacing_mm)
    try:
        r = froc(cands, refs, seriesuids=list(refs))
    except ValueError:
        return {"cpm": 0.0}
    return {"cpm": r.cpm, **{f"sens@{k:g}": v for k, v in zip(r.fp_rates, r.sensitivities)}}


def train(config: NoduleConfig, command: str = "") -> dict[str, Any]:
    """Train on synthetic nodules, write ``<out_dir>/<name>.safetensors`` (fp16) + card.

    Returns:
        The model card (a dict; empty on DDP ranks other than 0).

    Raises:
        ConfigError: ``channels`` / ``blocks`` / ``back_*`` of the wrong lengths, ``patch`` not a multiple of the
            network's size divisor, or no ``backgrounds``.
        InputError: an unreadable background or label volume.
    """
    if len(config.channels) not in (3, 4) or len(config.blocks) != len(config.channels):
        raise ConfigError(f"channels and blocks need 3 values each (strides 2, 4, 8) or 4 each (strides 2, 4, 8, "
                          f"16), got {config.channels} and {config.blocks}")
    n_back = len(config.channels) - 2
    for key in ("back_channels", "back_blocks"):
        if getattr(config, key) and len(getattr(config, key)) != n_back:
            raise ConfigError(f"{key} needs {n_back} value(s) for {len(config.channels)} stages (deepest first), "
                              f"got {getattr(config, key)}")
    divisor = 16 if len(config.channels) == 4 else 8
    if config.patch % divisor:
        raise ConfigError(f"patch must be a multiple of {divisor} for {len(config.channels)} stages, got {config.patch}")
    if not config.backgrounds:
        raise ConfigError("NoduleConfig.backgrounds is empty (pulmo train nodule --backgrounds): CT volumes to insert synthetic nodules into")
    backgrounds = load_backgrounds(config.backgrounds, config.exclude_labels, config.spacing_mm, config.patch)
    anchors_mm = (5.0, 10.0, 20.0, 30.0)
    kwargs: dict[str, Any] = {"anchors": [round(a / config.spacing_mm, 3) for a in anchors_mm]}
    if list(config.channels) != [24, 48, 64] or list(config.blocks) != [1, 2, 2]:  # the defaults stay implicit
        kwargs.update(channels=list(config.channels), blocks=list(config.blocks))
    for key in ("back_channels", "back_blocks"):
        if getattr(config, key):
            kwargs[key] = list(getattr(config, key))
    model = create_model("nodulenet-3d", **kwargs)
    train_ds = SyntheticNoduleDataset(backgrounds, config.samples_per_epoch, config.patch, config.max_nodules)
    val_ds = SyntheticNoduleDataset(backgrounds, config.val_samples, config.patch, config.max_nodules, seed=10_000 + config.seed)

    summary = fit_best(model, train_ds, nodule_loss,
                       lambda m: _patch_froc(m, val_ds, config.spacing_mm), config, monitor="cpm",
                       collate_fn=collate, find_unused_parameters=True)  # mask head / box regressions: see nodulenet_loss
    if summary is None:
        return {}
    val = _patch_froc(model, val_ds, config.spacing_mm)
    card = {
        "name": config.name,
        "architecture": "nodulenet-3d",
        "model_kwargs": kwargs,
        "task": "nodule",
        "labels": ["nodule"],
        "thresholds": {"probability": 0.5},
        "input": {"spacing_mm": config.spacing_mm, "hu_window": list(NODULE_HU_WINDOW), "anchors_mm": list(anchors_mm),
                  "crop": "lung bounding box + 8 mm (HU threshold lung mask)"},
        "training": {"data": "SYNTHETIC nodules (3-30 mm; solid / part-solid / ground-glass; 25 % juxta-pleural) "
                             "inserted into the lungs of these real CTs, away from their real nodules: "
                             + ", ".join(Path(b).name for b in config.backgrounds),
                     "real_nodules": "none used for training; every real nodule is kept for evaluation",
                     "backgrounds": config.backgrounds, "patch": config.patch,
                     "samples_per_epoch": config.samples_per_epoch, **provenance(config, summary, command),
                     "full_luna16_command": "torchrun --nproc_per_node=N -m pulmo train nodule --backgrounds "
                                            "<LUNA16 subset*/ *.mhd, comma-separated> --out-dir runs/nodule-luna16 "
                                            "(real LUNA16 nodules as training targets are not wired in yet: the "
                                            "command trains on synthetic nodules in all LUNA16 lungs)"},
        "metrics": {"validation_synthetic_crops": {k: round(v, 4) for k, v in val.items()},
                    "n_val_crops": config.val_samples},
        "license": "Apache-2.0 (weights); backgrounds: LIDC-IDRI CC BY 3.0, pyradiomics lung1 BSD-3",
    }
    return save_run(model, config, card)


# ---------------------------------------------------------------------------------------------- evaluation

def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def _lidc_series(root: Path) -> list[Path]:
    from pulmo.io.dicom import folder_is_dicom_series

    return sorted({p.parent for p in root.rglob("*.xml")} & {p for p in root.rglob("*") if p.is_dir()
                                                            and folder_is_dicom_series(p)})


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True,
             max_candidates_per_scan: int | None = MAX_CANDIDATES_PER_SCAN,
             second_stage: str | None = "auto") -> EvalReport:
    """LUNA16 FROC / CPM and mask Dice of a weight set, by the rules of the LUNA16 script
    ``noduleCADEvaluationLUNA16.py`` (:mod:`pulmo.metrics.froc`)::

        {"task": "nodule", "n_scans", "n_nodules", "cpm", "froc": {"0.125": s, ..., "8": s},
         "cpm_ci95": [lo, hi], "froc_ci95": {"0.125": [lo, hi], ...},
         "froc_by_size": {"<6" | "6-10" | ">10": {"n_nodules", "n_detected", "cpm", "froc"}},
         "operating_point": {"threshold", "sensitivity", "fp_per_scan"}, "n_false_positives", "n_ignored",
         "max_candidates_per_scan", "dice_mean", ...}

    Sensitivities are in [0, 1], FP rates per scan; the 95 % intervals come from 1000 bootstrap resamples of
    the scans (seed 0); ``froc_by_size`` splits the reference nodules by diameter (mm) with all false
    positives kept; ``operating_point`` is read at the weight card's ``thresholds.probability`` (the
    threshold :meth:`NoduleDetector.findings` reports at).

    ``lidc``: every series folder under ``data`` holding an LIDC XML; the reference is the LUNA16 one (nodules
    >= 3 mm marked by >= 3 readers, :func:`pulmo.datasets.lidc.luna16_reference`), hits on the excluded
    findings are ignored (:func:`pulmo.datasets.lidc.luna16_excluded`: every reader's own mark of a reference
    nodule, nodules of fewer readers, and nodule < 3 mm and non-nodule points with diameter -1, i.e. 10 mm),
    Dice against the 50 % consensus mask of each reference nodule (0 when it is missed). ``luna16``: ``*.mhd``
    under ``data`` with ``annotations.csv`` (``--annotations`` or ``data/annotations.csv``) and
    ``annotations_excluded.csv`` when present; no masks, so ``dice_mean`` is null.

    Returns an :class:`EvalReport` of ``n`` scans (every scan found: ``split`` ``all``) with the metrics above.

    Args:
        format: ``lidc`` (default) or ``luna16``.
        annotations: ``luna16``: the ``annotations.csv`` (default ``data/annotations.csv``); not used by ``lidc``.
        weights: the first stage's weight name or ``.safetensors`` path (None: the bundled ``nodule``).
        max_candidates_per_scan: keep at most this many of each scan's most probable candidates (default
            100, the script's ``maxNumberOfCADMarks``; 0 or ``None``: all).
        second_stage: the false-positive reduction weights (see :class:`NoduleDetector`; ``"auto"``: the bundled
            ``nodule-fpr`` when present; None: the first stage alone). Candidates are then ranked by it and
            ``operating_point`` is read at its threshold; ``second_stage`` in the output names it.

    Raises:
        ConfigError: unknown format, or ``max_candidates_per_scan`` not an integer. InputError: no scans or
            no reference nodules found.
    """
    format, split = evaluate_arguments("nodule", format, split, annotations)  # before weights or data
    if second_stage == "none":
        second_stage = None
    root = Path(data)
    det = NoduleDetector(weights or DEFAULT_WEIGHTS, second_stage=second_stage)
    cands, refs, excl, dices, per_scan = {}, {}, {}, [], []
    t0 = time.perf_counter()
    if format == "lidc":
        from pulmo.datasets.lidc import load_lidc_scan

        series = _lidc_series(root)
        if not series:
            raise InputError(f"{root}: no LIDC series folder (DICOM slices + XML read) found")
        for s in tqdm(series, desc="nodule evaluate", disable=not progress):
            scan = load_lidc_scan(s)
            uid = scan.seriesuid
            found = det.detect(scan.volume)
            cands[uid] = (np.array([n["center_xyz_mm"] for n in found]).reshape(-1, 3),
                          np.array([n["probability"] for n in found]))
            ref = [c for c in scan.clusters if c.n_readers >= 3]
            refs[uid] = (np.array([c.centre_world for c in ref]).reshape(-1, 3), np.array([c.diameter_mm for c in ref]))
            excluded_rows = scan.luna16_excluded()
            excl[uid] = (np.array([[r["coordX"], r["coordY"], r["coordZ"]] for r in excluded_rows]).reshape(-1, 3),
                         np.array([r["diameter_mm"] for r in excluded_rows], dtype=np.float64))
            for c in ref:
                truth = paste_consensus(c, scan.volume.shape)
                best = 0.0
                for n in found:
                    if np.linalg.norm(np.array(n["center_xyz_mm"]) - c.centre_world) <= c.diameter_mm / 2:
                        pred = np.zeros(scan.volume.shape, bool)
                        (z, y, x), m = n["mask_offset"], n["mask"]
                        pred[z:z + m.shape[0], y:y + m.shape[1], x:x + m.shape[2]] = m
                        best = max(best, _dice(pred, truth))
                dices.append(best)
            per_scan.append({"seriesuid": uid, "n_reference": len(ref), "n_candidates": len(found),
                             "top_candidates": [{k: v for k, v in n.items() if k not in ("mask", "mask_offset")}
                                                for n in found[:5]]})
    else:  # luna16
        from pulmo.datasets.luna16 import annotations_by_series, find_scans, read_annotations, read_scan

        ann_path = Path(annotations) if annotations else root / "annotations.csv"
        by_series = annotations_by_series(read_annotations(ann_path))
        exc_path = ann_path.with_name("annotations_excluded.csv")
        excluded = annotations_by_series(read_annotations(exc_path)) if exc_path.is_file() else {}
        scans = find_scans(root)
        if not scans:
            raise InputError(f"{root}: no LUNA16 .mhd scans found")
        for uid in tqdm(sorted(scans), desc="nodule evaluate", disable=not progress):
            found = det.detect(read_scan(root, uid))
            cands[uid] = (np.array([n["center_xyz_mm"] for n in found]).reshape(-1, 3),
                          np.array([n["probability"] for n in found]))
            refs[uid] = by_series.get(uid, (np.zeros((0, 3)), np.zeros(0)))
            if uid in excluded:
                excl[uid] = excluded[uid]
            per_scan.append({"seriesuid": uid, "n_reference": len(refs[uid][1]), "n_candidates": len(found)})
    result = froc(cands, refs, excluded=excl, seriesuids=list(refs), max_candidates_per_scan=max_candidates_per_scan)
    return EvalReport.from_metrics({
            "task": "nodule", "n_scans": result.n_scans, "n_nodules": result.n_nodules, "cpm": result.cpm,
            "froc": {f"{r:g}": s for r, s in zip(FROC_FP_RATES, result.sensitivities)},
            "cpm_ci95": None if result.cpm_ci is None else list(result.cpm_ci), "froc_ci95": result.froc_ci_dict(),
            "froc_by_size": result.by_size_dict(), "operating_point": result.operating_point(det.threshold),
            "n_false_positives": result.n_false_positives, "n_ignored": result.n_ignored,
            "max_candidates_per_scan": result.max_candidates_per_scan,
            "dice_mean": float(np.mean(dices)) if dices else None, "format": format,
            "weights": det.card["name"], "weights_sha256": det.card.get("sha256"),
            "second_stage": None if det.second_stage is None else {
                "weights": det.second_stage.card.get("name"), "weights_sha256": det.second_stage.card.get("sha256"),
                "threshold": det.second_stage.threshold},
            "scans": per_scan,
            "seconds": round(time.perf_counter() - t0, 2)}, task="nodule", n_key="n_scans")


def summary(report: EvalReport) -> str:
    """CPM, the FROC at the seven LUNA16 rates and the mean Dice."""
    froc_line = " ".join(f"{k}:{v:.3f}" for k, v in report["froc"].items())
    dice = "n/a" if report["dice_mean"] is None else f"{report['dice_mean']:.4f}"
    return f"nodules={report['n_nodules']} cpm={report['cpm']:.4f} froc[{froc_line}] dice_mean={dice}"


Config = NoduleConfig
SPLITS = task_entry("nodule").splits


@dataclasses.dataclass
class NoduleFindings:
    """The nodules of one CT volume (:meth:`Predictor.predict`).

    Attributes:
        nodules: ``findings.json`` rows at or above the operating threshold, most probable first (see
            :meth:`NoduleDetector.findings`: ``center_xyz_mm`` world LPS, ``diameter_mm``, ``volume_mm3``,
            ``probability`` in [0, 1], ``slice_index``, ...).
        label_map: int16 ``(Z, Y, X)`` in the volume's grid, 0 background, ``k`` = the k-th nodule.
        threshold: the probability threshold applied.
    """

    nodules: list[dict[str, Any]]
    label_map: np.ndarray
    threshold: float


class Predictor(FromWeights, NoduleDetector):
    """The task contract's predictor: :class:`NoduleDetector` built by :meth:`from_weights` (which also takes
    ``second_stage``)."""

    default_weights = DEFAULT_WEIGHTS

    def predict(self, volume: Volume, lungs: np.ndarray | None = None) -> NoduleFindings:
        """Nodules of a CT volume in HU (lungs found by :func:`pulmo.transforms.ct.lung_mask_ct` when not
        given).

        Raises:
            InputError: not a CT volume in HU.
        """
        if not isinstance(volume, Volume):
            raise InputError(f"nodule detection needs a CT volume (pulmo.io.Volume in HU), got {type(volume).__name__}")
        rows, label_map = self.findings(volume, lungs)
        return NoduleFindings(nodules=rows, label_map=label_map, threshold=self.threshold)


def paste_consensus(cluster: Any, shape: tuple[int, int, int], level: float = 0.5) -> np.ndarray:
    """The 50 % consensus mask of an LIDC nodule cluster on the full volume grid."""
    from pulmo.datasets.lidc import paste_mask

    return paste_mask(*cluster.consensus_mask(level), shape)
