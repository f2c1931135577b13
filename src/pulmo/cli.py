"""The ``pulmo`` command line: a thin client of the library (parses, calls the API, prints).

Exit codes: 0 success, 1 failure of some items in a batch, 2 usage/config error, 3 bad input (unreadable,
or refused by the input gate as outside pulmo's scope; also MemoryError), 4 weights error, 5 capability not
available yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulmo.errors import ConfigError, PulmoError

if TYPE_CHECKING:
    from pulmo.pipeline.analyze import AnalyzeResult


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:  # their INFO lines narrate every attribute copied and every request: shown with -v only
        for name in ("highdicom", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.WARNING)


#: help of the flags many train verbs share, by dest (a verb's own help text wins)
_FLAG_HELP = {
    "out_dir": "folder of the run: the weights + card, best.safetensors, last.pt, history.jsonl, config.yaml",
    "epochs": "most training epochs", "batch_size": "samples per optimiser step",
    "lr": "peak learning rate of the optimiser", "weight_decay": "weight decay of the optimiser",
    "optimizer": "adamw, adam or sgd (momentum 0.9)", "schedule": "cosine (warm-up epoch, cosine decay) or constant",
    "patience": "early stop after this many epochs without a better "
    "validation metric", "bf16": "bfloat16 autocast on the training device", "channels_last": "channels-last memory format",
    "num_workers": "DataLoader worker processes (0 = in the main process)", "threads": "torch CPU threads (0 = torch's default)",
    "seed": "random seed (initialisation, augmentation, sampling)", "resume": "continue from OUT_DIR/last.pt",
    "max_steps_per_epoch": "cap on optimiser steps per epoch, for smoke runs (0 = the whole epoch)",
    "device": "where to train: cpu, cuda (this process's GPU, cuda:LOCAL_RANK under torchrun; an error "
    "without one) or auto (cuda when a GPU is available, else cpu)",
    "features": "channels at the first scale", "size": "input size, px (square)", "data": "dataset root",
    "format": "dataset layout", "spacing_mm": "isotropic resampling spacing, mm", "patch": "training crop edge, voxels",
    "samples_per_epoch": "training crops per epoch", "cache_dir": "folder for preprocessed images, reused by later runs",
    "architecture": "registered model name (see pulmo models)", "name": "weight-set name",
}


def _train_task(verb: str) -> tuple[Any, type]:
    """The task module and its ``Config`` dataclass of a ``pulmo train`` verb (from the task registry)."""
    from pulmo.tasks.registry import get_task

    module = get_task(verb)
    return module, module.Config


class _TrainHelp(argparse.Action):
    """``-h`` of a train verb: every flag with a help text and the default of the task's config dataclass."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        verb = parser.prog.split()[-1]
        _, config_cls = _train_task(verb)
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else
                             f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                    for f in dataclasses.fields(config_cls)}
        for action in parser._actions:
            if action.dest in (argparse.SUPPRESS, "help"):
                continue
            text = action.help or _FLAG_HELP.get(action.dest, action.dest.replace("_", " "))
            if "default" not in text and action.dest in defaults:
                value = defaults[action.dest]
                text += f" (default {'none' if value in (None, [], (), '') else value})"
            action.help = text.replace("%", "%%") if "%%" not in text else text
        parser.print_help()
        parser.exit()


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (override the --config YAML)")
    g.add_argument("--preset", help="a shipped training preset: one report's recipe (pulmo train --list-presets); "
                   "--config and the flags override it")
    g.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the resolved config (preset, --config, flags) and exit without training")
    g.add_argument("--config", help="YAML file of the task's config dataclass")
    g.add_argument("--out-dir", dest="out_dir")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", dest="weight_decay", type=float)
    g.add_argument("--optimizer", choices=["adamw", "adam", "sgd"])
    g.add_argument("--schedule", choices=["cosine", "constant"])
    g.add_argument("--patience", type=int)
    g.add_argument("--bf16", action="store_true", default=None)
    g.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    g.add_argument("--num-workers", dest="num_workers", type=int)
    g.add_argument("--threads", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--resume", action="store_true", default=None)
    g.add_argument("--max-steps-per-epoch", dest="max_steps_per_epoch", type=int)
    g.add_argument("--device", choices=["cpu", "cuda", "auto"])


def _positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> argparse.ArgumentParser:
    parser.add_argument("--verbose", "-v", action="store_true", default=default, help="debug logging")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", default=default,
                        help="no progress bars")
    return parser


def _accept_global_flags(subparsers: Any) -> Any:
    """Every verb made by ``subparsers`` also takes ``-v`` / ``--no-progress`` after its name (``pulmo analyze X
    --no-progress``); their defaults are suppressed there, so a flag given before the verb is kept."""
    add = subparsers.add_parser
    common = _global_flags(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add(name, parents=[*kwargs.pop("parents", []), common], **kwargs)

    subparsers.add_parser = add_parser
    return subparsers


def build_parser() -> argparse.ArgumentParser:
    """The ``pulmo`` argument parser: verbs analyze, evaluate TASK, train TASK, models, serve; the tasks of evaluate
    and train come from :mod:`pulmo.tasks.registry` (without importing torch)."""
    parser = _global_flags(argparse.ArgumentParser(prog="pulmo", description="Chest X-ray and CT computer-aided "
                                                                             "detection."), False)
    sub = _accept_global_flags(parser.add_subparsers(dest="command", required=True))

    a = sub.add_parser("analyze", help="analyse an image, a DICOM series or a folder of images")
    a.add_argument("input", help="an image file, a DICOM series folder, a folder of images, or a DICOMweb study URL "
                   "http(s)://HOST[:PORT]/ROOT/studies/<StudyInstanceUID>")
    a.add_argument("--out", required=True, help="output folder: new, empty, or a previous pulmo output (whose results are replaced)")
    a.add_argument("--modality", choices=["cxr", "ct"], help="force the modality of a 2D image")
    a.add_argument("--max-pixels", dest="max_pixels", type=_positive_int, default=50_000_000,
                   help="largest 2D image read, pixels, checked from the header before decoding (default 50000000)")
    a.add_argument("--max-voxels", dest="max_voxels", type=_positive_int, default=1_500_000_000,
                   help="largest volume read, voxels, checked from the header before decoding (default 1500000000)")
    a.add_argument("--shard", metavar="K/N", help="a folder batch split over N processes or machines: analyse the "
                   "K-th share (0 <= K < N; e.g. a Slurm array's $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); the "
                   "last shard to finish merges summary.csv. Under torchrun the default is RANK/WORLD_SIZE")
    a.add_argument("--resume", action="store_true",
                   help="keep the complete results of an earlier run in --out and analyse only the rest")
    a.add_argument("--weights", action="append", metavar="TASK=FILE",
                   help="user-trained weights in place of the bundled ones: TASK (lung-seg, cxr-classify, cxr-detect, "
                   "lesion-seg, nodule, nodule-seg, input-gate) = a .safetensors written by pulmo train, with its "
                   "card beside it; checked against the card (task, architecture, sha256); repeatable")
    a.add_argument("--store", action="store_true",
                   help="with a DICOMweb study URL: send the SEG and SR back to the study (STOW-RS)")
    a.add_argument("--dicomweb-token", dest="dicomweb_token", default=os.environ.get("PULMO_DICOMWEB_TOKEN"),
                   help="bearer token for the DICOMweb server (default: $PULMO_DICOMWEB_TOKEN; credentials in the URL "
                   "are refused)")

    e = sub.add_parser("evaluate", help="evaluate a bundled (or --weights) model on a labelled dataset")
    _add_evaluate_verbs(_accept_global_flags(e.add_subparsers(dest="task", required=True, metavar="TASK")))

    from pulmo.tasks.registry import TASKS

    t = sub.add_parser("train", help="train a model")
    t.add_argument("--list-presets", dest="list_presets", action="store_true",
                   help="list the shipped training presets (one per reproduced report) and exit")
    tsub = _accept_global_flags(t.add_subparsers(dest="task"))
    _add_verb = tsub.add_parser

    def add_verb(name: str, **kwargs: Any) -> argparse.ArgumentParser:  # every train verb: -h with the defaults
        p = _add_verb(name, add_help=False, **kwargs)
        p.add_argument("-h", "--help", action=_TrainHelp, help="show this help (with the defaults) and exit")
        return p

    tsub.add_parser = add_verb  # type: ignore[method-assign]
    ls = tsub.add_parser("lung-seg", help=TASKS["lung-seg"].description)
    ls.add_argument("--visible-data", dest="visible_data", action="append",
                    help="images/ + masks/ root (visible lung fields); repeatable")
    ls.add_argument("--v7-data", dest="v7_data", help="covid-chestxray-dataset root with masks_v7_lung/")
    ls.add_argument("--architecture", help="registered model name (unet-rsna, monai-unet)")
    ls.add_argument("--features", type=int)
    ls.add_argument("--size", type=int)
    ls.add_argument("--name", help="weight-set name")
    _add_train_flags(ls)
    le = tsub.add_parser("lesion-seg", help=TASKS["lesion-seg"].description)
    le.add_argument("--data", help="dataset root")
    le.add_argument("--format", choices=["covid-semiseg", "ct-volumes"])
    le.add_argument("--classes", choices=["binary", "multiclass"])
    le.add_argument("--architecture", help="unet, res-unet, attention-unet or res-attention-unet")
    le.add_argument("--features", type=int)
    le.add_argument("--size", type=int)
    le.add_argument("--negatives", action="append",
                    help="a CT volume with no infection (DICOM series folder, NIfTI, mhd, NRRD) whose lung slices "
                    "train with empty masks; repeatable")
    le.add_argument("--loss", choices=["dice-ce", "bce"], help="dice-ce (MONAI DiceCELoss) or bce (BCEWithLogits, "
                    "binary only)")
    le.add_argument("--decoder", choices=["narrow", "full"], help="res-attention-unet decoder widths: narrow "
                    "16-32-64-96 or full 64-64-128-256 (the report's)")
    le.add_argument("--init-encoder", dest="init_encoder",
                    help="a local .safetensors of a torchvision ResNet-34 (e.g. ImageNet) for the encoder; sha256 printed")
    le.add_argument("--name", help="weight-set name")
    _add_train_flags(le)
    cl = tsub.add_parser("cxr-classify", help=TASKS["cxr-classify"].description)
    cl.add_argument("--kermany", help="Kermany chest_xray root")
    cl.add_argument("--covid-chestxray", dest="covid_chestxray", help="covid-chestxray-dataset root")
    cl.add_argument("--covid-radiography", dest="covid_radiography", help="COVID-19_Radiography_Dataset root")
    cl.add_argument("--folders", action="append", help="a root with one sub-folder per label; repeatable")
    cl.add_argument("--other-findings", dest="other_findings", action="append",
                    help="X-rays with a finding outside the four classes as FORMAT=PATH (tbx11k, montgomery-shenzhen, "
                    "chestx-det10, nih): a fifth class, other_finding; repeatable")
    cl.add_argument("--extra-normals", dest="extra_normals", action="append",
                    help="adult 'No Finding' X-rays as FORMAT=PATH (chestx-det10, nih); repeatable")
    cl.add_argument("--exclude-sources", dest="exclude_sources", action="append",
                    help="a record source kept out of training and scored as external (leave-one-source-out); "
                    "repeatable")
    cl.add_argument("--architecture", help="resnet18 (default), mobilenet_v2 or densenet121")
    cl.add_argument("--lung-mask", dest="lung_mask", action=argparse.BooleanOptionalAction, default=None,
                    help="multiply the image by the lung mask first (default off)")
    cl.add_argument("--crop", choices=["lungs", "none"],
                    help="lungs (default): crop to the lung mask's bounding box + 10%% margins; none: whole image")
    cl.add_argument("--equalize", action=argparse.BooleanOptionalAction, default=None,
                    help="histogram-equalise the input (default on)")
    cl.add_argument("--in-scope-retention", dest="in_scope_retention", type=float,
                    help="share of validation in-scope images kept in scope by the out-of-scope threshold (default 0.95)")
    cl.add_argument("--size", type=int)
    cl.add_argument("--cache-dir", dest="cache_dir")
    cl.add_argument("--name", help="weight-set name")
    _add_train_flags(cl)
    de = tsub.add_parser("cxr-detect", help=TASKS["cxr-detect"].description)
    de.add_argument("--data", help="dataset root")
    de.add_argument("--format", choices=["tbx11k", "chestx-det10", "rsna", "nih"])
    de.add_argument("--annotations", help="label file (TBX11K: COCO JSON relative to --data)")
    de.add_argument("--architecture", help="retinanet-r18-fpn, retinanet-r34-fpn (P4-P7), retinanet-r50-fpn or "
                    "retinanet-r101-fpn (P3-P7, 1024 px)")
    de.add_argument("--size", type=int)
    de.add_argument("--fpn-channels", dest="fpn_channels", type=int, help="FPN and head width")
    de.add_argument("--init-backbone", dest="init_backbone",
                    help=".safetensors of a torchvision ResNet classifier to initialise the body from")
    de.add_argument("--negatives", action="append",
                    help="images without lesions as FORMAT=PATH (kermany, covid-radiography, covid-chestxray, "
                    "chestx-det10, folder), split by patient and trained as images with no box; repeatable")
    de.add_argument("--init-weights", dest="init_weights",
                    help="a cxr-detect weight set (name or .safetensors) of the same architecture to fine-tune from")
    de.add_argument("--max-fp-per-negative", dest="max_fp_per_negative", type=float,
                    help="operating threshold: false boxes per validation negative image at most this (default 0.1)")
    de.add_argument("--degrade-p", dest="degrade_p", type=float,
                    help="probability of the resolution-drop augmentation (default 0.3)")
    de.add_argument("--name", help="weight-set name")
    _add_train_flags(de)
    du = tsub.add_parser("cxr-detect-unet", help=TASKS["cxr-detect-unet"].description)
    du.add_argument("--data", help="dataset root")
    du.add_argument("--format", choices=["tbx11k", "chestx-det10", "rsna", "nih"])
    du.add_argument("--annotations", help="label file (TBX11K: COCO JSON relative to --data)")
    du.add_argument("--size", type=int)
    du.add_argument("--architecture", help="monai-unet (MONAI residual U-Net) or unet-rsna-pneumonia (the report's "
                    "U-Net as printed: BN momentum 0.9, LeakyReLU 0.03)")
    du.add_argument("--depth", type=int, help="U-Net scales")
    du.add_argument("--features", type=int)
    du.add_argument("--patch", type=int, help="training crop, px (a multiple of 2^(depth-1))")
    du.add_argument("--tile", type=int, help="overlap-tile inference with mirrored borders, tile px (0 = whole image)")
    du.add_argument("--elastic", choices=["monai", "report"],
                    help="elastic deformation: monai (MONAI Rand2DElastic) or report (U(-1, 1) fields, Gaussian sigma, "
                    "scale alpha, bilinear)")
    du.add_argument("--elastic-alpha", dest="elastic_alpha", type=float, help="scale of the report's displacement field, px")
    du.add_argument("--elastic-sigma", dest="elastic_sigma", type=float, help="Gaussian smoothing of the field, px")
    du.add_argument("--elastic-prob", dest="elastic_prob", type=float, help="probability of the elastic deformation")
    du.add_argument("--name", help="weight-set name")
    _add_train_flags(du)
    no = tsub.add_parser("nodule", help=TASKS["nodule"].description)
    no.add_argument("--backgrounds", help="comma-separated CT volumes (DICOM series folders, NIfTI, mhd, NRRD)")
    no.add_argument("--exclude-labels", dest="exclude_labels",
                    help="comma-separated label volumes, one per background ('' for none), of real nodules to keep "
                    "out of training (LIDC series are read from their XML automatically)")
    no.add_argument("--spacing-mm", dest="spacing_mm", type=float)
    no.add_argument("--patch", type=int)
    no.add_argument("--samples-per-epoch", dest="samples_per_epoch", type=int)
    no.add_argument("--channels", help="feature-net widths at strides 2, 4, 8 (or 2, 4, 8, 16: NoduleNet's depth), "
                    "comma-separated")
    no.add_argument("--blocks", help="residual blocks per feature-net stage, one per --channels value, comma-separated")
    no.add_argument("--back-channels", dest="back_channels",
                    help="widths of the top-down fusion blocks, deepest first (NoduleNet: 64,128)")
    no.add_argument("--back-blocks", dest="back_blocks",
                    help="residual blocks per top-down fusion block, deepest first (NoduleNet: 3,3)")
    no.add_argument("--name", help="weight-set name")
    _add_train_flags(no)

    ns = tsub.add_parser("nodule-seg", help=TASKS["nodule-seg"].description)
    ns.add_argument("--data", help="LIDC-IDRI-slices folder (<patient>/nodule-<k>/{images,mask-0..3}/slice-<i>.png) "
                    "or its .tar.gz")
    ns.add_argument("--format", choices=["lidc-slices"], help="dataset layout (default lidc-slices)")
    ns.add_argument("--architecture", help="registered model name (default monai-unet: MONAI residual U-Net)")
    ns.add_argument("--features", type=int, help="channels at the first scale, doubled per scale (default 16)")
    ns.add_argument("--depth", type=int, help="number of scales (default 4: 16-32-64-128 channels)")
    ns.add_argument("--size", type=int, help="training window, px, the centre of each crop (default 64)")
    ns.add_argument("--context", type=int, help="slices either side of the centre slice as channels (default 1: 3)")
    ns.add_argument("--test-fraction", dest="test_fraction", type=float,
                    help="share of patients held out for testing (default 0.2)")
    ns.add_argument("--val-fraction", dest="val_fraction", type=float,
                    help="share of patients for validation: early stopping and the threshold (default 0.1)")
    ns.add_argument("--split-seed", dest="split_seed", type=int, help="seed of the patient split (default 0)")
    ns.add_argument("--loss", choices=["dice-ce-batch", "dice-ce-sample"],
                    help="dice-ce-batch: one soft Dice over the batch + BCE (default); dice-ce-sample: Dice per slice")
    ns.add_argument("--no-tta", dest="tta", action="store_false", default=None,
                    help="no flip test-time augmentation at validation/test time (default: the mean of 4 flips)")
    ns.add_argument("--name", help="weight-set name (default nodule-seg)")
    _add_train_flags(ns)

    fp = tsub.add_parser("nodule-fpr", help=TASKS["nodule-fpr"].description)
    fp.add_argument("--data", help="LIDC-IDRI-slices folder or .tar.gz (the positives)")
    fp.add_argument("--scans", action="append", help="a CT series for negatives, PATH or PATH=LABEL (a label volume "
                    "of its lesions, kept out of the negatives); repeatable")
    fp.add_argument("--held-out-scan", dest="held_out_scan", help="name (folder or file name) of one --scans series "
                    "never trained on and scored (leave-one-scan-out); default none")
    fp.add_argument("--n-random", dest="n_random", type=int, help="random vessel / border / parenchyma points per "
                    "kind and scan (default 300)")
    fp.add_argument("--target-sensitivity", dest="target_sensitivity", type=float,
                    help="the threshold keeps this share of the validation patients' nodules (default 0.95)")
    fp.add_argument("--architecture", help="registered classifier (default resnet18)")
    fp.add_argument("--split-seed", dest="split_seed", type=int, help="seed of the patient split (default 0, as "
                    "nodule-seg)")
    fp.add_argument("--name", help="weight-set name (default nodule-fpr)")
    _add_train_flags(fp)

    ig = tsub.add_parser("input-gate", help=TASKS["input-gate"].description)
    ig.add_argument("--data", help="data root holding the datasets' cxr/ and ct/ folders in their public layouts (see "
                    "pulmo.datasets.gate_corpus); not needed when --corpus exists")
    ig.add_argument("--corpus", help="cached rendered corpus .npz (built from --data when missing)")
    ig.add_argument("--exclude-sources", dest="exclude_sources", action="append",
                    help="a source left out of training (e.g. tbx11k); repeatable")
    ig.add_argument("--leave-one-source-out", dest="leave_one_source_out", action="store_true",
                    help="retrain once per chest X-ray source with it held out and report its refusals")
    ig.add_argument("--name", help="weight-set name")
    _add_train_flags(ig)

    sub.add_parser("models", help="list registered architectures and bundled weights")

    sv = sub.add_parser("serve", help="run the web service and viewer (needs the 'serve' extra)")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    sv.add_argument("--data-dir", dest="data_dir", required=True, help="folder of the job store and the jobs' files")
    sv.add_argument("--weights", action="append", metavar="TASK=FILE",
                    help="user-trained weights for every job, as pulmo analyze --weights; repeatable")
    sv.add_argument("--workers", type=int, default=1, help="analysis worker processes, 1 CPU thread each (default 1)")
    sv.add_argument("--token", default=os.environ.get("PULMO_TOKEN"),
                    help="bearer token the API requires (default: $PULMO_TOKEN; none = no authentication)")
    sv.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=512.0,
                    help="largest upload accepted, MiB (default 512)")
    sv.add_argument("--job-timeout-s", dest="job_timeout_s", type=float, default=900.0,
                    help="wall-time limit of one job, s; the worker is killed and the job failed past it "
                    "(default 900; 0 = none)")
    sv.add_argument("--job-memory-gb", dest="job_memory_gb", type=float, default=8.0,
                    help="memory limit of each worker process (RLIMIT_DATA), GiB (default 8; 0 = none; else >= 2)")
    sv.add_argument("--dicomweb", dest="dicomweb_url", metavar="URL",
                    help="DICOMweb root (http(s)://HOST[:PORT]/ROOT) where every finished job's DICOM SEG and SR are "
                    "stored, and jobs may name a study on it ({\"dicomweb_study\": UID})")
    sv.add_argument("--dicomweb-token", dest="dicomweb_token", default=os.environ.get("PULMO_DICOMWEB_TOKEN"),
                    help="bearer token for that server (default: $PULMO_DICOMWEB_TOKEN)")
    return parser


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from pulmo import presets
    from pulmo.engine import load_config

    if args.list_presets:
        rows = presets.list_presets()
        width = max(len(p["name"]) for p in rows)
        for p in rows:
            print(f"{p['name']:<{width}}  pulmo train {p['task']} --preset {p['name']}\n{'':<{width}}  {p['source']}")
        return 0
    if not args.task:
        raise ConfigError("pulmo train: choose a task (pulmo train -h lists them) or --list-presets")
    module, config_cls = _train_task(args.task)
    preset = presets.load_preset(args.preset) if args.preset else None
    if preset and preset["task"] != args.task:
        raise ConfigError(f"preset {preset['name']} is for pulmo train {preset['task']}, not {args.task}")
    skip = {"command", "task", "verbose", "no_progress", "config", "leave_one_source_out", "preset", "dry_run",
            "list_presets"}
    overrides = {k: v for k, v in vars(args).items() if k not in skip}
    overrides["progress"] = False if args.no_progress else None
    base = {"out_dir": f"runs/{preset['name']}", **preset["config"]} if preset else None
    config = load_config(config_cls, args.config, overrides, base=base)
    if args.dry_run:
        import yaml

        resolved = {"task": args.task, **({"preset": preset["name"], "source": preset["source"],
                                           "deviations": preset["deviations"]} if preset else {}),
                    "config": dataclasses.asdict(config)}
        print(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=1000), end="")
        return 0
    launcher = "torchrun --nproc_per_node=N -m pulmo " if os.environ.get("WORLD_SIZE", "1") != "1" else "pulmo "
    if getattr(args, "leave_one_source_out", False):
        print(json.dumps(module.leave_one_source_out(config), indent=2))
        return 0
    card = module.train(config, command=launcher + shlex.join(argv))
    if card:
        print(json.dumps({"weights": str(Path(config.out_dir) / card["file"]), "metrics": card["metrics"]}, indent=2))
    return 0


def _add_evaluate_verbs(esub: Any) -> None:
    """``pulmo evaluate TASK``, one verb per registered task: the contract's common flags, then one flag per field
    of the task's evaluation-options dataclass (help text from the field's metadata, default from the field)."""
    from pulmo.tasks.registry import TASKS

    for entry in TASKS.values():
        v = esub.add_parser(entry.name, help=entry.description, description=f"evaluate {entry.name}: {entry.description}")
        v.add_argument("--data", required=True, help=entry.data_help)
        many = len(entry.formats) > 1
        v.add_argument("--format", choices=entry.formats, help="dataset layout" + (
            " (required)" if many else f" (default {entry.formats[0]})"))
        if entry.annotations:
            v.add_argument("--annotations", help="the label file (TBX11K: the COCO JSON relative to --data; ChestX-Det10 "
                           "JSON; RSNA stage_2_train_labels.csv; NIH BBox_List_2017.csv; LUNA16 annotations.csv)")
        v.add_argument("--split", choices=entry.splits, help=f"the split scored (default {entry.splits[0]})")
        v.add_argument("--weights", help="weight name or .safetensors path with its card (default: the bundled model)")
        v.add_argument("--out", required=True, help="metrics JSON file to write")
        for f in dataclasses.fields(entry.options):
            flag = "--" + f.name.replace("_", "-")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            text = str(f.metadata.get("help", f.name.replace("_", " ")))
            if isinstance(default, list):
                v.add_argument(flag, dest=f.name, action="append", default=[], metavar=f.metadata.get("metavar"),
                               help=text)
            else:
                v.add_argument(flag, dest=f.name, type=type(default), default=default,
                               help=f"{text} (default {default if default != '' else 'none'})")


def _evaluate(args: argparse.Namespace) -> int:
    from pulmo.tasks.registry import get_task, task_entry

    entry = task_entry(args.task)
    if args.format is None and len(entry.formats) > 1:
        raise ConfigError(f"evaluate {entry.name}: give --format ({'|'.join(entry.formats)}): the layout of --data")
    task = get_task(entry.name)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(entry.options)}
    report = task.evaluate(args.data, format=args.format, annotations=getattr(args, "annotations", None),
                           split=args.split, weights=args.weights, progress=not args.no_progress, **options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"{report.task}: n={report.n} {task.summary(report)} -> {out}")
    return 0


#: the held-out figure ``pulmo models`` shows per card: (metrics split, key, printed name), first match wins
_HEADLINE_METRICS = (("test", "macro_f1", "test macro-F1"), ("test", "ap_50_agnostic", "test AP50"),
                     ("test", "dice_mean", "test Dice"), ("test", "accuracy", "test accuracy"),
                     ("visible_convention_pooled", "dice_mean", "val Dice"), ("validation", "dice_mean", "val Dice"),
                     ("validation_synthetic_crops", "cpm", "synthetic CPM"))


def _headline(card: dict) -> str:
    """The card's held-out metric as ``name value (n=N)``, or ``-`` when it has none of the known ones."""
    metrics = card.get("metrics") or {}
    for split, key, label in _HEADLINE_METRICS:
        block = metrics.get(split)
        if isinstance(block, dict) and isinstance(block.get(key), (int, float)):
            n = next((block[k] for k in ("n", "n_images", "n_nodules") if isinstance(block.get(k), int)),
                     metrics.get("n_val_slices") or metrics.get("n_val_crops"))
            return f"{label} {block[key]:.3f}" + (f" (n={n})" if n else "")
    return "-"


def _threshold(card: dict) -> str:
    """The card's operating threshold(s) as printed numbers (``-`` for an arg-max model)."""
    th = card.get("thresholds") or {}
    values = {k: v for k, v in th.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return ", ".join(f"{k} {v:.3g}" for k, v in values.items()) or "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _models(args: argparse.Namespace) -> int:
    from pulmo import list_models
    from pulmo.weights import list_weights, weight_bytes

    print("architectures:")
    print(_table([[m["name"], m["task"], m["description"]] for m in list_models()],
                 ["name", "task", "description"]))
    rows = []
    for c in list_weights():
        labels = c.get("labels") or []
        rows.append([c["name"], c["task"], c["architecture"], ", ".join(map(str, labels)) or "-", _threshold(c),
                     _headline(c), f"{weight_bytes(c) / 2**20:.1f} MiB", c.get("sha256", "")[:12]])
    print("\nbundled weights (the whole card: pulmo/weights/<name>.json; the method and results: docs/<task>.md):")
    print(_table(rows, ["name", "task", "architecture", "labels", "threshold", "held-out metric", "size", "sha256"]))
    print("\nscope of each bundled model:")
    for c in list_weights():
        scope = c.get("scope") or {}
        print(f"  {c['name']}: scope: trained on {scope.get('trained_on', '?')}; "
              f"cannot see: {scope.get('cannot_see', '?')}")
    return 0


def _weight_overrides(items: list[str] | None) -> dict[str, str]:
    """``--weights TASK=FILE`` items checked against their cards and the registered architectures."""
    from pulmo.weights import parse_weight_overrides

    if not items:
        return {}
    from pulmo import list_models

    # deprecated names too: cards saved under a model's former name still load
    return parse_weight_overrides(items, registered={m["name"] for m in list_models(include_aliases=True)})


def _analyze(args: argparse.Namespace) -> int:
    from pulmo.io import InputLimits
    from pulmo.io.dicomweb import is_dicomweb_url
    from pulmo.pipeline import analyze_path
    from pulmo.weights import set_weight_overrides

    set_weight_overrides(_weight_overrides(args.weights))  # checked before any input is read
    limits = InputLimits(max_pixels=args.max_pixels, max_voxels=args.max_voxels)

    if is_dicomweb_url(args.input):
        from pulmo.pipeline.dicomweb import analyze_dicomweb

        result = analyze_dicomweb(args.input, args.out, modality=args.modality, progress=not args.no_progress,
                                  limits=limits, store=args.store, token=args.dicomweb_token)
    elif args.store:
        raise ConfigError("--store sends the SEG and SR back to a DICOMweb server: give a study URL "
                          "http(s)://HOST[:PORT]/ROOT/studies/<StudyInstanceUID> as the input")
    else:
        shard = _shard(args.shard)
        result = analyze_path(args.input, args.out, modality=args.modality, progress=not args.no_progress,
                              limits=limits, shard=shard, resume=args.resume,
                              rank0_merges=args.shard is None and shard is not None)  # torchrun started them together
    for line in _analyze_lines(result):
        print(line)
    return _analyze_exit_code(result)


def _analyze_exit_code(result: AnalyzeResult) -> int:
    """1 when an input of a batch failed; for a shard, only when it merged a summary with a failed input (a shard
    exits 0 whatever its own inputs did: torchrun stops every rank when one exits non-zero); else 0."""
    if result.kind != "batch":
        return 0
    if result.shard is None:
        return 1 if result.failures else 0
    return 1 if result.merged_summary is not None and result.merged_failed else 0


def _headline_text(h: dict[str, Any]) -> str:
    """The findings part of a single input's line: lungs, infection, class, lesion boxes, nodules."""
    if h.get("lung_volume_ml") is not None:
        text = f"lungs {h['lung_volume_ml']} mL"
        if h.get("lung_cut_at"):
            text += " (only partly in the scan: cut at the " + " and ".join(h["lung_cut_at"]) + ")"
    elif h.get("lung_area_cm2") is not None:
        text = f"lungs {h['lung_area_cm2']} cm2"
    else:
        text = f"lungs {'?' if h.get('lung_area_px') is None else h['lung_area_px']} px"
    if h.get("infection_volume_ml") is not None or h.get("infection_area_px") is not None:
        amount = (f"{h['infection_volume_ml']} mL" if h.get("infection_volume_ml") is not None
                  else f"{h['infection_area_px']} px")
        text += f", infection {amount} ({h.get('infection_percent_of_lung')} % of lung)"
    if h.get("classification_in_scope") is False:
        text += ", finding outside the classifier's classes"
    elif h.get("predicted_class") is not None:
        text += f", class {h['predicted_class']}"
    if h.get("n_detections") is not None:
        text += f", {h['n_detections']} lesion box(es)"
    if h.get("n_nodules") is not None:
        text += f", {h['n_nodules']} nodule(s)"
    return text


def _analyze_lines(result: AnalyzeResult) -> list[str]:
    """What ``pulmo analyze`` prints for an :class:`pulmo.pipeline.AnalyzeResult`: for a single input one line
    (its findings, time and report); for a batch the summary line, one ``failed: <reason>`` line per failed input
    and, for a shard, where ``summary.csv`` is merged; for a DICOMweb study also the fetch and store lines."""
    web = result.dicomweb
    lines = []
    if web is not None:
        lines.append(f"{web['url']}: fetched {web['n_instances']} {web['modality']} instance(s) of series "
                     f"{web['series_uid']} in {web['seconds_fetch']:.2f} s")
    if result.kind == "single" and not result.rows:  # a shard other than 0 given a single input
        k, n = result.shard
        lines.append(f"{result.input}: one input, analysed by shard 0 of {n}; nothing for shard {k}")
    elif result.kind == "single":
        lines.append(f"{result.input}: {result.headline['modality']}: {_headline_text(result.headline)} "
                     f"({result.seconds:.2f} s) -> {result.out_dir / 'report.html'}")
    else:
        ok = sum(r["status"] == "ok" for r in result.rows)
        line = f"analysed {ok} of {result.n_inputs} inputs in {result.input}"
        if result.shard is not None:
            line += f" (shard {result.shard[0]} of {result.shard[1]}: {result.n_inputs_all} inputs in all)"
        if result.resume:
            line += f", {sum(r.get('resumed') == 'yes' for r in result.rows)} kept from an earlier run"
        line += f" -> {result.summary_path}"
        for reason, count in result.skipped.items():
            line += f" ({count} other file{'s' if count != 1 else ''} skipped: {reason})"
        lines.append(line)
        lines += [f"  failed: {reason}" for reason in result.failures]
        if result.shard is not None:
            lines.append(f"merged the {result.shards_merged} shard summaries into {result.merged_summary}"
                         if result.merged_summary is not None else
                         f"summary.csv is merged by the last of the {result.shard[1]} shards to finish")
    if web is not None and "seconds_store" in web:
        lines.append(f"{web['base_url']}: stored DICOM SEG (series {web['seg_series_uid']}) and SR (series "
                     f"{web['sr_series_uid']}) in study {web['study_uid']} in {web['seconds_store']:.2f} s")
    return lines


def _shard(text: str | None) -> tuple[int, int] | None:
    """``--shard K/N``, else ``(RANK, WORLD_SIZE)`` under torchrun, else None (one process)."""
    if text is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None
    k, sep, n = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(k), int(n)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 0/4 (shard K of N, 0 <= K < N)") from None


def _serve(args: argparse.Namespace) -> int:
    from pulmo.service import serve
    from pulmo.weights import set_weight_overrides

    set_weight_overrides(_weight_overrides(args.weights))  # the worker processes inherit the choice
    return serve(host=args.host, port=args.port, data_dir=args.data_dir, workers=args.workers, token=args.token,
                 max_upload_mb=args.max_upload_mb, job_timeout_s=args.job_timeout_s,
                 job_memory_gb=args.job_memory_gb, log_level=logging.DEBUG if args.verbose else logging.INFO,
                 dicomweb_url=args.dicomweb_url, dicomweb_token=args.dicomweb_token if args.dicomweb_url else None)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if os.environ.get("OMP_NUM_THREADS") is None and "torch" not in sys.modules:
        # at most 2 intra-op threads; set before torch is imported, which happens only when a model is needed
        os.environ["OMP_NUM_THREADS"] = str(min(2, os.cpu_count() or 1))
    handlers = {"analyze": _analyze, "evaluate": _evaluate, "models": _models, "serve": _serve,
                "train": lambda a: _train(a, sys.argv[1:] if argv is None else argv)}
    try:
        return handlers[args.command](args)
    except PulmoError as exc:
        print(f"pulmo {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError:
        print(f"pulmo {args.command}: error: out of memory (MemoryError); for analyze, lower --max-pixels / "
              "--max-voxels or free memory", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("pulmo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: one line instead of a traceback (-v shows it)
        if args.verbose:
            raise
        text = " ".join(str(exc).split())[:500]
        print(f"pulmo {args.command}: error: unexpected {type(exc).__name__}: {text} (a bug in pulmo: please report "
              "it; -v shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
