"""A folder batch split over processes: ``--shard K/N`` (as a Slurm array would run it), ``torchrun`` with two
CPU processes on loopback, and ``--resume`` after an interrupted run. Every input is analysed once, its results
written once, and ``summary.csv`` lists every input exactly once, failures included."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pulmo.cli import main
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples" / "cxr").iterdir())


def _batch(tmp_path: Path) -> Path:
    src = tmp_path / "inputs"
    src.mkdir()
    for f in EXAMPLES:
        shutil.copy(f, src / f.name)
    data = EXAMPLES[0].read_bytes()
    (src / "broken.png").write_bytes(data[: len(data) // 3])  # fails: a row "failed", in exactly one shard
    (src / "notes.txt").write_text("not an image")             # skipped: listed once, by shard 0
    return src


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [Path(r["input"]).name for r in rows]
    assert len(names) == len(set(names)), names  # every input exactly once
    return {Path(r["input"]).name: r for r in rows}


def test_two_shards_split_the_batch_and_the_last_one_merges(tmp_path, capsys):
    src, out = _batch(tmp_path), tmp_path / "out"
    assert main(["--no-progress", "analyze", str(src), "--out", str(out), "--shard", "0/2"]) == 0  # not merged yet
    first = capsys.readouterr().out
    assert "shard 0 of 2" in first and "merged by the last of the 2 shards" in first
    assert (out / "summary.shard-0-of-2.csv").is_file() and not (out / "summary.csv").exists()
    assert main(["--no-progress", "analyze", str(src), "--out", str(out), "--shard", "1/2"]) == 1  # broken.png
    assert "merged the 2 shard summaries" in capsys.readouterr().out
    rows = _summary(out)
    assert set(rows) == {f.name for f in EXAMPLES} | {"broken.png", "notes.txt"}
    assert rows["broken.png"]["status"] == "failed" and rows["notes.txt"]["status"] == "skipped"
    for f in EXAMPLES:
        assert rows[f.name]["status"] == "ok" and (out / rows[f.name]["output"] / "findings.json").is_file()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(r["output"] for r in rows.values()
                                                                        if r["output"])
    # a new input changes the batch: shard 0's new summary is not merged with shard 1's summary of the old batch
    shutil.copy(EXAMPLES[0], src / "added.png")
    assert main(["--no-progress", "analyze", str(src), "--out", str(out), "--shard", "0/2"]) == 0
    assert "merged by the last of the 2 shards" in capsys.readouterr().out
    assert "added.png" not in _summary(out)
    assert main(["--no-progress", "analyze", str(src), "--out", str(out), "--shard", "1/2"]) == 1
    assert "merged the 2 shard summaries" in capsys.readouterr().out and "added.png" in _summary(out)
    assert main(["analyze", str(src), "--out", str(out), "--shard", "two"]) == 2
    assert "expected K/N" in capsys.readouterr().err
    assert main(["analyze", str(src), "--out", str(out), "--shard", "2/2"]) == 2
    assert "0 <= K < N" in capsys.readouterr().err


def test_resume_keeps_complete_results_and_redoes_an_interrupted_one(tmp_path, capsys):
    src, out = _batch(tmp_path), tmp_path / "out"
    assert main(["--no-progress", "analyze", str(src), "--out", str(out)]) == 1
    rows = _summary(out)
    victim = rows[EXAMPLES[0].name]["output"]
    (out / victim / "report.html").unlink()  # as if the run had been killed while writing this input
    kept = (out / rows[EXAMPLES[1].name]["output"] / "findings.json").stat().st_mtime_ns
    assert main(["--no-progress", "analyze", str(src), "--out", str(out), "--resume"]) == 1
    assert f"{len(EXAMPLES) - 1} kept from an earlier run" in capsys.readouterr().out
    rows = _summary(out)
    assert rows[EXAMPLES[0].name]["resumed"] == "no" and (out / victim / "report.html").is_file()
    assert all(rows[f.name]["resumed"] == "yes" for f in EXAMPLES[1:])
    assert (out / rows[EXAMPLES[1].name]["output"] / "findings.json").stat().st_mtime_ns == kept  # not redone
    assert rows["broken.png"]["status"] == "failed"  # a failure is tried again, and fails again
    from pulmo.pipeline.analyze import _complete_findings

    # a result is only kept for the input it was made from (names can move to another input when the folder changes)
    first = out / rows[EXAMPLES[1].name]["output"]
    assert _complete_findings(first, src / EXAMPLES[1].name) is not None
    assert _complete_findings(first, src / EXAMPLES[2].name) is None


def test_torchrun_two_cpu_processes_share_the_batch(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip(f"no torchrun beside {sys.executable}")
    src, out = _batch(tmp_path), tmp_path / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                           "--master-port", str(port), "-m", "pulmo", "--no-progress", "analyze", str(src),
                           "--out", str(out)], check=False, capture_output=True, text=True, env=env, timeout=600)
    # broken.png fails in one rank; no rank exits non-zero before the merge (torchrun would stop the others), and
    # the rank that merges exits 1 because the batch has a failure, as a single process would
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert (out / "summary.shard-0-of-2.csv").is_file() and (out / "summary.shard-1-of-2.csv").is_file(), proc.stderr
    rows = _summary(out)
    assert set(rows) == {f.name for f in EXAMPLES} | {"broken.png", "notes.txt"}
    assert sum(r["status"] == "ok" for r in rows.values()) == len(EXAMPLES)
