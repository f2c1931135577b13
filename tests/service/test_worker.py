"""The worker's job runner in-process (no worker process): errors contained, deletions honoured, logs scrubbed."""

from __future__ import annotations

import logging
import shutil
import uuid

import pytest

import pulmo.pipeline
from pulmo.errors import InputError
from pulmo.service.store import JobStore
from pulmo.service.worker import WithholdLibraryDetails, run_job
from tests.service.conftest import EXAMPLE_CXR


@pytest.fixture
def claimed_job(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = uuid.uuid4().hex
    (tmp_path / "jobs" / job_id / "input").mkdir(parents=True)
    shutil.copy(EXAMPLE_CXR, tmp_path / "jobs" / job_id / "input" / "upload_000.png")
    store.create(job_id, "input/upload_000.png", "image", 1, EXAMPLE_CXR.stat().st_size)
    return store, tmp_path / "jobs", store.claim(worker=0)


def _fake_analysis(path, out_dir, modality=None, viewer_files=False):
    """Stands in for pulmo.pipeline.analyze_image: the viewer files come from the image it read (read once)."""
    from pulmo.io import read_image
    from pulmo.report.viewer_files import write_viewer_files

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"viewer": write_viewer_files(read_image(path), out_dir)} if viewer_files else {}
    return {"modality": "cxr", "input": {"path": str(path)}, "lungs": {"area_px": 1}, "files": files}


def test_internal_error_fails_the_job_and_keeps_the_traceback_out_of_the_log(claimed_job, monkeypatch, caplog):
    store, jobs_dir, job = claimed_job

    def crash(*args, **kwargs):
        raise RuntimeError("boom in /data/Doe^John/series")

    monkeypatch.setattr(pulmo.pipeline, "analyze_image", crash)
    with caplog.at_level(logging.INFO, logger="pulmo.service"):
        assert run_job(store, jobs_dir, job) == "failed"
    row = store.get(job["id"])
    assert row["status"] == "failed" and row["error"].startswith("internal error: RuntimeError")
    assert "Doe^John" not in row["error"] and "Doe^John" not in caplog.text
    assert "Doe^John" in (jobs_dir / job["id"] / "error.log").read_text()


def test_pulmo_error_message_without_server_paths(claimed_job, monkeypatch):
    store, jobs_dir, job = claimed_job

    def bad_input(path, out_dir, modality=None, **kwargs):
        raise InputError(f"{path}: cannot decode the image")

    monkeypatch.setattr(pulmo.pipeline, "analyze_image", bad_input)
    assert run_job(store, jobs_dir, job) == "failed"
    assert store.get(job["id"])["error"] == "input/upload_000.png: cannot decode the image"


def test_success_records_findings_with_the_job_relative_input(claimed_job, monkeypatch):
    store, jobs_dir, job = claimed_job
    monkeypatch.setattr(pulmo.pipeline, "analyze_image", _fake_analysis)
    assert run_job(store, jobs_dir, job) == "done"
    findings = store.get(job["id"], with_findings=True)["findings"]
    assert findings["input"]["path"] == "input/upload_000.png" and findings["files"]["viewer"] == ["image.png"]
    assert (jobs_dir / job["id"] / "output" / "image.png").is_file()


def test_a_job_deleted_while_running_is_cleaned_up_by_its_worker(claimed_job, monkeypatch):
    store, jobs_dir, job = claimed_job
    monkeypatch.setattr(pulmo.pipeline, "analyze_image", _fake_analysis)
    assert store.delete(job["id"]) == "running"  # what DELETE does: the row goes, the files stay for the worker
    assert (jobs_dir / job["id"]).is_dir()
    assert run_job(store, jobs_dir, job) == "deleted"
    assert not (jobs_dir / job["id"]).exists()


def test_log_filter_withholds_library_messages():
    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, ("Doe^John.dcm",), None)

    worker, server = WithholdLibraryDetails(), WithholdLibraryDetails(only_pulmo=True)
    for flt in (worker, server):
        lib = record("pulmo.io.dicom", "%s: 2 series found")
        assert flt.filter(lib) and "Doe^John" not in lib.getMessage()
        svc = record("pulmo.service.worker", "job %s: done")
        assert flt.filter(svc) and "Doe^John" in svc.getMessage()
    access = record("uvicorn.access", "GET %s")
    assert server.filter(access) and "Doe^John" in access.getMessage()  # uvicorn's own lines kept in the server
    warned = record("py.warnings", "bad value in %s")
    assert worker.filter(warned) and "Doe^John" not in warned.getMessage()  # all else withheld in workers


def test_job_errors_keep_no_dicom_uids(tmp_path):
    from pulmo.service.worker import _clean_message

    job_dir = tmp_path / "jobs" / "abc"
    msg = _clean_message(f"{job_dir}/input/upload_000: series 1.3.6.1.4.1.14519.5.2.1.6279.6001.2988 is MR", job_dir)
    assert msg == "input/upload_000: series <uid> is MR"
