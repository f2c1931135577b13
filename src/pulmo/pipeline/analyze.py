"""``pulmo analyze``: one image, a DICOM series or a folder of images -> findings, masks, report."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from pulmo.errors import ConfigError, InputError, PulmoError
from pulmo.io import InputLimits, Volume, folder_is_dicom_series, is_supported_file

logger = logging.getLogger(__name__)

#: Marker file pulmo writes in every output folder of ``analyze``; a re-used output folder that holds it is
#: cleared before the new run, one without it (and not empty) is refused.
OUTPUT_MARKER = ".pulmo-output"


@dataclasses.dataclass
class AnalyzeResult:
    """What ``analyze_path`` (or :func:`pulmo.pipeline.dicomweb.analyze_dicomweb`) did, as data: the command
    line turns it into its printed lines and exit code (``pulmo.cli``).

    Attributes:
        input: the input as given (a path; for DICOMweb, the study URL).
        out_dir: the output folder.
        kind: ``"single"`` (one file or DICOM series) or ``"batch"`` (a folder of inputs, ``summary.csv``).
        rows: one dict per input (``input``, ``status`` ok / failed / skipped, and for a batch the
            ``summary.csv`` columns); empty when a shard had nothing to do (a single input belongs to shard 0).
        headline: a single input's headline values (see :func:`headline_values`: lung volume or area, the part of
            the lungs cut by the scan, infection, predicted class, number of lesion boxes and nodules), else None.
        seconds: the time a single input took to analyse, else None.
        n_inputs: a batch: the supported inputs this process analysed (or kept from an earlier run).
        n_inputs_all: a batch: the supported inputs of the folder (of every shard).
        resume: results of an earlier run were kept (``resume``, implied by ``shard``).
        skipped: a batch: ``{reason: number of files}`` of the files that were not inputs (listed by shard 0).
        failures: a batch: the one-line reason of each input that failed in this process, in input order.
        summary_path: a batch: the summary this process wrote (``summary.csv``, or its shard's summary).
        shard: ``(K, N)`` when this process ran as shard K of N, else None.
        merged_summary: a shard that merged the N shard summaries: the ``summary.csv`` it wrote, else None.
        shards_merged: the number of shard summaries merged into ``merged_summary`` (0 when none).
        merged_failed: the number of failed inputs in ``merged_summary`` (every shard's).
        dicomweb: for a DICOMweb study: what was fetched (``url``, ``base_url``, ``study_uid``, ``series_uid``,
            ``modality``, ``n_instances``, ``series_in_study``, ``seconds_fetch``) and, when stored, ``stored``,
            ``seg_series_uid``, ``sr_series_uid``, ``seconds_store``; else None.
    """

    input: str
    out_dir: Path
    kind: str
    rows: list[dict[str, Any]]
    headline: dict[str, Any] | None = None
    seconds: float | None = None
    n_inputs: int = 0
    n_inputs_all: int = 0
    resume: bool = False
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    summary_path: Path | None = None
    shard: tuple[int, int] | None = None
    merged_summary: Path | None = None
    shards_merged: int = 0
    merged_failed: int = 0
    dicomweb: dict[str, Any] | None = None


def _check_out_dir(input_path: Path, out_dir: Path, keep: bool = False) -> None:
    """Refuse an output folder that would write into the inputs or over something pulmo did not write.

    Raises:
        ConfigError: ``out_dir`` is an existing file, is not writable, is the input or lies inside the input
            folder, or inside the folder of an input file (outputs there would be read as inputs by the next
            batch over that folder); or it exists, is not empty and is not a previous pulmo output.
    """
    src = input_path.resolve()
    out = out_dir.resolve()
    folder = src if src.is_dir() else src.parent
    if out == src or out == folder or folder in out.parents:
        where = "the input folder" if src.is_dir() else "the folder of the input file"
        raise ConfigError(f"out_dir (--out) {out_dir} is inside {where} {folder}; choose a folder outside it "
                          "(pulmo never writes into its inputs)")
    if out in src.parents:
        raise ConfigError(f"out_dir (--out) {out_dir} holds the input {input_path}; choose a folder that does not contain it "
                          "(a re-used output folder is cleared)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir (--out) {out_dir} is an existing file; expected a folder (new, empty, or a previous "
                          "pulmo output)")
    if out.is_dir() and not (keep and (out / OUTPUT_MARKER).is_file()):  # resume / shards: any pulmo output
        written = _written_by_pulmo(out)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in written | {OUTPUT_MARKER})
        if foreign:
            what = f" ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
            raise ConfigError(f"out_dir (--out) {out_dir} exists and holds files pulmo did not write{what}; choose a new or "
                              "empty folder (a previous pulmo output folder is cleared and re-used)")
    parent = next((p for p in (out, *out.parents) if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"out_dir (--out) {out_dir}: {parent} is not writable; choose a folder you can write to")


def _written_by_pulmo(out_dir: Path) -> set[str]:
    """The top-level names the marker of ``out_dir`` lists (empty without a marker: not a pulmo output)."""
    marker = out_dir / OUTPUT_MARKER
    if not marker.is_file():
        return set()
    lines = marker.read_text(errors="replace").splitlines()
    return {ln for ln in lines[1:] if ln and "/" not in ln and ln not in (".", "..")}


def _prepare_out_dir(out_dir: Path, clear: bool = True) -> None:
    """Create ``out_dir``; in a previous pulmo output, delete only the entries its marker lists (what pulmo
    wrote there), never anything else. ``clear=False`` (resume, shards) keeps what is there."""
    try:
        for name in _written_by_pulmo(out_dir) if clear else ():
            child = out_dir / name
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            elif child.exists() or child.is_symlink():
                child.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        if clear or not (out_dir / OUTPUT_MARKER).is_file():
            _write_marker(out_dir)
    except OSError as exc:
        raise ConfigError(f"out_dir (--out) {out_dir}: cannot prepare the output folder ({exc.strerror or exc})") from None


def _write_marker(out_dir: Path) -> None:
    """Record what pulmo wrote at the top of ``out_dir`` (one name a line after a header)."""
    names = sorted(p.name for p in out_dir.iterdir() if p.name != OUTPUT_MARKER)
    (out_dir / OUTPUT_MARKER).write_text("written by pulmo analyze; these entries are cleared when the folder is "
                                         "re-used:\n" + "".join(f"{n}\n" for n in names))


def analyze_image(path: str | Path, out_dir: str | Path, modality: str | None = None,
                  limits: InputLimits | None = None, prepare: Callable[[], None] | None = None,
                  viewer_files: bool = False) -> dict[str, Any]:
    """Analyse one input and write ``findings.json``, masks, overlays, ``report.html`` and ``config.yaml``
    into ``out_dir``.

    A chest X-ray goes through lung segmentation (PNG lung mask); a CT volume (DICOM series folder, NIfTI,
    mhd, NRRD) through lung extraction and infection segmentation (NIfTI masks in the input geometry);
    a single CT slice (DICOM CT, or an image with ``modality="ct"``) through infection segmentation.
    A DICOM input also gets ``seg.dcm`` (DICOM SEG of every mask) and ``sr.dcm`` (TID 1500 measurement report),
    see :mod:`pulmo.pipeline.dicom_results`; when they cannot be built, ``files["dicom_error"]`` says why.

    Args:
        path: an image file, a volume file or a DICOM series folder.
        out_dir: output folder (created).
        modality: ``"cxr"`` or ``"ct"`` to set the modality of a 2D image whose file does not say, or to
            treat a PNG/JPEG as a CT slice. A 3D volume is always CT.
        limits: size limits checked from the header before decoding (default 50 Mpx, 1.5 G voxels).
        prepare: called once the input passed the gate and was analysed, just before anything is written
            (``analyze_path`` clears a re-used output folder there, so a refused input loses no earlier result).
        viewer_files: also write the browser viewer's files from the image already read
            (:func:`pulmo.report.viewer_files.write_viewer_files`: ``image.png`` or ``volume.nii.gz``), listed in
            ``files["viewer"]``; the input is read once.

    Every input passes the input gate first (:mod:`pulmo.io.scope` on the header, :mod:`pulmo.gate` on the
    content); its decision is ``findings["input"]["gate"]``. Nothing is written for a refused input.

    Returns:
        The findings dict (as written to ``findings.json``).

    Raises:
        OutOfScopeError: the gate refuses the input (a non-chest DICOM, a lateral view, a picture that is not
            a chest radiograph, a volume that is not a chest CT, an image over the size limits, ...).
        InputError: unreadable or unsupported input, modality unknown, an X-ray declared as CT volume, or a
            CT given as an X-ray.
    """
    from pulmo.gate import screen
    from pulmo.pipeline.progress import report_stage

    report_stage("cxr" if modality == "cxr" else "ct", "reading")
    image, effective, decision = screen(path, modality, limits)
    from pulmo.report import write_ct_outputs, write_cxr_outputs
    if effective == "ct":
        from pulmo.pipeline.ct import (  # torch: the CT models have no ONNX export
            analyze_ct_slice,
            analyze_ct_volume,
        )

        findings, masks = analyze_ct_volume(image) if isinstance(image, Volume) else analyze_ct_slice(image)
        writer = write_ct_outputs
    else:
        from pulmo.pipeline.cxr import analyze_cxr

        image.modality = "cxr"
        findings, masks = analyze_cxr(image)
        writer = write_cxr_outputs
    findings.input["gate"] = decision
    if prepare is not None:
        prepare()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(
        {"input": str(path), "modality": effective, "models": findings.models}, sort_keys=False))
    report_stage("ct" if effective == "ct" else "cxr", "report")
    data = writer(image, findings, masks, out_dir)
    from pulmo.pipeline.dicom_results import is_dicom_input, write_dicom_results
    if is_dicom_input(image):  # DICOM in, DICOM out: seg.dcm + sr.dcm, listed in findings.json "files"
        try:
            data["files"].update(write_dicom_results(image, data, masks, out_dir))
        except PulmoError as exc:
            logger.warning("no DICOM SEG / SR written: %s", exc)
            data["files"]["dicom_error"] = _one_line(exc)
    if viewer_files:
        from pulmo.report.viewer_files import write_viewer_files

        data["files"]["viewer"] = write_viewer_files(image, out_dir)
    (out_dir / "findings.json").write_text(json.dumps(data, indent=2) + "\n")  # with the files added since
    return data


def _single_series_folder(folder: Path) -> bool:
    """True for a series folder, or a chain of single sub-folders ending in one (TCIA patient/study/series)."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        dirs = [p for p in entries if p.is_dir()]
        if len(dirs) == 1 and len(entries) == 1:
            folder = dirs[0]
            continue
        return folder_is_dicom_series(folder)


def _batch_inputs(folder: Path) -> list[Path]:
    """Files of a folder tree, with each DICOM series sub-folder as one item (not descended into); folders that
    hold pulmo's output marker (results of an earlier run) are skipped, so outputs are never read as inputs."""
    items = []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        dirs[:] = [d for d in dirs if not (root_path / d / OUTPUT_MARKER).is_file()]
        series = [d for d in dirs if folder_is_dicom_series(root_path / d)]
        items.extend(root_path / d for d in sorted(series))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in series)
        items.extend(root_path / n for n in sorted(names) if not n.startswith("."))
    return items


def _unique_name(path: Path, folder: Path, used: set[str]) -> str:
    rel = path.relative_to(folder)
    rel = rel if path.is_dir() else rel.with_suffix("")
    name = "__".join(rel.parts)
    base, k = name, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def analyze_path(path: str | Path, out_dir: str | Path, modality: str | None = None,
                 progress: bool = True, limits: InputLimits | None = None, shard: tuple[int, int] | None = None,
                 resume: bool = False, rank0_merges: bool = False) -> AnalyzeResult:
    """Analyse a file, a DICOM series folder, or every image of a folder (one sub-folder each, plus
    ``summary.csv``).

    In a batch, every per-input failure, of any exception type (a refusal by the gate, an unreadable file,
    a ``MemoryError``), becomes a ``failed`` row of ``summary.csv`` with a one-line reason and the batch goes
    on (the result lists it in ``failures``). A re-used output folder (one pulmo wrote before) is cleared first.

    Args:
        path: a file, a DICOM series folder, or a folder of inputs.
        out_dir: the output folder (new, empty, or a previous pulmo output).
        modality: ``"cxr"`` / ``"ct"`` for 2D images whose file does not tell.
        progress: a tqdm bar over a batch.
        limits: size limits (see :func:`analyze_image`).
        shard: ``(K, N)``, 0 <= K < N: analyse only the batch inputs ``i`` with ``i % N == K`` (inputs in their
            sorted order, so every shard agrees), writing ``summary.shard-K-of-N.csv``; the shard that finishes
            last (it finds all N shard summaries of this run: same input list and launcher run id) merges them
            into ``summary.csv``, every input exactly once, failures included (``summary.csv`` is final once the
            last shard has finished). Shards share ``out_dir`` and never clear it (implies ``resume``). The
            command line exits a shard with 0 unless it merged a summary with a failed input (then 1):
            ``torchrun`` stops every rank as soon as one exits non-zero. Under ``torchrun`` the CLI passes
            ``(RANK, WORLD_SIZE)`` and ``rank0_merges``; a Slurm array passes its task id and count.
        rank0_merges: the shards were started together (``torchrun``): shard 0 waits until every other shard has
            written its summary during this run and merges; the others never merge.
        resume: keep the results of an earlier run in ``out_dir`` (a pulmo output): an input whose
            ``findings.json`` is complete (it parses and every file it lists exists) is not analysed again
            (``resumed`` = yes in the summary); an incomplete one is analysed again.

    Returns:
        An :class:`AnalyzeResult`: what was analysed, written, skipped, failed and merged (data only).

    Raises:
        InputError: the path does not exist, is not a regular file or folder, or a folder holds no supported
            image; for a single input, anything :func:`analyze_image` raises.
        ConfigError: ``out_dir`` is not a usable output folder (see :func:`_check_out_dir`).
    """
    path, out_dir = Path(path), Path(out_dir)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"{path}: not a regular file or folder (a device, FIFO or socket); expected an image file "
                         "or a folder")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{path}: permission denied; cannot read the folder")
    if shard is not None:
        k, n = shard
        if not (isinstance(k, int) and isinstance(n, int) and n >= 1 and 0 <= k < n):
            raise ConfigError(f"shard ({k}, {n}) (--shard {k}/{n}): expected K/N with 0 <= K < N (K = this shard, "
                              "N = shards)")
        resume = True
    single = path.is_file() or _single_series_folder(path)
    if single and shard is not None and shard[0] != 0:  # one input, analysed by shard 0: nothing for this one
        return AnalyzeResult(input=str(path), out_dir=out_dir, kind="single", rows=[], resume=resume,
                             shard=(shard[0], shard[1]))
    _check_out_dir(path, out_dir, keep=resume and not single)
    if single:
        t0 = time.perf_counter()
        existed = out_dir.exists()
        try:
            findings = analyze_image(path, out_dir, modality, limits, prepare=lambda: _prepare_out_dir(out_dir))
        except BaseException:
            if not existed:  # a refused or failed input leaves no new folder behind
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        _write_marker(out_dir)
        return AnalyzeResult(input=str(path), out_dir=out_dir, kind="single",
                             rows=[{"input": str(path), "status": "ok"}], headline=headline_values(findings),
                             seconds=time.perf_counter() - t0, resume=resume, shard=shard)

    files = _batch_inputs(path)
    if not files:
        raise InputError(f"{path}: the folder is empty; expected chest X-rays or CT (PNG, JPEG, DICOM, NIfTI, mhd, NRRD)")
    unreadable = {f for f in files if f.is_file() and not os.access(f, os.R_OK)}
    candidates = [f for f in files if f.is_dir() or f in unreadable or is_supported_file(f)]
    if not candidates:
        raise InputError(f"{path}: none of its {len(files)} files is a supported image (PNG, JPEG, DICOM, NIfTI, "
                         "mhd, NRRD)")
    _prepare_out_dir(out_dir, clear=not resume)
    used = {"summary.csv", OUTPUT_MARKER}
    names = {f: _unique_name(f, path, used) for f in candidates}  # over every input: the same in every shard
    k, n = shard or (0, 1)
    mine = [f for i, f in enumerate(candidates) if i % n == k]
    run = _run_id(files) if shard is not None else ""
    started = time.time()
    if shard is not None:  # this shard's summary of an earlier run must not be merged with this run's
        (out_dir / _shard_summary_name(k, n)).unlink(missing_ok=True)
    # The bar counts the inputs that are analysed, so its total is the "of N" of the summary line; files of an
    # unsupported format are listed (by shard 0) as skipped rows without entering the count.
    rows = [{"input": str(f), "status": "skipped", "error": "not a supported image format", "output": "",
             **_summary_values({}), "seconds": "", "resumed": ""} for f in files if f not in candidates and k == 0]
    for f in tqdm(mine, desc="analyze" if shard is None else f"analyze shard {k}/{n}", unit="input",
                  disable=not progress):
        name = names[f]
        t0 = time.perf_counter()
        done = _complete_findings(out_dir / name, f) if resume else None
        if done is not None:
            rows.append({"input": str(f), "status": "ok", "error": "", "output": name, **_summary_values(done),
                         "seconds": "", "resumed": "yes"})
            continue
        try:
            if f in unreadable:
                raise InputError(f"{f}: permission denied; cannot read the file")
            if resume and (out_dir / name).exists():  # an incomplete result of an interrupted run: ours, redone
                shutil.rmtree(out_dir / name, ignore_errors=True)
            findings = analyze_image(f, out_dir / name, modality, limits)
            rows.append({"input": str(f), "status": "ok", "error": "", "output": name, **_summary_values(findings),
                         "seconds": round(time.perf_counter() - t0, 3), "resumed": "no"})
        except Exception as exc:  # noqa: BLE001 - one input's failure, whatever it is, must not abort the batch
            reason = _one_line(exc)
            logger.warning("%s", reason)
            shutil.rmtree(out_dir / name, ignore_errors=True)
            rows.append({"input": str(f), "status": "failed", "error": reason, "output": "", **_summary_values({}),
                         "seconds": round(time.perf_counter() - t0, 3), "resumed": "no"})
    order = {str(f): i for i, f in enumerate(files)}
    merged: list[dict[str, Any]] | None = None  # the rows of summary.csv, when this process wrote it
    if shard is None:
        merged = sorted(rows, key=lambda r: order[r["input"]])
        _write_summary(out_dir / "summary.csv", merged)
    else:
        _write_summary(out_dir / _shard_summary_name(k, n), [{**r, "run": run} for r in rows], run_column=True)
        if rank0_merges and k == 0:  # every rank started with this one: their summaries are newer than its start
            while (merged := _merge_shard_summaries(out_dir, n, order, run, newer_than=started - 60.0)) is None:
                time.sleep(1.0)
        elif not rank0_merges:
            merged = _merge_shard_summaries(out_dir, n, order, run)
    _write_marker(out_dir)
    skipped: dict[str, int] = {}
    for r in rows:
        if r["status"] == "skipped":
            skipped[r["error"]] = skipped.get(r["error"], 0) + 1
    result = AnalyzeResult(input=str(path), out_dir=out_dir, kind="batch", rows=rows, n_inputs=len(mine),
                           n_inputs_all=len(candidates), resume=resume, skipped=skipped,
                           failures=[r["error"] for r in rows if r["status"] == "failed"],
                           summary_path=out_dir / ("summary.csv" if shard is None else _shard_summary_name(k, n)),
                           shard=None if shard is None else (k, n))
    if shard is not None and merged is not None:
        result.merged_summary, result.shards_merged = out_dir / "summary.csv", n
        result.merged_failed = sum(r["status"] == "failed" for r in merged)
    return result


def _complete_findings(folder: Path, source: Path) -> dict[str, Any] | None:
    """The findings of an earlier result in ``folder`` when it is complete and is the result of ``source``
    (``config.yaml`` names that input; ``findings.json`` parses and every file it lists exists; a DICOM input's
    SEG and SR, or the reason they are missing, are listed: they are written after the other files), else None."""
    try:
        findings = json.loads((folder / "findings.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(findings, dict) or "modality" not in findings:
        return None
    if not isinstance(config, dict) or config.get("input") != str(source):  # another input had this name before
        return None
    files = findings.get("files") or {}
    if "DICOM" in str((findings.get("input") or {}).get("format", "")).upper() and not (
            "dicom_seg" in files or "dicom_error" in files):
        return None
    for key, value in files.items():
        if key == "dicom_error":  # a message, not a file
            continue
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str) and not (folder / name).is_file():
                return None
    return findings


def _shard_summary_name(k: int, n: int) -> str:
    return f"summary.shard-{k}-of-{n}.csv"


def _run_id(files: list[Path]) -> str:
    """What the shards of one run share: the launcher's run id (torchrun ``TORCHELASTIC_RUN_ID``, a Slurm array's
    ``SLURM_ARRAY_JOB_ID``) and a hash of the input list, so summaries of an earlier run, or of shards that saw
    another folder content, are never merged with this run's."""
    digest = hashlib.sha1("\n".join(str(f) for f in files).encode()).hexdigest()[:12]
    launcher = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_ARRAY_JOB_ID") or ""
    return f"{launcher}:{digest}"


def _write_summary(target: Path, rows: list[dict[str, Any]], run_column: bool = False) -> None:
    """Write ``rows`` as CSV atomically (a unique temporary file beside ``target``, renamed over it)."""
    fields = ["input", "status", "error", "output", *_summary_values({}), "seconds", "resumed"]
    fields += ["run"] if run_column else []
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _merge_shard_summaries(out_dir: Path, n: int, order: dict[str, int], run: str,
                           newer_than: float | None = None) -> list[dict[str, Any]] | None:
    """When all ``n`` shard summaries of this ``run`` are in ``out_dir`` (and, with ``newer_than``, written after
    that time), merge them into ``summary.csv`` in input order and return its rows; else None (a shard still
    runs, and the last one, or rank 0 under torchrun, merges)."""
    parts = [out_dir / _shard_summary_name(i, n) for i in range(n)]
    try:
        if not all(p.is_file() and (newer_than is None or p.stat().st_mtime >= newer_than) for p in parts):
            return None
    except OSError:  # a summary being replaced right now
        return None
    by_input: dict[str, dict[str, Any]] = {}
    for part in parts:
        with open(part, newline="") as fh:
            part_rows = list(csv.DictReader(fh))
        if any(r.get("run") != run for r in part_rows):
            return None  # a summary of an earlier run (or of another input list): that shard has not finished
        by_input.update((r["input"], r) for r in part_rows)
    rows = sorted(by_input.values(), key=lambda r: order.get(r["input"], len(order)))
    _write_summary(out_dir / "summary.csv", rows)
    return rows


def _one_line(exc: BaseException) -> str:
    """A one-line reason for a failed input: the message of a pulmo error, else the exception type and text."""
    if isinstance(exc, PulmoError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = ("out of memory while analysing the input (MemoryError); lower limits.max_pixels / "
                "limits.max_voxels (--max-pixels / --max-voxels)")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:1000]


#: the findings columns of ``summary.csv``, in order (values from :func:`headline_values`)
SUMMARY_COLUMNS = ("modality", "lung_area_px", "lung_area_cm2", "lung_volume_ml", "infection_volume_ml",
                   "infection_percent_of_lung", "predicted_class", "n_detections", "n_nodules")


def _summary_values(findings: dict[str, Any]) -> dict[str, Any]:
    """One input's ``summary.csv`` findings columns (:data:`SUMMARY_COLUMNS`; empty where there is no value)."""
    values = headline_values(findings)
    return {k: "" if values[k] is None else values[k] for k in SUMMARY_COLUMNS}


def headline_values(findings: dict[str, Any]) -> dict[str, Any]:
    """The headline values of one input's findings (what ``pulmo analyze`` prints for it); None where the
    analysis has no such value.

    Returns:
        ``modality``; ``lung_volume_ml`` (CT volume), ``lung_cut_at`` (the sides where the scan cuts the lungs,
        empty when it holds them whole or does not tell), ``lung_area_cm2`` / ``lung_area_px`` (2D);
        ``infection_volume_ml`` / ``infection_area_px`` and ``infection_percent_of_lung`` (CT);
        ``predicted_class`` and ``classification_in_scope`` (X-ray classifier: False for a finding outside its
        classes); ``n_detections`` (lesion boxes) and ``n_nodules``.
    """
    lungs, infection = findings.get("lungs") or {}, findings.get("infection") or {}
    coverage, c = lungs.get("coverage") or {}, findings.get("classification") or {}
    return {"modality": findings.get("modality"), "lung_volume_ml": lungs.get("volume_ml"),
            "lung_cut_at": list(coverage.get("cut_at") or []) if coverage.get("complete") is False else [],
            "lung_area_cm2": lungs.get("area_cm2"), "lung_area_px": lungs.get("area_px"),
            "infection_volume_ml": infection.get("volume_ml"), "infection_area_px": infection.get("area_px"),
            "infection_percent_of_lung": infection.get("percent_of_lung"),
            "predicted_class": c.get("predicted"), "classification_in_scope": c.get("in_scope") if c else None,
            "n_detections": None if findings.get("detections") is None else len(findings["detections"]),
            "n_nodules": None if findings.get("nodules") is None else len(findings["nodules"])}
