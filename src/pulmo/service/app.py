"""The FastAPI application of ``pulmo serve``: the ``/api/v1`` job API, the viewer page and its static files.

Routes (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /api/v1/jobs`` (multipart, field ``files``; optional field ``modality`` = ``cxr`` | ``ct``; or, with
  ``--dicomweb``, JSON ``{"dicomweb_study": "<StudyInstanceUID>"}``) -> 202 ``{"id", "status": "queued", ...}``
* ``GET /api/v1/jobs`` -> ``{"jobs": [...]}``; ``GET /api/v1/jobs/{id}`` -> ``{"id", "status", "error", "stage",
  "progress", "key_finding", ...}``
* ``GET /api/v1/jobs/{id}/findings`` -> the job's ``findings.json``
* ``GET /api/v1/jobs/{id}/files`` and ``GET /api/v1/jobs/{id}/files/{name}`` -> result files
* ``DELETE /api/v1/jobs/{id}``; ``GET /api/v1/health`` (no auth)
* ``GET /api/v1/jobs/{id}/volume``, ``GET /api/v1/jobs/{id}/slices/{plane}/{index}.png`` -> CT slices rendered
  on demand for the viewer (:mod:`pulmo.service.slices`)
* ``GET /`` -> the home page (upload, job list with live progress); ``GET /viewer/{id}`` -> the viewer page;
  ``/static/`` their files; ``/static/niivue/`` NiiVue from npm

Errors are JSON ``{"detail": message, "code": key}`` with a 4xx status; an unexpected exception is a 500
of the same shape naming only the exception type and a reference (its traceback, which may quote a
client's file name, goes to ``<data_dir>/internal-errors.log``, not to the log). With a token configured
every ``/api/v1`` route but ``health`` needs ``Authorization: Bearer <token>`` (or the ``pulmo_token``
cookie the viewer page sets, so that images and volumes load in the browser); an address that keeps
failing the check is refused with 429 for a while (see :mod:`pulmo.service.throttle`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hmac
import logging
import re
import shutil
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from pulmo import __version__
from pulmo.service.config import STATIC_DIR, ServiceConfig
from pulmo.service.errors import (
    AuthError,
    DataDirInUseError,
    EmptyUploadError,
    JobNotReadyError,
    ServiceError,
    TooManyFilesError,
    UnknownJobError,
    UploadTooLargeError,
)
from pulmo.service.slices import add_slice_routes
from pulmo.service.store import STATUSES, JobStore
from pulmo.service.throttle import AuthThrottle
from pulmo.service.uploads import SavedFile, client_basename, mib, prepare_upload, remove_tree, stored_name
from pulmo.service.worker import WithholdLibraryDetails, WorkerPool

logger = logging.getLogger(__name__)

API = "/api/v1"
TOKEN_COOKIE = "pulmo_token"
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MEDIA_TYPES = {".png": "image/png", ".json": "application/json", ".html": "text/html; charset=utf-8",
                ".yaml": "text/yaml; charset=utf-8", ".gz": "application/gzip", ".nii": "application/octet-stream",
                ".dcm": "application/dicom", ".csv": "text/csv; charset=utf-8"}
_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["files"],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "one study: a CXR (PNG/JPEG/DICOM), a CT volume (NIfTI, NRRD, .mhd + .raw), "
                                     "the DICOM files of one CT series, or a .zip of a series"},
            "modality": {"type": "string", "enum": ["cxr", "ct"],
                         "description": "modality of a 2D image whose file does not say (optional)"},
        },
    }}, "application/json": {"schema": {
        "type": "object",
        "required": ["dicomweb_study"],
        "properties": {
            "dicomweb_study": {"type": "string", "description": "Study Instance UID of a study on the --dicomweb "
                                                                  "server: its CT or CR / DX series is fetched and analysed"},
            "modality": {"type": "string", "enum": ["cxr", "ct"], "description": "as for an upload (optional)"},
        },
    }}},
}


_BEARER = HTTPBearer(auto_error=False, description="the --token of pulmo serve (only when it was given)")
_BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


class _DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/service.lock`` while the server runs (one server per data dir,
    so the start-up re-queue of ``running`` jobs cannot steal another server's work)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "service.lock"
        self._fh: Any = None

    def acquire(self) -> None:
        if self._fh is not None:
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open while the server runs
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise DataDirInUseError(f"data_dir (--data-dir) {self.path.parent} is used by another running pulmo serve; "
                                    "stop it or choose another folder") from None
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _UploadLimitMiddleware:
    """Count the body bytes of upload requests and stop reading at the limit (413), whatever the
    Content-Length says (chunked bodies included)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != f"{API}/jobs":
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLargeError(_too_large(self.max_bytes))
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except UploadTooLargeError as exc:
            if started:
                raise
            await _error_response(exc)(scope, receive, send)


class _InternalErrorMiddleware:
    """Answer an unexpected exception with a JSON 500 ``{"detail", "code": "internal_error"}`` naming only the
    exception type and a reference, and keep its traceback out of the log and the response: an exception
    message can quote a client's file name (``OSError: ... 'DOE^JOHN.dcm'``). The traceback is appended to
    ``log_path`` (inside the data folder, which holds the uploads anyway); the log line names the reference.
    Nothing is re-raised, so uvicorn does not print the traceback either."""

    def __init__(self, app: Any, log_path: Path) -> None:
        self.app = app
        self.log_path = log_path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback leaves the server
            if isinstance(exc, ServiceError) and started:
                return
            ref = uuid.uuid4().hex[:12]
            text = (f"--- {ref} {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} {scope.get('method')} "
                    f"{scope.get('path', '')[:200]}\n{traceback.format_exc()}\n")
            await run_in_threadpool(self._append, text)
            logger.error("internal error %s in %s %s: %s (traceback in %s)", ref, scope.get("method"),
                         scope.get("path", "")[:200], type(exc).__name__, self.log_path.name)
            if started:
                return
            await JSONResponse({"detail": f"internal error ({type(exc).__name__}, reference {ref}); the server "
                                          "keeps the details", "code": "internal_error"}, status_code=500)(
                scope, receive, send)

    def _append(self, text: str) -> None:
        with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(text)


def _too_large(max_bytes: int) -> str:
    return f"the upload exceeds the limit of {mib(max_bytes)} MiB (max_upload_mb; --max-upload-mb); send a smaller study"


def _too_many_files(max_files: int) -> str:
    return f"more than {max_files} files in one upload; zip a large DICOM series and upload the .zip"


def _error_response(exc: ServiceError) -> JSONResponse:
    headers = dict(exc.headers)
    if isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status_code, headers=headers or None)


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    job_id = job["id"]
    view = {k: job[k] for k in ("id", "status", "error", "error_code", "created", "started", "finished", "kind",
                                "modality", "n_files", "upload_bytes", "attempts")}
    view.update({k: job.get(k) for k in ("stage", "progress", "key_finding")})  # live progress (service/progress.py)
    view["links"] = {"self": f"{API}/jobs/{job_id}", "findings": f"{API}/jobs/{job_id}/findings",
                     "files": f"{API}/jobs/{job_id}/files", "viewer": f"/viewer/{job_id}"}
    return view


def create_app(config: ServiceConfig, log_level: int = logging.INFO) -> FastAPI:
    """Build the service application for ``config``.

    Start-up (the ASGI lifespan) locks the data folder, creates the job store's schema, re-queues jobs left
    ``queued`` or ``running`` by a previous server (nothing accepted is lost), removes job folders without a
    row (an upload interrupted before it was accepted) and starts the worker processes (``app.state.pool``,
    which a test may replace before start-up); shutdown stops them.

    Args:
        config: the service settings.
        log_level: level of the worker processes' logs.

    Returns:
        The FastAPI app (serve it with uvicorn, or drive it with ``fastapi.testclient.TestClient`` inside a
        ``with`` block so the lifespan runs).

    Raises:
        DataDirInUseError: at start-up, when another server holds the data folder.
    """
    store = JobStore(config.db_path)
    pool = WorkerPool(config.data_dir, store, config.workers, max_attempts=config.max_attempts,
                      poll_interval=config.poll_interval, log_level=log_level, job_timeout_s=config.job_timeout_s,
                      job_memory_bytes=config.job_memory_bytes, dicomweb=config.dicomweb)
    lock = _DataDirLock(config.data_dir)
    throttle = AuthThrottle(config.auth_max_failures, config.auth_window_s, config.auth_backoff_s,
                            config.auth_backoff_max_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock.acquire()
        try:
            requeued, failed = store.requeue_running(max_attempts=config.max_attempts)
            config.jobs_dir.mkdir(parents=True, exist_ok=True)
            known = store.ids()
            orphans = [p for p in config.jobs_dir.iterdir() if p.is_dir() and p.name not in known]
            for p in orphans:
                remove_tree(p)
            counts = store.counts()
            logger.info("job store %s: %d queued (%d re-queued after an interruption, %d failed after too many), "
                        "%d done, %d failed; %d orphan folder(s) removed; starting %d worker(s)",
                        config.db_path, counts["queued"], requeued, failed, counts["done"], counts["failed"],
                        len(orphans), config.workers)
            app.state.pool.start()
            yield
        finally:
            await run_in_threadpool(app.state.pool.stop, config.shutdown_grace)
            lock.release()

    app = FastAPI(title="pulmo", version=__version__, lifespan=lifespan,
                  description="Chest X-ray and CT computer-aided detection: upload a study, poll the job, fetch the "
                              "findings, masks, overlays and report, and look at them in the viewer. Research "
                              "software, not a medical device.")
    app.state.config, app.state.store, app.state.pool, app.state.lock = config, store, pool, lock
    app.state.auth_throttle = throttle
    app.add_middleware(_UploadLimitMiddleware, max_bytes=config.max_upload_bytes)
    app.add_middleware(_InternalErrorMiddleware, log_path=config.data_dir / "internal-errors.log")  # outermost

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            detail, code = f"no such route: {request.url.path[:100]}; the API is under {API} (see /docs)", "not_found"
        else:
            detail, code = str(exc.detail), f"http_{exc.status_code}"
        return JSONResponse({"detail": detail, "code": code}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}", "code": "invalid_request"}, status_code=422)

    def require_token(request: Request, credentials: _BearerCredentials) -> None:
        """The token check of every API route but ``health``, with the per-address back-off.

        Raises:
            AuthBackoffError: the client's address is in back-off (429, ``Retry-After``).
            AuthError: the token is missing or wrong (401).
        """
        if config.token is None:
            return
        client = request.client.host if request.client is not None else "unknown"
        throttle.check(client)
        supplied = credentials.credentials if credentials is not None else request.cookies.get(TOKEN_COOKIE)
        if supplied and hmac.compare_digest(supplied.encode(), config.token.encode()):
            throttle.success(client)
            return
        delay = throttle.failure(client)
        if delay:
            logger.warning("auth back-off: address %s failed the token check too often; refused for %.0f s",
                           client, delay)
        if not supplied:
            raise AuthError("authentication required: send the header 'Authorization: Bearer <token>'")
        raise AuthError("invalid token")

    auth = [Depends(require_token)]

    def job_or_404(job_id: str, with_findings: bool = False) -> dict[str, Any]:
        job = store.get(job_id, with_findings=with_findings) if _JOB_ID.match(job_id) else None
        if job is None:
            raise UnknownJobError(f"unknown job {job_id[:64]!r}: no such job (never created, or deleted)")
        return job

    @app.get(f"{API}/health", tags=["service"], summary="liveness, workers and queue counts (no auth)")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "workers": {"configured": config.workers,
                                                                    "alive": app.state.pool.alive()},
                "jobs": store.counts()}

    @app.post(f"{API}/jobs", tags=["jobs"], status_code=202, dependencies=auth, openapi_extra={"requestBody": _UPLOAD_BODY},
              summary="upload one study (one or more files in the multipart field 'files'); returns the job id")
    async def create_job(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_upload_bytes:
            raise UploadTooLargeError(_too_large(config.max_upload_bytes))
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            return await _create_dicomweb_job(request)
        if not ctype.startswith("multipart/form-data"):
            raise EmptyUploadError(f"expected a multipart/form-data body with the files in the field 'files'; got "
                                   f"Content-Type {ctype[:60]!r}")
        try:
            # one file over pulmo's limit, so that pulmo's own count answers; Starlette's limit still stops a
            # body of endless tiny parts early (its error arrives as an HTTPException inside an app)
            form = await request.form(max_files=config.max_files + 1, max_fields=20)
        except UploadTooLargeError:
            raise
        except (MultiPartException, StarletteHTTPException, ValueError) as exc:
            message = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc)
            if "Too many files" in message:
                raise TooManyFilesError(_too_many_files(config.max_files)) from None
            raise ServiceError(f"the multipart body cannot be parsed ({message[:200]})", code="bad_multipart") from None
        try:
            items = form.getlist("files")
            if len(items) > config.max_files:
                raise TooManyFilesError(_too_many_files(config.max_files))
            uploads = [f for f in items if isinstance(f, UploadFile)]
            if len(uploads) != len(items):
                raise ServiceError("the field 'files' must hold files, not text", code="bad_multipart")
            if not uploads:
                raise EmptyUploadError("no file uploaded: send one or more files in the multipart field 'files'")
            hint = form.get("modality")
            if hint is not None and hint not in ("cxr", "ct"):
                raise ServiceError(f"modality {str(hint)[:20]!r}: expected 'cxr' or 'ct'", code="bad_modality")
            job_id = uuid.uuid4().hex
            view = await run_in_threadpool(_accept_upload, job_id, uploads, hint)
        finally:
            await form.close()
        return JSONResponse(view, status_code=202, headers={"Location": f"{API}/jobs/{job_id}"})

    def _accept_upload(job_id: str, uploads: list[UploadFile], hint: str | None) -> dict[str, Any]:
        job_dir = config.jobs_dir / job_id
        input_dir = job_dir / "input"
        input_dir.mkdir(parents=True)
        try:
            saved = []
            for k, up in enumerate(uploads):
                original = client_basename(up.filename)
                path = input_dir / stored_name(k, original)
                up.file.seek(0)
                with open(path, "xb") as out:
                    shutil.copyfileobj(up.file, out, 1024 * 1024)
                size = path.stat().st_size
                saved.append(SavedFile(k, original, path, size))
                if size == 0:
                    raise EmptyUploadError(f"{saved[-1].label} is empty (0 bytes)")
            total = sum(f.size for f in saved)
            prepared = prepare_upload(input_dir, saved, config.max_unzipped_bytes, config.max_zip_members)
            store.create(job_id, prepared.input_rel, prepared.kind, len(saved), total, modality_hint=hint)
        except BaseException as exc:
            remove_tree(job_dir)
            if isinstance(exc, ServiceError):
                logger.info("upload refused: %s (%d files)", exc.code, len(uploads))
            raise
        logger.info("job %s: accepted (%s, %d files, %d bytes)", job_id, prepared.kind, len(saved), total)
        return _job_view(store.get(job_id))

    async def _create_dicomweb_job(request: Request) -> JSONResponse:
        """A job on a study of the ``--dicomweb`` server: ``{"dicomweb_study": UID[, "modality": "cxr"|"ct"]}``;
        the worker fetches and analyses it (:mod:`pulmo.service.dicomweb`)."""
        from pulmo.errors import InputError
        from pulmo.service.dicomweb import KIND, check_study_uid, write_job_file

        if config.dicomweb is None:
            raise ServiceError("expected a multipart/form-data body with the files in the field 'files'; a JSON body "
                               "{\"dicomweb_study\": UID} needs a server with a DICOMweb link (dicomweb_url; --dicomweb URL)",
                               code="dicomweb_not_configured")
        try:
            body = await request.json()
        except ValueError:
            raise ServiceError("the JSON body cannot be parsed; expected {\"dicomweb_study\": \"<StudyInstanceUID>\"}",
                               code="bad_json") from None
        if not isinstance(body, dict) or set(body) - {"dicomweb_study", "modality"}:
            raise ServiceError("expected a JSON object {\"dicomweb_study\": \"<StudyInstanceUID>\"} (and optionally "
                               "\"modality\")", code="bad_json")
        try:
            study_uid = check_study_uid(body.get("dicomweb_study"))
        except InputError as exc:
            raise ServiceError(str(exc), code="bad_study_uid") from None
        hint = body.get("modality")
        if hint is not None and hint not in ("cxr", "ct"):
            raise ServiceError(f"modality {str(hint)[:20]!r}: expected 'cxr' or 'ct'", code="bad_modality")
        job_id = uuid.uuid4().hex
        job_dir = config.jobs_dir / job_id
        try:
            input_rel = write_job_file(job_dir / "input", study_uid)
            store.create(job_id, input_rel, KIND, 0, 0, modality_hint=hint)
        except BaseException:
            remove_tree(job_dir)
            raise
        logger.info("job %s: accepted (dicomweb study)", job_id)
        return JSONResponse(_job_view(store.get(job_id)), status_code=202, headers={"Location": f"{API}/jobs/{job_id}"})

    @app.get(f"{API}/jobs", tags=["jobs"], dependencies=auth, summary="list jobs, newest first")
    def list_jobs(status: str | None = Query(None, description="only jobs of this status"),
                  limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        if status is not None and status not in STATUSES:
            raise ServiceError(f"status {status[:20]!r}: expected one of {', '.join(STATUSES)}", code="bad_status")
        return {"jobs": [_job_view(j) for j in store.list(status, limit, offset)], "counts": store.counts()}

    @app.get(f"{API}/jobs/{{job_id}}", tags=["jobs"], dependencies=auth, summary="status of a job")
    def get_job(job_id: str) -> dict[str, Any]:
        return _job_view(job_or_404(job_id))

    @app.get(f"{API}/jobs/{{job_id}}/findings", tags=["jobs"], dependencies=auth,
             summary="the job's findings.json (409 until the job is done)")
    def get_findings(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id, with_findings=True)
        if job["status"] == "failed":
            raise JobNotReadyError(f"job {job_id} failed: {job['error']}")
        if job["status"] != "done":
            raise JobNotReadyError(f"job {job_id} is {job['status']}; findings are available once it is done")
        return job["findings"]

    def _output_dir(job_id: str) -> Path:
        job = job_or_404(job_id)
        if job["status"] != "done":
            raise JobNotReadyError(f"job {job_id} is {job['status']}; files are available once it is done")
        return config.jobs_dir / job_id / "output"

    @app.get(f"{API}/jobs/{{job_id}}/files", tags=["jobs"], dependencies=auth, summary="result files of a done job")
    def list_files(job_id: str) -> dict[str, Any]:
        out = _output_dir(job_id)
        files = sorted(p for p in out.iterdir() if p.is_file() and not p.is_symlink()) if out.is_dir() else []
        return {"files": [{"name": p.name, "bytes": p.stat().st_size,
                           "url": f"{API}/jobs/{job_id}/files/{p.name}"} for p in files]}

    @app.get(f"{API}/jobs/{{job_id}}/files/{{name}}", tags=["jobs"], dependencies=auth,
             summary="one result file (overlay PNG, mask, report.html, findings.json, volume for the viewer)",
             response_class=FileResponse)
    def get_file(job_id: str, name: str) -> FileResponse:
        out = _output_dir(job_id)
        path = out / name
        if not _FILE_NAME.match(name) or not path.is_file() or path.is_symlink() or path.resolve().parent != out.resolve():
            raise ServiceError(f"job {job_id} has no result file {name[:80]!r}; GET {API}/jobs/{job_id}/files lists "
                               "them", status_code=404, code="unknown_file")
        suffix = path.suffix.lower()
        return FileResponse(path, media_type=_MEDIA_TYPES.get(suffix, "application/octet-stream"),
                            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})

    @app.delete(f"{API}/jobs/{{job_id}}", tags=["jobs"], dependencies=auth,
                summary="delete a job and its files (a running job's files go when its analysis ends)")
    def delete_job(job_id: str) -> dict[str, Any]:
        previous = store.delete(job_id) if _JOB_ID.match(job_id) else None
        if previous is None:
            raise UnknownJobError(f"unknown job {job_id[:64]!r}: no such job (never created, or deleted)")
        if previous != "running":
            remove_tree(config.jobs_dir / job_id)
        logger.info("job %s: deleted (was %s)", job_id, previous)
        return {"id": job_id, "deleted": True, "status_before": previous}

    viewer_html = (STATIC_DIR / "viewer.html").read_text(encoding="utf-8")

    @app.get("/viewer/{job_id}", tags=["viewer"], response_class=Response,
             summary="the viewer page of a job (HTML; data loaded by its script through the API)")
    def viewer(job_id: str) -> Response:
        if not _JOB_ID.match(job_id):
            raise UnknownJobError(f"unknown job {job_id[:64]!r}: a job id is 32 hex digits")
        return Response(viewer_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    home_html = (STATIC_DIR / "home.html").read_text(encoding="utf-8")

    @app.get("/", tags=["viewer"], response_class=Response,
             summary="the home page: upload a study, watch the jobs, open their viewers, download their results")
    def root() -> Response:
        return Response(home_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    add_slice_routes(app, auth, _output_dir, API)

    if config.niivue_dir is not None and (config.niivue_dir / "niivue.umd.js").is_file():
        app.mount("/static/niivue", StaticFiles(directory=config.niivue_dir), name="niivue")
    else:
        logger.info("NiiVue not installed (%s); the viewer shows 2D overlays only. Install it with: "
                    "npm ci --prefix src/pulmo/service/viewer", config.niivue_dir)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path = "pulmo-data", workers: int = 1,
          token: str | None = None, max_upload_mb: float = 512.0, log_level: int = logging.INFO,
          job_timeout_s: float = 900.0, job_memory_gb: float = 8.0, dicomweb_url: str | None = None,
          dicomweb_token: str | None = None) -> int:
    """Run the service with uvicorn until interrupted (SIGINT / SIGTERM stop it in order).

    Args:
        host: interface to listen on (``127.0.0.1`` = this machine only; ``0.0.0.0`` = every interface).
        port: TCP port.
        data_dir: folder of the job store and the jobs' files (created).
        workers: worker processes (each analysis uses 1 CPU thread).
        token: bearer token required by the API; ``None`` = no authentication.
        max_upload_mb: limit of one upload, MiB.
        log_level: logging level of the service and its workers.
        job_timeout_s: wall-time limit of one job, s (0 = none); see :class:`ServiceConfig`.
        job_memory_gb: memory limit of each worker process, GiB (0 = none); see :class:`ServiceConfig`.
        dicomweb_url: DICOMweb root where every finished job's SEG and SR are stored and ``dicomweb_study`` jobs
            are fetched from (``None``: none); ``dicomweb_token`` its bearer token.

    Returns:
        0 after a clean shutdown.

    Raises:
        ConfigError: invalid settings, or the data folder is used by another server.
    """
    import uvicorn

    config = ServiceConfig(data_dir=Path(data_dir), workers=workers, token=token, max_upload_mb=max_upload_mb,
                           job_timeout_s=job_timeout_s, job_memory_gb=job_memory_gb, dicomweb_url=dicomweb_url,
                           dicomweb_token=dicomweb_token)
    app = create_app(config, log_level=log_level)
    for handler in logging.getLogger().handlers:  # the library may name input files: ids and sizes only
        handler.addFilter(WithholdLibraryDetails(only_pulmo=True))
    app.state.lock.acquire()  # fail here with one clear line rather than in uvicorn's start-up
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without a token (token; --token): anyone who can reach the port can upload and read jobs", host)
    uvicorn.run(app, host=host, port=port, log_level=logging.getLevelName(log_level).lower(), log_config=None,
                timeout_graceful_shutdown=int(config.shutdown_grace) + 5)
    return 0

