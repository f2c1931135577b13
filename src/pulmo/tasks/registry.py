"""The task registry: every ``pulmo`` task by name, as timm registers models (list, get, test over the registry).

An entry holds what the command line needs to build ``pulmo train TASK`` and ``pulmo evaluate TASK`` without
importing the task (so ``pulmo --help`` does not import torch): the module path, a one-line description, the
dataset ``formats`` and ``splits`` of ``evaluate`` (the first of each is the default), whether ``evaluate``
takes an ``annotations`` file, and the dataclass of the task's own evaluation options (each field becomes a
flag; its ``metadata["help"]`` is the help text). :func:`get_task` imports the module and checks it against
the contract of :mod:`pulmo.tasks.base`; the contract test (``tests/tasks/test_registry.py``) checks that every
entry's static facts equal the module's own ``FORMATS`` / ``SPLITS``.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from pulmo.errors import ConfigError
from pulmo.tasks.base import check_task_module, choose


def _help(text: str, **extra: object) -> dict[str, object]:
    return {"help": text, **extra}


@dataclasses.dataclass
class NoOptions:
    """A task whose ``evaluate`` takes only the common arguments."""


@dataclasses.dataclass
class DetectEvalOptions:
    """Evaluation options of ``cxr-detect`` (and ``cxr-detect-unet``).

    Attributes:
        negatives: images without lesions, each ``FORMAT=PATH``; scored as false boxes per image and as
            image AUC.
    """

    negatives: list[str] = dataclasses.field(default_factory=list, metadata=_help(
        "images without lesions as FORMAT=PATH (kermany, covid-radiography, covid-chestxray, chestx-det10, folder); "
        "scored as false boxes per image and image AUC; repeatable", metavar="FORMAT=PATH"))


@dataclasses.dataclass
class NoduleEvalOptions:
    """Evaluation options of ``nodule``.

    Attributes:
        max_candidates_per_scan: candidates kept per scan for the FROC, most probable first (LUNA16's
            ``maxNumberOfCADMarks``; 0 = all).
        second_stage: false-positive reduction weights (name or ``.safetensors``), ``"auto"`` (the bundled
            ``nodule-fpr`` when present) or ``"none"`` (the detector alone).
    """

    max_candidates_per_scan: int = dataclasses.field(default=100, metadata=_help(
        "keep each scan's N most probable candidates for the FROC, as the LUNA16 script's maxNumberOfCADMarks "
        "(0 = all)"))
    second_stage: str = dataclasses.field(default="auto", metadata=_help(
        "false-positive reduction weights (name or .safetensors), 'auto' (the bundled nodule-fpr when present) or "
        "'none' (the detector alone)"))


@dataclasses.dataclass
class GateEvalOptions:
    """Evaluation options of ``input-gate``.

    Attributes:
        corpus: a cached rendered corpus ``.npz`` ("" = render it from the data).
    """

    corpus: str = dataclasses.field(default="", metadata=_help(
        "a cached rendered corpus .npz (default: render it from the data)"))


@dataclasses.dataclass
class FprEvalOptions:
    """Evaluation options of ``nodule-fpr``.

    Attributes:
        scans: CT series scored for false positives, each ``PATH`` or ``PATH=LABEL`` (a label volume of its
            lesions).
    """

    scans: list[str] = dataclasses.field(default_factory=list, metadata=_help(
        "a CT series scored for false positives, PATH or PATH=LABEL (a label volume of its lesions); repeatable",
        metavar="PATH[=LABEL]"))


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """One registered task (see the module docstring).

    Attributes:
        name: the task name of the command line and of model cards (``lung-seg``, ...).
        module: the import path of the task module.
        description: one line for ``pulmo train -h`` / ``pulmo evaluate -h``.
        formats: dataset layouts of ``evaluate``, the default first (equal to the module's ``FORMATS``).
        splits: splits of ``evaluate``, the default first (equal to the module's ``SPLITS``).
        annotations: whether ``evaluate`` takes an ``annotations`` label file.
        options: dataclass of the task's own ``evaluate`` keyword options.
        data_help: what ``--data`` of ``evaluate`` must be.
    """

    name: str
    module: str
    description: str
    formats: tuple[str, ...]
    splits: tuple[str, ...]
    annotations: bool = False
    options: type = NoOptions
    data_help: str = "dataset root in the format's layout"

    def load(self) -> ModuleType:
        """Import the task module (this imports torch) and check it against the task contract.

        Raises:
            ConfigError: the module breaks the contract (a pulmo bug, named).
        """
        return check_task_module(importlib.import_module(self.module), self.name)


_CXR_FORMATS = ("kermany", "folders", "covid-chestxray", "covid-radiography", "tbx11k", "montgomery-shenzhen",
                "chestx-det10", "nih")
_DETECT_FORMATS = ("tbx11k", "chestx-det10", "rsna", "nih")
_SLICES_HELP = "the LIDC-IDRI-slices folder (<patient>/nodule-<k>/{images,mask-0..3}/slice-<i>.png) or its .tar.gz"

TASKS: dict[str, TaskEntry] = {e.name: e for e in (
    TaskEntry("lung-seg", "pulmo.tasks.lung_seg", "lung segmentation U-Net on chest X-rays",
              formats=("images-masks",), splits=("all",),
              data_help="a folder with images/ and masks/ (same file names)"),
    TaskEntry("cxr-classify", "pulmo.tasks.cxr_classify",
              "chest X-ray classifier (normal / bacterial / viral / COVID-19, + other finding)",
              formats=_CXR_FORMATS, splits=("all",)),
    TaskEntry("cxr-detect", "pulmo.tasks.cxr_detect", "chest X-ray lesion detector (RetinaNet, focal loss)",
              formats=_DETECT_FORMATS, splits=("all", "test"), annotations=True, options=DetectEvalOptions),
    TaskEntry("cxr-detect-unet", "pulmo.tasks.cxr_detect_unet",
              "chest X-ray lesion boxes by a U-Net's lesion masks (the pneumonia report's route)",
              formats=_DETECT_FORMATS, splits=("all", "test"), annotations=True, options=DetectEvalOptions),
    TaskEntry("lesion-seg", "pulmo.tasks.lesion_seg", "CT infection segmentation (U-Net family)",
              formats=("covid-semiseg",), splits=("test", "train")),
    TaskEntry("nodule", "pulmo.tasks.nodule", "3D nodule detector (NoduleNet design): FROC / CPM by LUNA16's rules",
              formats=("lidc", "luna16"), splits=("all",), annotations=True, options=NoduleEvalOptions,
              data_help="LIDC-IDRI series folders with their XML (lidc) or LUNA16 .mhd scans (luna16)"),
    TaskEntry("nodule-seg", "pulmo.tasks.nodule_seg", "2.5-D U-Net segmenting real LIDC nodules in axial crops",
              formats=("lidc-slices",), splits=("test", "all"), data_help=_SLICES_HELP),
    TaskEntry("nodule-fpr", "pulmo.tasks.nodule_fpr",
              "second-stage nodule classifier: real LIDC nodules against real non-nodule CT points",
              formats=("lidc-slices",), splits=("test", "all"), options=FprEvalOptions, data_help=_SLICES_HELP),
    TaskEntry("input-gate", "pulmo.tasks.input_gate",
              "the input gate's 'chest radiograph / CT slice / other' model", formats=("gate-corpus",),
              splits=("test",), options=GateEvalOptions,
              data_help="the data root holding the datasets' cxr/ and ct/ folders (pulmo.datasets.gate_corpus)"),
)}


def list_tasks() -> list[str]:
    """Registered task names, in registry order."""
    return list(TASKS)


def task_entry(name: str) -> TaskEntry:
    """The registry entry of ``name``.

    Raises:
        ConfigError: ``name`` is not a registered task (the message lists them).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; registered: {', '.join(TASKS)}") from None


def evaluate_arguments(name: str, format: str | None, split: str | None,
                       annotations: object = None) -> tuple[str, str]:
    """The ``format`` and ``split`` an ``evaluate`` of task ``name`` scores (None: the entry's first, its default),
    checked against the entry before any weights or data are read.

    Raises:
        ConfigError: an unknown task, a format or split not of the entry, or an ``annotations`` file for a task
            whose layouts carry their own labels.
    """
    entry = task_entry(name)
    format = choose(format, entry.formats, task=name, parameter="format")
    split = choose(split, entry.splits, task=name, parameter="split")
    if annotations and not entry.annotations:
        raise ConfigError(f"evaluate {name}: annotations={str(annotations)!r} is not used (the {format} layout "
                          "carries its own reference)")
    return format, split


def get_task(name: str) -> ModuleType:
    """The task module of ``name``, imported and checked against the task contract.

    Raises:
        ConfigError: unknown task name, or a module that breaks the contract.
    """
    return task_entry(name).load()


__all__ = ["TASKS", "TaskEntry", "evaluate_arguments", "get_task", "list_tasks", "task_entry"]
