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

from pulmo.errors import ConfigError, InputError, PulmoError
from pulmo.io import Volume, folder_is_dicom_series, is_supported_file, read_image

logger = logging.getLogger(__name__)



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
    """Analyse one input and write ``findings.json``, masks, overlays, ``report.html`` and ``config.yaml``
    into ``out_dir``.

    A chest X-ray goes through lung segmentation (PNG lung mask); a CT volume (DICOM series folder, NIfTI,
    mhd, NRRD) through lung extraction and infection segmentation (NIfTI masks in the input geometry);
    a single CT slice (DICOM CT, or an image with ``modality="ct"``) through infection segmentation.

    Args:
        path: an image file, a volume file or a DICOM series folder.
        out_dir: output folder (created).
        modality: ``"cxr"`` or ``"ct"`` to set the modality of a 2D image whose file does not say, or to
            treat a PNG/JPEG as a CT slice. A 3D volume is always CT.

    Returns:
        The findings dict (as written to ``findings.json``).

    Raises:
        InputError: unreadable or unsupported input, modality unknown, an X-ray declared as CT volume, or a
            CT given as an X-ray.
    """
    from pulmo.pipeline.ct import analyze_ct_slice, analyze_ct_volume
    from pulmo.pipeline.cxr import analyze_cxr
    from pulmo.report import write_ct_outputs, write_cxr_outputs

    image = read_image(path)
    if isinstance(image, Volume):
        if modality == "cxr":
            raise InputError(f"{path}: a 3D volume {image.shape[::-1]} (x, y, z) cannot be a chest X-ray")
        effective = "ct"
    else:
        effective = modality or image.modality
        if effective is None:
            raise InputError(f"{path}: a 2D image whose file does not tell the modality; pass --modality cxr or ct")
        if effective == "cxr" and image.modality == "ct":
            raise InputError(f"{path}: the DICOM Modality is CT; a CT slice cannot be analysed as a chest X-ray")
        if effective == "ct" and image.modality == "cxr" and image.source.get("format") == "DICOM":
            raise InputError(f"{path}: the DICOM Modality is {image.source.get('dicom_modality')!r}, a radiograph; "
                             "it cannot be analysed as a CT slice")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if effective == "ct":
        findings, masks = analyze_ct_volume(image) if isinstance(image, Volume) else analyze_ct_slice(image)
        writer = write_ct_outputs
    else:
        image.modality = "cxr"
        findings, masks = analyze_cxr(image)
        writer = write_cxr_outputs
    (out_dir / "config.yaml").write_text(yaml.safe_dump(
        {"input": str(path), "modality": effective, "models": findings.models}, sort_keys=False))
    return writer(image, findings, masks, out_dir)


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
    """Files of a folder tree, with each DICOM CT series sub-folder as one item (not descended into)."""
    items = []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
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
                 progress: bool = True) -> AnalyzeResult:
    """Analyse a file, a DICOM series folder, or every image of a folder (one sub-folder each, plus
    ``summary.csv``). A failing file in a batch is reported in the summary and does not stop the batch.

    Raises:
        InputError: the path does not exist, or a folder holds no supported image.
        ConfigError: ``out_dir`` lies inside the input folder.
        InputError: for a single input that cannot be analysed.
    """
    path, out_dir = Path(path), Path(out_dir)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    _check_out_dir(path, out_dir)
    if path.is_file() or _single_series_folder(path):
        t0 = time.perf_counter()
        findings = analyze_image(path, out_dir, modality)
        return AnalyzeResult(lines=[_summary_line(path, findings, out_dir, time.perf_counter() - t0)],
                             rows=[{"input": str(path), "status": "ok"}])

    files = _batch_inputs(path)
    if not files:
        raise InputError(f"{path}: the folder is empty; expected chest X-rays or CT (PNG, JPEG, DICOM, NIfTI, mhd, NRRD)")
    candidates = [f for f in files if f.is_dir() or is_supported_file(f)]
    if not candidates:
        raise InputError(f"{path}: none of its {len(files)} files is a supported image (PNG, JPEG, DICOM, NIfTI, "
                         "mhd, NRRD)")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for f in tqdm(files, desc="analyze", unit="image", disable=not progress):
        if f not in candidates:
            rows.append({"input": str(f), "status": "skipped", "error": "not a supported image format",
                         "output": "", **_summary_values({}), "seconds": ""})
            continue
        name = _unique_name(f, path, used)
        t0 = time.perf_counter()
        try:
            findings = analyze_image(f, out_dir / name, modality)
            rows.append({"input": str(f), "status": "ok", "error": "", "output": name, **_summary_values(findings),
                         "seconds": round(time.perf_counter() - t0, 3)})
        except PulmoError as exc:
            logger.warning("%s", exc)
            rows.append({"input": str(f), "status": "failed", "error": str(exc), "output": "", **_summary_values({}),
                         "seconds": round(time.perf_counter() - t0, 3)})
    with open(out_dir / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ok = sum(r["status"] == "ok" for r in rows)
    failed = [r for r in rows if r["status"] == "failed"]
    lines = [f"analysed {ok} of {len(candidates)} images in {path} -> {out_dir / 'summary.csv'}"]
    lines += [f"  failed: {r['error']}" for r in failed]
    return AnalyzeResult(lines=lines, rows=rows, exit_code=1 if failed else 0)


def _summary_values(findings: dict[str, Any]) -> dict[str, Any]:
    lungs, infection = findings.get("lungs") or {}, findings.get("infection") or {}
    return {"modality": findings.get("modality", ""), "lung_area_px": lungs.get("area_px", ""),
            "lung_area_cm2": lungs.get("area_cm2") or "", "lung_volume_ml": lungs.get("volume_ml", ""),
            "infection_volume_ml": infection.get("volume_ml", ""),
            "infection_percent_of_lung": infection.get("percent_of_lung", ""),
            "predicted_class": (findings.get("classification") or {}).get("predicted", ""),
            "n_detections": "" if findings.get("detections") is None else len(findings["detections"]),
            "n_nodules": "" if findings.get("nodules") is None else len(findings["nodules"])}


def _summary_line(path: Path, findings: dict[str, Any], out_dir: Path, seconds: float) -> str:
    lungs, infection = findings.get("lungs") or {}, findings.get("infection")
    if lungs.get("volume_ml") is not None:
        text = f"lungs {lungs['volume_ml']} mL"
    elif lungs.get("area_cm2") is not None:
        text = f"lungs {lungs['area_cm2']} cm2"
    else:
        text = f"lungs {lungs.get('area_px', '?')} px"
    if infection:
        amount = (f"{infection['volume_ml']} mL" if "volume_ml" in infection else f"{infection['area_px']} px")
        text += f", infection {amount} ({infection.get('percent_of_lung')} % of lung)"
    if findings.get("classification"):
        text += f", class {findings['classification'].get('predicted')}"
    if findings.get("detections") is not None:
        text += f", {len(findings['detections'])} lesion box(es)"
    if findings.get("nodules") is not None:
        text += f", {len(findings['nodules'])} nodule(s)"
    return f"{path}: {findings['modality']}: {text} ({seconds:.2f} s) -> {out_dir / 'report.html'}"
