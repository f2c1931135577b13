"""Errors of the web service: :class:`pulmo.errors.PulmoError` subclasses that carry an HTTP status.

The app turns each into a JSON response ``{"detail": message, "code": code}`` with ``status_code``.
Messages name the problem and what was expected; they never contain patient identifiers taken from
DICOM tags (at most the client's own file names, returned only to that client in a 4xx answer, never
logged nor stored in the job store).
"""

from __future__ import annotations

from pulmo.errors import ConfigError, InputError


class ServiceError(InputError):
    """A request the service refuses; ``status_code`` is the HTTP status, ``code`` a stable key."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class UnknownJobError(ServiceError):
    """No job with that id (never created, or deleted)."""

    status_code = 404
    code = "unknown_job"


class JobNotReadyError(ServiceError):
    """The job exists but has no results yet (queued or running) or failed."""

    status_code = 409
    code = "job_not_ready"


class EmptyUploadError(ServiceError):
    """The request carries no file, or a file of 0 bytes."""

    status_code = 400
    code = "empty_upload"


class UploadTooLargeError(ServiceError):
    """The upload (or a zip's uncompressed content or member count) exceeds the configured limit."""

    status_code = 413
    code = "too_large"


class TooManyFilesError(UploadTooLargeError):
    """More files in one multipart upload than ``max_files`` (a large DICOM series is sent as one zip)."""

    code = "too_many_files"


class UnsupportedFileError(ServiceError):
    """A file is not one of the supported formats, or the files do not form one study."""

    status_code = 415
    code = "unsupported_file"


class BadZipError(ServiceError):
    """The zip archive is corrupt, encrypted or holds an unsafe member (absolute path, '..', symlink)."""

    status_code = 400
    code = "bad_zip"


class ZipNameClashError(BadZipError):
    """Two members of a zip claim the same path, or one member is a file where others need a folder
    (``a`` and ``a/b.png``): the archive cannot be unpacked faithfully."""

    code = "zip_name_clash"


class ZipPathTooDeepError(BadZipError):
    """A zip member lies more folders deep than the service unpacks (``MAX_ZIP_DEPTH``)."""

    code = "zip_path_too_deep"


class AuthError(ServiceError):
    """The bearer token is missing or wrong (only when the service runs with a token)."""

    status_code = 401
    code = "unauthorized"


class AuthBackoffError(ServiceError):
    """Too many failed authentication attempts from one client address: refused until the back-off
    expires (``Retry-After`` says when), whatever token the request carries."""

    status_code = 429
    code = "auth_backoff"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class DataDirInUseError(ConfigError):
    """Another ``pulmo serve`` holds the data directory."""
