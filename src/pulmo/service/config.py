"""Settings of ``pulmo serve`` (a typed dataclass; the CLI fills it from its flags)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pulmo.errors import ConfigError

MIB = 1024 * 1024  # the *_mb settings are MiB, the *_gb settings GiB (names kept for the CLI flags)
GIB = 1024 * MIB
MIN_JOB_MEMORY_GB = 2.0
SERVICE_DIR = Path(__file__).resolve().parent
STATIC_DIR = SERVICE_DIR / "static"
VIEWER_PACKAGE_DIR = SERVICE_DIR / "viewer"
NIIVUE_DIST = VIEWER_PACKAGE_DIR / "node_modules" / "@niivue" / "niivue" / "dist"


@dataclasses.dataclass
class ServiceConfig:
    """Settings of the web service.

    Attributes:
        data_dir: folder holding ``jobs.sqlite`` (the job store) and ``jobs/<id>/{input,output}/``;
            created when missing.
        workers: number of worker processes that run analyses (each with 1 torch thread). 0 accepts
            and stores jobs without running them (maintenance, tests).
        token: bearer token required on every ``/api/v1`` route except ``/api/v1/health``; ``None``
            turns authentication off.
        max_upload_mb: limit of one upload request body, MiB (413 beyond).
        max_files: most files in one upload (a DICOM series of more slices is sent as a zip).
        max_unzipped_mb: limit of a zip's total uncompressed size, MiB (zip bombs are refused with 413).
        max_zip_members: limit of the number of members of a zip.
        max_attempts: a job whose worker died (crash, kill, server stop) this many times is failed
            instead of being queued again.
        poll_interval: seconds an idle worker waits between looks at the queue.
        shutdown_grace: seconds the server waits at shutdown for running jobs before stopping the
            workers (an interrupted job is queued again at the next start).
        niivue_dir: the NiiVue ``dist`` folder served at ``/static/niivue/``; default: the npm install
            in ``src/pulmo/service/viewer/node_modules``. The viewer works without it (2D only).
        job_timeout_s: wall-time limit of one job, seconds; a job still running after it is failed
            (error code ``timeout``) and its worker process terminated and restarted. 0 = no limit.
        job_memory_gb: memory limit of each worker process, GiB, set with ``RLIMIT_DATA`` (the heap
            and anonymous memory; not the shared libraries, which ``RLIMIT_AS`` would count: about
            3.9 GiB of address space for this torch build before any work). A job that runs out fails
            with error code ``out_of_memory``. 0 = no limit; otherwise at least
            ``MIN_JOB_MEMORY_GB`` (a worker holds about 1 GiB once its libraries are loaded).
        auth_max_failures: failed token checks (wrong or missing token) from one client address within
            ``auth_window_s`` that start a back-off (429 with ``Retry-After``); only with a token.
        auth_window_s: the window of ``auth_max_failures``, seconds; also how long an address must stay
            quiet after a back-off before its count starts again.
        auth_backoff_s: the first back-off, seconds; it doubles with every further failure during or
            right after a back-off, up to ``auth_backoff_max_s``.
        auth_backoff_max_s: the longest back-off, seconds.
        dicomweb_url: a DICOMweb root (``http(s)://HOST[:PORT]/ROOT``): every finished job's DICOM SEG and SR
            are stored there (STOW-RS), and jobs can name a study on it (``{"dicomweb_study": UID}``); ``None``
            = no PACS link (see :mod:`pulmo.service.dicomweb`).
        dicomweb_token: bearer token for that server, or ``None``.
    """

    data_dir: Path
    workers: int = 1
    token: str | None = None
    max_upload_mb: float = 512.0
    max_files: int = 2000
    max_unzipped_mb: float = 4096.0
    max_zip_members: int = 10000
    max_attempts: int = 3
    poll_interval: float = 0.2
    shutdown_grace: float = 10.0
    niivue_dir: Path | None = None
    job_timeout_s: float = 900.0
    job_memory_gb: float = 8.0
    auth_max_failures: int = 5
    auth_window_s: float = 60.0
    auth_backoff_s: float = 10.0
    auth_backoff_max_s: float = 900.0
    dicomweb_url: str | None = None
    dicomweb_token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.workers < 0:
            raise ConfigError(f"workers (--workers) {self.workers}: expected 0 or more worker processes")
        if self.token is not None and not self.token.strip():
            raise ConfigError("token (--token) is empty; give a non-empty token or leave it out to turn auth off")
        for name in ("max_upload_mb", "max_unzipped_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)}: expected a positive number of MiB")
        for name in ("max_files", "max_zip_members", "max_attempts", "auth_max_failures"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)}: expected 1 or more")
        if not self.job_timeout_s >= 0:
            raise ConfigError(f"job_timeout_s = {self.job_timeout_s}: expected a number of seconds (0 = no limit)")
        if not (self.job_memory_gb == 0 or self.job_memory_gb >= MIN_JOB_MEMORY_GB):
            raise ConfigError(f"job_memory_gb = {self.job_memory_gb}: expected 0 (no limit) or at least "
                              f"{MIN_JOB_MEMORY_GB} GiB (a worker holds about 1 GiB once torch and the models are loaded)")
        for name in ("auth_window_s", "auth_backoff_s", "auth_backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)}: expected a positive number of seconds")
        if self.dicomweb_url is not None:
            self.dicomweb_url = self.dicomweb.url  # validated: http(s), no credentials in the URL
        if self.niivue_dir is None:
            self.niivue_dir = NIIVUE_DIST
        self.niivue_dir = Path(self.niivue_dir)

    @property
    def dicomweb(self):
        """The :class:`pulmo.service.dicomweb.DicomWebSettings`, or ``None`` without ``dicomweb_url``.

        Raises:
            ConfigError: a URL that is not http(s), or holds credentials; an empty token.
        """
        if self.dicomweb_url is None:
            return None
        from pulmo.service.dicomweb import DicomWebSettings

        return DicomWebSettings(self.dicomweb_url, self.dicomweb_token)

    @property
    def db_path(self) -> Path:
        """The SQLite job store."""
        return self.data_dir / "jobs.sqlite"

    @property
    def jobs_dir(self) -> Path:
        """The folder of the jobs' files (``<id>/input``, ``<id>/output``)."""
        return self.data_dir / "jobs"

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes (MiB, 2**20 bytes each)."""
        return int(self.max_upload_mb * MIB)

    @property
    def max_unzipped_bytes(self) -> int:
        """``max_unzipped_mb`` in bytes (MiB, 2**20 bytes each): the cap on a ZIP's extracted total."""
        return int(self.max_unzipped_mb * MIB)

    @property
    def job_memory_bytes(self) -> int:
        """The worker memory limit in bytes (0 = none)."""
        return int(self.job_memory_gb * GIB)
