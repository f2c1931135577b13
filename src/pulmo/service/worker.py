"""Worker processes: each polls the SQLite job store, claims the oldest queued job and runs
:func:`pulmo.analyze_image` on it (public API), never in the request path.

:class:`WorkerPool` (in the server process) starts ``workers`` processes with the ``spawn`` context
(fresh interpreters: no forked torch or event-loop state), restarts one that dies and re-queues the job
it held, and stops them at shutdown (a job still running after the grace period stays ``running`` in
the store and is re-queued at the next start). Each worker uses one torch thread.

Per-job limits:

* time: each worker publishes the job it runs and since when (shared memory of its own); the pool's
  supervisor terminates a worker whose job has run longer than ``job_timeout_s``, fails that job with
  error code ``timeout`` (not re-queued) and starts a fresh worker.
* memory: each worker limits its own ``RLIMIT_DATA`` (heap and private anonymous memory, which is what
  tensors and arrays use) to ``job_memory_bytes``. ``RLIMIT_AS`` is not used: it counts address space,
  and this torch build (CUDA libraries mapped even without a GPU) takes about 3.9 GB of it at import
  while holding under 1 GB of data; an X-ray analysis peaks at about 1.3 GB of data and 4.4 GB of
  address space. An allocation beyond the limit raises ``MemoryError`` (torch: ``RuntimeError`` "can't
  allocate memory") inside the job, which fails with error code ``out_of_memory``; the worker carries on.

Logs name job ids, sizes and durations only. Records of the library's own loggers (which may name input
files) are reduced to their logger name and level in worker processes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pulmo.service.store import JobStore
from pulmo.service.uploads import remove_tree

logger = logging.getLogger(__name__)

_ENV_LOCK = threading.Lock()
_NO_JOB = b"\0" * 32
# PulmoError subclasses by name (most specific first in each MRO) -> the job's error code
_ERROR_CODES = {"OutOfScopeError": "out_of_scope", "DicomWebError": "dicomweb_error", "InputError": "bad_input", "WeightsError": "weights_error",
                "NotAvailableError": "not_available", "ConfigError": "config_error"}


class BusyState:
    """What one worker is doing, in shared memory the pool reads: the job id and since when (the
    system-wide monotonic clock), or no job. Written only by the worker; no lock (a worker killed while
    holding a lock would leave it held), so the reader checks the start time did not change meanwhile."""

    def __init__(self, ctx: Any) -> None:
        self._job = ctx.RawArray("c", 32)
        self._since = ctx.RawValue("d", 0.0)

    def start(self, job_id: str) -> None:
        """Mark ``job_id`` as running from now."""
        self._since.value = 0.0
        self._job.raw = job_id.encode("ascii")[:32].ljust(32, b"\0")
        self._since.value = time.monotonic()

    def clear(self) -> None:
        """Mark the worker idle."""
        self._since.value = 0.0

    def read(self) -> tuple[str, float] | None:
        """``(job_id, started)`` of the running job, or ``None`` when idle (or changing)."""
        since = self._since.value
        if not since:
            return None
        job = self._job.raw
        if self._since.value != since or job == _NO_JOB:
            return None
        return job.rstrip(b"\0").decode("ascii"), since


def limit_memory(n_bytes: int) -> bool:
    """Limit this process' data memory (``RLIMIT_DATA``) to ``n_bytes``; ``False`` where not possible.

    Linux counts every private writable mapping (the heap, ``mmap`` of anonymous memory, thread
    stacks) against it since kernel 4.7, and only new allocations are checked, so it can be set after
    torch is imported.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return False
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = n_bytes if hard == resource.RLIM_INFINITY else min(n_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except (ValueError, OSError):
        return False
    return True


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                              or "Cannot allocate memory" in text)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f}".removesuffix(".0")


def timeout_message(seconds: float) -> str:
    """The error of a job that exceeded its wall-time limit."""
    return (f"the job exceeded the {seconds:g} s time limit (job_timeout_s) and was stopped; its worker was "
            "restarted. Try a smaller study, or ask the operator for a longer limit")


class WithholdLibraryDetails(logging.Filter):
    """Keep the records of ``pulmo.service``; of other loggers keep only the name and level, since the library
    (and, in a worker, third-party readers and ``warnings``) may name input files or quote DICOM values.

    Args:
        only_pulmo: withhold only ``pulmo.*`` records (the server process, whose uvicorn logs are kept);
            ``False`` withholds every logger but ``pulmo.service`` (worker processes).
    """

    def __init__(self, only_pulmo: bool = False) -> None:
        super().__init__()
        self.only_pulmo = only_pulmo

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the message of a withheld record (and drop its arguments and traceback) in place.

        Returns:
            Always True: every record is logged, withheld ones with only their logger name and level.
        """
        name = record.name
        if name.startswith("pulmo.service") or (self.only_pulmo and not name.startswith("pulmo")):
            return True
        record.msg = "message withheld in the service log (it may name input files)"
        record.args = ()
        record.exc_info = None
        return True


def _setup_worker_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(WithholdLibraryDetails())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level > logging.DEBUG:  # DICOM SEG / SR and DICOMweb narrate every attribute and request at INFO
        for name in ("highdicom", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings of readers (pydicom, ...) go through the filter too


def _watch_parent() -> None:
    """Exit at once when the server process dies (no orphan keeps running jobs a new server re-queues)."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _clean_message(message: str, job_dir: Path) -> str:
    """The error message without the server's folders: paths inside the job folder become relative
    (``input/upload_000.dcm``: neutral names, the client knows its own upload), the job folder itself
    ``.``, any other path under the data folder loses that prefix, and DICOM UIDs become ``<uid>``."""
    for prefix in (str(job_dir.resolve()) + os.sep, str(job_dir) + os.sep):
        message = message.replace(prefix, "")
    for folder in {str(job_dir.resolve()), str(job_dir)}:
        message = message.replace(folder, ".")
    for data_dir in {str(job_dir.resolve().parent.parent), str(job_dir.parent.parent)}:
        if len(data_dir) > 1:
            message = message.replace(data_dir + os.sep, "")
    # DICOM UIDs (study / series / instance) identify a patient's study: never stored with the job
    return re.sub(r"\b\d+(?:\.\d+){5,}\b", "<uid>", message)


def run_job(store: JobStore, jobs_dir: Path, job: dict[str, Any], memory_limit_bytes: int = 0,
            dicomweb: Any = None) -> str:
    """Run one claimed job and record its end.

    A :class:`pulmo.errors.PulmoError` fails the job with its message (server paths removed) and an error
    code from its type (``bad_input``, ``weights_error``, ...); running out of memory (``MemoryError``, or
    torch's allocator error) fails it with ``out_of_memory``; any other exception fails it with
    ``internal error: <type>`` and ``internal_error``, its traceback written to the job's ``error.log``
    (the service stays up, and the log names only the type).

    Args:
        store: the job store.
        jobs_dir: the folder of the jobs' files.
        job: the claimed job's row.
        memory_limit_bytes: the worker's memory limit, for the message of a job that ran out (0 = none).
        dicomweb: the :class:`pulmo.service.dicomweb.DicomWebSettings` of ``--dicomweb`` (``None``: none): a
            ``dicomweb`` job's study is fetched from there, and a DICOM input's SEG and SR are stored there.

    Returns:
        The final status: ``done``, ``failed``, ``deleted`` (the job was deleted while it ran; its files are
        removed here) or ``requeued`` (no longer marked running: the result is not recorded).
    """
    import json

    from pulmo import analyze_image, progress_listener
    from pulmo.errors import PulmoError
    from pulmo.service.progress import StoreProgress, key_finding

    job_id = job["id"]
    job_dir = jobs_dir / job_id
    out_dir = job_dir / "output"
    t0 = time.perf_counter()
    logger.info("job %s: started (attempt %d, %d files, %d bytes)", job_id, job["attempts"], job["n_files"],
                job["upload_bytes"])
    status, error, error_code, findings, modality = "failed", None, None, None, None
    try:
        remove_tree(out_dir)  # a previous, interrupted attempt
        input_path, fetched = job_dir / job["input"], None
        if job.get("kind") == "dicomweb":
            from pulmo.service.dicomweb import fetch_job_input

            input_path, fetched = fetch_job_input(job_dir, job["input"], dicomweb)
        progress = StoreProgress(store, job_id)  # stage + progress into the job's row, for GET /api/v1/jobs/{id}
        with progress_listener(progress):
            findings = analyze_image(input_path, out_dir, modality=job.get("modality_hint"), viewer_files=True)
        progress("report", 0.95)
        if isinstance(findings.get("input"), dict):  # the path inside the job folder, not the server's layout
            findings["input"]["path"] = job["input"]
            if dicomweb is not None:
                from pulmo.service.dicomweb import store_job_results

                findings["input"]["dicomweb"] = {**(fetched or {}), **store_job_results(out_dir, findings, dicomweb)}
        (out_dir / "findings.json").write_text(json.dumps(findings, indent=2) + "\n")
        status, modality = "done", findings.get("modality")
    except PulmoError as exc:
        error = _clean_message(str(exc), job_dir)
        error_code = next((_ERROR_CODES[c.__name__] for c in type(exc).__mro__ if c.__name__ in _ERROR_CODES),
                          "analysis_error")
        logger.info("job %s: failed (%s)", job_id, type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - one bad input must not take the worker down
        findings = None
        if _is_out_of_memory(exc):
            limit = f"the {_gib(memory_limit_bytes)} GiB a job may use (job_memory_gb)" if memory_limit_bytes else \
                "the memory available"
            error = f"the job ran out of memory: it needed more than {limit}. Try a smaller study"
            error_code = "out_of_memory"
            logger.warning("job %s: out of memory (%s)", job_id, type(exc).__name__)
        else:
            import traceback

            error = f"internal error: {type(exc).__name__}; the traceback is in the job's error.log on the server"
            error_code = "internal_error"
            with contextlib.suppress(OSError):
                (job_dir / "error.log").write_text(traceback.format_exc())
            logger.error("job %s: internal error %s (traceback in its error.log)", job_id, type(exc).__name__)
    seconds = time.perf_counter() - t0
    if not store.finish(job_id, status, error=error, findings=findings if status == "done" else None,
                        modality=modality, error_code=error_code,
                        key_finding=key_finding(findings) if status == "done" and findings else None):
        if store.internal(job_id) is None:
            remove_tree(job_dir)
            logger.info("job %s: deleted while running; files removed", job_id)
            return "deleted"
        logger.warning("job %s: no longer marked running (re-queued meanwhile); result not recorded", job_id)
        return "requeued"
    if status == "done":
        logger.info("job %s: done in %.2f s (%s)", job_id, seconds, modality)
    return status


def worker_main(data_dir: str, slot: int, stop_conn: Any, poll_interval: float = 0.2,
                log_level: int = logging.INFO, busy: BusyState | None = None, memory_limit_bytes: int = 0,
                dicomweb: Any = None) -> None:
    """Entry point of a worker process: claim and run jobs until told to stop.

    Args:
        data_dir: the service data folder (``jobs.sqlite`` and ``jobs/``).
        slot: the worker's number (recorded on the jobs it claims).
        stop_conn: the reading end of a pipe of its own; a message, or the server closing its end, means stop
            after the current job. (One pipe per worker rather than a shared ``multiprocessing.Event``: a
            worker killed while waiting on a shared event can leave it locked for every other process.)
        poll_interval: seconds to wait between looks at an empty queue.
        log_level: level of the worker's log handler.
        busy: where the worker publishes its running job for the pool's time limit (``None``: nowhere).
        memory_limit_bytes: ``RLIMIT_DATA`` of the process (0 = none; see the module docstring).
        dicomweb: the service's :class:`pulmo.service.dicomweb.DicomWebSettings`, or ``None``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops us in order
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    _setup_worker_logging(log_level)
    _watch_parent()
    if memory_limit_bytes and not limit_memory(memory_limit_bytes):
        logger.warning("worker %d: cannot limit its memory on this platform; jobs run without a memory limit", slot)
        memory_limit_bytes = 0
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    store = JobStore(Path(data_dir) / "jobs.sqlite")
    jobs_dir = Path(data_dir) / "jobs"
    logger.info("worker %d: ready (pid %d)", slot, os.getpid())
    while not stop_conn.poll(0):
        job = store.claim(slot)
        if job is None:
            if stop_conn.poll(poll_interval):
                break
            continue
        if busy is not None:
            busy.start(job["id"])
        try:
            run_job(store, jobs_dir, job, memory_limit_bytes, dicomweb=dicomweb)
        finally:
            if busy is not None:
                busy.clear()
    logger.info("worker %d: stopped", slot)


class WorkerPool:
    """The worker processes of one server (``spawn`` context), supervised by a thread.

    Args:
        data_dir: the service data folder.
        store: the job store (to re-queue the job of a worker that died).
        workers: number of processes (0: none, jobs stay queued).
        max_attempts: see :class:`pulmo.service.config.ServiceConfig`.
        poll_interval: idle poll period of the workers, s.
        log_level: the workers' log level.
        job_timeout_s: wall-time limit of one job, s (0 = none): the supervisor terminates the worker, fails
            the job with error code ``timeout`` and starts a new worker.
        job_memory_bytes: ``RLIMIT_DATA`` of each worker process (0 = none).
        target: the worker entry point, called as :func:`worker_main` (tests wrap it; it must be importable by
            name in a fresh interpreter).
        dicomweb: the :class:`pulmo.service.dicomweb.DicomWebSettings` passed to each worker (``None``: none).
    """

    def __init__(self, data_dir: Path, store: JobStore, workers: int, max_attempts: int = 3,
                 poll_interval: float = 0.2, log_level: int = logging.INFO, job_timeout_s: float = 0.0,
                 job_memory_bytes: int = 0, target: Any = None, dicomweb: Any = None) -> None:
        self.data_dir = Path(data_dir)
        self.store = store
        self.n = workers
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.log_level = log_level
        self.job_timeout_s = job_timeout_s
        self.job_memory_bytes = job_memory_bytes
        self.target = target or worker_main
        self.dicomweb = dicomweb
        self._ctx = mp.get_context("spawn")
        self._procs: dict[int, Any] = {}
        self._busy: dict[int, BusyState] = {}
        self._stop_conns: dict[int, Any] = {}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def _spawn(self, slot: int) -> None:
        receiver, sender = self._ctx.Pipe(duplex=False)
        busy = BusyState(self._ctx)
        proc = self._ctx.Process(target=self.target, name=f"pulmo-worker-{slot}", daemon=True,
                                 args=(str(self.data_dir), slot, receiver, self.poll_interval, self.log_level),
                                 kwargs={"busy": busy, "memory_limit_bytes": self.job_memory_bytes,
                                         **({"dicomweb": self.dicomweb} if self.dicomweb is not None else {})})
        with _ENV_LOCK:  # the child inherits the environment at spawn: one OpenMP thread from its first import
            saved = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = "1"
            try:
                proc.start()
            finally:
                if saved is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = saved
        receiver.close()  # the child has its own copy; closing ours lets the child see EOF if we die
        old = self._stop_conns.pop(slot, None)
        if old is not None:
            old.close()
        self._procs[slot] = proc
        self._busy[slot] = busy
        self._stop_conns[slot] = sender

    def start(self) -> None:
        """Start the workers and the supervising thread."""
        for slot in range(self.n):
            self._spawn(slot)
        if self.n:
            self._supervisor = threading.Thread(target=self._supervise, name="pulmo-worker-supervisor", daemon=True)
            self._supervisor.start()

    def _supervise(self) -> None:
        period = min(1.0, max(0.1, self.job_timeout_s / 4)) if self.job_timeout_s else 1.0
        while not self._stopping.wait(period):
            for slot, proc in list(self._procs.items()):
                if self._stopping.is_set():
                    break
                if not proc.is_alive():
                    requeued, failed = self.store.requeue_running(worker=slot, max_attempts=self.max_attempts)
                    logger.warning("worker %d exited with code %s; %d job(s) re-queued, %d failed; restarting it",
                                   slot, proc.exitcode, requeued, failed)
                    self._spawn(slot)
                elif self.job_timeout_s:
                    self._enforce_time_limit(slot, proc)

    def _enforce_time_limit(self, slot: int, proc: Any) -> None:
        """Stop the worker of a job past its time limit, fail that job (not re-queued), start a new worker."""
        running = self._busy[slot].read()
        if running is None or time.monotonic() - running[1] <= self.job_timeout_s:
            return
        job_id = running[0]
        _terminate(proc)
        job_dir = self.data_dir / "jobs" / job_id
        if self.store.fail_running(job_id, slot, timeout_message(self.job_timeout_s), "timeout"):
            remove_tree(job_dir / "output")  # the partial results of the stopped analysis
            logger.warning("job %s: exceeded the %g s time limit; worker %d terminated", job_id, self.job_timeout_s,
                           slot)
        elif self.store.internal(job_id) is None:  # deleted while it ran: its worker can no longer clean up
            remove_tree(job_dir)
            logger.warning("job %s: deleted while running, then exceeded the time limit; worker %d terminated",
                           job_id, slot)
        requeued, failed = self.store.requeue_running(worker=slot, max_attempts=self.max_attempts)
        if requeued or failed:  # the job ended just before the kill and the worker had claimed another
            logger.warning("worker %d: %d job(s) re-queued, %d failed after it was terminated", slot, requeued, failed)
        logger.info("worker %d: restarting it", slot)
        self._spawn(slot)

    def alive(self) -> int:
        """Number of worker processes alive."""
        return sum(p.is_alive() for p in self._procs.values())

    def stop(self, grace: float = 10.0) -> None:
        """Ask the workers to stop after their current job; after ``grace`` seconds terminate the rest (their
        jobs stay ``running`` and are re-queued at the next start)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5.0)
        for conn in self._stop_conns.values():
            with contextlib.suppress(OSError):
                conn.send("stop")
            conn.close()
        self._stop_conns.clear()
        deadline = time.monotonic() + grace
        for proc in self._procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for slot, proc in self._procs.items():
            if proc.is_alive():
                logger.warning("worker %d still busy after %.0f s; terminating it (its job is re-queued at the "
                               "next start)", slot, grace)
                _terminate(proc)
        self._procs.clear()
        self._busy.clear()


def _terminate(proc: Any) -> None:
    """SIGTERM a worker process, SIGKILL it after 5 s, and reap it."""
    proc.terminate()
    proc.join(5.0)
    if proc.is_alive():
        proc.kill()
        proc.join()
