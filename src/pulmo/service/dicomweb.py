"""The service's PACS link (``pulmo serve --dicomweb URL``): jobs created from a study on the DICOMweb server
(``POST /api/v1/jobs`` with ``{"dicomweb_study": "<StudyInstanceUID>"}``), and every finished job's DICOM SEG
and SR sent to that server.

Both run in the worker process, outside the request path (:func:`pulmo.service.worker.run_job`):

* a ``dicomweb`` job's input folder holds only ``dicomweb.json`` (the study UID); the worker fetches the study's
  CT or CR / DX series (QIDO-RS + WADO-RS, :func:`pulmo.io.dicomweb.retrieve_study`) into ``input/dicomweb/``
  and analyses it like an upload;
* after the analysis of a DICOM input (fetched or uploaded) the SEG and SR go to the study with one STOW-RS
  request (:func:`pulmo.pipeline.dicomweb.store_results`); a job whose input was not DICOM has nothing to store.

A failure (server unreachable, 401/403, unknown study, no usable series, STOW refused) fails the job with
error code ``dicomweb_error`` and the one-line reason. The job row keeps only the neutral input path
``input/dicomweb.json``; the study UID is in that file, inside the job folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from pulmo.errors import ConfigError, InputError

JOB_FILE = "dicomweb.json"
KIND = "dicomweb"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclasses.dataclass
class DicomWebSettings:
    """Where the service fetches studies and stores results.

    Attributes:
        url: the DICOMweb root, ``http(s)://HOST[:PORT]/ROOT`` (credentials in it are refused).
        token: bearer token for the server, or ``None``.
    """

    url: str
    token: str | None = dataclasses.field(default=None, repr=False)  # never in logs

    def __post_init__(self) -> None:
        from pulmo.io.dicomweb import check_base_url

        try:
            self.url = check_base_url(self.url)
        except InputError as exc:
            raise ConfigError(f"dicomweb_url (--dicomweb): {exc}") from None
        if self.token is not None and not self.token.strip():
            raise ConfigError("the DICOMweb token is empty; give one (dicomweb_token; --dicomweb-token / "
                              "PULMO_DICOMWEB_TOKEN) or leave both out")


def check_study_uid(value: Any) -> str:
    """The ``dicomweb_study`` of a job request: a DICOM UID (digits and dots, at most 64 characters).

    Raises:
        InputError: anything else.
    """
    if not isinstance(value, str) or not _UID.match(value) or len(value) > 64:
        raise InputError("'dicomweb_study' must be a Study Instance UID (digits and dots, at most 64 characters)")
    return value


def write_job_file(input_dir: Path, study_uid: str) -> str:
    """Record the study of a ``dicomweb`` job in its input folder; returns the input path relative to the job."""
    input_dir.mkdir(parents=True, exist_ok=True)
    (input_dir / JOB_FILE).write_text(json.dumps({"study_uid": study_uid}) + "\n")
    return f"input/{JOB_FILE}"


def fetch_job_input(job_dir: Path, input_rel: str, settings: DicomWebSettings | None) -> tuple[Path, dict[str, Any]]:
    """Fetch the study of a ``dicomweb`` job into ``<job>/input/dicomweb/`` (again, after an interrupted attempt).

    Returns:
        ``(path to analyse, info)`` (see :func:`pulmo.io.dicomweb.retrieve_study`).

    Raises:
        DicomWebError: the service has no DICOMweb server, or the server fails (see the module docstring).
    """
    import time

    from pulmo.io.dicomweb import DicomWebError, StudyRef, connect, retrieve_study
    from pulmo.service.uploads import remove_tree

    if settings is None:
        raise DicomWebError("this job names a DICOMweb study, but the server runs without a DICOMweb link "
                             "(dicomweb_url; --dicomweb)")
    study_uid = check_study_uid(json.loads((job_dir / input_rel).read_text())["study_uid"])
    dest = job_dir / "input" / "dicomweb"
    remove_tree(dest)
    t0 = time.perf_counter()
    path, info = retrieve_study(connect(settings.url, settings.token), StudyRef(settings.url, study_uid), dest)
    info["seconds_fetch"] = round(time.perf_counter() - t0, 3)
    return path, info


def store_job_results(out_dir: Path, findings: dict[str, Any], settings: DicomWebSettings) -> dict[str, Any]:
    """Send a finished job's SEG and SR to the server (one STOW-RS request).

    Returns:
        What was stored (:func:`pulmo.pipeline.dicomweb.store_results`), or ``{"stored": [], "skipped": why}`` for
        a job whose input was not DICOM.

    Raises:
        DicomWebError: the server fails, or the SEG / SR of a DICOM input could not be built.
    """
    from pulmo.io.dicomweb import DicomWebError, connect
    from pulmo.pipeline.dicomweb import store_results

    files = findings.get("files") or {}
    if not files.get("dicom_seg") and not files.get("dicom_error"):
        return {"stored": [], "skipped": "the input was not DICOM: no SEG / SR"}
    try:
        return store_results(connect(settings.url, settings.token), settings.url, out_dir, findings)
    except DicomWebError:
        raise
    except InputError as exc:
        raise DicomWebError(str(exc)) from None
