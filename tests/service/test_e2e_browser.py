"""End to end in a real browser: a real ``pulmo serve`` process, a real X-ray uploaded through the API, the
viewer page opened in Debian's headless Chromium (driven by Playwright, never downloading a browser), and
what the page shows checked; a screenshot is kept in tests/artifacts/."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pulmo.io import read_image, write_nifti
from pulmo.service.store import JobStore
from pulmo.transforms.ct import lung_mask_ct
from tests.service.conftest import EXAMPLE_CT, EXAMPLE_CXR, JOB_TIMEOUT

CHROMIUM = Path(os.environ.get("PULMO_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's: apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the Python driver playwright is not installed "
                               "(pip install -e '.[dev]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``pulmo serve`` on a free loopback port, stopped with SIGINT (as Ctrl-C) at the end.

    Yields ``(base_url, process, log_path, data_dir)``."""
    tmp_path = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pulmo", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(tmp_path / "data"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"pulmo serve did not start: {(tmp_path / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield base, proc, tmp_path / "serve.log", tmp_path / "data"
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


@contextmanager
def browser(tmp_path: Path) -> Iterator[tuple[object, list[str]]]:
    """A fresh headless Debian Chromium (new profile) with one page, and the list its errors go to."""
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(f"{msg.text} {msg.location.get('url', '')}")
                    if msg.type == "error" else None)
            yield page, errors
        finally:
            context.close()


def _ct_job(data_dir: Path) -> tuple[str, dict]:
    """A done CT job made with the library from the real LIDC example series: the volume in HU, its real lung
    mask (HU threshold + components) and a synthetic infection ball inside the patient's right lung, with one
    nodule at the ball's centre. (The lesion model of the CT pipeline is not needed to test what the viewer
    does with CT results.)"""
    vol = read_image(EXAMPLE_CT)
    lungs = lung_mask_ct(vol)
    z = int(np.argmax(lungs.sum(axis=(1, 2))))
    ys, xs = np.nonzero(lungs[z])
    cy, cx = int(ys.mean()), int(xs.min() + 0.2 * (xs.max() - xs.min()))  # low x index = patient's right
    zz, yy, xx = np.ogrid[:vol.shape[0], :vol.shape[1], :vol.shape[2]]
    infection = ((((yy - cy) * vol.spacing[1]) ** 2 + ((xx - cx) * vol.spacing[2]) ** 2
                  + ((zz - z) * vol.spacing[0]) ** 2) < 15.0**2) & lungs
    job_id = uuid.uuid4().hex
    out = data_dir / "jobs" / job_id / "output"
    out.mkdir(parents=True)
    write_nifti(np.rint(vol.hu).astype(np.int16), vol, out / "volume.nii.gz")
    write_nifti(lungs.astype(np.uint8), vol, out / "lung_mask.nii.gz")
    write_nifti(infection.astype(np.uint8), vol, out / "infection_mask.nii.gz")
    centre = [round(float(v), 2) for v in vol.index_to_world(np.array([[z, cy, cx]]))[0]]
    voxel_ml = float(np.prod(vol.spacing)) / 1000.0
    findings = {
        "schema_version": "1.0", "modality": "ct",
        "input": {"format": "DICOM series", "spacing_mm": [round(s, 4) for s in vol.spacing],
                  "volume_size": {"slices": vol.shape[0], "rows": vol.shape[1], "columns": vol.shape[2]}},
        "lungs": {"mask": "lung_mask.nii.gz", "volume_ml": round(float(lungs.sum()) * voxel_ml, 1)},
        "infection": {"mask": "infection_mask.nii.gz", "labels": ["background", "infection"],
                      "volume_ml": round(float(infection.sum()) * voxel_ml, 2)},
        "nodules": [{"center_mm": centre, "diameter_mm": 30.0, "volume_mm3": 14137.2, "probability": 0.9,
                     "slice_index": z}],
        "models": [], "files": {"overlays": [], "viewer": ["volume.nii.gz"]},
    }
    store = JobStore(data_dir / "jobs.sqlite")
    store.create(job_id, "input", "dicom-series", vol.shape[0], 0)
    assert store.claim(worker=99)["id"] == job_id  # claimed here, so the server's worker does not take it
    store.finish(job_id, "done", findings=findings, modality="ct")
    return job_id, findings


def test_ct_viewer_slices_3d_and_overlays_in_chromium(server, tmp_path):
    """A CT job in the viewer: NiiVue with the volume and both masks when NiiVue is installed (npm), else the
    page says how to install it."""
    base, _, _, data_dir = server
    job_id, findings = _ct_job(data_dir)
    niivue_installed = httpx.get(f"{base}/static/niivue/niivue.umd.js", timeout=30).status_code == 200
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser(tmp_path) as (page, errors):
        page.goto(f"{base}/viewer/{job_id}")
        page.wait_for_selector("body[data-state='ready']", timeout=90_000)
        table = page.inner_text("#findings-table")
        assert "lung volume (mL)" in table and str(findings["lungs"]["volume_ml"]) in table
        assert page.is_visible("#nodules") and "0.90" in page.inner_text("#nodule-rows")
        assert "volume (mm³)" in page.inner_text("#nodules thead") and "14137" in page.inner_text("#nodule-rows")
        if not niivue_installed:
            assert page.get_attribute("body", "data-niivue") == "missing"
            assert "npm ci --prefix src/pulmo/service/viewer" in page.inner_text("#niivue-missing")
            page.screenshot(path=str(ARTIFACTS / "viewer_ct_without_niivue.png"), full_page=True)
            return
        assert page.get_attribute("body", "data-niivue") == "loaded", page.inner_text("#niivue-error")
        volumes = page.evaluate("window.pulmoNiivue.volumes.map(v => [v.name, Array.from(v.hdr.dims.slice(1, 4))])")
        size = findings["input"]["volume_size"]
        assert volumes == [[name, [size["columns"], size["rows"], size["slices"]]]
                           for name in ("volume.nii.gz", "lung_mask.nii.gz", "infection_mask.nii.gz")]
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "viewer_ct.png"), full_page=True)
        page.locator("#layer-toggles label", has_text="lung mask").locator("input").uncheck()
        assert page.evaluate("window.pulmoNiivue.volumes[1].opacity") == 0
        page.click("#nodule-rows button")
        # the crosshair is now on the nodule: NiiVue's RAS world mm back to LPS, within a voxel of its centre
        world = page.evaluate("Array.from(window.pulmoNiivue.frac2mm(window.pulmoNiivue.scene.crosshairPos))")
        lps = [-world[0], -world[1], world[2]]
        assert np.allclose(lps, findings["nodules"][0]["center_mm"], atol=2.6), (lps, findings["nodules"])
        # the nodule's numbered marker in the axial view: visible, solid (its key slice), centred on the nodule
        marker = page.locator("#nodule-markers .nodule-marker[data-nodule='1'][data-plane='axial']")
        assert marker.locator("circle").is_visible() and "off-key" not in marker.get_attribute("class")
        assert marker.locator("text").text_content() == "1 p=0.90"
        ring = marker.locator("circle").bounding_box()
        canvas = page.locator("#niivue-canvas").bounding_box()
        at = page.evaluate("""() => { const nv = window.pulmoNiivue, c = nv.canvas, dpr = c.width / c.clientWidth;
            return nv.frac2canvasPos(nv.scene.crosshairPos).map((v) => v / dpr); }""")
        assert 10 < ring["width"] < canvas["width"] / 2, ring
        assert abs(ring["x"] + ring["width"] / 2 - canvas["x"] - at[0]) < 3, (ring, canvas, at)
        assert abs(ring["y"] + ring["height"] / 2 - canvas["y"] - at[1]) < 3, (ring, canvas, at)
        page.evaluate("window.pulmoNiivue.moveCrosshairInVox(0, 0, 2)")  # 5 mm off: through the 30-mm nodule
        assert marker.locator("circle").is_visible() and "off-key" in marker.get_attribute("class")
        page.evaluate("window.pulmoNiivue.moveCrosshairInVox(0, 0, 6)")  # 20 mm off: past its edge
        assert not marker.locator("circle").is_visible()
        page.click("button[data-slice='render']")
        page.wait_for_timeout(1000)
        assert not marker.locator("circle").is_visible()  # no axial view in the 3D rendering
        page.screenshot(path=str(ARTIFACTS / "viewer_ct_3d.png"))
    assert not errors, errors


def test_ct_fallback_viewer_scrolls_every_plane_with_nodule_markers(server, tmp_path):
    """The 2D CT viewer that works from ``pip install`` alone (``?niivue=off`` forces it where NiiVue is
    installed): server-rendered slices in the three planes, the wheel and the keys move through them, the window
    presets re-render, and the nodule's numbered marker is solid on its centre slice, dashed beside it and gone
    past its edge."""
    base, _, _, data_dir = server
    job_id, findings = _ct_job(data_dir)
    nodule_z = findings["nodules"][0]["slice_index"]
    n_slices = findings["input"]["volume_size"]["slices"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser(tmp_path) as (page, errors):
        page.goto(f"{base}/viewer/{job_id}?niivue=off")
        page.wait_for_selector("body[data-state='ready']", timeout=90_000)
        assert page.get_attribute("body", "data-niivue") == "off" and page.is_visible("#ct2d")
        axial = "#ct2d .ct2d-pane[data-plane='axial']"
        for plane in ("axial", "coronal", "sagittal"):  # every plane rendered by the server, loaded
            page.wait_for_function(f"() => {{ const i = document.querySelector(\"#ct2d .ct2d-pane[data-plane='{plane}'] "
                                   f"img.ct2d-base\"); return i && i.complete && i.naturalWidth > 0; }}", timeout=30_000)
        # it opens on the most probable nodule: its marker on the axial view, solid, numbered with its probability
        assert page.get_attribute(axial, "data-index") == str(nodule_z)
        assert page.inner_text(f"{axial} .ct2d-title") == f"axial {nodule_z + 1} / {n_slices}"
        marker = page.locator(f"{axial} .ct2d-marker[data-nodule='1']")
        assert marker.locator("ellipse").is_visible() and "off-key" not in marker.get_attribute("class")
        assert marker.locator("text").text_content() == "1 p=0.90"
        assert page.locator("#ct2d .ct2d-marker[data-nodule='1']").count() == 3  # and on the other two planes
        page.screenshot(path=str(ARTIFACTS / "viewer_ct_2d.png"), full_page=True)
        stage = page.locator(f"{axial} .ct2d-stage")
        stage.hover()
        page.mouse.wheel(0, 120)  # one slice on with the wheel: the server renders that slice
        page.wait_for_function(f"() => document.querySelector(\"{axial}\").dataset.loaded === '{nodule_z + 1}'",
                               timeout=30_000)
        assert "off-key" in marker.get_attribute("class")  # 2.5 mm off the centre of a 30-mm nodule: dashed
        stage.focus()
        for _ in range(8):
            page.keyboard.press("ArrowUp")  # 20 mm further: past the nodule's edge
        page.wait_for_function(f"() => document.querySelector(\"{axial}\").dataset.loaded === "
                               f"'{min(n_slices - 1, nodule_z + 9)}'", timeout=30_000)
        assert marker.count() == 0
        src = page.get_attribute(f"{axial} img.ct2d-base", "src")
        assert "center=-600" in src and "width=1500" in src  # the lung window
        page.click("#window-presets button[data-window='mediastinum']")
        assert page.get_attribute("#ct2d", "data-window") == "mediastinum"
        assert "center=-600" not in page.get_attribute(f"{axial} img.ct2d-base", "src")
        page.locator("#mask-toggles label[data-layer='lungs'] input").uncheck()
        assert page.locator(f"{axial} img.ct2d-mask[data-layer='lungs']").is_hidden()
        page.screenshot(path=str(ARTIFACTS / "viewer_ct_2d_scrolled.png"), full_page=True)
    assert not errors, errors


def test_home_page_uploads_a_ct_series_zip_and_its_viewer_marks_the_nodules(server, tmp_path):
    """The real 26-slice LIDC example series zipped and sent from the home page: the job row goes through the CT
    stages to done, its results list the SEG and SR, and its viewer shows the CT with the findings."""
    import zipfile

    base = server[0]
    archive = tmp_path / "LIDC-IDRI-0001.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(EXAMPLE_CT.iterdir()):
            zf.write(f, f"LIDC-IDRI-0001/{f.name}")
    # the server is shared by the module: earlier tests' jobs (the same CT among them) are already listed, so the
    # new job's row is the one whose id was not there before the upload (not simply the first row)
    before = {j["id"] for j in httpx.get(f"{base}/api/v1/jobs?limit=100", timeout=10).json()["jobs"]}
    with browser(tmp_path) as (page, errors):
        page.goto(f"{base}/")
        page.wait_for_selector("#upload-section")
        page.set_input_files("#pick-files", str(archive))
        page.click("#send")
        page.wait_for_selector("body[data-upload='accepted']", timeout=60_000)
        page.wait_for_function("(before) => [...document.querySelectorAll('#job-rows tr[data-job]')]"
                               ".some((tr) => !before.includes(tr.dataset.job))", arg=sorted(before), timeout=30_000)
        job_id = page.evaluate("(before) => [...document.querySelectorAll('#job-rows tr[data-job]')]"
                               ".map((tr) => tr.dataset.job).find((id) => !before.includes(id))", sorted(before))
        done_row = f"tr[data-job='{job_id}']"
        stages, status = set(), None
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            status = page.get_attribute(done_row, "data-status")
            if status == "running":
                stages.add(page.inner_text(f"{done_row} span.stage").split(" · ")[0])
            if status in ("done", "failed"):
                break
            time.sleep(0.2)
        assert status == "done", (stages, page.inner_text("#job-rows"))
        assert len(stages) >= 2, stages  # the page showed the job move through its stages
        assert "CT" in page.inner_text(done_row)
        for name in ("report.html", "seg.dcm", "sr.dcm"):
            assert page.query_selector(f"{done_row} td.results a[title='{name}']") is not None, name
        page.screenshot(path=str(ARTIFACTS / "home_ct_done.png"), full_page=True)
        page.click(f"{done_row} a.open-viewer")
        page.wait_for_selector("body[data-state='ready']", timeout=90_000)
        table = page.inner_text("#findings-table")
        assert "lung volume (mL)" in table and "PARTIAL" in table  # the 26-slice excerpt cuts the lungs
    assert not errors, errors


def _run_xray_job(base: str, path: Path, mime: str) -> tuple[str, dict]:
    """Upload one X-ray to the running server, wait until its job is done; ``(job id, findings)``."""
    with open(path, "rb") as fh:
        r = httpx.post(f"{base}/api/v1/jobs", files={"files": (path.name, fh, mime)}, timeout=60)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + JOB_TIMEOUT
    while (job := httpx.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"job still {job['status']}"
        time.sleep(0.3)
    assert job["status"] == "done", job
    return job_id, httpx.get(f"{base}/api/v1/jobs/{job_id}/findings", timeout=10).json()


def test_viewer_draws_visible_boxes_on_a_tb_xray(server, tmp_path):
    """A real TBX11K TB image: its detection boxes are drawn and visible (an SVG element has no `hidden` IDL
    property, so `svg.hidden = false` used to leave them at display: none), and the toggle hides them."""
    from tests.conftest import data_path

    base = server[0]
    job_id, findings = _run_xray_job(base, data_path("cxr", "TBX11K", "imgs", "tb", "tb0012.jpg"), "image/jpeg")
    assert findings["detections"], "tb0012 has boxes above the bundled detector's threshold"
    with browser(tmp_path) as (page, errors):
        page.goto(f"{base}/viewer/{job_id}")
        page.wait_for_selector("body[data-state='ready']", timeout=60_000)
        rect = page.locator("#box-layer rect").first
        assert page.locator("#box-layer rect").count() == len(findings["detections"])
        assert rect.is_visible()
        box = rect.bounding_box()
        assert box["width"] > 5 and box["height"] > 5
        first = findings["detections"][0]
        assert first["name"] in ("active TB", "latent TB")  # the clinical name, not TBX11K's class string
        assert page.locator("#box-layer text").first.text_content().startswith(first["name"])
        assert first["name"] in page.locator("#box-rows").inner_text()
        page.screenshot(path=str(ARTIFACTS / "viewer_cxr_tb_boxes.png"), full_page=True)
        page.locator("#controls2d label", has_text="boxes").locator("input").uncheck()
        assert not rect.is_visible()
    assert not errors, errors


def test_home_page_uploads_an_xray_shows_its_progress_opens_the_viewer_and_deletes_it(server, tmp_path):
    """A person with only a browser: pick the real example X-ray on the home page, send it, watch the job row go
    to done (with its key finding and result links), open its viewer from the row, then delete the job."""
    base, _, _, _ = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser(tmp_path) as (page, errors):
        page.goto(f"{base}/")
        page.wait_for_selector("#upload-section")
        page.set_input_files("#pick-files", str(EXAMPLE_CXR))
        assert "1 file" in page.inner_text("#selection")
        page.click("#send")
        page.wait_for_selector("body[data-upload='accepted']", timeout=60_000)
        row = page.wait_for_selector("#job-rows tr[data-job]", timeout=30_000)
        job_id = row.get_attribute("data-job")
        seen = set()
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:  # the row's status as the page shows it, polled live
            status = page.get_attribute(f"tr[data-job='{job_id}']", "data-status")
            seen.add(status)
            if status in ("done", "failed"):
                break
            time.sleep(0.2)
        assert status == "done", (seen, page.inner_text("#job-rows"))
        done_row = f"tr[data-job='{job_id}']"
        assert page.inner_text(f"{done_row} td.finding").strip() not in ("", "—")
        assert page.query_selector(f"{done_row} td.results a[title='report.html']") is not None
        page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
        page.click(f"{done_row} a.open-viewer")
        page.wait_for_selector("body[data-state='ready']", timeout=60_000)
        assert page.url.endswith(f"/viewer/{job_id}")
        page.go_back()
        page.wait_for_selector(done_row, timeout=30_000)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click(f"{done_row} button.delete-job")
        page.wait_for_selector(done_row, state="detached", timeout=30_000)
        assert httpx.get(f"{base}/api/v1/jobs/{job_id}").status_code == 404
        assert not errors, errors


def test_viewer_shows_the_xray_findings_in_chromium(server, tmp_path):
    """Upload the real example X-ray, wait for the worker, and check the viewer page; then stop the server
    with Ctrl-C and check it exits cleanly and logged ids, never file names."""
    base, proc, log_path, _ = server
    job_id, findings = _run_xray_job(base, EXAMPLE_CXR, "image/png")
    area = findings["lungs"]["area_px"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with browser(tmp_path) as (page, errors):
        page.goto(f"{base}/viewer/{job_id}")
        page.wait_for_selector("body[data-state='ready']", timeout=60_000)
        table = page.inner_text("#findings-table")
        assert "lung area (px)" in table and str(area) in table, table
        assert "chest X-ray" in table and "1024 × 1024" in table
        assert "accepted as frontal chest radiograph" in table and "input gate p(cxr)" in table
        assert page.inner_text("#status").startswith("done")
        assert page.eval_on_selector("#base-image", "img => img.complete && img.naturalWidth") == 1024
        page.locator("#overlays").scroll_into_view_if_needed()  # the gallery's images load lazily, when in view
        page.wait_for_function("() => [...document.querySelectorAll('img.overlay-image')]"
                               ".some(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
        mask = page.locator("canvas[data-mask='lung_mask.png']")
        assert mask.count() == 1 and mask.is_visible()
        lit = page.evaluate("""() => {
            const c = document.querySelector("canvas[data-mask='lung_mask.png']");
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n; }""")
        assert abs(lit - area) / area < 0.01  # the layer is the lung mask, pixel for pixel
        page.screenshot(path=str(ARTIFACTS / "viewer_cxr.png"), full_page=True)
        page.locator("#controls2d label", has_text="lung mask").locator("input").uncheck()  # the toggle
        assert not mask.is_visible()
        page.screenshot(path=str(ARTIFACTS / "viewer_cxr_mask_off.png"))
        report = page.context.new_page()
        report.goto(f"{base}/api/v1/jobs/{job_id}/files/report.html")
        assert "Lungs" in report.inner_text("body")
    assert not errors, errors
    (ARTIFACTS / "viewer_cxr_findings.json").write_text(json.dumps(findings, indent=2))

    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean shutdown, workers stopped
    assert proc.wait(30) == 0
    log = log_path.read_text()
    assert f"job {job_id}: done" in log and EXAMPLE_CXR.stem not in log  # ids in the log, never file names

