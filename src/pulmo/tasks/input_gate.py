"""The input-gate model: is this picture a frontal chest radiograph, an axial CT slice, or neither?

A torchvision MobileNetV3-Small (1-channel, 128 x 128, :func:`pulmo.transforms.gate_input`) with three
outputs (:data:`pulmo.datasets.gate_corpus.GATE_LABELS`), trained on the real-data corpus of
:mod:`pulmo.datasets.gate_corpus` with class-weighted cross-entropy, temperature-scaled on a validation
split, and used by :mod:`pulmo.gate` for inputs whose tags cannot be trusted (PNG / JPEG, secondary
captures) and to check the content of tagged ones.

Splits are by group (patient, CT slice block, picture, generator seed; see the corpus module): 20 % of
the groups are the test split, 10 % of the rest validation. :func:`leave_one_source_out` retrains with one
chest X-ray source held out entirely and reports how many of its images the gate would refuse: the
outsider's view of the false-refusal rate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pulmo.datasets.gate_corpus import GATE_LABELS, GateCorpus, build_gate_corpus
from pulmo.datasets.splits import patient_fold
from pulmo.engine import TrainConfig, batched_logits, fit_best, provenance, save_config, save_run
from pulmo.errors import ConfigError
from pulmo.inference.input_gate import DEFAULT_WEIGHTS, InputGateModel
from pulmo.io import Image2D
from pulmo.metrics.calibration import expected_calibration_error, fit_temperature, softmax
from pulmo.models import create_model
from pulmo.tasks.base import EvalReport, FromWeights
from pulmo.tasks.registry import evaluate_arguments, task_entry
from pulmo.transforms import GATE_SIZE

logger = logging.getLogger(__name__)

ARCHITECTURE = "mobilenet_v3_small"


@dataclasses.dataclass
class InputGateConfig(TrainConfig):
    """Training settings of the gate model (on top of :class:`pulmo.engine.TrainConfig`).

    Attributes:
        data: the data root (``cxr/``, ``ct/``) the corpus is rendered from.
        corpus: cached corpus ``.npz`` (built from ``data`` when missing).
        test_fraction: share of groups held out for the test split.
        val_fraction: share of the remaining groups used for validation (temperature, thresholds).
        split_seed: seed of the group split.
        exclude_sources: sources left out of training and validation (leave-one-source-out).
        name: weight-set name.
        epochs, batch_size, lr, patience: :class:`TrainConfig` fields with this task's defaults
            (16, 64, 3e-3, 6).
    """

    data: str = ""
    corpus: str = "runs/gate/corpus.npz"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0
    exclude_sources: list[str] = dataclasses.field(default_factory=list)
    name: str = DEFAULT_WEIGHTS
    epochs: int = 16
    batch_size: int = 64
    lr: float = 3e-3
    patience: int = 6


class GateDataset(Dataset):
    """``{"image": (1, 128, 128) float32 in [0, 1], "label": int}`` items of a corpus subset, augmented."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool):
        from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandFlip, RandGaussianNoise

        self.images, self.labels = images, labels
        self.transform = Compose([
            RandAffine(prob=0.7, rotate_range=0.2, scale_range=0.2, translate_range=12, padding_mode="zeros"),
            RandFlip(prob=0.5, spatial_axis=1),
            RandAdjustContrast(prob=0.5, gamma=(0.6, 1.6)),
            RandGaussianNoise(prob=0.2, std=0.03),
        ]) if augment else None
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)[None]
        if self.transform is not None:
            x = torch.as_tensor(self.transform(x)).float().clamp(0, 1)
            if self.rng.random() < 0.3:
                # low contrast (portable films, hazy scans, figures reproduced in papers): squeeze the range
                lo, hi = self.rng.uniform(0.0, 0.35), self.rng.uniform(0.65, 1.0)
                x = lo + (hi - lo) * x
        return {"image": x, "label": int(self.labels[i])}


def _logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    return batched_logits(model, images, len(GATE_LABELS), batch_size=256)


def _threshold(prob: np.ndarray, positive: np.ndarray, lo: float = 0.05, hi: float = 0.95) -> float:
    """The acceptance threshold on ``prob`` (one class's probability) that minimises false refusals plus false
    acceptances (each as a rate) on validation data; within the best interval, its middle in logit space.

    Args:
        prob: ``(N,)`` probabilities of the class.
        positive: ``(N,)`` bool, items of the class.
        lo, hi: bounds of the threshold.

    Returns:
        The threshold in ``[lo, hi]``.
    """
    pos, neg = prob[positive], prob[~positive]
    if pos.size == 0 or neg.size == 0:
        return 0.5
    cuts = np.unique(np.clip(np.concatenate([pos, neg, [lo, hi]]), lo, hi))
    # the cost is constant for t in (cuts[j-1], cuts[j]]: evaluate it at each cut
    cost = np.array([(pos < t).mean() + (neg >= t).mean() for t in cuts])
    best = np.flatnonzero(cost <= cost.min() + 1e-12)
    first = best[0]
    last = first
    while last + 1 < cuts.size and last + 1 in set(best.tolist()):
        last += 1
    lower = float(cuts[first - 1]) if first > 0 else lo
    upper = float(cuts[last])
    # the middle in logit space: a perfectly separated validation set (best interval = [lo, hi]) gives 0.5
    mid = (np.log(lower / (1 - lower)) + np.log(upper / (1 - upper))) / 2
    return float(np.clip(1 / (1 + np.exp(-mid)), lo, hi))


def gate_rates(prob: np.ndarray, labels: np.ndarray, sources: list[str], thresholds: dict[str, float]) -> dict[str, Any]:
    """False-refusal and false-acceptance rates of the gate's decision rule.

    The rule (as in :mod:`pulmo.gate`): accepted as a chest X-ray when ``p(cxr) >= thresholds["cxr"]``; as a CT
    slice when ``p(ct_slice) >= thresholds["ct_slice"]``.

    Args:
        prob: ``(N, 3)`` calibrated probabilities.
        labels: ``(N,)`` true labels (indices of :data:`GATE_LABELS`).
        sources: ``N`` dataset names.
        thresholds: ``{"cxr": t, "ct_slice": t}``.

    Returns:
        ``{"cxr": {"false_refusal_rate", "n", "refused", "per_source"}, "ct_slice": {...},
        "non_cxr": {"false_acceptance_rate", "n", "accepted", "per_source"}, "non_ct": {...}}``.
    """
    src = np.array(sources)
    out: dict[str, Any] = {}
    for k, name in enumerate(("cxr", "ct_slice")):
        accept = prob[:, k] >= thresholds[name]
        pos, neg = labels == k, labels != k
        out[name] = {"n": int(pos.sum()), "refused": int((pos & ~accept).sum()),
                     "false_refusal_rate": float((pos & ~accept).sum() / max(1, pos.sum())),
                     "per_source": {s: {"n": int((pos & (src == s)).sum()),
                                        "refused": int((pos & (src == s) & ~accept).sum())}
                                    for s in sorted(set(src[pos]))}}
        out[f"non_{name.split('_')[0]}"] = {
            "n": int(neg.sum()), "accepted": int((neg & accept).sum()),
            "false_acceptance_rate": float((neg & accept).sum() / max(1, neg.sum())),
            "per_source": {s: {"n": int((neg & (src == s)).sum()), "accepted": int((neg & (src == s) & accept).sum())}
                           for s in sorted(set(src[neg]))}}
    return out


def _splits(corpus: GateCorpus, config: InputGateConfig) -> dict[str, np.ndarray]:
    test = corpus.held_out(config.test_fraction, config.split_seed)
    val = np.array([patient_fold(g, config.split_seed + 1) < config.val_fraction for g in corpus.groups]) & ~test
    excluded = np.isin(np.array(corpus.sources), config.exclude_sources)
    return {"train": ~test & ~val & ~excluded, "val": val & ~excluded, "test": test, "excluded": excluded}


def load_corpus(config: InputGateConfig) -> GateCorpus:
    """The cached corpus at ``config.corpus``, rendered from ``config.data`` first when missing.

    Raises:
        ConfigError: no cached corpus and no ``data`` root to render one from.
    """
    path = Path(config.corpus)
    if path.is_file():
        return GateCorpus.load(path)
    if not config.data:
        raise ConfigError(f"no gate corpus at {path} and no data root to render it from; give data (--data DIR)")
    corpus = build_gate_corpus(config.data, progress=config.progress)
    corpus.save(path)
    return corpus


def train(config: InputGateConfig, command: str = "", corpus: GateCorpus | None = None) -> dict[str, Any]:
    """Train the gate model and write weights, card and ``results.json`` (test-split rates) to ``out_dir``.

    Args:
        config: settings.
        command: the command line, recorded in the card.
        corpus: a corpus already in memory (else :func:`load_corpus`).

    Returns:
        The model card as written.
    """
    # first, as load_corpus may render and save the corpus; fit_best then leaves this config.yaml as it is
    save_config(config, Path(config.out_dir) / "config.yaml")
    corpus = corpus or load_corpus(config)
    split = _splits(corpus, config)
    counts = np.bincount(corpus.labels[split["train"]], minlength=len(GATE_LABELS)).astype(np.float64)
    class_weight = torch.tensor(counts.sum() / np.maximum(counts, 1) / len(GATE_LABELS), dtype=torch.float32)
    model = create_model(ARCHITECTURE, in_channels=1, num_classes=len(GATE_LABELS))
    train_ds = GateDataset(corpus.images[split["train"]], corpus.labels[split["train"]], augment=True)
    val_x, val_y = corpus.images[split["val"]], corpus.labels[split["val"]]

    def loss_fn(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = m(batch["image"]).float()
        return F.cross_entropy(logits, batch["label"], weight=class_weight.to(logits.device))

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        logits = _logits(m, val_x)
        pred = logits.argmax(axis=1)
        recalls = [float((pred[val_y == k] == k).mean()) for k in range(len(GATE_LABELS)) if (val_y == k).any()]
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(val_y), weight=class_weight)
        return {"balanced_accuracy": float(np.mean(recalls)), "val_loss": float(loss)}

    # the class-weighted validation loss selects the epoch: balanced accuracy saturates near 0.99 on a few
    # hundred validation items and picks noisy early epochs
    summary = fit_best(model, train_ds, loss_fn, evaluate_fn, config, monitor="val_loss", mode="min")
    if summary is None:
        return {}
    return finish(model, corpus, config, summary, command)


def finish(model: torch.nn.Module, corpus: GateCorpus, config: InputGateConfig, summary: dict[str, Any],
           command: str = "") -> dict[str, Any]:
    """Calibrate a trained gate model (temperature, thresholds on the validation split), measure it on the
    test split (and on excluded sources), and write ``results.json``, the weights and the card to ``out_dir``.

    Args:
        model: the trained network (its best epoch).
        corpus: the corpus it was trained on.
        config: the training settings.
        summary: :func:`pulmo.engine.fit`'s summary (epochs, seconds) for the card.
        command: the command line, for the card.

    Returns:
        The model card as written.
    """
    out = Path(config.out_dir)
    split = _splits(corpus, config)
    counts = np.bincount(corpus.labels[split["train"]], minlength=len(GATE_LABELS)).astype(np.float64)
    val_x, val_y = corpus.images[split["val"]], corpus.labels[split["val"]]
    model.eval()
    val_logits = _logits(model, val_x)
    temperature = fit_temperature(val_logits, val_y)
    val_prob = softmax(val_logits, temperature)
    thresholds = {name: _threshold(val_prob[:, k], val_y == k) for k, name in enumerate(("cxr", "ct_slice"))}
    test = split["test"] & ~split["excluded"]
    test_prob = softmax(_logits(model, corpus.images[test]), temperature)
    test_sources = [s for s, t in zip(corpus.sources, test) if t]
    results = {"test": gate_rates(test_prob, corpus.labels[test], test_sources, thresholds),
               "validation": gate_rates(val_prob, val_y, [s for s, v in zip(corpus.sources, split["val"]) if v],
                                        thresholds),
               "test_ece": expected_calibration_error(test_prob, corpus.labels[test]),
               "test_accuracy": float((test_prob.argmax(1) == corpus.labels[test]).mean())}
    if split["excluded"].any():
        ex = split["excluded"]
        ex_prob = softmax(_logits(model, corpus.images[ex]), temperature)
        results["excluded_sources"] = gate_rates(ex_prob, corpus.labels[ex],
                                                 [s for s, e in zip(corpus.sources, ex) if e], thresholds)
    card = {
        "name": config.name, "architecture": ARCHITECTURE, "task": "input-gate",
        "model_kwargs": {"in_channels": 1, "num_classes": len(GATE_LABELS)}, "labels": list(GATE_LABELS),
        "display_names": {"cxr": "frontal chest radiograph", "ct_slice": "axial CT slice", "other": "neither"},
        "calibration": {"method": "temperature scaling on the validation split", "temperature": temperature,
                        "test_ece": results["test_ece"]},
        "thresholds": {**thresholds, "rule": "accept as a chest X-ray when p(cxr) >= cxr; as a CT slice when "
                       "p(ct_slice) >= ct_slice; each threshold minimises false-refusal rate + false-acceptance "
                       "rate on the validation split, taken in the middle (logit space) of the best interval, "
                       "within [0.05, 0.95]"},
        "input": {"size": [GATE_SIZE, GATE_SIZE], "channels": 1,
                  "normalisation": "stride to <= 512 px, percentile 0.5-99.5 min-max to [0, 1], bilinear resize "
                                   "(pulmo.transforms.gate_input)"},
        "training": {"data": "pulmo.datasets.gate_corpus over the data root (real CXR of 7 sources, LIDC-IDRI "
                             "and pyradiomics CT slices in 4 windows, COVID-SemiSeg slices, LIDC nodule crops, lung "
                             "masks, scikit-image pictures, generated pictures)",
                     "split": f"by group: sha1(seed {config.split_seed}, group) < {config.test_fraction} test, "
                              f"sha1(seed {config.split_seed + 1}, group) < {config.val_fraction} validation",
                     "n": {k: int(v.sum()) for k, v in split.items()},
                     "sources": dict(Counter(corpus.sources)), "exclude_sources": config.exclude_sources,
                     "class_counts_train": {GATE_LABELS[k]: int(c) for k, c in enumerate(counts)},
                     "loss": "class-weighted cross-entropy (inverse frequency)",
                     **provenance(config, summary, command), "pretraining": "none (trained from scratch)"},
        "metrics": {"test": {"false_refusal_rate_cxr": results["test"]["cxr"]["false_refusal_rate"],
                             "false_acceptance_rate_non_cxr": results["test"]["non_cxr"]["false_acceptance_rate"],
                             "false_refusal_rate_ct_slice": results["test"]["ct_slice"]["false_refusal_rate"],
                             "false_acceptance_rate_non_ct": results["test"]["non_ct"]["false_acceptance_rate"],
                             "n_cxr": results["test"]["cxr"]["n"], "n_non_cxr": results["test"]["non_cxr"]["n"],
                             "accuracy": results["test_accuracy"], "ece": results["test_ece"]}},
        "scope": {"classes": list(GATE_LABELS),
                  "trained_on": "real chest X-rays of 7 sources, CT slices of 3, nodule crops, masks, scikit-image and "
                                "generated pictures (docs/input-gate.md)",
                  "cannot_see": "lateral views (none in the data); whether a radiograph shows a finding the other "
                                "models know"},
        "license": "Apache-2.0 (weights); training data: see the sources' licences (research use)",
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return save_run(model, config, card)


def leave_one_source_out(config: InputGateConfig, sources: list[str] | None = None) -> dict[str, Any]:
    """Retrain with each chest X-ray source excluded in turn; the gate's refusals of the unseen source.

    Args:
        config: settings (``out_dir`` gets one sub-folder per held-out source).
        sources: the sources to hold out (default: every chest X-ray source in the corpus).

    Returns:
        ``{source: {"n", "refused", "false_refusal_rate", "non_cxr_false_acceptance_rate"}}``.
    """
    corpus = load_corpus(config)
    cxr_sources = sorted({s for s, y in zip(corpus.sources, corpus.labels) if y == 0})
    out = {}
    for source in sources or cxr_sources:
        cfg = dataclasses.replace(config, exclude_sources=[source], out_dir=str(Path(config.out_dir) / source),
                                  name=f"input-gate-without-{source}")
        train(cfg, corpus=corpus)
        res = json.loads((Path(cfg.out_dir) / "results.json").read_text())
        ex = res["excluded_sources"]["cxr"]
        out[source] = {"n": ex["n"], "refused": ex["refused"], "false_refusal_rate": ex["false_refusal_rate"],
                       "non_cxr_false_acceptance_rate_test": res["test"]["non_cxr"]["false_acceptance_rate"]}
        logger.info("LOSO %s: %s", source, out[source])
    return out


Config = InputGateConfig
FORMATS = task_entry("input-gate").formats  # the registry holds the static facts
SPLITS = task_entry("input-gate").splits


class Predictor(FromWeights, InputGateModel):
    """The task contract's predictor: :class:`InputGateModel` built by :meth:`from_weights`; ``predict`` also
    takes an :class:`~pulmo.io.Image2D` (its pixels)."""

    default_weights = DEFAULT_WEIGHTS

    def predict(self, pixels: np.ndarray | Image2D) -> dict[str, float]:
        """Calibrated ``{label: p}`` of a picture: an :class:`~pulmo.io.Image2D` or its ``(H, W)`` pixels."""
        return super().predict(pixels.pixels if isinstance(pixels, Image2D) else pixels)


def evaluate(data: str | Path, *, format: str | None = None, annotations: str | Path | None = None,
             split: str | None = None, weights: str | None = None, progress: bool = True,
             corpus: str | Path | None = None, split_seed: int = 0, test_fraction: float = 0.2) -> EvalReport:
    """Rates of a gate model on the held-out groups (the test split) of the corpus of ``data``.

    Args:
        data: the data root the corpus is rendered from (``cxr/``, ``ct/``); format ``gate-corpus``.
        format, split: ``gate-corpus`` and ``test`` (the only ones; None = those).
        annotations: not used (the corpus carries its labels); must be None.
        weights: bundled weight name or ``.safetensors`` path (None: the bundled model).
        progress: tqdm bars while rendering.
        corpus: a cached corpus ``.npz`` to read instead of rendering (rendering takes about a minute).
        split_seed, test_fraction: the split of the model's card (defaults: those of the bundled model).

    Returns:
        :class:`EvalReport` of ``n`` held-out pictures with ``rates`` (:func:`gate_rates`), ``ece`` and
        ``accuracy``.

    Raises:
        ConfigError: another format or split, or an annotations file.
        InputError: ``data`` holds no chest X-ray source.
        WeightsError: missing or corrupted weights.
    """
    format, split = evaluate_arguments("input-gate", format, split, annotations)  # before weights or data
    t0 = time.perf_counter()
    gate = InputGateModel(weights or DEFAULT_WEIGHTS)
    c = GateCorpus.load(corpus) if corpus and Path(corpus).is_file() else build_gate_corpus(data, progress=progress)
    test = c.held_out(test_fraction, split_seed)
    prob = softmax(_logits(gate.model, c.images[test]), gate.temperature)
    return EvalReport(task="input-gate", n=int(test.sum()), weights=gate.card["name"],
                      weights_sha256=gate.card.get("sha256"), seconds=round(time.perf_counter() - t0, 2),
                      metrics={"rates": gate_rates(prob, c.labels[test], [s for s, t in zip(c.sources, test) if t],
                                                   gate.thresholds),
                               "ece": expected_calibration_error(prob, c.labels[test]),
                               "accuracy": float((prob.argmax(1) == c.labels[test]).mean())})


def summary(report: EvalReport) -> str:
    """False refusals of real chest X-rays and CT slices, false acceptances of the rest, and the ECE."""
    r = report["rates"]
    return (f"false_refusal_cxr={r['cxr']['false_refusal_rate']:.4f} ({r['cxr']['refused']}/{r['cxr']['n']}) "
            f"false_acceptance_non_cxr={r['non_cxr']['false_acceptance_rate']:.4f} "
            f"({r['non_cxr']['accepted']}/{r['non_cxr']['n']}) false_refusal_ct_slice="
            f"{r['ct_slice']['false_refusal_rate']:.4f} false_acceptance_non_ct="
            f"{r['non_ct']['false_acceptance_rate']:.4f} ece={report['ece']:.4f}")


__all__ = [
    "FORMATS",
    "SPLITS",
    "Config",
    "InputGateConfig",
    "InputGateModel",
    "Predictor",
    "evaluate",
    "gate_rates",
    "leave_one_source_out",
    "summary",
    "train",
]
