"""The /api/v1 job API through FastAPI's TestClient: real uploads, real worker processes, real findings."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pulmo.io import read_image
from pulmo.service.store import JobStore
from tests.service.conftest import EXAMPLE_CT, EXAMPLE_CXR, upload, wait_for_job

ROOT = Path(__file__).resolve().parents[2]


def _zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _jobs_on_disk(client) -> list[str]:
    jobs = client.config.jobs_dir
    return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


def test_upload_xray_runs_in_a_worker_and_serves_findings_and_files(service):
    with service(workers=1) as client:
        r = upload(client, EXAMPLE_CXR)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/api/v1/jobs/{job_id}"
        assert r.json()["status"] == "queued"
        job = wait_for_job(client, job_id)
        assert job["status"] == "done", job
        assert job["error"] is None and job["modality"] == "cxr" and job["attempts"] == 1

        findings = client.get(f"/api/v1/jobs/{job_id}/findings").json()
        assert findings["modality"] == "cxr"
        assert findings["input"]["image_size"] == {"height": 1024, "width": 1024}
        assert 0.10 < findings["lungs"]["area_px"] / 1024**2 < 0.5
        on_disk = json.loads((client.config.jobs_dir / job_id / "output" / "findings.json").read_text())
        assert on_disk == findings

        names = {f["name"] for f in client.get(f"/api/v1/jobs/{job_id}/files").json()["files"]}
        assert {"findings.json", "lung_mask.png", "overlay.png", "report.html", "image.png"} <= names
        png = client.get(f"/api/v1/jobs/{job_id}/files/overlay.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG")
        html = client.get(f"/api/v1/jobs/{job_id}/files/report.html")
        assert html.status_code == 200 and "overlay.png" in html.text
        # no way out of the job's output folder
        for bad in ("..%2Ffindings.json", "..%2F..%2F..%2Fjobs.sqlite", "%2Fetc%2Fpasswd", ".hidden", "nope.png"):
            r = client.get(f"/api/v1/jobs/{job_id}/files/{bad}")
            assert r.status_code == 404, (bad, r.status_code)
        r = client.get(f"/api/v1/jobs/{job_id}/files/../../../jobs.sqlite")
        assert r.status_code == 404

        listing = client.get("/api/v1/jobs").json()
        assert [j["id"] for j in listing["jobs"]] == [job_id] and listing["counts"]["done"] == 1
        assert client.get("/api/v1/jobs", params={"status": "queued"}).json()["jobs"] == []
        assert client.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 400

        page = client.get(f"/viewer/{job_id}")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "/static/viewer.js" in page.text
        assert client.get("/static/viewer.js").status_code == 200
        assert client.get("/api/v1/health").json()["workers"] == {"configured": 1, "alive": 1}

        # a file that passes the upload checks but cannot be analysed: failed, with the library's message and
        # without the server's paths; the worker carries on
        r = upload(client, ("truncated.png", EXAMPLE_CXR.read_bytes()[:400]))
        assert r.status_code == 202
        bad = wait_for_job(client, r.json()["id"])
        assert bad["status"] == "failed" and bad["error"] and str(client.config.data_dir) not in bad["error"]
        r = client.get(f"/api/v1/jobs/{bad['id']}/findings")
        assert r.status_code == 409 and "failed" in r.json()["detail"]

        r = client.delete(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status_before"] == "done"
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
        assert not (client.config.jobs_dir / job_id).exists()


def test_openapi_documents_the_versioned_api(service):
    with service() as client:
        spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/findings",
                 "/api/v1/jobs/{job_id}/files/{name}", "/viewer/{job_id}"):
        assert path in paths, path
    assert {"get", "post"} <= set(paths["/api/v1/jobs"]) and "delete" in paths["/api/v1/jobs/{job_id}"]
    body = paths["/api/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["type"] == "array"


def test_token_auth(service):
    token = "s3cret-token"
    with service(token=token) as client:
        assert client.get("/api/v1/health").status_code == 200  # liveness needs no token
        r = client.get("/api/v1/jobs")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/v1/jobs", headers={"Authorization": f"Basic {token}"}).status_code == 401
        assert upload(client, EXAMPLE_CXR).status_code == 401
        assert _jobs_on_disk(client) == []
        r = upload(client, EXAMPLE_CXR, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert client.get(f"/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        client.cookies.set("pulmo_token", token)  # what the viewer page sets
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
        client.cookies.clear()
        assert client.get(f"/viewer/{job_id}").status_code == 200  # the page itself holds no data
        assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 401
    with service(data_dir=client.config.data_dir) as open_client:  # no token: open
        assert open_client.get(f"/api/v1/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize(("members", "symlinks", "status", "needle"), [
    ({"series/../../evil.dcm": b"x" * 200}, None, 400, "'..' component"),
    ({"../evil.png": b"x"}, None, 400, "path traversal"),
    ({"/etc/cron.d/evil": b"x"}, None, 400, "absolute path"),
    ({"C:/evil.png": b"x"}, None, 400, "absolute path"),
    ({"ok.dcm": b"x"}, {"link.dcm": "/etc/passwd"}, 400, "symbolic link"),
])
def test_unsafe_zip_is_refused(service, tmp_path, members, symlinks, status, needle):
    with service() as client:
        r = upload(client, ("study.zip", _zip(members, symlinks)))
        assert r.status_code == status, r.text
        assert r.json()["code"] == "bad_zip" and needle in r.json()["detail"]
        assert _jobs_on_disk(client) == [] and client.get("/api/v1/jobs").json()["jobs"] == []
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path / "data" / "evil.dcm").exists()


def test_corrupt_and_bomb_zips(service):
    with service(max_unzipped_mb=1, max_zip_members=50) as client:
        r = upload(client, ("bad.zip", b"PK\x03\x04" + b"\x00garbage" * 50))
        assert r.status_code == 400 and r.json()["code"] == "bad_zip" and "not a valid zip" in r.json()["detail"]
        bomb = _zip({"zeros.raw": b"\x00" * (8 * 1024 * 1024)})  # 8 MiB of zeros in a few KiB
        assert len(bomb) < 64 * 1024
        r = upload(client, ("bomb.zip", bomb))
        assert r.status_code == 413 and r.json()["code"] == "too_large" and "unpack" in r.json()["detail"]
        r = upload(client, ("many.zip", _zip({f"f{i}.dcm": b"x" for i in range(60)})))
        assert r.status_code == 413 and "60 members" in r.json()["detail"]
        assert _jobs_on_disk(client) == []


def test_unknown_job_is_404(service):
    with service() as client:
        unknown = uuid.uuid4().hex
        for method, url in [("get", f"/api/v1/jobs/{unknown}"), ("get", f"/api/v1/jobs/{unknown}/findings"),
                            ("get", f"/api/v1/jobs/{unknown}/files"), ("get", f"/api/v1/jobs/{unknown}/files/a.png"),
                            ("delete", f"/api/v1/jobs/{unknown}"), ("get", "/api/v1/jobs/not-a-job-id"),
                            ("get", "/viewer/not-a-job-id")]:
            r = getattr(client, method)(url)
            assert r.status_code == 404, (method, url, r.status_code)
            assert r.json()["code"] == "unknown_job" and "unknown job" in r.json()["detail"]
        r = client.get("/viewer/..%2F..%2Fetc%2Fpasswd")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        r = client.get("/api/v1/jobs", params={"limit": 0})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request" and "limit" in r.json()["detail"]


def test_oversize_upload_is_413(service):
    with service(max_upload_mb=0.1) as client:
        r = upload(client, EXAMPLE_CXR)  # 394 kB > 100 KiB, refused from its Content-Length
        assert r.status_code == 413 and r.json()["code"] == "too_large" and "0 MiB" not in r.json()["detail"]

        def chunked():  # no Content-Length: counted while it streams in
            yield b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
            for _ in range(20):
                yield b"\x00" * 16384

        r = client.post("/api/v1/jobs", content=chunked(), headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 413 and r.json()["code"] == "too_large"
        assert _jobs_on_disk(client) == []
        assert upload(client, ("small.png", EXAMPLE_CXR.read_bytes()[:50_000])).status_code != 413


def test_empty_and_unsupported_uploads(service, tmp_path):
    with service() as client:
        r = client.post("/api/v1/jobs", data={"note": "x"}, files=[("other", ("a.png", b"x"))])
        assert r.status_code == 400 and r.json()["code"] == "empty_upload" and "'files'" in r.json()["detail"]
        r = upload(client, ("empty.png", b""))
        assert r.status_code == 400 and r.json()["code"] == "empty_upload" and "empty.png" in r.json()["detail"]
        r = client.post("/api/v1/jobs", json={"files": []})
        assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]
        r = upload(client, ("notes.txt", b"patient notes"))
        assert r.status_code == 415 and r.json()["code"] == "unsupported_file" and "notes.txt" in r.json()["detail"]
        r = upload(client, EXAMPLE_CXR, EXAMPLE_CXR)
        assert r.status_code == 415 and "one job per image" in r.json()["detail"]
        header = b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = /etc/passwd\n"
        r = upload(client, ("evil.mhd", header))
        assert r.status_code == 415 and "plain file name" in r.json()["detail"]
        r = upload(client, ("evil.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\ndata file: /etc/passwd\n\n"))
        assert r.status_code == 415 and "detached" in r.json()["detail"]
        r = upload(client, EXAMPLE_CXR, data={"modality": "mri"})
        assert r.status_code == 400 and r.json()["code"] == "bad_modality"
        assert _jobs_on_disk(client) == [] and client.get("/api/v1/jobs").json()["jobs"] == []


def test_mhd_raw_pair_and_dicom_series_are_accepted(service, tmp_path):
    vol = sitk.GetImageFromArray(np.full((4, 8, 8), -800, np.int16))
    vol.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(vol, str(tmp_path / "Patient Name.mhd"))
    assert (tmp_path / "Patient Name.raw").is_file()
    series = sorted(EXAMPLE_CT.glob("*.dcm"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in series:
            zf.write(f, f"LIDC-IDRI-0001/study/series/{f.name}")
    with service() as client:
        r = upload(client, tmp_path / "Patient Name.mhd", tmp_path / "Patient Name.raw")
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["kind"] == "volume" and job["n_files"] == 2
        row = JobStore(client.config.db_path).internal(job["id"])
        stored = client.config.jobs_dir / job["id"] / row["input"]
        assert stored.name == "upload_000.mhd" and "ElementDataFile = upload_001.raw" in stored.read_text()
        assert read_image(stored).shape == (4, 8, 8)
        assert not list((client.config.jobs_dir / job["id"]).rglob("Patient*"))  # client names are not kept

        r = upload(client, *series)
        assert r.status_code == 202 and r.json()["kind"] == "dicom-series" and r.json()["n_files"] == len(series)
        r = upload(client, ("series.zip", buf.getvalue()))
        assert r.status_code == 202 and r.json()["kind"] == "zip", r.text
        row = JobStore(client.config.db_path).internal(r.json()["id"])
        assert row["input"] == "input/unzipped" and row["status"] == "queued"
        assert len(list((client.config.jobs_dir / row["id"] / "input" / "unzipped").rglob("*.dcm"))) == len(series)
        r = upload(client, tmp_path / "Patient Name.mhd")
        assert r.status_code == 415 and "not uploaded" in r.json()["detail"]

        queued = client.get("/api/v1/jobs").json()["counts"]["queued"]
        assert queued == 3
        r = client.get(f"/api/v1/jobs/{job['id']}/findings")
        assert r.status_code == 409 and "queued" in r.json()["detail"]
        assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 200
        assert not (client.config.jobs_dir / job["id"]).exists()


def test_restart_requeues_interrupted_jobs(service, tmp_path):
    """A job left 'running' (server killed mid-analysis) and one left 'queued' both finish after a restart."""
    data = tmp_path / "data"
    store = JobStore(data / "jobs.sqlite")
    ids = []
    for _ in range(2):
        job_id = uuid.uuid4().hex
        (data / "jobs" / job_id / "input").mkdir(parents=True)
        shutil.copy(EXAMPLE_CXR, data / "jobs" / job_id / "input" / "upload_000.png")
        store.create(job_id, "input/upload_000.png", "image", 1, EXAMPLE_CXR.stat().st_size)
        ids.append(job_id)
    claimed = store.claim(worker=7)  # the oldest: now 'running' for a worker that no longer exists
    assert claimed["id"] == ids[0] and store.get(ids[0])["status"] == "running"
    (data / "jobs" / ("0" * 32)).mkdir()  # an upload interrupted before its row was written
    with service(workers=1, data_dir=data) as client:
        for job_id in ids:
            job = wait_for_job(client, job_id)
            assert job["status"] == "done", job
        assert client.get(f"/api/v1/jobs/{ids[0]}").json()["attempts"] == 2
        assert client.get(f"/api/v1/jobs/{ids[0]}/findings").json()["lungs"]["area_px"] > 0
        assert not (data / "jobs" / ("0" * 32)).exists()

        # a worker that dies (OOM kill, crash) with a job in hand: restarted, and its job re-queued and run
        job_id = uuid.uuid4().hex
        (data / "jobs" / job_id / "input").mkdir(parents=True)
        shutil.copy(EXAMPLE_CXR, data / "jobs" / job_id / "input" / "upload_000.png")
        store.create(job_id, "input/upload_000.png", "image", 1, EXAMPLE_CXR.stat().st_size)
        assert store.claim(worker=0)["id"] == job_id  # as if worker 0 had taken it
        pool = client.app.state.pool
        old_pid = pool._procs[0].pid
        os.kill(old_pid, signal.SIGKILL)
        job = wait_for_job(client, job_id)
        assert job["status"] == "done" and job["attempts"] == 2, job
        assert pool._procs[0].pid != old_pid and client.get("/api/v1/health").json()["workers"]["alive"] == 1


def test_job_interrupted_too_often_fails_instead_of_looping(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.create("a" * 32, "input/x.png", "image", 1, 10)
    for _ in range(3):
        assert store.claim(worker=0)["id"] == "a" * 32
        requeued, failed = store.requeue_running(max_attempts=3)
    assert (requeued, failed) == (0, 1)
    job = store.get("a" * 32)
    assert job["status"] == "failed" and "interrupted 3 times" in job["error"] and job["error_code"] == "interrupted"


@pytest.mark.skipif(not (ROOT / "src" / "pulmo" / "weights" / "lesion-seg.json").exists(),
                    reason="bundled lesion-seg weights (src/pulmo/weights/lesion-seg.json) not present yet; the CT "
                           "pipeline needs them")
def test_ct_series_zip_end_to_end(service):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(EXAMPLE_CT.glob("*.dcm")):
            zf.write(f, f"series/{f.name}")
    with service(workers=1) as client:
        r = upload(client, ("ct.zip", buf.getvalue()))
        assert r.status_code == 202
        job = wait_for_job(client, r.json()["id"], timeout=600)
        assert job["status"] == "done", job
        names = {f["name"] for f in client.get(f"/api/v1/jobs/{job['id']}/files").json()["files"]}
        assert {"volume.nii.gz", "lung_mask.nii.gz", "infection_mask.nii.gz"} <= names
        findings = client.get(f"/api/v1/jobs/{job['id']}/findings").json()
        assert findings["modality"] == "ct" and findings["lungs"]["volume_ml"] > 0


def test_cli_serve_is_a_thin_client(monkeypatch, tmp_path):
    import pulmo.service
    from pulmo.cli import main

    seen = {}
    monkeypatch.setattr(pulmo.service, "serve", lambda **kwargs: seen.update(kwargs) or 0)
    assert main(["serve", "--host", "127.0.0.2", "--port", "9999", "--data-dir", str(tmp_path), "--workers", "2",
                 "--token", "t", "--max-upload-mb", "64"]) == 0
    assert seen["host"] == "127.0.0.2" and seen["port"] == 9999 and seen["data_dir"] == str(tmp_path)
    assert seen["workers"] == 2 and seen["token"] == "t" and seen["max_upload_mb"] == 64.0


def test_cli_serve_refuses_a_data_dir_in_use_and_bad_settings(service, tmp_path, capsys):
    from pulmo.cli import main

    with service(data_dir=tmp_path / "data"):
        assert main(["serve", "--port", "1", "--data-dir", str(tmp_path / "data")]) == 2
    assert "used by another running pulmo serve" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d2"), "--workers", "-1"]) == 2
    assert "workers (--workers) -1" in capsys.readouterr().err


def test_an_out_of_scope_upload_fails_with_the_gates_reason(service, tmp_path):
    """A black picture named like a patient: the real worker's gate refuses it; the job fails with
    ``out_of_scope``, a one-line reason with the neutral name, and no findings."""
    from PIL import Image

    black = tmp_path / "DOE^JANE_chest.png"
    Image.new("L", (512, 512), 0).save(black)
    with service(workers=1) as client:
        job_id = upload(client, black).json()["id"]
        job = wait_for_job(client, job_id)
        assert job["status"] == "failed" and job["error_code"] == "out_of_scope", job
        assert "constant image" in job["error"] and "\n" not in job["error"] and "DOE" not in job["error"]
        assert client.get(f"/api/v1/jobs/{job_id}/findings").status_code == 409


def test_serve_weights_choice_reaches_the_worker_processes(service, tmp_path, monkeypatch):
    """``pulmo serve --weights cxr-classify=FILE``: the worker processes analyse with the user's weight set
    (a renamed copy of the bundled classifier with its own card here), and findings.json names it."""
    from pulmo import list_models
    from pulmo.weights import OVERRIDE_ENV, WEIGHTS_DIR, parse_weight_overrides, set_weight_overrides

    card = json.loads((WEIGHTS_DIR / "cxr-classify.json").read_text())
    card["name"], card["file"] = "site-classifier", "site-classifier.safetensors"
    mine = tmp_path / "site-classifier.safetensors"
    shutil.copyfile(WEIGHTS_DIR / "cxr-classify.safetensors", mine)
    mine.with_suffix(".json").write_text(json.dumps(card))
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    set_weight_overrides(parse_weight_overrides([f"cxr-classify={mine}"], registered={m["name"] for m in list_models()}))  # what the serve command does
    try:
        with service(workers=1) as client:
            job = wait_for_job(client, upload(client, EXAMPLE_CXR).json()["id"])
            assert job["status"] == "done", job
            models = {m["task"]: m for m in client.get(f"/api/v1/jobs/{job['id']}/findings").json()["models"]}
    finally:
        set_weight_overrides({})
    assert models["cxr-classify"]["name"] == "site-classifier"
    assert models["cxr-classify"]["sha256"] == card["sha256"]
    assert models["lung-seg"]["name"] == "lung-seg-unet"  # tasks not chosen keep the bundled weights
