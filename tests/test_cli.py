"""Every ``pulmo`` subcommand through ``cli.main(argv)`` into ``tmp_path``, on real images."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulmo.cli import build_parser, main
from pulmo.datasets import image_mask_records, split_by_patient
from pulmo.metrics import dice
from tests.conftest import ROOT, data_path
from tests.dicom_helpers import write_dicom

EXAMPLE = ROOT / "examples" / "cxr" / "00022084_000.png"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "\nunet-rsna " in out and "monai-unet" in out and "lung-seg-unet" in out
    assert "unet-seed1" not in out  # a deprecated alias, not listed
    assert "n=?" not in out and out.count("scope: trained on") >= 6  # every bundled model says what it cannot see
    table = out.split("bundled weights")[1].split("scope of each")[0].strip().splitlines()[1:]
    header, rule, rows = table[0], table[1], table[2:]
    assert header.split()[:3] == ["name", "task", "architecture"] and set(rule) <= {"-", " "}
    assert len(rows) >= 6 and all(r[header.index("task") - 1] == " " != r[header.index("task")]
                                  for r in rows)  # aligned columns
    detect = next(r for r in rows if r.startswith("cxr-detect "))
    assert "score 0.35" in detect and "test AP50 0." in detect


def test_analyze_one_xray(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--no-progress", "analyze", str(EXAMPLE), "--out", str(out)]) == 0
    findings = json.loads((out / "findings.json").read_text())
    assert findings["schema_version"] == "1.3" and findings["modality"] == "cxr"
    assert findings["input"]["gate"]["decision"] == "accepted" and findings["input"]["gate"]["as"] == "cxr"
    assert "Input gate" in (out / "report.html").read_text()
    for m in findings["models"]:  # every finding's model says what it knows and cannot see
        assert m["scope"]["classes"] and m["scope"]["trained_on"] and m["scope"]["cannot_see"], m
    assert findings["classification"]["calibration_ece"] == findings["models"][1]["calibration_ece"] > 0
    report = (out / "report.html").read_text()
    assert report.count("Model scope.") == 3 and "held-out ECE" in report
    # the classifier's leave-one-source-out result travels with its probabilities (the shortcut is not hidden)
    assert "AUC 0.44" in findings["models"][1]["scope"]["external_check"] and "On a source it never saw" in report
    assert findings["input"]["image_size"] == {"height": 1024, "width": 1024}
    assert findings["lungs"]["area_cm2"] is None  # PNG: spacing unknown
    assert 0.10 < findings["lungs"]["area_px"] / 1024**2 < 0.5
    assert findings["models"][0]["task"] == "lung-seg" and len(findings["models"][0]["sha256"]) == 64
    mask = np.asarray(Image.open(out / findings["lungs"]["mask"]))
    assert mask.shape == (1024, 1024) and set(np.unique(mask)) <= {0, 255}
    assert int((mask > 0).sum()) == findings["lungs"]["area_px"]
    assert (out / "overlay.png").is_file() and (out / "config.yaml").is_file()
    html = (out / "report.html").read_text()
    assert "overlay.png" in html and "<h2>Lungs</h2>" in html and "area (px)" in html
    assert "report.html" in capsys.readouterr().out
    cls = findings["classification"]  # the bundled classifier with heatmaps inside the lungs
    assert set(cls["probabilities"]) == {"normal", "bacterial_pneumonia", "viral_pneumonia", "covid19", "other_finding"}
    assert isinstance(cls["in_scope"], bool) and 0 <= cls["out_of_scope_score"] <= 1
    assert sum(cls["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert cls["predicted"] == max(cls["probabilities"], key=cls["probabilities"].get) and cls["calibrated"]
    for method, name in cls["heatmaps"].items():
        assert (out / name).is_file() and name in html
        assert 0.0 <= cls["heatmap_energy_in_lungs"][method] <= 1.0
    assert [m["task"] for m in findings["models"]] == ["lung-seg", "cxr-classify", "cxr-detect"]
    for box in findings["detections"]:  # the bundled TB detector: boxes in original pixels, above its threshold
        assert box["score"] >= findings["models"][2]["score_threshold"]
        x1, y1, x2, y2 = box["box_xyxy"]
        assert 0 <= x1 < x2 <= 1024 and 0 <= y1 < y2 <= 1024
    assert (out / "detections.png").is_file() and "detections.png" in html


def test_analyze_mixed_folder_cxr_and_ct_series(tmp_path):
    src = tmp_path / "study"
    (src / "ct").mkdir(parents=True)
    shutil.copy(EXAMPLE, src / "a.png")
    shutil.copytree(ROOT / "examples" / "ct" / "LIDC-IDRI-0001", src / "ct" / "series1")
    out = tmp_path / "out"
    assert main(["--no-progress", "analyze", str(src), "--out", str(out)]) == 0
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(Path(r["input"]).name, r["status"], r["modality"]) for r in rows] == [
        ("a.png", "ok", "cxr"), ("series1", "ok", "ct")]
    assert (out / "ct__series1" / "infection_mask.nii.gz").is_file()
    assert (out / "ct__series1" / "nodule_mask.nii.gz").is_file() and rows[1]["n_nodules"] != ""


def test_analyze_dicom_monochrome1_matches_png(tmp_path):
    """The same radiograph as DICOM MONOCHROME1 (inverted, 12-bit, with spacing) gives the same lungs."""
    grey = np.asarray(Image.open(EXAMPLE).convert("L")).astype(np.uint16)
    stored = (255 - grey) * 16  # MONOCHROME1: high stored value = dark
    (tmp_path / "in").mkdir()
    dcm = write_dicom(tmp_path / "in" / "cxr.dcm", stored, photometric="MONOCHROME1", bits_stored=12,
                      spacing=(0.143, 0.143))
    assert main(["--no-progress", "analyze", str(dcm), "--out", str(tmp_path / "dcm")]) == 0
    assert main(["--no-progress", "analyze", str(EXAMPLE), "--out", str(tmp_path / "png")]) == 0
    f = json.loads((tmp_path / "dcm" / "findings.json").read_text())
    assert f["input"]["spacing_mm"] == [0.143, 0.143]
    assert f["lungs"]["area_cm2"] == pytest.approx(f["lungs"]["area_px"] * 0.143**2 / 100, rel=1e-3)
    m1 = np.asarray(Image.open(tmp_path / "dcm" / "lung_mask.png")) > 0
    m2 = np.asarray(Image.open(tmp_path / "png" / "lung_mask.png")) > 0
    assert dice(m1, m2) > 0.95


def test_analyze_folder_batch_survives_bad_files(tmp_path, capsys):
    src = tmp_path / "inputs"
    (src / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLE, src / "a.png")
    shutil.copy(ROOT / "examples" / "cxr" / "person1001_bacteria_2932.jpeg", src / "sub" / "b.jpeg")
    data = EXAMPLE.read_bytes()
    (src / "broken.png").write_bytes(data[: len(data) // 3])
    (src / "notes.txt").write_text("not an image")
    before = _tree_digest(src)
    out = tmp_path / "out"
    assert main(["analyze", str(src), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    # one count: the bar runs over the 3 analysed inputs and the summary line says "of 3" (notes.txt is skipped)
    assert "3/3" in captured.err and "4/4" not in captured.err
    assert "analysed 2 of 3 inputs" in captured.out and "1 other file skipped" in captured.out
    with open(out / "summary.csv", newline="") as fh:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(fh)}
    assert rows["a.png"]["status"] == "ok" and rows["b.jpeg"]["status"] == "ok"
    assert rows["broken.png"]["status"] == "failed" and "broken.png" in rows["broken.png"]["error"]
    assert rows["notes.txt"]["status"] == "skipped"
    assert (out / "a" / "findings.json").is_file() and (out / "sub__b" / "report.html").is_file()
    assert _tree_digest(src) == before  # nothing in the input folder changed


@pytest.mark.parametrize("make,code,needle", [
    (lambda p: p / "missing.png", 3, "no such file"),
    (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", 3, "unsupported"),
    (lambda p: (p / "empty").mkdir() or p / "empty", 3, "empty"),
    (lambda p: (p / "photo.jpg", Image.fromarray(np.dstack([np.mgrid[:64, :64][1].astype(np.uint8) * 4,
     np.zeros((64, 64), np.uint8), np.full((64, 64), 200, np.uint8)])).save(p / "photo.jpg"))[0], 3, "colour"),
])
def test_bad_input_one_line_exit_3(tmp_path, capsys, make, code, needle):
    (tmp_path / "in").mkdir()
    target = make(tmp_path / "in")
    assert main(["--no-progress", "analyze", str(target), "--out", str(tmp_path / "o")]) == code
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_out_inside_input_refused(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "in" / "a.png")
    assert main(["--no-progress", "analyze", str(tmp_path / "in"), "--out", str(tmp_path / "in" / "o")]) == 2
    assert not (tmp_path / "in" / "o").exists()


def test_evaluate_lung_seg_on_real_validation_images(tmp_path, capsys):
    """Golden test of the bundled weights: Montgomery/Shenzhen images of the card's validation split."""
    records = image_mask_records(data_path("cxr", "montgomery_shenzhen"))
    _, val = split_by_patient(records, 0.2, seed=0)
    data = tmp_path / "val"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for r in val[:6]:
        shutil.copy(r["image"], data / "images")
        shutil.copy(r["mask"], data / "masks")
    out = tmp_path / "metrics.json"
    assert main(["--no-progress", "evaluate", "lung-seg", "--data", str(data), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["task"] == "lung-seg" and m["n"] == 6
    assert set(m) >= {"dice_mean", "dice_std", "iou_mean"}
    assert m["dice_mean"] > 0.9 and m["iou_mean"] > 0.82


def test_train_cli_tiny(tiny_lung_dataset, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("size: 32\nfeatures: 4\nbatch_size: 4\nval_fraction: 0.3\n")
    code = main(["--no-progress", "train", "lung-seg", "--config", str(tmp_path / "c.yaml"), "--visible-data",
                 str(tiny_lung_dataset), "--epochs", "1", "--out-dir", str(tmp_path / "run")])
    assert code == 0
    card = json.loads((tmp_path / "run" / "lung-seg-unet.json").read_text())
    assert card["training"]["command"].startswith("pulmo --no-progress train lung-seg --config")
    assert card["metrics"]["shenzhen/visible_channel"]["n"] >= 1
    assert (tmp_path / "run" / "config.yaml").read_text().count("size: 32") == 1


@pytest.mark.parametrize("verb", ["lung-seg", "lesion-seg", "cxr-classify", "cxr-detect", "cxr-detect-unet", "nodule",
                                  "nodule-seg", "nodule-fpr", "input-gate"])
def test_every_train_flag_has_help_and_its_default(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.split("\noptions:", 1)[1]  # the flags' section, not the usage line
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    verb_parser = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    for action in verb_parser._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0]
        block = _flag_help(out, flag)
        assert len(block.split()) > 1, (flag, block)  # a help text follows the flag (and its metavar)
    assert "(default" in _flag_help(out, "--epochs")  # the config dataclass's default


def _flag_help(help_text: str, flag: str) -> str:
    """What ``--help`` prints for one flag: from its line to the next flag's line."""
    match = re.search(rf"^  (?:-\w, )?{re.escape(flag)}\b(.*?)(?=^  -|^\S|\Z)", help_text, re.MULTILINE | re.DOTALL)
    assert match, flag
    return match.group(1)


def _user_weights(tmp_path, bundled: str, **card_changes) -> Path:
    """A copy of a bundled weight set under a user's name, as ``pulmo train`` would leave it (file + card)."""
    from pulmo.weights import WEIGHTS_DIR

    card = json.loads((WEIGHTS_DIR / f"{bundled}.json").read_text())
    card.update(card_changes, file="mine.safetensors")
    (tmp_path / "w").mkdir(exist_ok=True)
    shutil.copy(WEIGHTS_DIR / f"{bundled}.safetensors", tmp_path / "w" / "mine.safetensors")
    (tmp_path / "w" / "mine.json").write_text(json.dumps(card))
    return tmp_path / "w" / "mine.safetensors"


def test_analyze_weights_loads_a_user_trained_detector_checked_against_its_card(tmp_path, monkeypatch, capsys):
    """``--weights cxr-detect=FILE``: the user's detector (here the bundled one renamed, with a stricter
    threshold in its card) is what findings.json names and what draws the boxes; a card of another task, a
    file whose sha256 differs from its card and a malformed item are refused before the input is read."""
    monkeypatch.setenv("PULMO_WEIGHTS", "{}")  # restored after the test: no choice leaks into other tests
    mine = _user_weights(tmp_path, "cxr-detect", name="my-detector",
                         thresholds={**json.loads((ROOT / "src/pulmo/weights/cxr-detect.json").read_text())["thresholds"],
                                     "score": 0.99})
    image = data_path("cxr", "TBX11K", "imgs", "tb", "tb0012.jpg")
    out = tmp_path / "out"
    assert main(["--no-progress", "analyze", str(image), "--out", str(out), "--weights", f"cxr-detect={mine}"]) == 0
    f = json.loads((out / "findings.json").read_text())
    entry = next(m for m in f["models"] if m["task"] == "cxr-detect")
    assert entry["name"] == "my-detector" and entry["score_threshold"] == 0.99
    assert all(d["score"] >= 0.99 for d in f["detections"])
    if f["classification"]["in_scope"] is False:  # a TB image: the summary line gives no diagnosis either
        assert "finding outside the classifier's classes" in capsys.readouterr().out

    (tmp_path / "l").mkdir()
    lungs = _user_weights(tmp_path / "l", "lung-seg-unet")
    for item, needle in ((f"cxr-detect={lungs}", "is for task 'lung-seg', not 'cxr-detect'"),
                         (f"cxr-detekt={mine}", "unknown task 'cxr-detekt'"), (str(mine), "expected TASK=FILE"),
                         (f"cxr-detect={tmp_path / 'none.safetensors'}", "is not a .safetensors file")):
        assert main(["analyze", str(image), "--out", str(tmp_path / "o2"), "--weights", item]) == 4  # weights error
        assert needle in capsys.readouterr().err
    mine.write_bytes(mine.read_bytes()[:-8] + b"\0" * 8)  # the file no longer matches its card
    assert main(["analyze", str(image), "--out", str(tmp_path / "o3"), "--weights", f"cxr-detect={mine}"]) == 4
    assert "sha256 does not match" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


@pytest.mark.parametrize("argv, no_progress, verbose", [
    (["--no-progress", "evaluate", "lung-seg", "--data", "d", "--out", "o"], True, False),
    (["evaluate", "lung-seg", "--data", "d", "--out", "o", "--no-progress", "-v"], True, True),
    (["evaluate", "lung-seg", "--data", "d", "--out", "o"], False, False),
    (["train", "nodule", "--no-progress"], True, False),
    (["analyze", "x", "--out", "y", "-v"], False, True),
    (["-v", "models"], False, True),
])
def test_global_flags_before_or_after_the_verb(argv, no_progress, verbose):
    args = build_parser().parse_args(argv)
    assert (args.no_progress, args.verbose) == (no_progress, verbose)


def test_evaluate_verbs_come_from_the_task_registry(capsys):
    from pulmo.tasks.registry import TASKS

    with pytest.raises(SystemExit):
        main(["evaluate", "-h"])
    text = capsys.readouterr().out
    assert all(name in text for name in TASKS)
    with pytest.raises(SystemExit):
        main(["evaluate", "nodule", "-h"])
    text = capsys.readouterr().out
    assert "--max-candidates-per-scan" in text and "(default 100)" in text and "--second-stage" in text
    # a task with several layouts needs --format (exit 2, one line)
    assert main(["evaluate", "cxr-detect", "--data", "d", "--out", "o"]) == 2
    assert "give --format (tbx11k|chestx-det10|rsna|nih)" in capsys.readouterr().err
