"""Fixtures of the service tests: an app on a fresh data folder, driven by FastAPI's TestClient."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service tests need the 'serve' extra (pip install -e '.[dev]')")
pytest.importorskip("httpx", reason="fastapi.testclient needs httpx (pip install -e '.[dev]')")

from fastapi.testclient import TestClient

from pulmo.service import ServiceConfig, create_app
from tests.conftest import ROOT

EXAMPLE_CXR = ROOT / "examples" / "cxr" / "00022084_000.png"
EXAMPLE_CT = ROOT / "examples" / "ct" / "LIDC-IDRI-0001"
JOB_TIMEOUT = 180.0


@pytest.fixture
def service(tmp_path: Path) -> Callable[..., object]:
    """``service(workers=0, **config)`` -> a context manager yielding a started ``TestClient``."""

    @contextmanager
    def start(workers: int = 0, data_dir: Path | None = None, **kwargs) -> Iterator[TestClient]:
        config = ServiceConfig(data_dir=data_dir or tmp_path / "data", workers=workers, shutdown_grace=5.0, **kwargs)
        with TestClient(create_app(config)) as client:
            client.config = config
            yield client

    return start


def wait_for_job(client: TestClient, job_id: str, timeout: float = JOB_TIMEOUT, headers: dict | None = None) -> dict:
    """Poll the job until done or failed; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed"):
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(0.2)


def upload(client: TestClient, *paths_or_items, headers: dict | None = None, data: dict | None = None):
    """POST files to /api/v1/jobs: each item is a path or a ``(name, bytes)`` pair."""
    files = []
    for item in paths_or_items:
        if isinstance(item, Path):
            files.append(("files", (item.name, item.read_bytes(), "application/octet-stream")))
        else:
            name, content = item
            files.append(("files", (name, content, "application/octet-stream")))
    return client.post("/api/v1/jobs", files=files, headers=headers, data=data)
