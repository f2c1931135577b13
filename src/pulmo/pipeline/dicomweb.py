"""``pulmo analyze http://HOST:PORT/dicom-web/studies/<UID> --out DIR [--store]``: analyse a study held by a PACS.

The study's chest CT (or chest X-ray) series is found with QIDO-RS and fetched with WADO-RS into a temporary
folder (:func:`pulmo.io.dicomweb.retrieve_study`), analysed exactly as a local input
(:func:`pulmo.pipeline.analyze_path`), and with ``store`` the analysis' ``seg.dcm`` and ``sr.dcm`` go back to the
same study with one STOW-RS request (:func:`pulmo.io.dicomweb.store_instances`). The temporary copy is deleted
afterwards; ``findings.json`` names the study URL as its input and records what was fetched and stored in
``input.dicomweb``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from pulmo.errors import InputError
from pulmo.io.dicomweb import connect, parse_study_url, retrieve_study, store_instances
from pulmo.pipeline.analyze import AnalyzeResult, _check_out_dir, analyze_path

logger = logging.getLogger(__name__)


def result_datasets(out_dir: str | Path, findings: dict[str, Any]) -> list[pydicom.Dataset]:
    """The SEG and SR an analysis wrote into ``out_dir`` (in this order), read back.

    Raises:
        InputError: the analysis wrote none (its input was not DICOM, or ``files.dicom_error`` says why).
    """
    files = findings.get("files") or {}
    if not (files.get("dicom_seg") and files.get("dicom_sr")):
        why = files.get("dicom_error") or "the input was not DICOM"
        raise InputError(f"no DICOM SEG / SR to store: {why}")
    out = Path(out_dir)
    return [pydicom.dcmread(out / files["dicom_seg"]), pydicom.dcmread(out / files["dicom_sr"])]


def store_results(client: Any, base_url: str, out_dir: str | Path, findings: dict[str, Any]) -> dict[str, Any]:
    """Send an analysis' SEG and SR to its study on a DICOMweb server (one STOW-RS request, see
    :func:`pulmo.io.dicomweb.store_instances`).

    Returns:
        ``{"stored": [SOP Instance UIDs], "seg_series_uid", "sr_series_uid", "seconds_store"}``.

    Raises:
        InputError: nothing to store (see :func:`result_datasets`); DicomWebError: the server failed.
    """
    t0 = time.perf_counter()
    seg, sr = result_datasets(out_dir, findings)
    stored = store_instances(client, base_url, [seg, sr], str(seg.StudyInstanceUID))
    return {"stored": stored, "seg_series_uid": str(seg.SeriesInstanceUID), "sr_series_uid": str(sr.SeriesInstanceUID),
            "seconds_store": round(time.perf_counter() - t0, 3)}


def analyze_dicomweb(url: str, out_dir: str | Path, modality: str | None = None, progress: bool = True,
                     limits: Any = None, store: bool = False, token: str | None = None) -> AnalyzeResult:
    """Fetch a study from a DICOMweb server, analyse it into ``out_dir`` and, with ``store``, send its SEG and SR
    back to the study.

    Args:
        url: ``http(s)://HOST[:PORT]/ROOT/studies/<StudyInstanceUID>`` (optionally ``/series/<SeriesInstanceUID>``
            to choose the series; otherwise the CT series with the most instances, else the first CR / DX
            series, see :func:`pulmo.io.dicomweb.choose_series`).
        out_dir: the output folder (as for :func:`pulmo.pipeline.analyze_path`).
        modality, progress, limits: as for :func:`pulmo.pipeline.analyze_path`.
        store: send ``seg.dcm`` and ``sr.dcm`` to the study with STOW-RS.
        token: bearer token for the server (``None``: no authentication).

    Returns:
        The :class:`AnalyzeResult` of the analysis, its ``input`` the study URL and its ``dicomweb`` what was
        fetched and stored (series, instances, times).

    Raises:
        InputError: a bad URL (credentials in it are refused); DicomWebError (an InputError): the server is
            unreachable, refuses access, lacks the study or a CT / CR / DX series, or does not store the results;
            anything :func:`pulmo.pipeline.analyze_path` raises.
        ConfigError: ``out_dir`` is not a usable output folder.
    """
    ref = parse_study_url(url)
    client = connect(ref.base_url, token)
    with tempfile.TemporaryDirectory(prefix="pulmo-dicomweb-") as tmp:
        _check_out_dir(Path(tmp), Path(out_dir))  # a bad out_dir is refused before anything is fetched
        t0 = time.perf_counter()
        path, info = retrieve_study(client, ref, tmp)
        info["seconds_fetch"] = round(time.perf_counter() - t0, 3)
        result = analyze_path(path, out_dir, modality=modality, progress=progress, limits=limits)
    result.input = ref.url  # the temporary copy is gone: the result names the study
    result.rows = [{**r, "input": str(r["input"]).replace(str(path), ref.url)} for r in result.rows]
    findings_path = Path(out_dir) / "findings.json"
    findings = json.loads(findings_path.read_text())
    findings["input"]["path"] = ref.url
    findings["input"]["dicomweb"] = info
    try:
        if store:
            info.update(store_results(client, ref.base_url, out_dir, findings))
    finally:
        findings_path.write_text(json.dumps(findings, indent=2) + "\n")
    result.dicomweb = {**info, "base_url": ref.base_url}
    return result
