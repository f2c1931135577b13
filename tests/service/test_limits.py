"""Per-job limits: a job over its wall time is failed (not re-queued) and its worker restarted; a job over the
worker's memory limit fails with out_of_memory and the worker carries on; the job store's error codes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import pulmo.pipeline
from pulmo.errors import ConfigError, InputError, WeightsError
from pulmo.service import ServiceConfig, create_app
from pulmo.service.store import SCHEMA_VERSION, JobStore
from pulmo.service.worker import WorkerPool, run_job
from tests.conftest import ROOT
from tests.service import _workers
from tests.service.conftest import EXAMPLE_CXR, upload, wait_for_job


@contextmanager
def limited_service(tmp_path: Path, target, **settings) -> Iterator[TestClient]:
    """The app with one worker running ``target`` (a wrapped :func:`worker_main`) and ``settings``."""
    config = ServiceConfig(data_dir=tmp_path / "data", workers=1, shutdown_grace=5.0, poll_interval=0.05, **settings)
    app = create_app(config)
    app.state.pool = WorkerPool(config.data_dir, app.state.store, 1, poll_interval=0.05,
                                job_timeout_s=config.job_timeout_s, job_memory_bytes=config.job_memory_bytes,
                                target=target)
    with TestClient(app) as client:
        client.config = config
        yield client


def test_a_job_over_its_time_limit_is_failed_and_its_worker_restarted(tmp_path):
    # 3 s: the slow job is stopped after about 3.25 s, while the quick job after it has a wide margin on a busy CPU
    with limited_service(tmp_path, _workers.slow_worker, job_timeout_s=3) as client:
        pool = client.app.state.pool
        first_pid = pool._procs[0].pid
        r = upload(client, EXAMPLE_CXR, data={"modality": "ct"})  # the slow worker sleeps on 'ct' jobs
        assert r.status_code == 202
        slow_id = r.json()["id"]
        job = wait_for_job(client, slow_id, timeout=60)
        assert job["status"] == "failed" and job["error_code"] == "timeout", job
        assert "exceeded the 3 s time limit" in job["error"] and job["attempts"] == 1
        r = client.get(f"/api/v1/jobs/{slow_id}/findings")
        assert r.status_code == 409 and "time limit" in r.json()["detail"]

        r = upload(client, EXAMPLE_CXR)  # the fresh worker takes the next job
        done = wait_for_job(client, r.json()["id"], timeout=60)
        assert done["status"] == "done", done
        assert pool._procs[0].pid != first_pid and pool.alive() == 1
        again = client.get(f"/api/v1/jobs/{slow_id}").json()
        assert again["status"] == "failed" and again["attempts"] == 1  # not re-queued
        assert not (client.config.jobs_dir / slow_id / "output").exists()


def test_a_job_over_the_memory_limit_fails_with_out_of_memory_and_the_worker_carries_on(tmp_path):
    with limited_service(tmp_path, _workers.hungry_worker, job_memory_gb=2) as client:
        pool = client.app.state.pool
        first_pid = pool._procs[0].pid
        r = upload(client, EXAMPLE_CXR, data={"modality": "ct"})  # the hungry worker over-allocates on 'ct' jobs
        job = wait_for_job(client, r.json()["id"], timeout=60)
        assert job["status"] == "failed" and job["error_code"] == "out_of_memory", job
        assert "ran out of memory" in job["error"] and "2 GiB" in job["error"] and "job_memory_gb" in job["error"]
        r = upload(client, EXAMPLE_CXR)
        assert wait_for_job(client, r.json()["id"], timeout=60)["status"] == "done"
        assert pool._procs[0].pid == first_pid  # no restart needed


def test_the_memory_limit_stops_torch_and_numpy_allocations_in_a_process():
    code = textwrap.dedent("""
        import numpy as np, torch
        from pulmo.service.worker import _is_out_of_memory, limit_memory
        assert limit_memory(2 << 30)
        for alloc in (lambda: torch.empty(3 << 30, dtype=torch.uint8), lambda: np.zeros(3 << 30, np.uint8)):
            try:
                alloc()
                print("allocated")
            except Exception as exc:
                print(type(exc).__name__, _is_out_of_memory(exc))
        x = torch.zeros(1 << 20)  # small allocations still work
        print("ok", int(x.numel()))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["RuntimeError True", "MemoryError True", "ok 1048576"], out.stdout


@pytest.fixture
def claimed_job(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = uuid.uuid4().hex
    (tmp_path / "jobs" / job_id / "input").mkdir(parents=True)
    (tmp_path / "jobs" / job_id / "input" / "upload_000.png").write_bytes(EXAMPLE_CXR.read_bytes())
    store.create(job_id, "input/upload_000.png", "image", 1, EXAMPLE_CXR.stat().st_size)
    return store, tmp_path / "jobs", store.claim(worker=0)


@pytest.mark.parametrize(("exc", "code", "needle"), [
    (MemoryError(), "out_of_memory", "more than the 8 GiB a job may use"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 3221225472 bytes"), "out_of_memory", "ran out of memory"),
    (InputError("input/upload_000.png: cannot decode"), "bad_input", "cannot decode"),
    (WeightsError("no weights"), "weights_error", "no weights"),
    (ZeroDivisionError("x"), "internal_error", "internal error: ZeroDivisionError"),
])
def test_run_job_records_an_error_code(claimed_job, monkeypatch, exc, code, needle):
    store, jobs_dir, job = claimed_job

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(pulmo.pipeline, "analyze_image", fail)
    assert run_job(store, jobs_dir, job, memory_limit_bytes=8 << 30) == "failed"
    row = store.get(job["id"])
    assert row["status"] == "failed" and row["error_code"] == code and needle in row["error"], row


def test_error_messages_lose_the_server_paths(claimed_job, monkeypatch):
    store, jobs_dir, job = claimed_job
    data_dir = jobs_dir.parent

    def fail(path, out_dir, modality=None, **kwargs):
        raise InputError(f"{path}: bad; see {data_dir / 'jobs.sqlite'} and {jobs_dir / job['id']}")

    monkeypatch.setattr(pulmo.pipeline, "analyze_image", fail)
    run_job(store, jobs_dir, job)
    error = store.get(job["id"])["error"]
    assert str(data_dir) not in error and error.startswith("input/upload_000.png: bad"), error


def test_an_old_store_gains_the_error_code_column(tmp_path):
    path = tmp_path / "jobs.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, started REAL,
            finished REAL, input TEXT NOT NULL, kind TEXT NOT NULL, modality_hint TEXT, modality TEXT,
            n_files INTEGER NOT NULL, upload_bytes INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            worker INTEGER, error TEXT, findings TEXT);
        INSERT INTO jobs (id, status, created, input, kind, n_files, upload_bytes, error)
            VALUES ('a', 'failed', 0, 'input/x.png', 'image', 1, 1, 'old');
    """)
    con.commit()
    con.close()
    store = JobStore(path)
    job = store.get("a")
    assert job["error"] == "old" and job["error_code"] is None
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


@pytest.mark.parametrize(("setting", "needle"), [({"job_timeout_s": -1}, "job_timeout_s"),
                                                 ({"job_memory_gb": 1}, "at least 2"),
                                                 ({"job_memory_gb": -3}, "job_memory_gb")])
def test_limit_settings_are_checked(tmp_path, setting, needle):
    with pytest.raises(ConfigError, match=needle):
        ServiceConfig(data_dir=tmp_path, **setting)
    ServiceConfig(data_dir=tmp_path, job_timeout_s=0, job_memory_gb=0)  # 0 = no limit


def test_serve_passes_the_limits_to_its_config(monkeypatch, tmp_path):
    import uvicorn

    import pulmo.service.app as service_app

    seen = {}

    def fake_create_app(config, log_level):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(service_app, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        service_app.serve(data_dir=tmp_path, workers=0, job_timeout_s=30, job_memory_gb=4)
    assert seen["config"].job_timeout_s == 30 and seen["config"].job_memory_bytes == 4 << 30
