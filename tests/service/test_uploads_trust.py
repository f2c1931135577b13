"""Uploads the service must refuse clearly (400/413 with a code, never 500) or store under neutral names:
zip name clashes, over-long member names and paths, too many files; client file names kept out of the job
store, the job JSON, the logs and 500 answers."""

from __future__ import annotations

import io
import json
import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pulmo.io import read_image
from pulmo.service.store import JobStore
from pulmo.service.uploads import MAX_ZIP_DEPTH
from tests.service.conftest import EXAMPLE_CT, EXAMPLE_CXR, upload, wait_for_job

PNG = EXAMPLE_CXR.read_bytes()
PATIENT = "DOE^JOHN_1970"


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names: we want them
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in members:
                if name.endswith("/"):
                    zf.writestr(zipfile.ZipInfo(name), b"")
                else:
                    zf.writestr(name, content)
    return buf.getvalue()


def _jobs_on_disk(client) -> list[str]:
    jobs = client.config.jobs_dir
    return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


@pytest.mark.parametrize("members", [
    [("a", b"x" * 300), ("a/b.png", PNG)],          # a file, then a member inside a folder of its name
    [("a/b.png", PNG), ("a", b"x" * 300)],          # the other way round
    [("a/", b""), ("a", PNG)],                      # an explicit folder entry and a file of the same name
    [("s/b.png", PNG), ("s\\b.png", PNG)],          # the same path twice (Windows separator)
    [("b.png", PNG), ("./b.png", PNG)],
], ids=["file-then-dir", "dir-then-file", "dir-entry", "twice-backslash", "twice-dot"])
def test_zip_name_clashes_are_400_with_their_code(service, members):
    with service() as client:
        r = upload(client, ("study.zip", _zip(members)))
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "zip_name_clash" and "refused" in r.json()["detail"]
        assert _jobs_on_disk(client) == []


def test_zip_member_names_over_the_filesystem_limits_are_stored_under_neutral_names(service):
    long_component = "n" * 300                              # one component over NAME_MAX (255 bytes)
    multibyte = "é" * 200 + ".png"                          # 404 bytes in UTF-8
    long_path = "/".join(["p" * 250] * 20) + "/img.png"     # 5,000+ bytes, over PATH_MAX (4096)
    with service() as client:
        for name in (long_component + ".png", f"{PATIENT}/{multibyte}", long_path):
            assert len(name.encode()) > 255
            r = upload(client, (f"{PATIENT}.zip", _zip([(name, PNG)])))
            assert r.status_code == 202, (len(name), r.text)
            job = r.json()
            assert job["kind"] == "zip" and job["n_files"] == 1
            row = JobStore(client.config.db_path).internal(job["id"])
            stored = client.config.jobs_dir / job["id"] / row["input"]
            assert stored.is_file() and stored.read_bytes() == PNG
            assert row["input"].startswith("input/unzipped/") and all(len(c) <= 16 for c in row["input"].split("/"))
            job_dir = client.config.jobs_dir / job["id"]
            names = [p.name for p in job_dir.rglob("*")]
            assert all(len(n) <= 16 for n in names), names
            assert not any("n" * 20 in n or "p" * 20 in n or "é" in n or "DOE" in n for n in names)


def test_zip_too_deep_is_400(service):
    deep = "/".join(["d"] * (MAX_ZIP_DEPTH + 1)) + "/img.png"
    ok = "/".join(["d"] * MAX_ZIP_DEPTH) + "/img.png"
    with service() as client:
        r = upload(client, ("deep.zip", _zip([(deep, PNG)])))
        assert r.status_code == 400 and r.json()["code"] == "zip_path_too_deep", r.text
        assert str(MAX_ZIP_DEPTH) in r.json()["detail"]
        assert _jobs_on_disk(client) == []
        assert upload(client, ("ok.zip", _zip([(ok, PNG)]))).status_code == 202


def test_zip_of_a_metaimage_pair_is_renamed_consistently(service, tmp_path):
    vol = sitk.GetImageFromArray(np.full((4, 8, 8), -800, np.int16))
    vol.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(vol, str(tmp_path / "Scan Of Doe.mhd"))
    header = (tmp_path / "Scan Of Doe.mhd").read_bytes()
    raw = (tmp_path / "Scan Of Doe.raw").read_bytes()
    with service() as client:
        r = upload(client, ("pair.zip", _zip([(f"{PATIENT}/Scan Of Doe.mhd", header),
                                              (f"{PATIENT}/Scan Of Doe.raw", raw)])))
        assert r.status_code == 202, r.text
        row = JobStore(client.config.db_path).internal(r.json()["id"])
        stored = client.config.jobs_dir / row["id"] / row["input"]
        assert stored.suffix == ".mhd" and "Doe" not in row["input"]
        raws = list(stored.parent.glob("*.raw"))
        text = stored.read_text()
        assert len(raws) == 1 and "Doe" not in raws[0].name
        assert "Doe" not in text and f"ElementDataFile = {raws[0].name}" in text
        assert read_image(stored).shape == (4, 8, 8)

        r = upload(client, ("half.zip", _zip([(f"{PATIENT}/Scan Of Doe.mhd", header)])))
        assert r.status_code == 415 and "not in the zip beside it" in r.json()["detail"]
        assert "Scan Of Doe.mhd" in r.json()["detail"]  # the client is told its own member name


def test_dicom_series_zip_still_resolves_to_its_folder(service):
    series = sorted(EXAMPLE_CT.glob("*.dcm"))[:4]
    members = [(f"{PATIENT}/study/series/{f.name}", f.read_bytes()) for f in series]
    with service() as client:
        r = upload(client, ("series.zip", _zip(members)))
        assert r.status_code == 202, r.text
        row = JobStore(client.config.db_path).internal(r.json()["id"])
        folder = client.config.jobs_dir / row["id"] / row["input"]
        assert folder.is_dir() and len(list(folder.rglob("*.dcm"))) == 4
        assert "DOE" not in row["input"]


def test_more_than_max_files_is_413_from_pulmo_not_starlette(service):
    files = [("files", (f"slice{i:04d}.dcm", b"x", "application/octet-stream")) for i in range(2500)]
    with service() as client:
        assert client.config.max_files == 2000
        r = client.post("/api/v1/jobs", files=files)
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "too_many_files" and "2000 files" in r.json()["detail"]
        assert _jobs_on_disk(client) == []


def test_max_files_boundary(service):
    def post(n: int):
        return client.post("/api/v1/jobs", files=[("files", (f"f{i}.png", PNG[:64], "image/png")) for i in range(n)])

    with service(max_files=3) as client:
        assert post(3).status_code == 415  # counted, accepted by the limit, then judged: not one study
        for n in (4, 5, 9):
            r = post(n)
            assert r.status_code == 413 and r.json()["code"] == "too_many_files", (n, r.text)
        assert _jobs_on_disk(client) == []


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if needle.lower() in p.name.encode().lower():
            hits.append(f"name: {p}")
        if p.is_file() and needle in p.read_bytes():
            hits.append(f"content: {p}")
    return hits


def test_client_file_names_never_reach_the_store_the_job_json_or_the_logs(service, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    needle = PATIENT.encode()
    ct_slice = min(EXAMPLE_CT.glob("*.dcm")).read_bytes()
    assert needle not in ct_slice and needle not in PNG
    with service(workers=1) as client:
        accepted = [
            upload(client, (f"{PATIENT}.dcm", ct_slice)),
            upload(client, (f"{PATIENT}.zip", _zip([(f"{PATIENT}/{PATIENT}.png", PNG)]))),
            upload(client, (f"C:\\Users\\{PATIENT}\\{PATIENT}.png", PNG[:400])),  # truncated: fails in the worker
        ]
        assert [r.status_code for r in accepted] == [202, 202, 202], [r.text for r in accepted]
        refused = upload(client, (f"{PATIENT}.txt", b"notes"))
        assert refused.status_code == 415 and PATIENT in refused.json()["detail"]  # told to that client only
        jobs = [wait_for_job(client, r.json()["id"]) for r in accepted]
        assert jobs[2]["status"] == "failed" and jobs[2]["error"] and jobs[2]["error_code"]
        assert str(client.config.data_dir) not in jobs[2]["error"]
        texts = [json.dumps(client.get("/api/v1/jobs").json())]
        for job in jobs:
            texts.append(json.dumps(client.get(f"/api/v1/jobs/{job['id']}").json()))
            texts.append(client.get(f"/api/v1/jobs/{job['id']}/findings").text)
            texts.append(client.get(f"/api/v1/jobs/{job['id']}/files").text)
        data_dir = client.config.data_dir
    out, err = capfd.readouterr()  # the worker processes' logs (they share the test's stderr)
    assert "job " in err and "started" in err  # the worker's log was captured
    for text in (*texts, caplog.text, out, err):
        assert PATIENT not in text
    db_bytes = b"".join(p.read_bytes() for p in data_dir.glob("jobs.sqlite*"))
    assert db_bytes and needle not in db_bytes
    assert _files_containing(data_dir, needle) == []
    assert not (data_dir / "internal-errors.log").exists()


def test_unexpected_error_is_a_json_500_without_names_or_traceback(service, monkeypatch, caplog):
    import pulmo.service.app

    def broken(*args, **kwargs):
        raise OSError(36, "File name too long", f"/srv/jobs/x/input/{PATIENT}.dcm")

    monkeypatch.setattr(pulmo.service.app, "prepare_upload", broken)
    caplog.set_level(logging.DEBUG)
    with service() as client:
        r = upload(client, (f"{PATIENT}.dcm", b"x" * 200))
        assert r.status_code == 500
        body = r.json()
        assert body["code"] == "internal_error" and "OSError" in body["detail"] and PATIENT not in r.text
        assert "Traceback" not in caplog.text and PATIENT not in caplog.text
        assert "internal error" in caplog.text and "OSError" in caplog.text
        log = (client.config.data_dir / "internal-errors.log").read_text()
        ref = body["detail"].split("reference ")[1].split(")")[0]
        assert ref in log and ref in caplog.text and "Traceback" in log
        assert _jobs_on_disk(client) == []  # the half-written upload was removed
