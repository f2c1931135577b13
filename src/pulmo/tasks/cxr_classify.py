"""``cxr-classify``: normal / bacterial / viral pneumonia / COVID-19 from a chest X-ray (SEEDS.md, seed 4).

Two stages as in the seed: the bundled ``lung-seg`` model gives a lung mask and the image is multiplied by
it (``lung_mask=True``), then a torchvision CNN classifies the (masked) image. Near-duplicates across
sources are removed before a patient-level train / validation / test split; the class imbalance is
handled by class-weighted cross-entropy; probabilities are calibrated by temperature scaling on the
validation split (Guo et al. 2017) and per-class one-vs-rest operating thresholds (Youden's J on
validation) are stored in the card beside the argmax rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandGaussianNoised
from safetensors.torch import load_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pulmo.datasets import patient_fold
from pulmo.datasets.cxr_labels import (
    LABELS,
    covid_chestxray_records,
    covid_radiography_records,
    folder_records,
    kermany_records,
    remove_near_duplicates,
)
from pulmo.engine import TrainConfig, batched_logits, fit, save_config
from pulmo.errors import ConfigError, InputError
from pulmo.io import Image2D, read_image
from pulmo.metrics import binary_report, classification_report, roc_auc
from pulmo.metrics.calibration import fit_temperature, softmax
from pulmo.models import create_model
from pulmo.models.classifiers import GRADCAM_LAYERS
from pulmo.transforms import normalize_cxr, resize_image
from pulmo.weights import resolve_card, save_weights

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "cxr-classify"
FORMATS = ("kermany", "folders", "covid-chestxray", "covid-radiography")


@dataclasses.dataclass
class CxrClassifyConfig(TrainConfig):
    """Settings of ``pulmo train cxr-classify`` (adds to :class:`TrainConfig`).

    Attributes:
        kermany, covid_chestxray, covid_radiography: dataset roots ("" = not used).
        folders: extra roots in the one-folder-per-label layout.
        architecture: ``resnet18``, ``mobilenet_v2`` or ``densenet121``.
        lung_mask: multiply the image by the bundled lung mask first (seed 4's stage 1).
        size: working resolution (px, square).
        val_fraction, test_fraction, split_seed: the patient-level three-way split.
        dedupe_distance: pHash Hamming distance for near-duplicates (-1 = no de-duplication).
        cache_dir: where pre-processed arrays are cached between runs.
    """

    kermany: str = ""
    covid_chestxray: str = ""
    covid_radiography: str = ""
    folders: list[str] = dataclasses.field(default_factory=list)
    architecture: str = "resnet18"
    lung_mask: bool = True
    size: int = 160
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    dedupe_distance: int = 4
    cache_dir: str = "runs/cache/cxr-classify"
    name: str = DEFAULT_WEIGHTS
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 4


def load_records(data: str | Path, format: str) -> list[dict[str, Any]]:
    """Records of one dataset in one of :data:`FORMATS`."""
    loaders = {"kermany": kermany_records, "folders": folder_records, "covid-chestxray": covid_chestxray_records,
               "covid-radiography": covid_radiography_records}
    if format not in loaders:
        raise ConfigError(f"unknown cxr-classify format {format!r}; expected one of {FORMATS}")
    return loaders[format](data)


def collect_records(config: CxrClassifyConfig) -> tuple[list[dict], list[dict]]:
    """All configured records after cross-source de-duplication: ``(kept, dropped)``."""
    records = []
    for root, fmt in ((config.kermany, "kermany"), (config.covid_chestxray, "covid-chestxray"),
                      (config.covid_radiography, "covid-radiography")):
        if root:
            records += load_records(root, fmt)
    for root in config.folders:
        records += folder_records(root)
    if not records:
        raise ConfigError("no training data: give --kermany, --covid-chestxray, --covid-radiography or --folders")
    if config.dedupe_distance < 0:
        return records, []
    return remove_near_duplicates(records, config.dedupe_distance)


def split_three(records: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Patient-level ``{"train", "val", "test"}`` split (stable sha1 of seed and patient id)."""
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for r in records:
        f = patient_fold(r["patient_id"], seed)
        out["test" if f < test_fraction else "val" if f < test_fraction + val_fraction else "train"].append(r)
    return out


class Preprocessor:
    """Image -> classifier input: robust normalisation, optional lung masking, resize.

    ``__call__`` returns ``(x, lungs)``: float32 ``(S, S)`` in [0, 1] and the bool lung mask ``(H, W)`` at the
    original size (None when masking is off).
    """

    def __init__(self, size: int, lung_mask: bool):
        self.size = size
        self.lung_mask = lung_mask
        self._segmenter = None

    def segmenter(self):
        if self._segmenter is None:
            from pulmo.tasks.lung_seg import LungSegmenter

            self._segmenter = LungSegmenter()
        return self._segmenter

    def __call__(self, image: Image2D, lungs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        x = normalize_cxr(image.pixels)
        if self.lung_mask:
            lungs = self.segmenter().predict(image) if lungs is None else lungs
            x = x * lungs
        return resize_image(x, (self.size, self.size)).astype(np.float32), lungs


def _cache(records: list[dict], pre: Preprocessor, cache_dir: str, progress: bool) -> np.ndarray:
    key = hashlib.sha1(json.dumps([[r["image"] for r in records], pre.size, pre.lung_mask]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    arr = np.zeros((len(records), pre.size, pre.size), np.uint8)
    for i, r in enumerate(tqdm(records, desc="pre-processing", disable=not progress)):
        arr[i] = np.round(pre(read_image(r["image"]))[0] * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return arr


class ClassifyDataset(Dataset):
    """Items ``{"image": (1, S, S) float32 in [0, 1], "label": int64}`` from cached uint8 arrays."""

    def __init__(self, arrays: np.ndarray, labels: list[int], transform=None):
        self.arrays, self.labels, self.transform = arrays, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = {"image": self.arrays[i][None].astype(np.float32) / 255.0}
        if self.transform is not None:
            sample = self.transform(sample)
        return {"image": torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32),
                "label": torch.tensor(self.labels[i], dtype=torch.long)}


def _augmentation(size: int) -> Compose:
    return Compose([
        RandAffined("image", prob=0.8, rotate_range=np.radians(8), scale_range=0.1, translate_range=0.05 * size,
                    padding_mode="zeros"),
        RandAdjustContrastd("image", prob=0.4, gamma=(0.7, 1.5)),
        RandGaussianNoised("image", prob=0.2, std=0.02),
    ])


def _logits(model: torch.nn.Module, arrays: np.ndarray) -> np.ndarray:
    return batched_logits(model, arrays, len(LABELS))


def youden_thresholds(prob: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per-class one-vs-rest threshold maximising sensitivity + specificity - 1 on validation."""
    out = {}
    for c, name in enumerate(LABELS):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        best, best_t = -1.0, 0.5
        for t in np.unique(np.round(prob[:, c], 3)):
            pred = prob[:, c] >= t
            j = (pred & pos).sum() / pos.sum() + (~pred & ~pos).sum() / (~pos).sum() - 1
            if j > best:
                best, best_t = j, float(t)
        out[name] = best_t
    return out


def subgroup_metrics(records: list[dict], prob: np.ndarray, n_resamples: int = 1000) -> dict[str, Any]:
    """The seed's and the issue's views of a prediction: per source, Kermany normal vs pneumonia and
    three-class, adult COVID-19 vs normal; binary views with bootstrap 95 % CIs."""
    y = np.array([LABELS.index(r["label"]) for r in records])
    src = np.array([r["source"] for r in records])
    age = np.array([r.get("age_group", "unknown") for r in records])
    out: dict[str, Any] = {"overall": classification_report(y, prob, LABELS)}
    for s in sorted(set(src)):
        sel = src == s
        out[f"source/{s}"] = classification_report(y[sel], prob[sel], LABELS)
    ker = src == "kermany"
    if ker.any():
        pneu_score = 1.0 - prob[ker, 0]
        out["kermany_normal_vs_pneumonia"] = binary_report(y[ker] != 0, pneu_score, 0.5, n_resamples)
        three = prob[ker][:, :3]
        out["kermany_three_class_accuracy"] = float((three.argmax(1) == y[ker]).mean())
    adult = (age == "adult") & np.isin(y, [0, 3])
    if adult.any():
        score = prob[adult, 3] / np.clip(prob[adult, 3] + prob[adult, 0], 1e-9, None)
        out["adult_covid19_vs_normal"] = binary_report(y[adult] == 3, score, 0.5, n_resamples)
    return out


def train(config: CxrClassifyConfig, command: str = "") -> dict[str, Any]:
    """Train one classifier; write weights + card and ``results.json`` (test-split metrics) to ``out_dir``."""
    out = Path(config.out_dir)
    save_config(config, out / "config.yaml")
    records, dropped = collect_records(config)
    splits = split_three(records, config.val_fraction, config.test_fraction, config.split_seed)
    logger.info("cxr-classify: %s (dropped %d near-duplicates)", {k: len(v) for k, v in splits.items()}, len(dropped))
    pre = Preprocessor(config.size, config.lung_mask)
    arrays = {k: _cache(v, pre, config.cache_dir, config.progress) for k, v in splits.items()}
    labels = {k: [LABELS.index(r["label"]) for r in v] for k, v in splits.items()}
    counts = np.bincount(labels["train"], minlength=len(LABELS)).astype(np.float64)
    weights = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(LABELS), 0.0), dtype=torch.float32)
    model = create_model(config.architecture, in_channels=1, num_classes=len(LABELS))
    train_ds = ClassifyDataset(arrays["train"], labels["train"], _augmentation(config.size))

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(m(batch["image"]).float(), batch["label"], weight=weights)

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        prob = softmax(_logits(m, arrays["val"]), 1.0)
        rep = classification_report(labels["val"], prob, LABELS)
        return {"macro_f1": rep["macro_f1"], "accuracy": rep["accuracy"]}

    summary = fit(model, train_ds, loss_fn, evaluate_fn, config, monitor="macro_f1")
    if summary["rank"] != 0:
        return {}
    model.load_state_dict(load_file(str(out / "best.safetensors")))
    model.eval()
    val_logits = _logits(model, arrays["val"])
    temperature = fit_temperature(val_logits, np.array(labels["val"]))
    val_prob = softmax(val_logits, temperature)
    test_prob = softmax(_logits(model, arrays["test"]), temperature)
    results = {"validation": subgroup_metrics(splits["val"], val_prob, 200),
               "test": subgroup_metrics(splits["test"], test_prob)}
    card = {
        "name": config.name, "architecture": config.architecture,
        "model_kwargs": {"in_channels": 1, "num_classes": len(LABELS)}, "task": "cxr-classify", "labels": LABELS,
        "calibration": {"method": "temperature scaling on the validation split", "temperature": temperature},
        "thresholds": {"rule": "argmax of calibrated probabilities",
                       "one_vs_rest_youden": youden_thresholds(val_prob, np.array(labels["val"]))},
        "gradcam_layer": GRADCAM_LAYERS[config.architecture],
        "input": {"size": [config.size, config.size], "channels": 1, "lung_mask": config.lung_mask,
                  "normalisation": "percentile 0.5-99.5 min-max to [0, 1]" + (
                      ", multiplied by the lung-seg-unet mask" if config.lung_mask else "")},
        "training": {"data": {"kermany": config.kermany, "covid_chestxray": config.covid_chestxray,
                              "covid_radiography": config.covid_radiography, "folders": config.folders},
                     "near_duplicates_removed": len(dropped),
                     "split": f"by patient: sha1(seed {config.split_seed}, patient) < {config.test_fraction} test, "
                              f"< {config.test_fraction + config.val_fraction} validation, else train",
                     "n": {k: len(v) for k, v in splits.items()},
                     "class_counts_train": dict(Counter(r["label"] for r in splits["train"])),
                     "loss": "class-weighted cross-entropy (inverse frequency)",
                     "command": command, "seed": config.seed, "epochs_run": summary["epochs_run"],
                     "best_epoch": summary["best_epoch"], "seconds": summary["seconds"],
                     "pretraining": "none: ImageNet weights cannot be downloaded here; trained from scratch"},
        "metrics": {"test": _headline(results["test"]), "validation": _headline(results["validation"])},
        "license": "Apache-2.0 (weights); training data: Kermany CC BY 4.0, ieee8023 per-image licences "
                   "(incl. CC BY-NC-SA), COVID-19 Radiography Database research use - non-commercial use advised",
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return save_weights(model, out / f"{config.name}.safetensors", card)


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    o = results["overall"]
    h: dict[str, Any] = {"n": o["n"], "accuracy": o["accuracy"], "macro_f1": o["macro_f1"]}
    if "kermany_normal_vs_pneumonia" in results:
        h["kermany_normal_vs_pneumonia_accuracy"] = results["kermany_normal_vs_pneumonia"]["accuracy"]
        h["kermany_three_class_accuracy"] = results["kermany_three_class_accuracy"]
    if "adult_covid19_vs_normal" in results:
        h["adult_covid19_vs_normal_f1"] = results["adult_covid19_vs_normal"]["f1"]
    return h


class CxrClassifier:
    """Calibrated four-class prediction with Grad-CAM / Grad-CAM++ heatmaps inside the lungs.

    Raises:
        WeightsError: missing or corrupted weights.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS):
        self.card = resolve_card(weights)
        self.model = create_model(self.card["architecture"], weights=weights).eval()
        self.labels = self.card["labels"]
        self.temperature = float(self.card["calibration"]["temperature"])
        self.pre = Preprocessor(int(self.card["input"]["size"][0]), bool(self.card["input"]["lung_mask"]))

    @torch.no_grad()
    def predict(self, image: Image2D, lungs: np.ndarray | None = None) -> dict[str, Any]:
        """``{"probabilities": {label: p}, "predicted": label, "input": (S, S) array, "lungs": mask or None}``."""
        x, lungs = self.pre(image, lungs)
        prob = softmax(self.model(torch.from_numpy(x)[None, None]).float().numpy(), self.temperature)[0]
        return {"probabilities": {lab: float(p) for lab, p in zip(self.labels, prob)},
                "predicted": self.labels[int(prob.argmax())], "input": x, "lungs": lungs}

    def heatmaps(self, x: np.ndarray, lungs: np.ndarray | None, class_index: int,
                 shape: tuple[int, int]) -> dict[str, tuple[np.ndarray, float]]:
        """``{method: (heatmap (H, W) in [0, 1] restricted to the lungs, energy fraction inside the lungs)}``
        at the original image ``shape``, for ``gradcam`` and ``gradcam++``."""
        from pulmo.explain import class_activation_map, restrict_to_lungs

        t = torch.from_numpy(x)[None, None]
        out = {}
        for method in ("gradcam", "gradcam++"):
            heat = class_activation_map(self.model, self.card["gradcam_layer"], t, class_index, method)
            heat = resize_image(heat, shape)
            mask = lungs if lungs is not None else np.ones(shape, bool)
            out[method] = restrict_to_lungs(heat, mask)
        return out


def evaluate(data: str | Path, format: str, weights: str = DEFAULT_WEIGHTS, progress: bool = True) -> dict[str, Any]:
    """Metrics on a labelled dataset: ``{"task", "n", "labels", "accuracy", "macro_f1", "per_class",
    "confusion_matrix"}`` plus subgroup views. Prediction = argmax over all model labels."""
    records = load_records(data, format)
    clf = CxrClassifier(weights)
    t0 = time.perf_counter()
    prob = np.zeros((len(records), len(LABELS)))
    failed = []
    for i, r in enumerate(tqdm(records, desc="cxr-classify evaluate", disable=not progress)):
        try:
            p = clf.predict(read_image(r["image"]))["probabilities"]
        except InputError as exc:
            failed.append(str(exc))
            prob[i] = np.nan
            continue
        prob[i] = [p[lab] for lab in LABELS]
    ok = ~np.isnan(prob).any(axis=1)
    recs = [r for r, k in zip(records, ok) if k]
    report = classification_report([LABELS.index(r["label"]) for r in recs], prob[ok], LABELS)
    sub = subgroup_metrics(recs, prob[ok], 1000)
    sub.pop("overall")
    return {"task": "cxr-classify", **report, "format": format, "failed": failed, "subgroups": sub,
            "weights": clf.card["name"], "weights_sha256": clf.card.get("sha256"),
            "seconds": round(time.perf_counter() - t0, 2)}


__all__ = ["CxrClassifier", "CxrClassifyConfig", "evaluate", "roc_auc", "train"]
