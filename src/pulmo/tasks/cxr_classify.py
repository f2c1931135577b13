"""``cxr-classify``: normal / bacterial / viral pneumonia / COVID-19 from a chest X-ray (after the
lung-segmentation-first COVID-19 chest X-ray classifier report), with an "outside my classes" answer.

Two stages as in that report: the bundled ``lung-seg`` model gives a lung mask; the image is cropped to the
lung fields (``crop="lungs"``: the mask's bounding box plus a margin, so corner text, markers and borders are
out of the input) and/or multiplied by the mask (``lung_mask=True``), histogram-equalised (``equalize``), then
a torchvision CNN classifies it. Near-duplicates across sources are removed before a patient-level train /
validation / test split; the class imbalance is handled by class-weighted cross-entropy; probabilities are
calibrated by temperature scaling on the validation split (Guo et al. 2017) and per-class one-vs-rest operating
thresholds (Youden's J on validation) are stored in the card beside the argmax rule.

Against the source shortcut (DeGrave et al., "AI for radiographic COVID-19 detection selects shortcuts over
signal", Nature Machine Intelligence 2021): adult normals of several hospitals (``extra_normals``), augmentations
that break source cues (contrast, gamma, blur, JPEG quality, crops), ``exclude_sources`` to measure on a source
the model never saw, and a "source classifier" check (a linear probe on the penultimate features predicting the
dataset source: lower is better).

Outside the classes: chest X-rays with another finding (TB, effusion, nodule, mass, ...) train a fifth class,
:data:`~pulmo.datasets.cxr_labels.OTHER_FINDING` (``other_findings``); its calibrated probability is the
out-of-scope score, and an image is in scope when the score is below the threshold that keeps
``in_scope_retention`` of the validation in-scope images in scope and the top class is one of the four.
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
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandZoomd,
)
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pulmo.datasets import patient_fold
from pulmo.datasets.cxr_labels import (
    LABELS,
    OTHER_FINDING,
    covid_chestxray_records,
    covid_radiography_records,
    extra_normal_records,
    folder_records,
    kermany_records,
    other_finding_records,
    remove_near_duplicates,
)
from pulmo.engine import TrainConfig, batched_logits, fit_best, provenance, save_config, save_run
from pulmo.errors import ConfigError, InputError
from pulmo.inference.cxr_classify import (
    DEFAULT_WEIGHTS,
    CxrClassifier,
    Preprocessor,
    in_scope,
    out_of_scope_scores,
)
from pulmo.io import read_image
from pulmo.metrics import binary_report, classification_report, roc_auc
from pulmo.metrics.calibration import expected_calibration_error, fit_temperature, reliability_bins, softmax
from pulmo.models import create_model
from pulmo.models.classifiers import GRADCAM_LAYERS
from pulmo.tasks.base import EvalReport, FromWeights
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.transforms.classifier import DEFAULT_CROP

logger = logging.getLogger(__name__)

FORMATS = task_entry("cxr-classify").formats  # the registry holds the static facts


@dataclasses.dataclass
class CxrClassifyConfig(TrainConfig):
    """Settings of ``pulmo train cxr-classify`` (adds to :class:`TrainConfig`).

    Attributes:
        kermany: Kermany ``chest_xray`` root ("" = not used). covid_chestxray: ``covid-chestxray-dataset`` root
            ("" = not used). covid_radiography: ``COVID-19_Radiography_Dataset`` root ("" = not used).
        folders: extra roots in the one-folder-per-label layout.
        other_findings: ``format=path`` sources of X-rays with a finding outside the four classes
            (:data:`~pulmo.datasets.cxr_labels.OTHER_FORMATS`, e.g. ``tbx11k=DATA/cxr/TBX11K``): trained as a
            fifth class, ``other_finding``.
        extra_normals: ``format=path`` sources of adult "No Finding" X-rays (``chestx-det10``, ``nih``).
        exclude_sources: record ``source`` names kept out of training, validation and calibration; they are
            scored at the end as ``external`` (leave-one-source-out).
        architecture: ``resnet18``, ``mobilenet_v2`` or ``densenet121``.
        lung_mask: multiply the image by the bundled lung mask first (stage 1 of the
            lung-segmentation-first COVID-19 classifier report).
        crop: ``lungs`` (the lung mask's bounding box plus 10 % margins) or ``none`` (the whole image).
        equalize: histogram-equalise the (cropped) image (``skimage.exposure.equalize_hist``).
        in_scope_retention: share of validation in-scope images that must stay in scope (sets the
            out-of-scope threshold).
        size: working resolution (px, square).
        val_fraction, test_fraction, split_seed: the patient-level three-way split.
        dedupe_distance: pHash Hamming distance for near-duplicates (-1 = no de-duplication).
        cache_dir: where pre-processed arrays are cached between runs.
        name: name of the saved weight set (default the bundled one's).
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (8, 32, 1e-3, 4).
    """

    kermany: str = ""
    covid_chestxray: str = ""
    covid_radiography: str = ""
    folders: list[str] = dataclasses.field(default_factory=list)
    other_findings: list[str] = dataclasses.field(default_factory=list)
    extra_normals: list[str] = dataclasses.field(default_factory=list)
    exclude_sources: list[str] = dataclasses.field(default_factory=list)
    architecture: str = "resnet18"
    lung_mask: bool = False
    crop: str = dataclasses.field(default=DEFAULT_CROP, metadata={"choices": ("lungs", "none")})
    equalize: bool = True
    in_scope_retention: float = 0.95
    size: int = 224
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
    """Records of one dataset in one of :data:`FORMATS`: the four-class layouts, or the other-finding layouts
    (every image ``other_finding``; ChestX-Det10 and NIH also give their "No Finding" images as ``normal``).

    Raises:
        ConfigError: unknown format. InputError: as the readers.
    """
    loaders = {"kermany": kermany_records, "folders": folder_records, "covid-chestxray": covid_chestxray_records,
               "covid-radiography": covid_radiography_records}
    if format in loaders:
        return loaders[format](data)
    if format in ("tbx11k", "montgomery-shenzhen"):
        return other_finding_records(format, data)
    if format in ("chestx-det10", "nih"):
        return other_finding_records(format, data) + extra_normal_records(format, data)
    raise ConfigError(f"unknown cxr-classify format {format!r}; expected one of {FORMATS}")


def collect_records(config: CxrClassifyConfig) -> tuple[list[dict], list[dict]]:
    """All configured records after cross-source de-duplication: ``(kept, dropped)``.

    Reads the Kermany, covid-chestxray and COVID-19 Radiography roots, ``folders``, ``other_findings`` and
    ``extra_normals`` of ``config``, then drops near-duplicates across sources
    (:func:`~pulmo.datasets.cxr_labels.remove_near_duplicates`, pHash distance <= ``dedupe_distance``; skipped
    when it is negative, ``dropped`` then empty).

    Returns:
        ``(kept, dropped)`` lists of records ``{"image", "label", "patient_id", "source", "age_group", ...}``.

    Raises:
        ConfigError: an ``other_findings`` / ``extra_normals`` entry is not ``format=path``, or no source is
            configured.
        InputError: a configured source is missing or holds no usable image (from the dataset readers).
    """
    records = []
    for root, fmt in ((config.kermany, "kermany"), (config.covid_chestxray, "covid-chestxray"),
                      (config.covid_radiography, "covid-radiography")):
        if root:
            records += load_records(root, fmt)
    for root in config.folders:
        records += folder_records(root)
    for spec, reader in [(x, other_finding_records) for x in config.other_findings] + \
            [(x, extra_normal_records) for x in config.extra_normals]:
        fmt, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"{spec!r}: expected format=path (e.g. tbx11k=DATA/cxr/TBX11K)")
        records += reader(fmt, path)
    if not records:
        raise ConfigError("no training data: give CxrClassifyConfig.kermany, covid_chestxray, covid_radiography or "
                          "folders (--kermany, --covid-chestxray, --covid-radiography or --folders)")
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


def _cache(records: list[dict], pre: Preprocessor, cache_dir: str, progress: bool) -> np.ndarray:
    """uint8 ``(N, S, S)`` classifier inputs of ``records``, each cached as ``<cache_dir>/<key>.npy`` (key: the
    image path and every pre-processing setting), so runs over other subsets (leave-one-source-out) reuse them."""
    settings = [pre.size, pre.lung_mask, pre.crop, pre.equalize, pre.margin]
    arr = np.zeros((len(records), pre.size, pre.size), np.uint8)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(tqdm(records, desc="pre-processing", disable=not progress)):
        path = folder / (hashlib.sha1(json.dumps([str(Path(r["image"]).resolve()), settings]).encode()).hexdigest()[:20]
                         + ".npy")
        if path.is_file():
            arr[i] = np.load(path)
            continue
        arr[i] = np.round(pre(read_image(r["image"]))[0] * 255).astype(np.uint8)
        np.save(path, arr[i])
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
        return {"image": torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32).clamp(0, 1),
                "label": torch.tensor(self.labels[i], dtype=torch.long)}


class RandJpegd:
    """Re-encode ``sample["image"]`` (``(1, H, W)`` in [0, 1]) as JPEG at a random quality in ``quality`` with
    probability ``prob`` (Pillow's encoder; torchvision's image codecs are deprecated): the compression of one
    source must not be a cue."""

    def __init__(self, prob: float = 0.3, quality: tuple[int, int] = (30, 95)):
        self.prob, self.quality = prob, quality

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if np.random.random() >= self.prob:
            return sample
        import io

        from PIL import Image

        x = np.asarray(sample["image"], dtype=np.float32)
        u8 = np.round(np.clip(x[0], 0, 1) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=int(np.random.randint(self.quality[0], self.quality[1] + 1)))
        buf.seek(0)
        with Image.open(buf) as im:
            return {**sample, "image": (np.asarray(im, dtype=np.float32) / 255.0)[None]}


def _augmentation(size: int) -> Compose:
    """Geometry (affine, zoom-in crops), intensity (gamma, scale), blur, noise and JPEG re-encoding (MONAI +
    :class:`RandJpegd`): what differs between hospitals and must not decide the class."""
    return Compose([
        RandAffined("image", prob=0.8, rotate_range=np.radians(8), scale_range=0.1, translate_range=0.05 * size,
                    padding_mode="zeros"),
        RandZoomd("image", prob=0.3, min_zoom=1.0, max_zoom=1.25, keep_size=True),
        RandAdjustContrastd("image", prob=0.5, gamma=(0.6, 1.6)),
        RandScaleIntensityd("image", prob=0.3, factors=0.2),
        RandGaussianSmoothd("image", prob=0.25, sigma_x=(0.3, 1.5), sigma_y=(0.3, 1.5)),
        RandGaussianNoised("image", prob=0.2, std=0.02),
        RandJpegd(prob=0.3),
    ])


def _logits(model: torch.nn.Module, arrays: np.ndarray, n_labels: int) -> np.ndarray:
    return batched_logits(model, arrays, n_labels)


def youden_thresholds(prob: np.ndarray, y: np.ndarray, labels: list[str] = LABELS) -> dict[str, float]:
    """Per-class one-vs-rest threshold maximising sensitivity + specificity - 1 on validation."""
    out = {}
    for c, name in enumerate(labels):
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


# ---------------------------------------------------------------------------------------------- scope


def choose_scope_threshold(prob: np.ndarray, y: np.ndarray, labels: list[str], retention: float) -> float:
    """The out-of-scope threshold: the smallest score keeping at least ``retention`` of the in-scope
    (four-class) validation images in scope, and no more than 0.5."""
    inside = y != labels.index(OTHER_FINDING)
    scores = np.sort(out_of_scope_scores(prob[inside], labels))
    if not len(scores):
        return 0.5
    k = min(len(scores) - 1, int(np.ceil(retention * len(scores))) - 1)
    return float(min(0.5, np.nextafter(scores[k], 1.0)))


def scope_metrics(records: list[dict], prob: np.ndarray, labels: list[str], threshold: float | None,
                  n_resamples: int = 1000) -> dict[str, Any]:
    """How the "outside my classes" answer behaves: ``in_scope_retention`` (in-scope images kept in scope),
    and for the other-finding images (overall and per source): ``called_covid19_in_scope`` (top class COVID-19
    while in scope: the failure the fifth class exists to prevent) and ``flagged_out_of_scope``; 95 % bootstrap
    CIs."""
    from pulmo.metrics import bootstrap_ci

    keep = in_scope(prob, labels, threshold)
    y = np.array([labels.index(r["label"]) if r["label"] in labels else -1 for r in records])
    top = np.asarray(prob).argmax(1)
    covid = labels.index("covid19")
    out: dict[str, Any] = {"threshold": threshold}
    inside = np.isin(y, [labels.index(c) for c in LABELS])
    if inside.any():
        k = keep[inside].astype(float)
        out["in_scope_retention"] = {"n": int(inside.sum()), "rate": float(k.mean()),
                                     "ci95": list(bootstrap_ci(lambda i: float(k[i].mean()), len(k), n_resamples))}
    other = np.array([r["label"] == OTHER_FINDING for r in records])
    if other.any():
        src = np.array([r["source"] for r in records])
        for name, sel in [("other_finding", other)] + [(f"other_finding/{s}", other & (src == s))
                                                       for s in sorted(set(src[other]))]:
            bad = ((top == covid) & keep)[sel].astype(float)
            flag = (~keep)[sel].astype(float)
            out[name] = {"n": int(sel.sum()), "called_covid19_in_scope": float(bad.mean()),
                         "called_covid19_in_scope_ci95": list(bootstrap_ci(lambda i, bad=bad: float(bad[i].mean()), len(bad),
                                                                           n_resamples)),
                         "flagged_out_of_scope": float(flag.mean())}
    return out


# ---------------------------------------------------------------------------------------------- metrics

def subgroup_metrics(records: list[dict], prob: np.ndarray, n_resamples: int = 1000,
                     labels: list[str] = LABELS) -> dict[str, Any]:
    """The COVID-19 classifier report's and the issue's views of a prediction: per source (with ECE), Kermany
    normal vs pneumonia and three-class, adult COVID-19 vs normal; binary views with bootstrap 95 % CIs.
    Records whose label the model does not have are left out of the class views."""
    known = np.array([r["label"] in labels for r in records], bool)
    records = [r for r, k in zip(records, known) if k]
    prob = np.asarray(prob)[known]
    y = np.array([labels.index(r["label"]) for r in records], int)
    src = np.array([r["source"] for r in records])
    age = np.array([r.get("age_group", "unknown") for r in records])
    out: dict[str, Any] = {"overall": {**classification_report(y, prob, labels), "confusion_labels": list(labels),
                                       "ece": expected_calibration_error(prob, y) if len(y) else None}}
    for s in sorted(set(src)):
        sel = src == s
        out[f"source/{s}"] = {**classification_report(y[sel], prob[sel], labels),
                              "ece": expected_calibration_error(prob[sel], y[sel])}
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
        out["adult_covid19_vs_normal"]["macro_f1"] = _binary_macro_f1(y[adult] == 3, score >= 0.5)
    return out


def _binary_macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    f1 = []
    for t, p in ((truth, pred), (~truth, ~pred)):
        tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
        f1.append(2 * tp / max(1, 2 * tp + fp + fn))
    return float(np.mean(f1))


@torch.no_grad()
def penultimate_features(model: torch.nn.Module, arrays: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The input of the model's last ``nn.Linear`` (the pooled image features) for uint8 ``(N, S, S)`` images:
    float32 ``(N, F)``."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    feats: list[np.ndarray] = []
    hook = last.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].float().cpu().numpy()))
    try:
        batched_logits(model, arrays, last.out_features, batch_size)
    finally:
        hook.remove()
    return np.concatenate(feats) if feats else np.zeros((0, last.in_features), np.float32)


def source_predictability(train_x: np.ndarray, train_source: list[str], test_x: np.ndarray,
                          test_source: list[str], steps: int = 300) -> dict[str, Any]:
    """How well a linear probe on image features tells the dataset source (the shortcut check of DeGrave et al.
    2021): multinomial logistic regression (L2, class-balanced, full-batch LBFGS in torch) fitted on
    ``train_x`` and scored on ``test_x``. Lower ``balanced_accuracy`` is better (``chance`` = 1 / sources)."""
    sources = sorted(set(train_source) & set(test_source))
    if len(sources) < 2:
        return {"sources": sources, "balanced_accuracy": None}
    tr = [i for i, s in enumerate(train_source) if s in sources]
    te = [i for i, s in enumerate(test_source) if s in sources]
    mu, sd = train_x[tr].mean(0), train_x[tr].std(0) + 1e-6
    xt = torch.from_numpy(((train_x[tr] - mu) / sd).astype(np.float32))
    yt = torch.tensor([sources.index(train_source[i]) for i in tr])
    w = torch.tensor(len(yt) / (len(sources) * np.bincount(yt.numpy(), minlength=len(sources))), dtype=torch.float32)
    lin = torch.nn.Linear(xt.shape[1], len(sources))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xt), yt, weight=w) + 1e-3 * lin.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = lin(torch.from_numpy(((test_x[te] - mu) / sd).astype(np.float32))).argmax(1).numpy()
    truth = np.array([sources.index(test_source[i]) for i in te])
    recall = [float((pred[truth == k] == k).mean()) for k in range(len(sources)) if (truth == k).any()]
    return {"sources": sources, "n_test": len(te), "balanced_accuracy": float(np.mean(recall)),
            "chance": 1.0 / len(sources), "method": "linear probe (logistic regression) on penultimate features, "
                                                    "fitted on train, scored on test"}


def _round4(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def train(config: CxrClassifyConfig, command: str = "") -> dict[str, Any]:
    """Train one classifier; write weights + card and ``results.json`` (validation, test and external metrics,
    reliability bins, scope and source checks) to ``out_dir``.

    Returns:
        The model card (a dict; empty on DDP ranks other than 0).

    Raises:
        ConfigError: ``exclude_sources`` names no source of the records, or bad settings.
        InputError: unreadable or empty datasets.
    """
    out = Path(config.out_dir)
    # first, as the pre-processing below writes its cache (cache_dir); fit_best then keeps this config.yaml
    save_config(config, out / "config.yaml")
    records, dropped = collect_records(config)
    labels = LABELS + ([OTHER_FINDING] if any(r["label"] == OTHER_FINDING for r in records) else [])
    external = [r for r in records if r["source"] in config.exclude_sources]
    records = [r for r in records if r["source"] not in config.exclude_sources]
    if config.exclude_sources and not external:
        raise ConfigError(f"exclude_sources {config.exclude_sources}: no record has such a source; sources are "
                          f"{sorted({r['source'] for r in records})}")
    splits = split_three(records, config.val_fraction, config.test_fraction, config.split_seed)
    if external:
        splits["external"] = external
    logger.info("cxr-classify: %s (dropped %d near-duplicates)", {k: len(v) for k, v in splits.items()}, len(dropped))
    pre = Preprocessor(config.size, config.lung_mask, config.crop, config.equalize)
    arrays = {k: _cache(v, pre, config.cache_dir, config.progress) for k, v in splits.items()}
    y = {k: np.array([labels.index(r["label"]) if r["label"] in labels else -1 for r in v]) for k, v in splits.items()}
    counts = np.bincount(y["train"], minlength=len(labels)).astype(np.float64)
    weights = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(labels), 0.0),
                           dtype=torch.float32)
    model = create_model(config.architecture, in_channels=1, num_classes=len(labels))
    train_ds = ClassifyDataset(arrays["train"], list(y["train"]), _augmentation(config.size))

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = m(batch["image"]).float()
        return F.cross_entropy(logits, batch["label"], weight=weights.to(logits.device))

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        prob = softmax(_logits(m, arrays["val"], len(labels)), 1.0)
        rep = classification_report(y["val"], prob, labels)
        return {"macro_f1": rep["macro_f1"], "accuracy": rep["accuracy"]}

    summary = fit_best(model, train_ds, loss_fn, evaluate_fn, config, monitor="macro_f1")
    if summary is None:
        return {}
    val_logits = _logits(model, arrays["val"], len(labels))
    temperature = fit_temperature(val_logits, y["val"])
    prob = {k: softmax(_logits(model, arrays[k], len(labels)) if k != "val" else val_logits, temperature)
            for k in splits}
    scope_thr = choose_scope_threshold(prob["val"], y["val"], labels, config.in_scope_retention) \
        if OTHER_FINDING in labels else None
    results: dict[str, Any] = {}
    for k in splits:
        results[k] = subgroup_metrics(splits[k], prob[k], 200 if k == "val" else 1000, labels)
        results[k]["scope"] = scope_metrics(splits[k], prob[k], labels, scope_thr)
        known = y[k] >= 0
        results[k]["reliability"] = reliability_bins(prob[k][known], y[k][known]) if known.any() else []
    feats = {k: penultimate_features(model, arrays[k]) for k in ("train", "test")}
    results["source_check"] = source_predictability(feats["train"], [r["source"] for r in splits["train"]],
                                                    feats["test"], [r["source"] for r in splits["test"]])
    test_ece = results["test"]["overall"]["ece"]
    card = {
        "name": config.name, "architecture": config.architecture,
        "model_kwargs": {"in_channels": 1, "num_classes": len(labels)}, "task": "cxr-classify", "labels": labels,
        "calibration": {"method": "temperature scaling on the validation split", "temperature": temperature,
                        "validation_ece": _round4(results["val"]["overall"]["ece"]),
                        "test_ece": _round4(test_ece),  # None when a split is empty (a tiny dataset)
                        "test_ece_per_source": {k.split("/", 1)[1]: _round4(v["ece"])
                                                for k, v in results["test"].items() if k.startswith("source/")},
                        "ece_note": "15-bin top-label ECE (Guo et al. 2017) on held-out patients"},
        "thresholds": {"rule": "argmax of calibrated probabilities",
                       "one_vs_rest_youden": youden_thresholds(prob["val"], y["val"], labels),
                       **({"out_of_scope": scope_thr,
                           "out_of_scope_rule": f"in scope when p({OTHER_FINDING}) < out_of_scope and the top class "
                                                f"is one of the four; keeps {config.in_scope_retention:.0%} of "
                                                "validation in-scope images in scope"}
                          if scope_thr is not None else {})},
        "gradcam_layer": GRADCAM_LAYERS[config.architecture],
        "input": {"size": [config.size, config.size], "channels": 1, "lung_mask": config.lung_mask,
                  "crop": config.crop, "equalize": config.equalize, "crop_margin": pre.margin,
                  "normalisation": pre.describe()},
        "training": {"data": {"kermany": config.kermany, "covid_chestxray": config.covid_chestxray,
                              "covid_radiography": config.covid_radiography, "folders": config.folders,
                              "other_findings": config.other_findings, "extra_normals": config.extra_normals},
                     "excluded_sources": config.exclude_sources,
                     "near_duplicates_removed": len(dropped),
                     "split": f"by patient: sha1(seed {config.split_seed}, patient) < {config.test_fraction} test, "
                              f"< {config.test_fraction + config.val_fraction} validation, else train",
                     "n": {k: len(v) for k, v in splits.items()},
                     "class_counts_train": dict(Counter(r["label"] for r in splits["train"])),
                     "source_counts_train": dict(Counter(r["source"] for r in splits["train"])),
                     "loss": "class-weighted cross-entropy (inverse frequency)",
                     "augmentation": "affine, zoom crop, gamma, intensity scale, Gaussian blur and noise, JPEG "
                                     "quality 30-95",
                     **provenance(config, summary, command),
                     "pretraining": "none: ImageNet weights cannot be downloaded here; trained from scratch"},
        "metrics": {k: _headline(results[k]) for k in ("test", "val", "external") if k in results},
        "license": "Apache-2.0 (weights); training data: Kermany CC BY 4.0, ieee8023 per-image licences "
                   "(incl. CC BY-NC-SA), COVID-19 Radiography Database research use - non-commercial use advised"
                   + ("; other findings: TBX11K / ChestX-Det10 research use with citation, NIH unrestricted"
                      if config.other_findings else ""),
    }
    card["metrics"]["validation"] = card["metrics"].pop("val")
    src_counts = Counter(r["source"] for r in splits["train"])
    card["scope"] = {
        "classes": labels,
        "trained_on": "frontal chest X-rays: " + ", ".join(f"{s} {n}" for s, n in sorted(src_counts.items()))
                      + f" ({len(splits['train'])} train images)",
        "cannot_see": ("findings outside normal / bacterial / viral / COVID-19 are answered 'outside the classes' "
                       "(other_finding, trained on " + ", ".join(sorted({r['source'] for r in splits['train']
                                                                          if r['label'] == OTHER_FINDING}))
                       + "), never named; " if OTHER_FINDING in labels else
                       "any other finding (tuberculosis, effusion, nodules, masses, fractures) still gets one of the "
                       "four classes; ")
                      + "lateral views; hospitals other than the training sources are measured only by "
                        "leaving a source out (see the card's metrics)"}
    card["metrics"]["source_check_balanced_accuracy"] = results["source_check"].get("balanced_accuracy")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return save_run(model, config, card)


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    o = results["overall"]
    h: dict[str, Any] = {"n": o["n"], "accuracy": o["accuracy"], "macro_f1": o["macro_f1"], "ece": o.get("ece")}
    if "kermany_normal_vs_pneumonia" in results:
        h["kermany_normal_vs_pneumonia_accuracy"] = results["kermany_normal_vs_pneumonia"]["accuracy"]
        h["kermany_three_class_accuracy"] = results["kermany_three_class_accuracy"]
    if "adult_covid19_vs_normal" in results:
        a = results["adult_covid19_vs_normal"]
        h["adult_covid19_vs_normal_f1"] = a["f1"]
        h["adult_covid19_vs_normal_macro_f1"] = a.get("macro_f1")
        h["adult_covid19_vs_normal_auc"] = a.get("auc")
    sc = results.get("scope") or {}
    if "in_scope_retention" in sc:
        h["in_scope_retention"] = sc["in_scope_retention"]["rate"]
    if "other_finding" in sc:
        h["other_finding_called_covid19_in_scope"] = sc["other_finding"]["called_covid19_in_scope"]
    return h


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True) -> EvalReport:
    """Metrics of a weight set on a labelled dataset (every image, ``split`` ``all``; ``format`` one of
    :data:`FORMATS`, default ``kermany``): an :class:`EvalReport` of ``n`` images with ``{"labels", "accuracy", "macro_f1", "per_class",
    "confusion_matrix", "confusion_labels", "ece", "scope", "subgroups"}`` (+ ``per_folder`` with
    ``format="folders"``). Prediction = argmax over all model labels; ``ece`` = 15-bin top-label ECE of the
    calibrated probabilities; ``scope`` = :func:`scope_metrics`.

    Raises:
        ConfigError: unknown format or split, or an ``annotations`` file (the layouts carry their labels).
        InputError: unreadable dataset. WeightsError: bad weights.
    """
    format, split = evaluate_arguments("cxr-classify", format, split, annotations)  # before weights or data
    records = load_records(data, format)
    clf = CxrClassifier(weights or DEFAULT_WEIGHTS)
    labels = clf.labels
    t0 = time.perf_counter()
    prob = np.zeros((len(records), len(labels)))
    failed = []
    for i, r in enumerate(tqdm(records, desc="cxr-classify evaluate", disable=not progress)):
        try:
            p = clf.predict(read_image(r["image"]))["probabilities"]
        except InputError as exc:
            failed.append(str(exc))
            prob[i] = np.nan
            continue
        prob[i] = [p[lab] for lab in labels]
    ok = ~np.isnan(prob).any(axis=1)
    recs = [r for r, k in zip(records, ok) if k]
    known = np.array([r["label"] in labels for r in recs], bool)
    y = np.array([labels.index(r["label"]) for r, k in zip(recs, known) if k], int)
    report = classification_report(y, prob[ok][known], labels)
    sub = subgroup_metrics(recs, prob[ok], 1000, labels)
    overall = sub.pop("overall")
    result = {"task": "cxr-classify", **report, "confusion_labels": list(labels), "ece": overall["ece"],
              "reliability": reliability_bins(prob[ok][known], y) if len(y) else [],
              "scope": scope_metrics(recs, prob[ok], labels, clf.scope_threshold),
              "format": format, "failed": failed, "subgroups": sub}
    if format == "folders":
        keep = in_scope(prob[ok], labels, clf.scope_threshold)
        top = prob[ok].argmax(1)
        per: dict[str, Any] = {}
        for name in sorted({r["folder"] for r in recs}):
            sel = np.array([r["folder"] == name for r in recs])
            per[name] = {"n": int(sel.sum()), "predicted": dict(Counter(labels[k] for k in top[sel])),
                         "in_scope_rate": float(keep[sel].mean()),
                         "accuracy": float((top[sel] == labels.index(name)).mean()) if name in labels else None}
        result["per_folder"] = per
    return EvalReport.from_metrics({**result, "weights": clf.card["name"], "weights_sha256": clf.card.get("sha256"),
                                    "seconds": round(time.perf_counter() - t0, 2)}, task="cxr-classify")


def summary(report: EvalReport) -> str:
    """Accuracy, macro-F1 and ECE, and for images outside the classes how many were called COVID-19 in scope."""
    line = (f"accuracy={report['accuracy']:.4f} macro_f1={report['macro_f1']:.4f} ece={report['ece']:.4f} "
            f"labels={report['labels']}")
    if "other_finding" in report["scope"]:
        o = report["scope"]["other_finding"]
        line += (f" other_finding_called_covid19_in_scope={o['called_covid19_in_scope']:.3f} "
                 f"flagged_out_of_scope={o['flagged_out_of_scope']:.3f} (n={o['n']})")
    return line


Config = CxrClassifyConfig
SPLITS = task_entry("cxr-classify").splits


class Predictor(FromWeights, CxrClassifier):
    """The task contract's predictor: :class:`CxrClassifier` built by :meth:`from_weights`."""

    default_weights = DEFAULT_WEIGHTS


__all__ = ["FORMATS", "SPLITS", "Config", "CxrClassifier", "CxrClassifyConfig", "Predictor", "evaluate", "in_scope", "out_of_scope_scores", "roc_auc", "summary", "train"]
