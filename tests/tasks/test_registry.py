"""The contract test over the task registry (timm-style: one test body, parametrised over every registered task).

Static: each registry entry agrees with its module (``FORMATS``, ``SPLITS``, ``Config``, the ``evaluate``
signature and the entry's option fields), unknown formats / splits are refused with a :class:`ConfigError`
before any data is read, and the command line has an ``evaluate`` verb per task without importing torch.

Dynamic: every task trains a tiny model (1 epoch, 1-2 optimiser steps, one thread), ``evaluate`` scores it (an
:class:`EvalReport` whose header names the trained weights), and ``Predictor.from_weights`` on the trained
``.safetensors`` predicts on an input of the task's kind. The tiny data are built as the task's own tests build
them (generated where they do; the real ``../shared/data`` copies where they use them: skipped when absent).
A trained run is cached per session, so the static test that needs trained weights reuses it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pulmo.engine import TrainConfig
from pulmo.errors import ConfigError
from pulmo.tasks.base import HEADER_FIELDS, EvalReport
from pulmo.tasks.registry import TASKS, get_task
from tests.conftest import ROOT, data_path, synthetic_cxr, tiny_tbx11k, write_tiny_lung_dataset

NAMES = list(TASKS)

#: what every tiny run shares: one epoch of one or two steps on one thread, no bars
TINY = {"epochs": 1, "max_steps_per_epoch": 2, "threads": 1, "progress": False, "patience": 1}

# ---------------------------------------------------------------------------------------------- static contract

@pytest.mark.parametrize("name", NAMES)
def test_entry_matches_its_module(name):
    entry = TASKS[name]
    module = get_task(name)
    assert entry.name == name
    assert module.FORMATS == entry.formats and module.SPLITS == entry.splits
    assert isinstance(module.Config, type) and issubclass(module.Config, TrainConfig)
    assert dataclasses.is_dataclass(module.Config)
    for member in ("train", "evaluate", "summary"):
        assert callable(getattr(module, member)), member
    assert inspect.ismethod(module.Predictor.from_weights)  # a classmethod
    assert callable(module.Predictor.predict)


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_signature_takes_the_common_and_the_entry_options(name):
    entry = TASKS[name]
    params = inspect.signature(get_task(name).evaluate).parameters
    first = next(iter(params.values()))
    assert first.name == "data" and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)
    for key, default in (("format", None), ("annotations", None), ("split", None), ("weights", None),
                         ("progress", True)):
        assert key in params, f"evaluate of {name} has no {key!r}"
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {key} is not keyword-only"
        assert params[key].default is default, f"{name}: {key} defaults to {params[key].default!r}"
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for field in dataclasses.fields(entry.options):
        assert takes_any or (field.name in params and params[field.name].kind in (
            inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)), \
            f"evaluate of {name} does not take the registry option {field.name!r}"


@pytest.mark.parametrize("parameter", ["format", "split"])
@pytest.mark.parametrize("name", NAMES)
def test_unknown_format_or_split_is_refused_before_any_data_is_read(name, parameter, tmp_path):
    """Checked before weights or data are read: a task without bundled weights (cxr-detect-unet, nodule-fpr) still
    names the bad argument, not the missing weights."""
    module = get_task(name)
    weights = None
    bad = f"no-such-{parameter}"
    missing = tmp_path / "does-not-exist"  # reading it would raise InputError, not ConfigError
    with pytest.raises(ConfigError) as err:
        module.evaluate(missing, **{parameter: bad}, weights=weights, progress=False)
    assert repr(bad) in str(err.value) or bad in str(err.value)
    assert not missing.exists()


def test_the_cli_has_an_evaluate_verb_per_registered_task():
    import argparse

    from pulmo.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    (tasks,) = [a for a in commands.choices["evaluate"]._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(tasks.choices) == NAMES
    for name, entry in TASKS.items():
        verb = tasks.choices[name]
        flags = {o for a in verb._actions for o in a.option_strings}
        assert {"--data", "--format", "--split", "--weights", "--out"} <= flags, name
        assert ("--annotations" in flags) == entry.annotations, name
        for field in dataclasses.fields(entry.options):
            assert "--" + field.name.replace("_", "-") in flags, (name, field.name)
        (fmt,) = [a for a in verb._actions if "--format" in a.option_strings]
        (split,) = [a for a in verb._actions if "--split" in a.option_strings]
        assert tuple(fmt.choices) == entry.formats and tuple(split.choices) == entry.splits


def test_building_the_parser_does_not_import_torch():
    code = "import sys, pulmo.cli; pulmo.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- tiny runs

@dataclasses.dataclass
class Run:
    """A tiny trained run of one task and how to score and use it."""

    card: dict[str, Any]
    weights: Path
    data: Path
    evaluate: dict[str, Any]                 # evaluate keyword arguments besides weights / progress
    check_prediction: Callable[[Any], None]  # asserts on Predictor.from_weights(weights).predict(...)


def _config(task: str, /, **settings: Any) -> Any:
    return get_task(task).Config(**{**TINY, **settings})


def _lung_seg(tmp: Path, shared: dict) -> Run:
    from pulmo.io import read_image

    root = write_tiny_lung_dataset(tmp / "lungs")
    card = get_task("lung-seg").train(_config("lung-seg", visible_data=[str(root)], size=32, features=4,
                                              batch_size=4, val_fraction=0.3, out_dir=str(tmp / "run")))

    def check(predictor: Any) -> None:
        image = read_image(root / "images" / "CHNCXR_0003_0.png")
        mask = predictor.predict(image)
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == image.shape == (64, 64)

    return Run(card, tmp / "run" / f"{card['name']}.safetensors", root, {}, check)


def _cxr_classify(tmp: Path, shared: dict) -> Run:
    from pulmo.io import read_image

    root = tmp / "folders"  # as test_cxr_classify.test_train_tiny_cli: three shifted grey levels, 12 images each
    for label, shift in (("normal", 0), ("covid19", 60), ("other_finding", -60)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            image, _ = synthetic_cxr(64, abs(shift) + i)
            Image.fromarray(np.clip(image.astype(int) + shift, 0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    card = get_task("cxr-classify").train(_config(
        "cxr-classify", folders=[str(root)], crop="none", size=32, batch_size=8, architecture="resnet18",
        cache_dir=str(tmp / "cache"), out_dir=str(tmp / "run")))

    def check(predictor: Any) -> None:
        out = predictor.predict(read_image(root / "covid19" / "0.png"))
        prob = out["probabilities"]
        assert list(prob) == card["labels"] and all(0.0 <= p <= 1.0 for p in prob.values())
        assert math.isclose(sum(prob.values()), 1.0, abs_tol=1e-5)
        assert out["predicted"] == max(prob, key=prob.get)

    return Run(card, tmp / "run" / f"{card['name']}.safetensors", root, {"format": "folders"}, check)


def _tbx(shared: dict, tmp: Path) -> Path:
    """The tiny real TBX11K copy (8 TB images with their boxes), built once for both detection routes."""
    if "tbx" not in shared:
        shared["tbx"] = tiny_tbx11k(tmp)
    return shared["tbx"]


def _check_rows(rows: Any, predictor: Any, shape: tuple[int, int]) -> None:
    assert isinstance(rows, list)
    h, w = shape
    for row in rows:
        assert set(row) >= {"label", "name", "score", "box_xyxy"} and row["label"] in predictor.labels
        assert predictor.threshold <= row["score"] <= 1.0
        x1, y1, x2, y2 = row["box_xyxy"]
        assert -1 <= x1 < x2 <= w + 1 and -1 <= y1 < y2 <= h + 1  # original px, not working px
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def _check_boxes(predictor: Any, image: Any) -> None:
    rows = predictor.predict(image)
    _check_rows(rows, predictor, image.shape)
    raw = predictor.predict_raw([image])[0]  # every candidate: predict keeps those at the card's threshold
    assert len(rows) == int((np.asarray(raw["scores"]) >= predictor.threshold).sum())
    # a model one step old scores under the card's threshold (a RetinaNet even under its 0.05 candidate floor):
    # open every threshold so the rows of some boxes are checked too
    if hasattr(predictor.model, "score_thresh"):
        predictor.model.score_thresh = 0.0
    if hasattr(predictor, "mask_threshold"):  # the U-Net route: boxes of the mask components at this level
        predictor.mask_threshold = 0.0
    predictor.threshold = 0.0
    rows = predictor.predict(image)
    assert rows, "no box at all with every threshold at 0"
    _check_rows(rows, predictor, image.shape)


def _cxr_detect(tmp: Path, shared: dict) -> Run:
    from pulmo.io import read_image

    root = _tbx(shared, tmp)
    ann = "annotations/json/tb.json"
    card = get_task("cxr-detect").train(_config(
        "cxr-detect", data=str(root), format="tbx11k", annotations=ann, architecture="retinanet-r18-fpn",
        size=128, fpn_channels=32, max_steps_per_epoch=1, batch_size=2, degrade_p=0.0, name="tiny-retinanet",
        out_dir=str(tmp / "run")))
    first = min((root / "imgs" / "tb").iterdir())
    return Run(card, tmp / "run" / "tiny-retinanet.safetensors", root, {"format": "tbx11k", "annotations": ann},
               lambda p: _check_boxes(p, read_image(first)))


def _cxr_detect_unet(tmp: Path, shared: dict) -> Run:
    from pulmo.io import Image2D

    root = _tbx(shared, tmp)
    ann = "annotations/json/tb.json"
    # the settings of test_cxr_detect_unet.test_report_route_trains_one_step_and_predicts_with_overlap_tiles
    card = get_task("cxr-detect-unet").train(_config(
        "cxr-detect-unet", data=str(root), format="tbx11k", annotations=ann, architecture="unet-rsna-pneumonia",
        depth=5, features=4, size=128, patch=64, tile=64, elastic="report", elastic_prob=1.0, max_steps_per_epoch=1,
        batch_size=2, name="tiny-rsna", out_dir=str(tmp / "run")))
    pixels = np.random.default_rng(0).integers(0, 255, (300, 260)).astype(np.uint8)
    image = Image2D(pixels=pixels, spacing=None, source={"path": "x.png"})
    return Run(card, tmp / "run" / "tiny-rsna.safetensors", root, {"format": "tbx11k", "annotations": ann},
               lambda p: _check_boxes(p, image))


def _write_semiseg(base: Path, indices: range) -> None:
    """COVID-SemiSeg ``Imgs/`` + ``GT/`` (0/255) of generated windowed slices: a dark lung with a bright patch."""
    (base / "Imgs").mkdir(parents=True)
    (base / "GT").mkdir(parents=True)
    yy, xx = np.mgrid[:64, :64]
    for i in indices:
        rng = np.random.default_rng(i)
        lesion = (yy - 24 - i % 16) ** 2 + (xx - 20 - 2 * (i % 10)) ** 2 < (5 + i % 4) ** 2
        lung = ((yy - 32) / 26) ** 2 + ((xx - 32) / 28) ** 2 < 1
        image = np.where(lesion, 150, np.where(lung, 40, 200)) + rng.normal(0, 6, (64, 64))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(base / "Imgs" / f"{i}.jpg")
        Image.fromarray(lesion.astype(np.uint8) * 255).save(base / "GT" / f"{i}.png")


def _lesion_seg(tmp: Path, shared: dict) -> Run:
    from pulmo.io import read_image

    root = tmp / "COVID-SemiSeg"
    _write_semiseg(root / "TrainingSet" / "LungInfection-Train" / "Doctor-label", range(10))  # 2 groups of 5
    _write_semiseg(root / "TestingSet" / "LungInfection-Test", range(20, 23))
    card = get_task("lesion-seg").train(_config("lesion-seg", data=str(root), architecture="unet", features=4,
                                                size=32, batch_size=4, out_dir=str(tmp / "run")))

    def check(predictor: Any) -> None:
        from pulmo.tasks.lesion_seg import InfectionResult

        image = read_image(root / "TestingSet" / "LungInfection-Test" / "Imgs" / "20.jpg")
        result = predictor.predict(image)
        assert isinstance(result, InfectionResult) and result.label_names == card["labels"]
        assert result.labels.shape == image.shape == (64, 64) and result.labels.dtype == np.uint8
        assert set(np.unique(result.labels)) <= set(range(len(card["labels"]) + 1))

    return Run(card, tmp / "run" / f"{card['name']}.safetensors", root, {}, check)


def _chest_hu(nodule: bool) -> np.ndarray:
    """As test_nodule._chest: two box lungs of air in a soft-tissue body, + a 10 mm solid sphere in the left lung."""
    hu = np.full((40, 96, 96), -1000.0, np.float32)
    hu[:, 8:-8, 8:-8] = 40.0
    hu[4:-4, 20:-20, 14:44] = -850.0
    hu[4:-4, 20:-20, 52:82] = -850.0
    if nodule:
        zz, yy, xx = np.mgrid[:40, :96, :96]
        hu[((zz - 20) * 2.5) ** 2 + ((yy - 48) * 0.8) ** 2 + ((xx - 29) * 0.8) ** 2 <= 5.0 ** 2] = 40.0
    return hu


def _write_mhd(path: Path, hu: np.ndarray) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing((0.8, 0.8, 2.5))
    img.SetOrigin((-40.0, -40.0, -100.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _nodule(tmp: Path, shared: dict) -> Run:
    from pulmo.io import read_image

    background = _write_mhd(tmp / "background" / "chest.mhd", _chest_hu(nodule=False))
    root = tmp / "luna16"  # one LUNA16-layout scan with its one annotated nodule
    uid = "1.2.826.0.1.1"
    scan = _write_mhd(root / "subset0" / f"{uid}.mhd", _chest_hu(nodule=True))
    x, y, z = read_image(scan).index_to_world([[20, 48, 29]])[0]
    (root / "annotations.csv").write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},{x},{y},{z},10.0\n")
    card = get_task("nodule").train(_config(
        "nodule", backgrounds=[str(background)], patch=32, samples_per_epoch=2, val_samples=2, max_nodules=2,
        channels=[8, 16, 16], blocks=[1, 1, 1], batch_size=2, max_steps_per_epoch=1, out_dir=str(tmp / "run")))

    def check(predictor: Any) -> None:
        from pulmo.tasks.nodule import NoduleFindings

        volume = read_image(scan)
        found = predictor.predict(volume)
        assert isinstance(found, NoduleFindings) and found.threshold == predictor.threshold
        assert found.label_map.dtype == np.int16 and found.label_map.shape == volume.shape == (40, 96, 96)
        assert set(np.unique(found.label_map)) <= set(range(len(found.nodules) + 1))
        assert all(n["probability"] >= found.threshold for n in found.nodules)
        predictor.threshold = 0.0  # every candidate of the barely trained model: the label map numbers them all
        found = predictor.predict(volume)
        assert found.nodules and found.label_map.shape == volume.shape
        assert set(np.unique(found.label_map)) <= set(range(len(found.nodules) + 1))
        assert all(set(n) >= {"center_xyz_mm", "diameter_mm", "probability"} for n in found.nodules)

    return Run(card, tmp / "run" / f"{card['name']}.safetensors", root,
               {"format": "luna16", "annotations": root / "annotations.csv", "second_stage": "none"}, check)


def _slices(shared: dict, tmp: Path) -> Path:
    """Generated LIDC-IDRI-slices crops (12 patients, as test_nodule_fpr's tiny run), built once."""
    if "slices" not in shared:
        from tests.tasks.test_nodule_seg import _make_dataset

        shared["slices"] = _make_dataset(tmp / "LIDC-IDRI-slices", n_patients=12)
    return shared["slices"]


def _nodule_seg(tmp: Path, shared: dict) -> Run:
    root = _slices(shared, tmp)
    card = get_task("nodule-seg").train(_config("nodule-seg", data=str(root), features=4, depth=3, size=32,
                                                batch_size=8, lr=0.01, out_dir=str(tmp / "run")))

    def check(predictor: Any) -> None:
        stack = np.full((5, 40, 48), 20, np.uint8)
        stack[1:4, 14:26, 18:30] = 130  # a bright nodule at the centre of a crop of any size
        mask = predictor.predict(stack)
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == stack.shape

    return Run(card, tmp / "run" / f"{card['name']}.safetensors", root, {}, check)


def _nodule_fpr(tmp: Path, shared: dict) -> Run:
    from pulmo.io import Volume

    image = data_path("ct", "pyradiomics_lung", "lung1_image.nrrd")  # as test_nodule_fpr.tiny_run
    label = image.with_name("lung1_label.nrrd")
    root = _slices(shared, tmp)
    card = get_task("nodule-fpr").train(_config("nodule-fpr", data=str(root), scans=[f"{image}={label}"], n_random=10,
                                                batch_size=8, out_dir=str(tmp / "run")))

    def check(predictor: Any) -> None:
        volume = Volume(hu=_chest_hu(nodule=True), spacing=(2.5, 0.8, 0.8))
        centres = [[20.0, 48.0, 29.0], [20.0, 48.0, 66.0], [6.0, 30.0, 20.0]]
        prob = predictor.predict(volume, centres)
        assert isinstance(prob, np.ndarray) and prob.shape == (len(centres),) and prob.dtype.kind == "f"
        assert np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()
        assert predictor.predict(volume, []).shape == (0,)

    return Run(card, tmp / "run" / f"{card['name']}.safetensors", root, {}, check)


def _input_gate(tmp: Path, shared: dict) -> Run:
    from pulmo.datasets.gate_corpus import GATE_LABELS, GateCorpus

    rng = np.random.default_rng(0)  # as test_input_gate: 60 pictures whose grey level tells the class
    n = 60
    labels = np.arange(n) % len(GATE_LABELS)
    images = (rng.random((n, 128, 128)) * 60 + labels[:, None, None] * 80).astype(np.uint8)
    corpus = GateCorpus(images, labels, [f"g{i}" for i in range(n)], ["src"] * n).save(tmp / "corpus.npz")
    card = get_task("input-gate").train(_config("input-gate", corpus=str(corpus), batch_size=16,
                                                out_dir=str(tmp / "run")))

    def check(predictor: Any) -> None:
        from pulmo.io import Image2D

        pixels = (rng.random((90, 70)) * 60 + 80).astype(np.uint8)
        for picture in (pixels, Image2D(pixels=pixels, spacing=None, source={"path": "x.png"})):
            prob = predictor.predict(picture)
            assert list(prob) == list(GATE_LABELS) and all(0.0 <= p <= 1.0 for p in prob.values())
            assert math.isclose(sum(prob.values()), 1.0, abs_tol=1e-5)

    return Run(card, tmp / "run" / f"{card['name']}.safetensors", tmp, {"corpus": str(corpus)}, check)


BUILDERS: dict[str, Callable[[Path, dict], Run]] = {
    "lung-seg": _lung_seg, "cxr-classify": _cxr_classify, "cxr-detect": _cxr_detect,
    "cxr-detect-unet": _cxr_detect_unet, "lesion-seg": _lesion_seg, "nodule": _nodule, "nodule-seg": _nodule_seg,
    "nodule-fpr": _nodule_fpr, "input-gate": _input_gate,
}


def test_every_registered_task_has_a_tiny_run():
    assert set(BUILDERS) == set(TASKS)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """``runs(name)``: the task's tiny trained :class:`Run`, trained on first use and kept for the session."""
    cache: dict[str, Run] = {}
    shared: dict[str, Any] = {}
    base = tmp_path_factory.mktemp("registry")

    def get(name: str) -> Run:
        if name not in cache:
            tmp = base / name
            tmp.mkdir()
            cache[name] = BUILDERS[name](tmp, shared)
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------- dynamic contract

@pytest.mark.parametrize("name", NAMES)
def test_tiny_train_evaluate_predict(name, runs):
    module = get_task(name)
    run = runs(name)
    card = run.card
    assert card["task"] == name and len(card["sha256"]) == 64
    assert run.weights.is_file() and run.weights.with_suffix(".json").is_file()
    assert json.loads(run.weights.with_suffix(".json").read_text())["sha256"] == card["sha256"]

    report = module.evaluate(run.data, weights=str(run.weights), progress=False, **run.evaluate)
    assert isinstance(report, EvalReport)
    assert tuple(report.to_dict())[:len(HEADER_FIELDS)] == HEADER_FIELDS
    assert report.task == name and report["task"] == name
    assert isinstance(report.n, int) and report.n >= 1
    assert report.weights == card["name"]
    assert report.weights_sha256 == card["sha256"]
    assert isinstance(report.seconds, float) and report.seconds >= 0.0
    assert report.metrics and not set(report.metrics) & set(HEADER_FIELDS)
    assert json.loads(json.dumps(report.to_dict()))["weights_sha256"] == card["sha256"]
    assert dict(report) == report.to_dict() and len(report) == len(report.to_dict())
    line = module.summary(report)
    assert isinstance(line, str) and line.strip() and "\n" not in line

    predictor = module.Predictor.from_weights(str(run.weights))
    assert isinstance(predictor, module.Predictor)
    assert predictor.card["sha256"] == card["sha256"]
    run.check_prediction(predictor)
