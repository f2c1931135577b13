"""Errors of the web service: :class:`pulmo.errors.PulmoError` subclasses that carry an HTTP status.

The app turns each into a JSON response ``{"detail": message, "code": code}`` with ``status_code``.
Messages name the problem and what was expected; they never contain patient identifiers taken from
DICOM tags (at most the client's own file names, returned only to that client, never logged).
"""

from __future__ import annotations

from pulmo.errors import ConfigError, InputError


class ServiceError(InputError):
    """A request the service refuses; ``status_code`` is the HTTP status, ``code`` a stable key."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code


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


class UnsupportedFileError(ServiceError):
    """A file is not one of the supported formats, or the files do not form one study."""

    status_code = 415
    code = "unsupported_file"


class BadZipError(ServiceError):
    """The zip archive is corrupt, encrypted or holds an unsafe member (absolute path, '..', symlink)."""

    status_code = 400
    code = "bad_zip"


class AuthError(ServiceError):
    """The bearer token is missing or wrong (only when the service runs with a token)."""

    status_code = 401
    code = "unauthorized"


class DataDirInUseError(ConfigError):
    """Another ``pulmo serve`` holds the data directory."""
