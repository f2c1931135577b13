"""The job store: one SQLite file (``<data_dir>/jobs.sqlite``), schema created on first use.

A job row holds its state machine ``queued -> running -> done | failed`` and, once done, the findings
JSON (the same content as ``jobs/<id>/output/findings.json``). Worker processes claim queued jobs with
an immediate transaction, so each job runs once at a time. Rows hold no client file names and no patient
data: only the job id, the neutral stored input path (``input/upload_000.dcm``, ``input/unzipped/...``),
counts, sizes, times, and for a failed job an error code and the analysis' message (with the server's
paths taken out).

A failed job's ``error_code`` says why: ``timeout``, ``out_of_memory``, ``interrupted`` (its worker died
``max_attempts`` times), ``bad_input``, ``weights_error``, ``not_available``, ``analysis_error`` (another
:class:`pulmo.errors.PulmoError`) or ``internal_error`` (a bug; the traceback is in the job's
``error.log``).

Every method opens its own short-lived connection (the API runs in a thread pool and the workers in
other processes); the database is in WAL mode so readers never wait for the writer.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
STATUSES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    created       REAL NOT NULL,
    started       REAL,
    finished      REAL,
    input         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    modality_hint TEXT,
    modality      TEXT,
    n_files       INTEGER NOT NULL,
    upload_bytes  INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    worker        INTEGER,
    error         TEXT,
    error_code    TEXT,
    stage         TEXT,
    progress      REAL,
    key_finding   TEXT,
    findings      TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created);
"""

_PUBLIC = ("id, status, created, started, finished, kind, modality, n_files, upload_bytes, attempts, error, "
           "error_code, stage, progress, key_finding")
_MIGRATIONS = {"error_code": "ALTER TABLE jobs ADD COLUMN error_code TEXT",  # columns added after version 1
               "stage": "ALTER TABLE jobs ADD COLUMN stage TEXT",  # version 3: live progress
               "progress": "ALTER TABLE jobs ADD COLUMN progress REAL",
               "key_finding": "ALTER TABLE jobs ADD COLUMN key_finding TEXT"}


def _iso(t: float | None) -> str | None:
    return None if t is None else _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="milliseconds")


class JobStore:
    """SQLite-backed job table.

    Args:
        path: the database file (its folder is created; the schema too).

    A store of an older schema (version 1: no ``error_code``; version 2: no ``stage``, ``progress``,
    ``key_finding``) is upgraded in place.

    Raises:
        sqlite3.DatabaseError: the file exists but is not a SQLite database of this schema.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            columns = {r[1] for r in con.execute("PRAGMA table_info(jobs)")}
            for column, statement in _MIGRATIONS.items():
                if column not in columns:
                    con.execute(statement)
            con.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- creation and queries ---------------------------------------------------------------------------
    def create(self, job_id: str, input_rel: str, kind: str, n_files: int, upload_bytes: int,
               modality_hint: str | None = None) -> None:
        """Insert a queued job whose files are already in ``jobs/<id>/input``.

        Args:
            job_id: 32 lowercase hex digits.
            input_rel: the analysis input, relative to the job folder (``input/...``): a neutral name the
                service chose, never a client's file name.
            kind: what was uploaded: ``image``, ``volume``, ``dicom-series``, ``zip``.
            n_files: number of files uploaded; upload_bytes: their total size in bytes.
            modality_hint: ``"cxr"`` / ``"ct"`` given by the client for a 2D image, else ``None``.
        """
        with self._connect() as con:
            con.execute("INSERT INTO jobs (id, status, created, input, kind, modality_hint, n_files, upload_bytes) "
                        "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                        (job_id, time.time(), input_rel, kind, modality_hint, n_files, upload_bytes))

    def get(self, job_id: str, with_findings: bool = False) -> dict[str, Any] | None:
        """The job's public fields (times as ISO 8601 UTC), or ``None`` for an unknown id."""
        cols = _PUBLIC + (", findings" if with_findings else "")
        with self._connect() as con:
            row = con.execute(f"SELECT {cols} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._public(row)

    def internal(self, job_id: str) -> dict[str, Any] | None:
        """Every column of the job (for workers), or ``None``."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else dict(row)

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Jobs, newest first, optionally of one status."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])
        with self._connect() as con:
            rows = con.execute(f"SELECT {_PUBLIC} FROM jobs {where} ORDER BY created DESC, rowid DESC "
                               "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [self._public(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, 0 when none)."""
        with self._connect() as con:
            rows = con.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def ids(self) -> set[str]:
        """Every job id in the store."""
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT id FROM jobs")}

    def delete(self, job_id: str) -> str | None:
        """Delete the row; returns the status it had (``None`` if unknown). A ``running`` job's worker
        notices at the end (its update finds no row) and removes the job's files itself."""
        with self._transaction() as con:
            row = con.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            con.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return row[0]

    # -- the worker side ----------------------------------------------------------------------------------
    def claim(self, worker: int) -> dict[str, Any] | None:
        """Atomically move the oldest queued job to ``running`` for ``worker``; returns its row or ``None``."""
        with self._transaction() as con:
            row = con.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created, rowid LIMIT 1").fetchone()
            if row is None:
                return None
            con.execute("UPDATE jobs SET status = 'running', started = ?, worker = ?, attempts = attempts + 1, "
                        "error = NULL, error_code = NULL, stage = NULL, progress = 0.0 WHERE id = ?",
                        (time.time(), worker, row[0]))
            job = con.execute("SELECT * FROM jobs WHERE id = ?", (row[0],)).fetchone()
        return dict(job)

    def finish(self, job_id: str, status: str, *, error: str | None = None, findings: dict[str, Any] | None = None,
               modality: str | None = None, error_code: str | None = None, key_finding: str | None = None) -> bool:
        """Record the end of a running job.

        Args:
            job_id: the job.
            status: ``done`` or ``failed``.
            error: the message of a failed job (no server paths, no client file names).
            findings: the findings of a done job.
            modality: ``cxr`` / ``ct`` as analysed.
            error_code: why a job failed (see the module docstring).
            key_finding: a one-line summary of the findings for the job list (no patient data).

        A done job's ``progress`` becomes 1.0; ``stage`` keeps the last stage reported (for a failed job: the
        stage it failed in).

        Returns:
            ``False`` when the row is gone (deleted meanwhile) or no longer running (re-queued after the
            worker was presumed dead, or failed by the pool for exceeding its time limit).

        Raises:
            ValueError: ``status`` is neither ``done`` nor ``failed``.
        """
        if status not in ("done", "failed"):
            raise ValueError(f"finish status {status!r}: expected 'done' or 'failed'")
        text = None if findings is None else json.dumps(findings)
        with self._connect() as con:
            cur = con.execute("UPDATE jobs SET status = ?, finished = ?, error = ?, error_code = ?, findings = ?, "
                              "modality = ?, worker = NULL, key_finding = ?, "
                              "progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END "
                              "WHERE id = ? AND status = 'running'",
                              (status, time.time(), error, error_code, text, modality, key_finding, status, job_id))
            return cur.rowcount == 1

    def set_progress(self, job_id: str, stage: str, progress: float) -> bool:
        """Record the stage and progress (0..1 of the whole analysis) of a running job.

        Returns:
            ``False`` when the job is gone or no longer running.
        """
        with self._connect() as con:
            cur = con.execute("UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND status = 'running'",
                              (stage, round(float(progress), 4), job_id))
            return cur.rowcount == 1

    def fail_running(self, job_id: str, worker: int, error: str, error_code: str) -> bool:
        """Fail a job that ``worker`` is running (the pool stopped that worker: e.g. its time limit).

        Returns:
            ``False`` when the job is gone or no longer running on that worker (it ended meanwhile).
        """
        with self._connect() as con:
            cur = con.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ?, error_code = ?, "
                              "worker = NULL WHERE id = ? AND status = 'running' AND worker = ?",
                              (time.time(), error, error_code, job_id, worker))
            return cur.rowcount == 1

    def requeue_running(self, worker: int | None = None, max_attempts: int = 3) -> tuple[int, int]:
        """Put ``running`` jobs (of one worker, or all at start-up) back in the queue; a job already tried
        ``max_attempts`` times is failed instead. Returns ``(requeued, failed)``."""
        where = "status = 'running'" + ("" if worker is None else " AND worker = ?")
        args: tuple[Any, ...] = () if worker is None else (worker,)
        with self._transaction() as con:
            failed = con.execute(
                f"UPDATE jobs SET status = 'failed', finished = ?, worker = NULL, error = ?, error_code = 'interrupted' "
                f"WHERE {where} AND attempts >= ?",
                (time.time(), (f"the analysis was interrupted {max_attempts} times (worker crashed, was killed or "
                               "the server stopped); not retried"), *args, max_attempts)).rowcount
            requeued = con.execute(f"UPDATE jobs SET status = 'queued', started = NULL, worker = NULL, stage = NULL, "
                                   f"progress = NULL WHERE {where}", args).rowcount
        return requeued, failed

    # -- helpers ----------------------------------------------------------------------------------------------
    @staticmethod
    def _public(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        for key in ("created", "started", "finished"):
            d[key] = _iso(d[key])
        if "findings" in d:
            d["findings"] = None if d["findings"] is None else json.loads(d["findings"])
        return d
