"""Bounded load test of ``pulmo serve`` on loopback: N concurrent uploads of real images (JSON out).

Starts a real ``pulmo serve`` on a free 127.0.0.1 port with a fresh data folder, warms each worker up with one
job (model loading is not counted), then uploads N images at once (the example X-rays in turn), polls until
every job has finished and measures:

* throughput: jobs per second from the first upload to the last job done;
* latency per job from the start of its upload to its ``finished`` time in the job store (p50 / p90 / max),
  and the upload time alone;
* proof of completeness: every accepted job is ``done`` and its findings (``lungs.area_px`` > 0) and overlay
  can be fetched.

Everything stays on this machine; the number of requests is bounded (N uploads, polls at 5 Hz for at most
--timeout seconds). The server is stopped with SIGINT at the end and must exit with 0.

    python benchmarks/bench_service.py --n 8 --workers 2 --out benchmarks/results/service.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _upload(client: httpx.Client, image: Path) -> dict[str, Any]:
    t0 = time.time()
    with open(image, "rb") as fh:
        r = client.post("/api/v1/jobs", files={"files": (image.name, fh, "application/octet-stream")})
    return {"image": image.name, "status_code": r.status_code, "t_start": t0, "t_accepted": time.time(),
            "id": r.json().get("id") if r.status_code == 202 else None, "response": r.json()}


def _wait_all(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    jobs: dict[str, dict[str, Any]] = {}
    pending = set(ids)
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"timeout: {len(pending)} job(s) not finished after {timeout:.0f} s")
        for job_id in sorted(pending):
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] in ("done", "failed"):
                jobs[job_id] = job
                pending.discard(job_id)
        time.sleep(0.2)
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="concurrent uploads (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the server (default 2 = cores)")
    ap.add_argument("--images", nargs="*", default=sorted(str(p) for p in (ROOT / "examples" / "cxr").iterdir()
                                                           if p.suffix.lower() in (".png", ".jpeg", ".jpg")))
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all jobs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service.json"))
    args = ap.parse_args()
    images = [Path(p) for p in args.images]

    tmp = Path(tempfile.mkdtemp(prefix="pulmo-bench-service-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pulmo", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(tmp / "data"), "--workers", str(args.workers)]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            while True:
                try:
                    if client.get("/api/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    raise SystemExit(f"pulmo serve did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            startup_s = time.perf_counter() - t0

            # warm-up: one job per worker (process start, imports, model load) -- not measured
            t1 = time.perf_counter()
            warm = [_upload(client, images[0]) for _ in range(args.workers)]
            _wait_all(client, [w["id"] for w in warm], args.timeout)
            warmup_s = time.perf_counter() - t1

            # the load: N uploads at once
            plan = [images[i % len(images)] for i in range(args.n)]
            with ThreadPoolExecutor(max_workers=args.n) as pool:
                uploads = list(pool.map(lambda img: _upload(client, img), plan))
            accepted = [u for u in uploads if u["status_code"] == 202]
            jobs = _wait_all(client, [u["id"] for u in accepted], args.timeout)

            latencies, checks = [], []
            for u in accepted:
                job = jobs[u["id"]]
                latency = _epoch(job["finished"]) - u["t_start"]
                latencies.append(latency)
                ok = job["status"] == "done"
                area = None
                if ok:
                    findings = client.get(f"/api/v1/jobs/{u['id']}/findings")
                    overlay = client.get(f"/api/v1/jobs/{u['id']}/files/overlay.png")
                    area = findings.json().get("lungs", {}).get("area_px") if findings.status_code == 200 else None
                    ok = bool(area) and overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
                checks.append({"id": u["id"], "image": u["image"], "status": job["status"], "error": job["error"],
                               "lung_area_px": area, "latency_s": round(latency, 3), "ok": ok})
            first = min(u["t_start"] for u in uploads)
            last = max(_epoch(jobs[u["id"]]["finished"]) for u in accepted) if accepted else first
            upload_s = [u["t_accepted"] - u["t_start"] for u in uploads]
            health = client.get("/api/v1/health").json()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    wall = last - first
    result = {
        "benchmark": "service load test (loopback)",
        "command": " ".join(["python", "benchmarks/bench_service.py", "--n", str(args.n), "--workers",
                             str(args.workers)]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "server": {"workers": args.workers, "torch_threads_per_worker": 1, "startup_s": round(startup_s, 2),
                   "warmup_s": round(warmup_s, 2), "exit_code": proc.returncode},
        "images": sorted({p.name for p in plan}),
        "n_uploads": args.n,
        "n_accepted": len(accepted),
        "throughput_jobs_per_s": round(len(accepted) / wall, 3) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "latency_s": {"p50": round(_percentile(latencies, 50), 3), "p90": round(_percentile(latencies, 90), 3),
                      "max": round(max(latencies), 3), "mean": round(statistics.fmean(latencies), 3)}
        if latencies else None,
        "upload_s": {"p50": round(_percentile(upload_s, 50), 3), "max": round(max(upload_s), 3)},
        "all_accepted_done_with_findings": len(accepted) == args.n and all(c["ok"] for c in checks),
        "job_counts_at_end": health["jobs"],
        "jobs": checks,
        "notes": "latency = job finished (job store, server clock) - upload start (client clock), same machine; "
                 "warm-up jobs (one per worker) are excluded. The machine's other load (e.g. a training run) is "
                 "not controlled: see load_average_1min_at_end.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("n_accepted", "throughput_jobs_per_s", "latency_s",
                                      "all_accepted_done_with_findings")}
    print(json.dumps(summary, indent=2))
    print(f"-> {out}")
    if not result["all_accepted_done_with_findings"] or proc.returncode != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
