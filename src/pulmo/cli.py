"""The ``pulmo`` command line: a thin client of the library (parses, calls the API, prints).

Exit codes: 0 success, 1 failure of some items in a batch, 2 usage/config error, 3 bad input (unreadable,
or refused by the input gate as outside pulmo's scope; also MemoryError), 4 weights error, 5 capability not
available yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import re
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


_TRAINING_GROUP = "training (override the --config YAML)"


def _doc_text(text: str) -> str:
    """Docstring text as a help line: reST roles and literals unwrapped, whitespace collapsed, no final period."""
    text = re.sub(r":\w+:`~[\w.]*?(\w+)`", r"\1", text)  # :class:`~a.b.C` -> C
    text = re.sub(r":\w+:`([^`]+)`", r"\1", text).replace("``", "")
    return " ".join(text.split()).rstrip(".")


def _doc_attributes(cls: type) -> dict[str, str]:
    """``{field: help}`` from the Google-style ``Attributes:`` section of ``cls``'s own docstring. An entry may
    name several fields (``a, b: ...`` / ``a / b: ...``) and hold several entries (``a: ... . b: ...``); one
    that reads "as :class:`X`" takes ``X``'s text; "... fields with this task's defaults" entries are skipped
    (the base class's text stands)."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    section = re.search(r"^Attributes:\n(.*?)(?=^\S|\Z)", doc, re.MULTILINE | re.DOTALL)
    entries: list[str] = []
    for line in (section.group(1).splitlines() if section else []):
        if re.match(r"^ {4}\S", line):
            entries.append(line.strip())
        elif line.strip() and entries:
            entries[-1] += " " + line.strip()
    helps: dict[str, str] = {}
    for entry in entries:
        heads = [m for m in re.finditer(r"(?:^|(?<=[.;] ))(\w+(?:(?:,| /| and) \w+)*): ", entry)
                 if set(re.split(r",? /? ?(?:and )?", m.group(1))) <= names]
        for head, nxt in zip(heads, [*heads[1:], None], strict=True):
            text = entry[head.end():nxt.start() if nxt else None].strip().rstrip(";")
            if "fields with this task's defaults" in text:
                continue
            ref = re.fullmatch(r"as :class:`~?([\w.]+)`\.?", text)
            for name in re.split(r",? /? ?(?:and )?", head.group(1)):
                if ref:
                    module, _, attr = ref.group(1).rpartition(".")
                    other = getattr(sys.modules.get(module), attr, None)
                    helps[name] = _doc_attributes(other).get(name, name) if isinstance(other, type) else name
                else:
                    helps[name] = _doc_text(text)
    return helps


def _field_helps(cls: type) -> dict[str, str]:
    """Help text of every field of a config dataclass: its own docstring's, else its bases'."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            helps.update(_doc_attributes(klass))
    return helps


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of a task's config dataclass (``--field-name``, dest the field): the help text is the
    field's ``metadata["help"]`` or the docstring's ``Attributes:`` entry, with the field's default. bool fields
    are ``--flag/--no-flag``; ``list[str]`` fields repeat (``action="append"``) unless ``metadata
    ["comma_separated"]``, other lists are comma-separated; ``metadata["choices"]`` / ``["metavar"]`` pass on;
    ``metadata["flag"] = False`` keeps a field out. Every default is None (a flag not given leaves the preset /
    --config value). The fields of :class:`pulmo.engine.config.TrainConfig` go in the training group."""
    import typing

    from pulmo.engine.config import TrainConfig

    hints = typing.get_type_hints(config_cls)
    helps = _field_helps(config_cls)
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    group = next(g for g in parser._action_groups if g.title == _TRAINING_GROUP)
    for f in dataclasses.fields(config_cls):
        if not f.metadata.get("flag", True):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        tp = hints[f.name]
        text = str(f.metadata.get("help") or helps.get(f.name) or f.name.replace("_", " "))
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            shown = "on" if default else "off"
        elif typing.get_origin(tp) is list:
            shown = ",".join(map(str, default))
            if f.metadata.get("comma_separated") or typing.get_args(tp) != (str,):
                text += "" if "comma-separated" in text else ", comma-separated"
            else:
                kwargs["action"] = "append"
                text += "" if "repeatable" in text else "; repeatable"
        else:
            kwargs["type"] = tp
            shown = str(default)
        for key in ("choices", "metavar"):
            if key in f.metadata:
                kwargs[key] = f.metadata[key]
        help_text = f"{text} (default {shown if shown != '' else 'none'})"
        (group if f.name in shared else parser).add_argument(
            "--" + f.name.replace("_", "-"), help=help_text.replace("%", "%%"), **kwargs)


def _train_task(verb: str) -> tuple[Any, type]:
    """The task module and its ``Config`` dataclass of a ``pulmo train`` verb (from the task registry)."""
    from pulmo.tasks.registry import get_task

    module = get_task(verb)
    return module, module.Config


class _TrainVerbParser(argparse.ArgumentParser):
    """The parser of a ``pulmo train TASK`` verb: the flags of the task's config dataclass (``_add_config_flags``)
    are added when it first parses, ``-h`` included, which imports the task (and torch); building the parser
    does not."""

    _config_flags_added = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if not self._config_flags_added:
            self._config_flags_added = True
            _add_config_flags(self, _train_task(self.prog.split()[-1])[1])
        return super().parse_known_args(args, namespace)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every train verb that are not config fields (those come from the task's config dataclass)."""
    g = p.add_argument_group(_TRAINING_GROUP)
    g.add_argument("--preset", help="a shipped training preset: one report's recipe (pulmo train --list-presets); "
                   "--config and the flags override it")
    g.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the resolved config (preset, --config, flags) and exit without training")
    g.add_argument("--config", help="YAML file of the task's config dataclass")


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
    and train come from :mod:`pulmo.tasks.registry` (without importing torch); a train verb's flags, one per
    field of the task's config dataclass, are added when it parses (:class:`_TrainVerbParser`)."""
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
    a.add_argument("--backend", choices=["auto", "onnx", "torch"], default=None,
                   help="inference backend: onnx (ONNX Runtime; the default where a model has an exported graph, "
                   "pulmo.runtime), torch (PyTorch), or auto (onnx where available, else torch); also $PULMO_BACKEND")
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
    # one verb per registered task; its config flags are added when it parses (_TrainVerbParser)
    tsub = _accept_global_flags(t.add_subparsers(dest="task", parser_class=_TrainVerbParser))
    verbs = {entry.name: tsub.add_parser(entry.name, help=entry.description) for entry in TASKS.values()}
    for verb in verbs.values():
        _add_train_flags(verb)
    verbs["input-gate"].add_argument(
        "--leave-one-source-out", dest="leave_one_source_out", action="store_true",
        help="retrain once per chest X-ray source with it held out and report its refusals")

    sub.add_parser("models", help="list registered architectures and bundled weights")

    sv = sub.add_parser("serve", help="run the web service and viewer (needs the 'serve' extra)")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    sv.add_argument("--data-dir", dest="data_dir", required=True, help="folder of the job store and the jobs' files")
    sv.add_argument("--weights", action="append", metavar="TASK=FILE",
                    help="user-trained weights for every job, as pulmo analyze --weights; repeatable")
    sv.add_argument("--backend", choices=["auto", "onnx", "torch"], default=None,
                    help="inference backend: onnx (ONNX Runtime; the default where a model has an exported graph, "
                    "pulmo.runtime), torch (PyTorch), or auto (onnx where available, else torch); also $PULMO_BACKEND")
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


def _set_backend(backend: str | None) -> None:
    """Make ``--backend`` the process's (and its workers') inference backend; None keeps $PULMO_BACKEND/auto."""
    if backend is not None:
        from pulmo.runtime import set_default_backend

        set_default_backend(backend)


def _analyze(args: argparse.Namespace) -> int:
    from pulmo.io import InputLimits
    from pulmo.io.dicomweb import is_dicomweb_url
    from pulmo.pipeline import analyze_path
    from pulmo.weights import set_weight_overrides

    set_weight_overrides(_weight_overrides(args.weights))  # checked before any input is read
    _set_backend(args.backend)
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
    _set_backend(args.backend)
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
