"""``lesion-seg``: COVID-19 infection segmentation on CT slices (after the Res-Attention U-Net
COVID-19 CT infection report).

Training data: COVID-SemiSeg (8-bit windowed slices) or HU volumes in the Ma et al. 2020 layout (lung
window C -600 / W 1500). Binary (infection) or three-class (background / ground-glass / consolidation).
Losses from MONAI (``DiceCELoss``: Dice + cross-entropy, sigmoid for binary, softmax for three classes).
The binary threshold is chosen by grid search on the validation split (the RSNA pneumonia report's
method) and stored in the card.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from PIL import Image
from safetensors.torch import load_file
from tqdm.auto import tqdm

from pulmo.datasets import LesionSliceDataset, covid_semiseg_records, ct_volume_records, split_by_patient
from pulmo.datasets.covid_ct import CLASS_NAMES, read_mask
from pulmo.engine import TrainConfig, fit_best, provenance, save_run
from pulmo.errors import ConfigError, InputError
from pulmo.io import Image2D, Volume, read_image
from pulmo.metrics import binary_metrics, confusion_counts, dice
from pulmo.models import create_model, model_device
from pulmo.runtime import BackendModel
from pulmo.tasks.base import EvalReport, FromWeights
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.transforms import resize_bilinear, resize_image, window_hu
from pulmo.transforms.augment import ct_slice_augmentation
from pulmo.transforms.ct import frame_ct_slices, lung_mask_ct
from pulmo.transforms.ct_postprocess import postprocess_infection
from pulmo.weights import sha256_of

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "lesion-seg"
#: dataset layouts ``train`` reads (``evaluate`` reads :data:`FORMATS`)
TRAIN_FORMATS = ("covid-semiseg", "ct-volumes")
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.2, 0.81, 0.05))


@dataclasses.dataclass
class LesionSegConfig(TrainConfig):
    """Settings of ``pulmo train lesion-seg`` (adds to :class:`TrainConfig`).

    Attributes:
        data: dataset root. format: ``covid-semiseg`` or ``ct-volumes`` (Ma et al. 2020 NIfTI layout).
        classes: ``binary`` or ``multiclass`` (background / ground-glass / consolidation).
        architecture: ``unet``, ``res-unet``, ``attention-unet`` or ``res-attention-unet``.
        features: first-scale channels of the plain/residual encoders.
        size: working resolution (px, square). val_fraction / split_seed: the grouped hold-out.
        loss: ``dice-ce`` (MONAI ``DiceCELoss``, default) or ``bce`` (``BCEWithLogitsLoss`` alone, binary only:
            the Res-Attention U-Net report's loss).
        decoder: ``narrow`` (16-32-64-96, default, the bundled model) or ``full`` (64-64-128-256, the report's)
            decoder of ``res-attention-unet``.
        init_encoder: a local ``.safetensors`` of a torchvision ResNet-34 (e.g. ImageNet weights; nothing is
            downloaded) to initialise the ``res-attention-unet`` encoder from; its sha256 is logged and put
            in the card.
        negatives: CT volumes with no infection (DICOM series folders or volume files, HU) whose lung slices
            (every third one, framed as the CT pipeline frames them) join the training split with empty
            masks, so the model learns normal dense lung; never used for validation.
        elastic_prob: probability of the elastic deformation per training slice (MONAI ``Rand2DElasticd``).
        name: name of the weight file and card written to ``out_dir``.
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (120, 4, 1e-3, 40).
    """

    data: str = ""
    format: str = dataclasses.field(default="covid-semiseg", metadata={"choices": TRAIN_FORMATS})
    classes: str = dataclasses.field(default="binary", metadata={"choices": ("binary", "multiclass")})
    architecture: str = "res-attention-unet"
    features: int = 16
    size: int = 256
    val_fraction: float = 0.2
    split_seed: int = 0
    elastic_prob: float = 0.3
    loss: str = dataclasses.field(default="dice-ce", metadata={"choices": ("dice-ce", "bce")})
    decoder: str = dataclasses.field(default="narrow", metadata={"choices": ("narrow", "full")})
    init_encoder: str = ""
    negatives: list[str] = dataclasses.field(default_factory=list)
    name: str = DEFAULT_WEIGHTS
    epochs: int = 120
    batch_size: int = 4
    lr: float = 1e-3
    patience: int = 40


def load_records(data: str | Path, format: str, split: str = "train", classes: str = "binary") -> list[dict]:
    """Records of a dataset in one of :data:`TRAIN_FORMATS`.

    Args:
        data: the dataset root.
        format: ``covid-semiseg`` (:func:`~pulmo.datasets.covid_ct.covid_semiseg_records`, windowed slices) or
            ``ct-volumes`` (:func:`~pulmo.datasets.covid_ct.ct_volume_records`, Ma et al. 2020 NIfTI in HU).
        split, classes: the COVID-SemiSeg split (``train`` / ``test``) and label set (``binary`` /
            ``multiclass``); not used by ``ct-volumes``.

    Raises:
        ConfigError: ``format`` is not one of :data:`TRAIN_FORMATS`.
        InputError: the layout's folders are missing or hold no image with a mask (from the readers).
    """
    if format == "covid-semiseg":
        return covid_semiseg_records(data, split, classes)
    if format == "ct-volumes":
        return ct_volume_records(data)
    raise ConfigError(f"unknown lesion-seg format {format!r}; expected one of {TRAIN_FORMATS}")


def negative_records(paths: list[str], every: int = 3) -> list[dict[str, Any]]:
    """Infection-free training records from CT volumes with no infection (DICOM series folders, NIfTI, mhd,
    NRRD; HU): every ``every``-th slice of :func:`pulmo.transforms.ct.frame_ct_slices`, with an empty label map.

    Raises:
        InputError: a path missing, not a CT volume, not in HU, or without lungs.
    """
    records = []
    for p in paths:
        if not Path(p).exists():
            raise InputError(f"{p}: negative CT volume not found (expected a DICOM series folder or a volume file)")
        vol = read_image(p)
        if not isinstance(vol, Volume):
            raise InputError(f"{p}: a negative example must be a CT volume, got a 2D image")
        _, _, slices = frame_ct_slices(vol, lung_mask_ct(vol))
        records.append({"volume": str(p), "patient_id": f"negative:{Path(p).name}", "source": "negative",
                        "input": "slices", "pairs": [(im, np.zeros(im.shape, np.uint8)) for im in slices[::every]]})
    return records


def _n_out(classes: str) -> int:
    if classes not in CLASS_NAMES:
        raise ConfigError(f"classes must be 'binary' or 'multiclass', got {classes!r}")
    return len(CLASS_NAMES[classes])


def _model_kwargs(config: LesionSegConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"in_channels": 1, "out_channels": _n_out(config.classes)}
    if config.architecture != "res-attention-unet":
        kw["features"] = config.features
    elif config.decoder != "narrow":
        from pulmo.models.lesion_unet import DECODER_CHANNELS

        if config.decoder not in DECODER_CHANNELS:
            raise ConfigError(f"decoder {config.decoder!r} is not one of {', '.join(DECODER_CHANNELS)}")
        kw["decoder_channels"] = list(DECODER_CHANNELS[config.decoder])
    return kw


def _init_encoder(model: torch.nn.Module, path: str) -> dict[str, Any]:
    """Load the local ResNet-34 file into the model's encoder; ``{"file", "sha256", "tensors"}`` for the card."""
    from pulmo.models.lesion_unet import init_resnet34_encoder

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"init_encoder {path!r}: no such file; expected a .safetensors of a torchvision ResNet-34")
    sha = sha256_of(file)
    try:
        n = init_resnet34_encoder(model, load_file(str(file)))
    except (TypeError, ValueError, OSError) as exc:
        raise ConfigError(f"init_encoder {path}: {exc}") from None
    logger.info("lesion-seg: encoder initialised from %s (sha256 %s, %d tensors)", file, sha, n)
    return {"file": file.name, "sha256": sha, "tensors": n}


def _infection_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` logits -> ``(B, 1, H, W)`` probability of any infection."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return 1.0 - torch.softmax(logits, dim=1)[:, :1]


@torch.no_grad()
def _validation_probabilities(model: torch.nn.Module, dataset: LesionSliceDataset) -> tuple[np.ndarray, np.ndarray]:
    images = torch.from_numpy(np.stack([it[0] for it in dataset.items]))
    labels = np.stack([it[1][0] for it in dataset.items])
    device = model_device(model)
    probs = torch.cat([_infection_probability(model(images[i:i + 8].to(device))).cpu()
                       for i in range(0, len(images), 8)])
    return probs[:, 0].numpy(), labels


def _scores(prob: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    pred, ref = prob >= threshold, labels > 0
    m = binary_metrics(confusion_counts(pred, ref))
    m["dice_mean"] = float(np.mean([dice(p, r) for p, r in zip(pred, ref)]))
    return m


def train(config: LesionSegConfig, command: str = "") -> dict[str, Any]:
    """Train, choose the threshold on validation, write ``<out_dir>/<name>.safetensors`` (fp16) + card.

    Returns:
        The model card (a dict; empty on DDP ranks other than 0).

    Raises:
        ConfigError: an unknown format or loss, ``bce`` without binary classes.
        InputError: unreadable data or negative volumes.
    """
    records = load_records(config.data, config.format, "train", config.classes)
    train_records, val_records = split_by_patient(records, config.val_fraction, config.split_seed, exact=True)
    train_records = train_records + negative_records(config.negatives)
    logger.info("lesion-seg: %d train / %d val records (grouped hold-out; %d negative volumes in train)",
                len(train_records), len(val_records), len(config.negatives))
    if config.loss not in ("dice-ce", "bce"):
        raise ConfigError(f"loss {config.loss!r} is not one of dice-ce, bce")
    if config.loss == "bce" and config.classes != "binary":
        raise ConfigError("loss bce (BCEWithLogits) needs classes binary")
    model = create_model(config.architecture, **_model_kwargs(config))
    encoder_init = _init_encoder(model, config.init_encoder) if config.init_encoder else None
    train_ds = LesionSliceDataset(train_records, config.size, transform=ct_slice_augmentation(config.size, config.elastic_prob))
    val_ds = LesionSliceDataset(val_records, config.size)
    binary = config.classes == "binary"
    criterion = (torch.nn.BCEWithLogitsLoss() if config.loss == "bce"
                 else DiceCELoss(sigmoid=binary, softmax=not binary, to_onehot_y=not binary))

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return criterion(m(batch["image"]).float(), batch["label"])

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        prob, labels = _validation_probabilities(m, val_ds)
        s = _scores(prob, labels, 0.5)
        return {"dice": s["f1"], "dice_mean": s["dice_mean"]}

    summary = fit_best(model, train_ds, loss_fn, evaluate_fn, config, monitor="dice")
    if summary is None:
        return {}
    prob, labels = _validation_probabilities(model, val_ds)
    grid = {t: _scores(prob, labels, t)["f1"] for t in THRESHOLD_GRID}
    threshold = max(grid, key=lambda t: (grid[t], -abs(t - 0.5)))
    val = _scores(prob, labels, threshold)
    card = {
        "name": config.name,
        "architecture": config.architecture,
        "model_kwargs": _model_kwargs(config),
        "task": "lesion-seg",
        "labels": CLASS_NAMES[config.classes],
        "thresholds": {"infection": threshold},
        "threshold_grid_f1": {str(t): round(v, 4) for t, v in grid.items()},
        "input": {"size": [config.size, config.size], "channels": 1,
                  "normalisation": "8-bit windowed slice / 255, or HU through the lung window C -600 W 1500 -> [0, 1]",
                  "framing": "CT volumes: each axial slice cropped to the lung bounding box (+8 % margin), as COVID-SemiSeg frames its slices"},
        "training": {"data": config.data, "format": config.format, "classes": config.classes,
                     "loss": config.loss, "encoder_init": encoder_init,
                     "split": f"grouped hold-out: the {config.val_fraction:.0%} of groups (MedSeg slice index // 5) with the smallest sha1(seed {config.split_seed}, group)",
                     "n_train_slices": len(train_ds), "n_val_slices": len(val_ds),
                     "negatives": config.negatives,
                     "val_images": [Path(r.get("image", r.get("volume", ""))).name for r in val_records],
                     **provenance(config, summary, command),
                     "pretraining": "none: ImageNet weights cannot be downloaded here; trained from scratch"},
        "metrics": {"validation": {k: round(v, 4) for k, v in val.items()}, "n_val_slices": len(val_ds),
                    "resolution": "working size"},
        "license": "Apache-2.0 (weights); trained on COVID-SemiSeg / MedSeg: non-commercial use only",
    }
    return save_run(model, config, card)


class LesionSegmenter(BackendModel):
    """Infection segmentation of CT slices with a bundled or trained weight set.

    Inputs are slices already mapped to [0, 1] (8-bit windowed / 255, or :func:`pulmo.transforms.window_hu`).

    Args:
        weights: bundled weight name or ``.safetensors`` path with its card.
        backend: ``onnx``, ``torch`` or ``auto`` (None: the process default, :func:`pulmo.runtime.choose_backend`).

    Raises:
        WeightsError: missing or corrupted weights. NotAvailableError: ``backend="onnx"`` without an export.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS, backend: str | None = None):
        self._load_weights(weights, backend)
        self.size = tuple(self.card["input"]["size"])
        self.labels = self.card["labels"]
        self.threshold = float(self.card["thresholds"]["infection"])

    def predict(self, slices01: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Label maps for slices ``[(H_i, W_i)]`` in [0, 1]: uint8 ``(H_i, W_i)`` with 0 = background and,
        for a three-class model, 1 = ground-glass, 2 = consolidation (binary model: 1 = infection)."""
        out = []
        for start in range(0, len(slices01), batch_size):
            chunk = slices01[start:start + batch_size]
            x = np.stack([resize_image(s, self.size) for s in chunk])[:, None]
            out += [self._labels(lg, s.shape) for s, lg in zip(chunk, self._forward(x)["logits"])]
        return out

    def _labels(self, logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """One slice's labels from its logits ``(K, h, w)``: resized to ``shape`` (bilinear, as
        :func:`pulmo.transforms.resize_probability`), infection probability (sigmoid, or 1 - p(background), as
        :func:`_infection_probability`), the card's threshold, and the argmax lesion class for a multi-class model."""
        lg = np.stack([resize_bilinear(c, shape) for c in logits]).astype(np.float64)
        if len(lg) == 1:
            prob = 1.0 / (1.0 + np.exp(-lg[0]))
        else:
            e = np.exp(lg - lg.max(axis=0))
            prob = 1.0 - e[0] / e.sum(axis=0)
        infected = prob >= self.threshold
        if len(lg) > 1:
            return np.where(infected, 1 + lg[1:].argmax(0), 0).astype(np.uint8)
        return infected.astype(np.uint8)

    def predict_volume(self, volume: Volume, lungs: np.ndarray, batch_size: int = 8,
                       on_progress: Any = None) -> np.ndarray:
        """Raw (not post-processed) infection labels of a CT volume in HU: every slice holding lung is framed to
        the lungs' box and lung-windowed (:func:`pulmo.transforms.ct.frame_ct_slices`) and segmented.

        Args:
            volume: CT in HU, ``(Z, Y, X)``.
            lungs: bool lung mask ``(Z, Y, X)`` (e.g. :func:`pulmo.transforms.ct.lung_mask_ct`).
            batch_size: slices per forward pass.
            on_progress: called with the fraction done (0-1] after each batch, or None.

        Returns:
            uint8 ``(Z, Y, X)`` labels (0 background), 0 outside the framed slices.
        """
        raw = np.zeros(volume.shape, np.uint8)
        zs, (rows, cols), slices01 = frame_ct_slices(volume, lungs)
        for start in range(0, len(slices01), batch_size):
            chunk = slices01[start:start + batch_size]
            for z, labels in zip(zs[start:start + batch_size], self.predict(chunk, batch_size=batch_size)):
                raw[z, rows, cols] = labels
            if on_progress is not None:
                on_progress((start + batch_size) / max(1, len(slices01)))
        return raw


def score_records(seg: LesionSegmenter, records: list[dict], progress: bool = True) -> dict[str, Any]:
    """Binary infection metrics of ``seg`` on COVID-SemiSeg records at the original resolution:
    ``dice_mean`` over images, the pixel metrics (and ``dice_global`` = F1) over all pixels."""
    totals = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    rows = []
    for r in tqdm(records, desc="lesion-seg evaluate", disable=not progress):
        image = np.asarray(Image.open(r["image"]).convert("L"), dtype=np.float32) / 255.0
        ref = read_mask(r["mask"]) > 0
        pred = seg.predict([image])[0] > 0
        for k, v in confusion_counts(pred, ref).items():
            totals[k] += v
        rows.append({"image": Path(r["image"]).name, "dice": dice(pred, ref)})
    m = binary_metrics(totals)
    return {"n": len(records), "dice_mean": float(np.mean([r["dice"] for r in rows])), "dice_global": m["f1"], **m,
            "per_image": rows}


Config = LesionSegConfig
FORMATS = task_entry("lesion-seg").formats  # the registry holds the static facts
SPLITS = task_entry("lesion-seg").splits


@dataclasses.dataclass
class InfectionResult:
    """Infection labels of a CT volume or slice (:meth:`Predictor.predict`).

    Attributes:
        labels: uint8 ``(Z, Y, X)`` (volume) or ``(H, W)`` (slice) in the input grid: 0 background, then the
            card's ``labels`` in order (binary model: 1 = infection).
        label_names: the names of labels 1, 2, ... .
        postprocessing: for a volume in HU, what :func:`pulmo.transforms.ct_postprocess.postprocess_infection`
            removed (rules, thresholds, mL); None for a slice.
    """

    labels: np.ndarray
    label_names: list[str]
    postprocessing: dict[str, Any] | None = None


class Predictor(FromWeights, LesionSegmenter):
    """The task contract's predictor: :class:`LesionSegmenter` built by :meth:`from_weights`, whose ``predict``
    takes a CT volume in HU or one slice (as ``pulmo analyze`` does)."""

    default_weights = DEFAULT_WEIGHTS

    def predict(self, image_or_volume: Volume | Image2D) -> InfectionResult:  # type: ignore[override]
        """Infection of a CT volume in HU (lungs by HU threshold, every lung slice framed and windowed as in
        training, HU post-processing) or of one slice (HU from DICOM, else already windowed 8/16-bit pixels).

        Raises:
            InputError: a volume that is not in HU, or no lungs found.
        """
        if isinstance(image_or_volume, Volume):
            volume = image_or_volume
            lungs = lung_mask_ct(volume)
            raw = self.predict_volume(volume, lungs)
            labels, post = postprocess_infection(raw, volume.hu, lungs, volume.spacing)
            return InfectionResult(labels=labels, label_names=list(self.labels), postprocessing=post)
        image = image_or_volume
        if image.source.get("format") == "DICOM":
            slice01 = window_hu(image.pixels)
        else:
            hi = 65535.0 if image.source.get("bit_depth") == 16 else 255.0
            slice01 = np.clip(image.pixels / hi, 0, 1)
        return InfectionResult(labels=LesionSegmenter.predict(self, [slice01.astype(np.float32)])[0],
                               label_names=list(self.labels))


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True) -> EvalReport:
    """Binary infection metrics of a weight set on a labelled split at the original resolution: an
    :class:`EvalReport` of ``n`` slices with ``dice_mean`` (mean over slices), ``dice_global``, ``accuracy``,
    ``precision``, ``sensitivity``, ``specificity``, ``f1`` (over all pixels; all in [0, 1]) and ``per_image``.

    Args:
        format: ``covid-semiseg`` (COVID-SemiSeg, Fan et al., IEEE TMI 2020), the only one.
        split: ``test`` (default: ``TestingSet``) or ``train`` (``TrainingSet``).

    Raises:
        ConfigError: another format or split, or an annotations file. InputError: a missing split folder.
        WeightsError: bad weights.
    """
    format, split = evaluate_arguments("lesion-seg", format, split, annotations)  # before weights or data
    records = covid_semiseg_records(data, split, "binary")
    seg = LesionSegmenter(weights or DEFAULT_WEIGHTS)
    t0 = time.perf_counter()
    scores = score_records(seg, records, progress)
    return EvalReport.from_metrics({**scores, "split": split, "weights": seg.card["name"],
                                    "weights_sha256": seg.card.get("sha256"),
                                    "seconds": round(time.perf_counter() - t0, 2)}, task="lesion-seg")


def summary(report: EvalReport) -> str:
    """Dice (per slice and global), precision, sensitivity and specificity."""
    return (f"dice_mean={report['dice_mean']:.4f} dice_global={report['dice_global']:.4f} "
            f"precision={report['precision']:.4f} sensitivity={report['sensitivity']:.4f} "
            f"specificity={report['specificity']:.4f}")
