"""``pulmo analyze``: one image, a DICOM series or a folder of images -> findings, masks, report."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from pulmo.errors import ConfigError, InputError, NotAvailableError, PulmoError
from pulmo.io import Image2D, Volume, folder_is_dicom_series, is_supported_file, read_image

logger = logging.getLogger(__name__)

CT_NOT_AVAILABLE = ("the CT pipeline (lung extraction, lesion segmentation, nodules) is not available in this "
                    "version of pulmo yet; chest X-rays (PNG, JPEG, DICOM CR/DX) are supported")


@dataclasses.dataclass
class AnalyzeResult:
    """What ``analyze_path`` did: printable ``lines``, per-input ``rows`` and the CLI ``exit_code``
    (0 all succeeded, 1 some inputs of a batch failed)."""

    lines: list[str]
    rows: list[dict[str, Any]]
    exit_code: int = 0


def _check_out_dir(input_path: Path, out_dir: Path) -> None:
    src = input_path.resolve()
    out = out_dir.resolve()
    if out == src or (src.is_dir() and src in out.parents):
        raise ConfigError(f"--out {out_dir} is inside the input {input_path}; choose a folder outside the input "
                          "(pulmo never writes into its inputs)")


def analyze_image(path: str | Path, out_dir: str | Path, modality: str | None = None) -> dict[str, Any]:
    """Analyse one chest X-ray file and write ``findings.json``, ``lung_mask.png``, ``overlay.png``,
    ``report.html`` and ``config.yaml`` into ``out_dir``.

    Args:
        path: an image file (PNG, JPEG, DICOM) or a CT (volume file or DICOM series folder).
        out_dir: output folder (created).
        modality: ``"cxr"`` or ``"ct"`` to override the modality of a 2D image whose file does not say.

    Returns:
        The findings dict (as written to ``findings.json``).

    Raises:
        InputError: unreadable or unsupported input, or modality unknown.
        NotAvailableError: a CT input (the CT pipeline comes in a later version).
    """
    from pulmo.pipeline.cxr import analyze_cxr
    from pulmo.report import write_cxr_outputs

    image = read_image(path)
    if isinstance(image, Volume):
        raise NotAvailableError(f"{path}: a CT volume {image.shape[::-1]} (x, y, z); {CT_NOT_AVAILABLE}")
    assert isinstance(image, Image2D)
    effective = modality or image.modality
    if effective is None:
        raise InputError(f"{path}: a 2D image whose file does not tell the modality; pass --modality cxr or ct")
    if effective == "ct":
        raise NotAvailableError(f"{path}: a CT slice; {CT_NOT_AVAILABLE}")
    image.modality = "cxr"
    findings, masks = analyze_cxr(image)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(
        {"input": str(path), "modality": effective, "models": findings.models}, sort_keys=False))
    return write_cxr_outputs(image, findings, masks, out_dir)


def _batch_inputs(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return files


def _unique_name(path: Path, folder: Path, used: set[str]) -> str:
    rel = path.relative_to(folder)
    name = "__".join(rel.with_suffix("").parts) if len(rel.parts) > 1 else rel.stem
    base, k = name, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def analyze_path(path: str | Path, out_dir: str | Path, modality: str | None = None,
                 progress: bool = True) -> AnalyzeResult:
    """Analyse a file, a DICOM series folder, or every image of a folder (one sub-folder each, plus
    ``summary.csv``). A failing file in a batch is reported in the summary and does not stop the batch.

    Raises:
        InputError: the path does not exist, or a folder holds no supported image.
        ConfigError: ``out_dir`` lies inside the input folder.
        NotAvailableError / InputError: for a single input that cannot be analysed.
    """
    path, out_dir = Path(path), Path(out_dir)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    _check_out_dir(path, out_dir)
    if path.is_file() or folder_is_dicom_series(path):
        t0 = time.perf_counter()
        findings = analyze_image(path, out_dir, modality)
        return AnalyzeResult(lines=[_summary_line(path, findings, out_dir, time.perf_counter() - t0)],
                             rows=[{"input": str(path), "status": "ok"}])

    files = _batch_inputs(path)
    if not files:
        raise InputError(f"{path}: the folder is empty; expected chest X-ray images (PNG, JPEG, DICOM)")
    candidates = [f for f in files if is_supported_file(f)]
    if not candidates:
        raise InputError(f"{path}: none of its {len(files)} files is a supported image (PNG, JPEG, DICOM, NIfTI, "
                         "mhd, NRRD)")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for f in tqdm(files, desc="analyze", unit="image", disable=not progress):
        if f not in candidates:
            rows.append({"input": str(f), "status": "skipped", "error": "not a supported image format",
                         "output": "", "lung_area_px": "", "lung_area_cm2": "", "seconds": ""})
            continue
        name = _unique_name(f, path, used)
        t0 = time.perf_counter()
        try:
            findings = analyze_image(f, out_dir / name, modality)
            lungs = findings.get("lungs") or {}
            rows.append({"input": str(f), "status": "ok", "error": "", "output": name,
                         "lung_area_px": lungs.get("area_px", ""), "lung_area_cm2": lungs.get("area_cm2") or "",
                         "seconds": round(time.perf_counter() - t0, 3)})
        except PulmoError as exc:
            logger.warning("%s", exc)
            rows.append({"input": str(f), "status": "failed", "error": str(exc), "output": "",
                         "lung_area_px": "", "lung_area_cm2": "", "seconds": round(time.perf_counter() - t0, 3)})
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ok = sum(r["status"] == "ok" for r in rows)
    failed = [r for r in rows if r["status"] == "failed"]
    lines = [f"analysed {ok} of {len(candidates)} images in {path} -> {out_dir / 'summary.csv'}"]
    lines += [f"  failed: {r['error']}" for r in failed]
    return AnalyzeResult(lines=lines, rows=rows, exit_code=1 if failed else 0)


def _summary_line(path: Path, findings: dict[str, Any], out_dir: Path, seconds: float) -> str:
    lungs = findings.get("lungs") or {}
    area = f"{lungs['area_cm2']} cm2" if lungs.get("area_cm2") is not None else f"{lungs.get('area_px')} px"
    return f"{path}: lungs {area} ({seconds:.2f} s) -> {out_dir / 'report.html'}"
