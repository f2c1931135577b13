"""DICOMweb: find and fetch a study's chest CT or chest X-ray series from a PACS, and send results back
(PS3.18: QIDO-RS search, WADO-RS retrieve, STOW-RS store).

Library choice: ``dicomweb-client`` (the DICOMweb client of the highdicom authors) speaks the three services,
parses multipart/related answers into pydicom datasets and the DICOM JSON model of QIDO-RS, and works with
any server (Orthanc, dcm4chee, Google Cloud Healthcare, ...); authentication is a ``requests`` session
header. HTTP basic credentials in the URL are refused: they would show in process lists and logs. A bearer
token (``--dicomweb-token`` / ``PULMO_DICOMWEB_TOKEN``) is sent as ``Authorization: Bearer`` and never logged.

Every failure (server unreachable or too slow, 401/403, an unknown study, no usable series, a refused STOW) is a
:class:`DicomWebError` (an :class:`pulmo.errors.InputError`) with one line naming the server and what went
wrong; a malformed URL is an :class:`~pulmo.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom

from pulmo.errors import InputError

logger = logging.getLogger(__name__)

#: Seconds to wait for each answer of the server (connect and read).
DEFAULT_TIMEOUT_S = 60.0
#: Attempts of each request (a connection error or a 408 / 429 / 503 / 504 answer is retried after 1 s, then 2 s).
HTTP_ATTEMPTS = 3
#: STOW-RS attempts for instances the server reports as failed (re-sending the same SOP Instance is harmless).
STOW_ATTEMPTS = 3
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CT_MODALITIES = ("CT",)
_CXR_MODALITIES = ("CR", "DX")
_LATERAL_VIEWS = ("LL", "RL", "LLD", "RLD", "LATERAL")


class DicomWebError(InputError):
    """The DICOMweb server cannot be reached, refuses access, lacks the study or a usable series, or does not store
    the results (exit code 3, like every bad input; the service's job error code ``dicomweb_error``)."""


@dataclasses.dataclass
class StudyRef:
    """A study (and optionally one series) on a DICOMweb server.

    Attributes:
        base_url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        study_uid: Study Instance UID.
        series_uid: Series Instance UID when the URL names one, else ``None`` (pulmo chooses).
    """

    base_url: str
    study_uid: str
    series_uid: str | None = None

    @property
    def url(self) -> str:
        """The study (or series) URL."""
        url = f"{self.base_url}/studies/{self.study_uid}"
        return url + (f"/series/{self.series_uid}" if self.series_uid else "")


def is_dicomweb_url(text: str) -> bool:
    """True when ``text`` is an ``http://`` or ``https://`` URL (an input to fetch, not a local path)."""
    return str(text).lower().startswith(("http://", "https://"))


def check_base_url(url: str) -> str:
    """Validate a DICOMweb root URL (``http(s)://host[:port]/path``) and return it without a trailing slash.

    Raises:
        InputError: not http(s), no host, or credentials in the URL (``user:password@``: refused, since
            they would show in process lists; use a bearer token).
    """
    parts = urlsplit(str(url))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InputError(f"{url}: not a DICOMweb URL; expected http(s)://HOST[:PORT]/PATH (e.g. "
                         "http://127.0.0.1:8042/dicom-web)")
    if parts.username is not None or parts.password is not None:
        raise InputError(f"{parts.scheme}://{parts.hostname}...: credentials in the URL (user:password@) are refused, "
                         "since they show in process lists and logs; give a bearer token (token; --dicomweb-token or "
                         "PULMO_DICOMWEB_TOKEN)")
    if parts.query or parts.fragment:
        raise InputError(f"{url}: a DICOMweb URL without query or fragment expected")
    return str(url).rstrip("/")


def parse_study_url(url: str) -> StudyRef:
    """Split ``http(s)://HOST[:PORT]/ROOT/studies/<StudyUID>[/series/<SeriesUID>]``.

    Raises:
        InputError: not such a URL (see :func:`check_base_url`), or a UID that is not digits and dots (at most
            64 characters, PS3.5 9.1).
    """
    url = check_base_url(url)
    match = re.match(r"^(?P<base>.+?)/studies/(?P<study>[^/]+)(?:/series/(?P<series>[^/]+))?$", url)
    if match is None:
        raise InputError(f"{url}: expected a study URL http(s)://HOST[:PORT]/ROOT/studies/<StudyInstanceUID> "
                         "(optionally /series/<SeriesInstanceUID>)")
    for uid in (match["study"], match["series"]):
        if uid is not None and (not _UID.match(uid) or len(uid) > 64):
            raise InputError(f"{url}: {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return StudyRef(check_base_url(match["base"]), match["study"], match["series"])


def connect(base_url: str, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for ``base_url``, sending ``Authorization: Bearer <token>`` when given.

    Raises:
        InputError: a bad URL (see :func:`check_base_url`), or an empty token.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    base_url = check_base_url(base_url)
    session = requests.Session()
    if token is not None:
        if not token.strip():
            raise InputError("the DICOMweb token is empty; give a token (token; --dicomweb-token / "
                             "PULMO_DICOMWEB_TOKEN) or leave both out")
        session.headers["Authorization"] = f"Bearer {token.strip()}"
    client = DICOMwebClient(url=base_url, session=session, timeout=timeout_s)
    # dicomweb-client retries every failed request 5 times with exponential back-off (30 s for a refused
    # connection); 3 attempts, 1 s and 2 s apart, still ride out a busy server (429 / 503) and fail fast otherwise
    client.set_http_retry_params(retry=True, max_attempts=HTTP_ATTEMPTS, wait_exponential_multiplier=500)
    return client


@contextlib.contextmanager
def _server_errors(base_url: str, what: str, not_found: str | None = None) -> Iterator[None]:
    """Turn the ``requests`` / ``dicomweb-client`` errors of one call into one-line :class:`InputError`."""
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        reason = (exc.response.reason if exc.response is not None else "") or ""
        if status in (401, 403):
            hint = ("give a bearer token (token; --dicomweb-token or PULMO_DICOMWEB_TOKEN)" if status == 401 else
                    "the token is not allowed to do this")
            raise DicomWebError(f"DICOMweb server {base_url} refused access while {what} (HTTP {status} {reason}); "
                             f"{hint}") from None
        if status == 404 and not_found:
            raise DicomWebError(f"DICOMweb server {base_url}: {not_found} (HTTP 404 while {what})") from None
        raise DicomWebError(f"DICOMweb server {base_url} answered HTTP {status} {reason} while {what}") from None
    except requests.exceptions.Timeout:
        raise DicomWebError(f"DICOMweb server {base_url} did not answer in time while {what}; check the server or "
                         "the network") from None
    except requests.exceptions.ConnectionError as exc:
        text = " ".join(str(exc).split())
        cause = "connection refused" if "refused" in text.lower() else text[:160]
        raise DicomWebError(f"DICOMweb server {base_url} is unreachable ({cause}) while {what}; check the URL and "
                            "that the server is running") from None
    except requests.exceptions.RequestException as exc:
        raise DicomWebError(f"DICOMweb server {base_url}: request failed while {what} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    except (ValueError, KeyError, TypeError) as exc:  # a malformed answer (not DICOM JSON / multipart DICOM)
        raise DicomWebError(f"DICOMweb server {base_url}: unexpected answer while {what} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None


def _value(item: dict[str, Any], tag: str, default: Any = None) -> Any:
    """The first value of a DICOM JSON attribute (PS3.18 F.2)."""
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def choose_series(series: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The series to analyse among a study's QIDO-RS series answers, as for a local folder: the CT series with the
    most instances (ties: the smallest Series Instance UID; localisers are short series), else the first CR / DX
    series by Series Number; ``None`` when the study has neither.

    Args:
        series: QIDO-RS answers in the DICOM JSON model (Modality ``00080060``, Series Instance UID
            ``0020000E``, Series Number ``00200011``, Number of Series Related Instances ``00201209``).
    """
    def uid(s):
        return str(_value(s, "0020000E", ""))

    ct = [s for s in series if str(_value(s, "00080060", "")).upper() in _CT_MODALITIES]
    if ct:
        return min(ct, key=lambda s: (-int(_value(s, "00201209", 0) or 0), uid(s)))
    cxr = [s for s in series if str(_value(s, "00080060", "")).upper() in _CXR_MODALITIES]
    if cxr:
        return min(cxr, key=lambda s: (int(_value(s, "00200011", 0) or 0), uid(s)))
    return None


def _save(datasets: Sequence[pydicom.Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        path = folder / f"{k:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def retrieve_study(client: Any, ref: StudyRef, dest: str | Path) -> tuple[Path, dict[str, Any]]:
    """Find the study's chest CT or chest X-ray series (QIDO-RS) and fetch it into ``dest`` (WADO-RS).

    A CT series is written as one file per instance into ``dest/series/`` (the folder to analyse); of a CR / DX
    series, the first frontal instance (View Position not lateral) is written as ``dest/image.dcm``.

    Args:
        client: from :func:`connect`.
        ref: the study (and optionally the series) to fetch.
        dest: an empty folder.

    Returns:
        ``(path to analyse, info)`` with ``info`` = ``{"url", "study_uid", "series_uid", "modality",
        "n_instances", "series_in_study"}``.

    Raises:
        InputError: the server is unreachable or refuses access, the study (or series) is unknown, or it holds no
            CT / CR / DX series (the message lists the modalities it has).
    """
    base, dest = ref.base_url, Path(dest)
    fields = ["Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances", "SeriesDescription"]
    with _server_errors(base, f"searching the series of study {ref.study_uid} (QIDO-RS)",
                        not_found=f"study {ref.study_uid} not found"):
        series = client.search_for_series(study_instance_uid=ref.study_uid, fields=fields)
    if not series:
        raise DicomWebError(f"DICOMweb server {base}: study {ref.study_uid} not found (QIDO-RS found no series); check "
                         "the Study Instance UID")
    if ref.series_uid is not None:
        chosen = next((s for s in series if _value(s, "0020000E") == ref.series_uid), None)
        if chosen is None:
            raise DicomWebError(f"DICOMweb server {base}: series {ref.series_uid} not found in study {ref.study_uid}")
    else:
        chosen = choose_series(series)
    modalities = sorted({str(_value(s, "00080060", "?")) for s in series})
    if chosen is None:
        raise DicomWebError(f"DICOMweb server {base}: study {ref.study_uid} has no CT, CR or DX series (it holds "
                         f"{', '.join(modalities)}); pulmo analyses chest CT and chest X-rays")
    series_uid = str(_value(chosen, "0020000E"))
    modality = str(_value(chosen, "00080060", "")).upper()
    what = f"retrieving series {series_uid} (WADO-RS)"
    if modality in _CXR_MODALITIES:
        with _server_errors(base, what, not_found=f"series {series_uid} not found"):
            metadata = client.retrieve_series_metadata(ref.study_uid, series_uid)
        frontal = [m for m in metadata if str(_value(m, "00185101", "")).upper() not in _LATERAL_VIEWS] or metadata
        if not frontal:
            raise DicomWebError(f"DICOMweb server {base}: series {series_uid} has no instance")
        frontal.sort(key=lambda m: int(_value(m, "00200013", 0) or 0))
        sop_uid = str(_value(frontal[0], "00080018"))
        with _server_errors(base, what, not_found=f"instance {sop_uid} not found"):
            dataset = client.retrieve_instance(ref.study_uid, series_uid, sop_uid)
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / "image.dcm"
        dataset.save_as(path, enforce_file_format=True)
        n = 1
    else:
        with _server_errors(base, what, not_found=f"series {series_uid} not found"):
            datasets = client.retrieve_series(ref.study_uid, series_uid)
        if not datasets:
            raise DicomWebError(f"DICOMweb server {base}: series {series_uid} returned no instance")
        _save(datasets, dest / "series")
        path, n = dest / "series", len(datasets)
    logger.info("DICOMweb: fetched %d %s instance(s) of the study (%d series in it)", n, modality, len(series))
    return path, {"url": ref.url, "study_uid": ref.study_uid, "series_uid": series_uid, "modality": modality,
                  "n_instances": n, "series_in_study": len(series)}


def _stow_result(response: pydicom.Dataset | None) -> tuple[set[str], set[str]]:
    """(stored, failed) SOP Instance UIDs of a STOW-RS answer (PS3.18 Table 10.5.3-1)."""
    stored = {str(i.ReferencedSOPInstanceUID) for i in (getattr(response, "ReferencedSOPSequence", None) or [])}
    failed = {str(i.ReferencedSOPInstanceUID) for i in (getattr(response, "FailedSOPSequence", None) or [])}
    return stored, failed


def store_instances(client: Any, base_url: str, datasets: Sequence[pydicom.Dataset], study_uid: str) -> list[str]:
    """Send ``datasets`` (pulmo's SEG and SR) to the study with STOW-RS, together in one request.

    An instance the server reports as failed is sent again (up to :data:`STOW_ATTEMPTS` requests in all;
    re-sending the same SOP Instance UID does not duplicate it), so the study ends with all of them or the call
    fails naming the ones that were stored and the ones that were not.

    Returns:
        The SOP Instance UIDs stored.

    Raises:
        InputError: the server is unreachable, refuses access, or keeps refusing an instance.
    """
    pending = {str(ds.SOPInstanceUID): ds for ds in datasets}
    stored: set[str] = set()
    for attempt in range(1, STOW_ATTEMPTS + 1):
        with _server_errors(base_url, f"storing {len(pending)} instance(s) in study {study_uid} (STOW-RS)"):
            try:
                response = client.store_instances(list(pending.values()), study_instance_uid=study_uid)
            except Exception as exc:  # dicomweb-client raises HTTPError for 409 (some instances failed) too
                import requests

                if not isinstance(exc, requests.exceptions.HTTPError) or exc.response is None or \
                        exc.response.status_code != 409 or attempt == STOW_ATTEMPTS:
                    raise
                logger.warning("STOW-RS attempt %d: HTTP 409, some instances failed; retrying", attempt)
                continue
        ok, failed = _stow_result(response)
        done = (ok or set(pending)) - failed
        stored |= done & set(pending)
        pending = {uid: ds for uid, ds in pending.items() if uid not in stored}
        if not pending:
            return sorted(stored)
        logger.warning("STOW-RS attempt %d: %d instance(s) not stored; retrying", attempt, len(pending))
    names = {str(ds.SOPInstanceUID): str(ds.Modality) for ds in datasets}
    raise DicomWebError(f"DICOMweb server {base_url} did not store {', '.join(names[u] for u in pending)} after "
                     f"{STOW_ATTEMPTS} STOW-RS attempts (stored: {', '.join(names[u] for u in stored) or 'none'})")
