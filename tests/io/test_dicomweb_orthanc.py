"""DICOMweb round trip with a real PACS: Debian's Orthanc with its DICOMweb plugin, started by the fixture on a free
loopback port with a temporary configuration and storage folder.

Fed with the real LIDC-IDRI-0001 CT series (the shared copy, else the 26-slice subset in ``examples/``) and a real
chest X-ray made into a DICOM CR, each study goes through ``pulmo analyze http://.../dicom-web/studies/<UID>
--store`` (QIDO-RS + WADO-RS to fetch, STOW-RS to store); the test then finds the new SEG and SR series in the
study with QIDO-RS, fetches them with WADO-RS and checks that their references point at the source series and
instances. The service's PACS link (``pulmo serve --dicomweb``, a ``{"dicomweb_study": UID}`` job) and the one-line
errors (unreachable server, 401, unknown study, no usable series, credentials in the URL) are checked too.

Skips with a reason when Orthanc or its DICOMweb plugin is not installed (Debian: ``apt-get install -y orthanc
orthanc-dicomweb``).
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

pytest.importorskip("highdicom", reason="DICOM SEG / SR need highdicom (pip install -e .)")
dicomweb_client = pytest.importorskip("dicomweb_client", reason="the DICOMweb tests need dicomweb-client")
requests = pytest.importorskip("requests", reason="the DICOMweb tests need requests")

from pulmo import cli
from tests.conftest import DATA, LIDC_SERIES, ROOT, data_path
from tests.io.cxr_dicom import write_cxr_dicom

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
EXAMPLE_CT = ROOT / "examples" / "ct" / "LIDC-IDRI-0001"
CXR_PNG = ("cxr", "montgomery_shenzhen", "images", "CHNCXR_0606_1.png")
SEG_STORAGE, COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[str]:
    """The DICOMweb root (``http://127.0.0.1:PORT/dicom-web``) of a fresh Orthanc; stopped after the module."""
    exe = shutil.which("Orthanc") or (str(ORTHANC) if ORTHANC.exists() else None)
    if exe is None:
        pytest.skip("Orthanc not installed (Debian: apt-get install -y orthanc orthanc-dicomweb)")
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc's DICOMweb plugin not installed ({DICOMWEB_PLUGIN}; Debian: apt-get install -y "
                    "orthanc-dicomweb)")
    root = tmp_path_factory.mktemp("orthanc")
    (root / "db").mkdir()
    port = _free_port()
    config = {
        "Name": "pulmo-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": port, "DicomServerEnabled": False, "DicomPort": _free_port(),
        "Plugins": [str(DICOMWEB_PLUGIN)], "AuthenticationEnabled": False, "RemoteAccessAllowed": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpTimeout": 120,
    }
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen([exe, str(root / "orthanc.json")], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/dicom-web"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {proc.returncode}: {(root / 'orthanc.log').read_text()[-800:]}")
            try:
                if requests.get(f"{base}/studies", timeout=2).status_code == 200:
                    break
            except requests.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer on port {port} within 30 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _client(base: str):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=base)


def _stow(base: str, files: list[Path], batch: int = 16) -> None:
    client = _client(base)
    for i in range(0, len(files), batch):
        client.store_instances([pydicom.dcmread(p) for p in files[i:i + batch]])


def _value(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _series_by_modality(base: str, study_uid: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in _client(base).search_for_series(study_instance_uid=study_uid, fields=["Modality"]):
        out.setdefault(str(_value(s, "00080060")), []).append(str(_value(s, "0020000E")))
    return out


def _analyze(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["--no-progress", "analyze", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_results_in_pacs(base: str, study_uid: str, source_series: str, source_sops: set[str], out: Path) -> dict:
    """The study in the PACS now holds one SEG and one SR series (the ones in ``out``), referencing the source."""
    client = _client(base)
    series = _series_by_modality(base, study_uid)
    assert len(series.get("SEG", [])) == 1 and len(series.get("SR", [])) == 1, series
    seg = client.retrieve_series(study_uid, series["SEG"][0])
    sr = client.retrieve_series(study_uid, series["SR"][0])
    assert len(seg) == 1 and len(sr) == 1
    seg, sr = seg[0], sr[0]
    local_seg, local_sr = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "sr.dcm")
    assert seg.SOPClassUID == SEG_STORAGE and sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert (seg.SOPInstanceUID, sr.SOPInstanceUID) == (local_seg.SOPInstanceUID, local_sr.SOPInstanceUID)
    assert seg.PixelData == local_seg.PixelData  # the PACS holds the very frames pulmo wrote
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid
    # SEG -> source: Referenced Series (C.7.6.16 / C.8.20) and every frame's Derivation Image source
    assert len(seg.ReferencedSeriesSequence) == 1
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == source_series
    assert {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence} == source_sops
    derived = {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
               for item in seg.PerFrameFunctionalGroupsSequence}
    assert derived == source_sops
    # SR -> SEG and source: the evidence, and the content's references to the SEG
    evidence = {s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
                for st in sr.CurrentRequestedProcedureEvidenceSequence for s in st.ReferencedSeriesSequence}
    assert evidence == {source_series: source_sops, seg.SeriesInstanceUID: {seg.SOPInstanceUID}}
    in_content = {e.value for item in sr.ContentSequence for e in item.iterall()
                  if e.keyword == "ReferencedSOPInstanceUID"}  # the report's own IMAGE / COMPOSITE references
    assert seg.SOPInstanceUID in in_content and in_content <= source_sops | {seg.SOPInstanceUID}
    return {"seg": seg, "sr": sr}


def _ct_source() -> Path:
    full = DATA.joinpath(*LIDC_SERIES)
    return full if full.is_dir() else EXAMPLE_CT


def test_ct_study_round_trip(orthanc, tmp_path, capsys):
    source = _ct_source()
    if not source.is_dir():
        pytest.skip(f"no LIDC-IDRI-0001 series: neither {DATA.joinpath(*LIDC_SERIES)} nor {EXAMPLE_CT}")
    files = sorted(source.glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    t0 = time.perf_counter()
    _stow(orthanc, files)
    seconds_stow = time.perf_counter() - t0
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code, stdout, stderr = _analyze([f"{orthanc}/studies/{study}", "--store", "--out", str(out)], capsys)
    seconds = time.perf_counter() - t0
    assert code == 0, stderr
    assert f"fetched {len(files)} CT instance(s) of series {series_uid}" in stdout
    assert "stored DICOM SEG" in stdout
    findings = json.loads((out / "findings.json").read_text())
    info = findings["input"]["dicomweb"]
    assert findings["input"]["path"] == f"{orthanc}/studies/{study}"
    assert (info["series_uid"], info["modality"], info["n_instances"]) == (series_uid, "CT", len(files))
    assert findings["files"]["dicom_seg"] == "seg.dcm" and findings["files"]["dicom_sr"] == "sr.dcm"
    objects = _check_results_in_pacs(orthanc, study, series_uid, sops, out)
    assert sorted(info["stored"]) == sorted([objects["seg"].SOPInstanceUID, objects["sr"].SOPInstanceUID])
    n_segments = 2 + len(findings["nodules"])
    assert len(objects["seg"].SegmentSequence) == n_segments
    assert int(objects["seg"].NumberOfFrames) == len(files) * n_segments  # omit_empty_frames=False
    print(f"\nround trip {source.name[-12:]}: STOW {len(files)} slices {seconds_stow:.1f} s; analyze (fetch "
          f"{info['seconds_fetch']:.1f} s, store {info['seconds_store']:.2f} s) {seconds:.1f} s")


def _cxr_study(root: Path) -> tuple[Path, pydicom.Dataset]:
    path = write_cxr_dicom(data_path(*CXR_PNG), root / "cr.dcm", study_uid=generate_uid())
    return path, pydicom.dcmread(path, stop_before_pixels=True)


def test_cxr_study_round_trip(orthanc, tmp_path, capsys):
    path, ds = _cxr_study(tmp_path / "in")
    _stow(orthanc, [path])
    out = tmp_path / "out"
    code, stdout, stderr = _analyze([f"{orthanc}/studies/{ds.StudyInstanceUID}", "--store", "--out", str(out)],
                                    capsys)
    assert code == 0, stderr
    assert "fetched 1 CR instance(s)" in stdout
    objects = _check_results_in_pacs(orthanc, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                     {str(ds.SOPInstanceUID)}, out)
    assert [str(s.SegmentLabel) for s in objects["seg"].SegmentSequence] == ["Lung fields (visible)"]
    # analysing it again (without --store) fetches the CR again, not pulmo's SEG / SR
    code, stdout, stderr = _analyze([f"{orthanc}/studies/{ds.StudyInstanceUID}", "--out", str(tmp_path / "again")],
                                    capsys)
    assert code == 0, stderr
    assert "fetched 1 CR instance(s)" in stdout and "stored" not in stdout
    assert len(_series_by_modality(orthanc, str(ds.StudyInstanceUID))["SEG"]) == 1  # nothing stored this time


def _one_line_error(code: int, stderr: str, needle: str, exit_code: int = 3) -> None:
    assert code == exit_code, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("pulmo analyze: error:")]
    assert len(lines) == 1 and needle in lines[0], stderr
    assert "Traceback" not in stderr


def test_unknown_study_and_no_usable_series(orthanc, tmp_path, capsys):
    code, _, stderr = _analyze([f"{orthanc}/studies/1.2.826.0.1.3680043.99.1", "--out", str(tmp_path / "a")], capsys)
    _one_line_error(code, stderr, "study 1.2.826.0.1.3680043.99.1 not found")
    assert not (tmp_path / "a" / "findings.json").exists()
    # a study that holds only a structured report: nothing pulmo analyses
    path, ds = _cxr_study(tmp_path / "in")
    _stow(orthanc, [path])
    code, _, stderr = _analyze([f"{orthanc}/studies/{ds.StudyInstanceUID}", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, stderr
    sr = pydicom.dcmread(tmp_path / "b" / "sr.dcm")
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    _client(orthanc).store_instances([sr])
    code, _, stderr = _analyze([f"{orthanc}/studies/{sr.StudyInstanceUID}", "--out", str(tmp_path / "c")], capsys)
    _one_line_error(code, stderr, "has no CT, CR or DX series (it holds SR)")
    # a series UID that is not in the study
    code, _, stderr = _analyze([f"{orthanc}/studies/{ds.StudyInstanceUID}/series/1.2.3", "--out",
                                str(tmp_path / "d")], capsys)
    _one_line_error(code, stderr, "series 1.2.3 not found")


def test_unreachable_server_refused_access_and_bad_urls(tmp_path, capsys):
    port = _free_port()  # nothing listens there
    code, _, stderr = _analyze([f"http://127.0.0.1:{port}/dicom-web/studies/1.2.3", "--out", str(tmp_path / "a")],
                               capsys)
    _one_line_error(code, stderr, "is unreachable (connection refused)")

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the http.server API
            self.send_response(401 if "Authorization" not in self.headers else 403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web/studies/1.2.3"
        code, _, stderr = _analyze([url, "--out", str(tmp_path / "b")], capsys)
        _one_line_error(code, stderr, "refused access while searching the series of study 1.2.3 (QIDO-RS) (HTTP 401")
        code, _, stderr = _analyze([url, "--dicomweb-token", "not-allowed", "--out", str(tmp_path / "c")], capsys)
        _one_line_error(code, stderr, "(HTTP 403")
        assert "not-allowed" not in stderr  # the token is never printed
    finally:
        server.shutdown()
        server.server_close()
    code, _, stderr = _analyze(["http://user:secret@127.0.0.1:1/dicom-web/studies/1.2.3", "--out",
                                str(tmp_path / "d")], capsys)
    _one_line_error(code, stderr, "credentials in the URL (user:password@) are refused")
    assert "secret" not in stderr
    code, _, stderr = _analyze(["http://127.0.0.1:1/dicom-web/studies/not-a-uid", "--out", str(tmp_path / "e")],
                               capsys)
    _one_line_error(code, stderr, "is not a DICOM UID")
    code, _, stderr = _analyze([str(tmp_path), "--store", "--out", str(tmp_path / "f")], capsys)
    _one_line_error(code, stderr, "--store sends the SEG and SR back to a DICOMweb server", exit_code=2)


def test_service_job_from_a_pacs_study_stores_its_results(orthanc, tmp_path):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (pip install -e '.[dev]')")
    pytest.importorskip("httpx", reason="fastapi.testclient needs httpx (pip install -e '.[dev]')")
    from fastapi.testclient import TestClient

    from pulmo.service import ServiceConfig, create_app
    from tests.service.conftest import wait_for_job

    path, ds = _cxr_study(tmp_path / "in")
    _stow(orthanc, [path])
    config = ServiceConfig(data_dir=tmp_path / "data", workers=1, shutdown_grace=5.0, dicomweb_url=orthanc)
    with TestClient(create_app(config)) as client:
        bad = client.post("/api/v1/jobs", json={"dicomweb_study": "not a uid"})
        assert bad.status_code == 400 and bad.json()["code"] == "bad_study_uid", bad.text
        created = client.post("/api/v1/jobs", json={"dicomweb_study": str(ds.StudyInstanceUID)})
        assert created.status_code == 202, created.text
        unknown = client.post("/api/v1/jobs", json={"dicomweb_study": "1.2.826.0.1.3680043.99.2"})
        job = wait_for_job(client, created.json()["id"])
        assert job["status"] == "done", job
        findings = client.get(f"/api/v1/jobs/{job['id']}/findings").json()
        failed = wait_for_job(client, unknown.json()["id"])
    info = findings["input"]["dicomweb"]
    assert info["study_uid"] == ds.StudyInstanceUID and len(info["stored"]) == 2
    series = _series_by_modality(orthanc, str(ds.StudyInstanceUID))
    assert len(series["SEG"]) == 1 and len(series["SR"]) == 1 and series["SEG"][0] == info["seg_series_uid"]
    assert failed["status"] == "failed" and failed["error_code"] == "dicomweb_error", failed
    assert "not found" in failed["error"] and "Traceback" not in failed["error"]
