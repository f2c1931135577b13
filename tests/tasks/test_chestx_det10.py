"""ChestX-Det10 end to end on the 40 real NIH images of ``cxr/ChestX-Det10_nih_sample``: both label namings,
the 10 classes, and the 10-class RetinaNet route trained for a few steps and scored with the dataset's
metric (a pipeline test, not a claim of accuracy)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from pulmo.cli import main
from pulmo.datasets.detection import (
    CHESTX_DET10_CLASSES,
    chestx_det10_folder_records,
    chestx_det10_label_files,
    chestx_det10_records,
    label_counts,
)
from pulmo.tasks import cxr_detect as cd
from tests.conftest import data_path

SAMPLE = ("cxr", "ChestX-Det10_nih_sample")
# README.txt of the sample: 29 images with 91 boxes, 11 no-finding images
README_COUNTS = {"Consolidation": 22, "Effusion": 16, "Fracture": 14, "Fibrosis": 10, "Calcification": 9, "Nodule": 8,
                 "Atelectasis": 4, "Emphysema": 3, "Mass": 3, "Pneumothorax": 2}


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["image"] == y["image"] and x["labels"] == y["labels"] and x["patient_id"] == y["patient_id"]
        and np.array_equal(x["boxes_xyxy"], y["boxes_xyxy"]) for x, y in zip(a, b, strict=True))


def test_nih_named_and_renamed_json_give_the_same_records():
    root = data_path(*SAMPLE)
    for split, n in (("train", 33), ("test", 7)):
        nih_counts, renamed_counts = Counter(), Counter()
        nih = chestx_det10_records(root / "labels" / f"{split}_nih_names_117ba79.json", root / "images",
                                   counts=nih_counts)
        renamed = chestx_det10_records(root / "labels" / f"{split}_renamed_c535e9a.json", root / "images",
                                       counts=renamed_counts)  # 36204.png ... found as NIH PNGs via the name map
        assert len(nih) == n and _same(nih, renamed) and nih_counts == renamed_counts
        assert all(Path(r["image"]).parent.name == "images" and r["patient_id"].startswith("chestx-det10-0")
                   for r in renamed)
    # without the name map the renamed file finds none of the NIH-named images
    counts = Counter()
    assert chestx_det10_records(root / "labels" / "test_renamed_c535e9a.json", root / "images", counts=counts,
                                name_map={}) == []
    assert counts["missing_images"] == 542


def test_folder_default_reads_all_40_images_with_the_10_classes():
    root = data_path(*SAMPLE)
    assert [f.name for f in chestx_det10_label_files(root)] == ["test_nih_names_117ba79.json",
                                                                "train_nih_names_117ba79.json"]
    counts = Counter()
    records = cd.load_records(root, "chestx-det10", counts=counts)  # what `--format chestx-det10` reads
    assert len(records) == 40 == counts["images"] and counts["boxes"] == 91
    assert sum(not r["labels"] for r in records) == 11
    assert label_counts(records) == README_COUNTS and sorted(README_COUNTS) == list(CHESTX_DET10_CLASSES)
    boxes = np.concatenate([r["boxes_xyxy"] for r in records if r["labels"]])
    assert boxes.min() >= 0 and boxes.max() <= 1024  # NIH 1024-px pixel space
    # an explicit file, either naming, relative to --data
    renamed = cd.load_records(root, "chestx-det10", "labels/train_renamed_c535e9a.json")
    assert _same(renamed, chestx_det10_folder_records(root, root / "labels" / "train_nih_names_117ba79.json"))


def _check_recall(ar: dict) -> None:
    assert set(ar) == {"0.05", "0.1", "0.2", "mean"}
    assert all(0.0 <= v <= 1.0 for v in ar.values())
    assert ar["0.05"] <= ar["0.1"] <= ar["0.2"]
    assert math.isclose(ar["mean"], np.mean([ar["0.05"], ar["0.1"], ar["0.2"]]), abs_tol=2e-4)  # rounded to 4 dp


def test_ten_class_retinanet_trains_and_evaluates_on_the_sample(tmp_path):
    root = data_path(*SAMPLE)
    config = cd.DetectConfig(data=str(root), format="chestx-det10", architecture="retinanet-r18-fpn", size=256,
                             fpn_channels=32, epochs=1, max_steps_per_epoch=2, batch_size=2, patience=1,
                             degrade_p=0.0, out_dir=str(tmp_path / "run"), name="det10-tiny", progress=False)
    card = cd.train(config)
    assert card["labels"] == list(CHESTX_DET10_CLASSES) and card["model_kwargs"]["num_classes"] == 10
    assert card["training"]["n_train"] + card["training"]["n_val"] + card["training"]["n_test"] == 40
    assert set(card["metrics"]["test"]["average_recall_at_fp"]) == {"0.05", "0.1", "0.2", "mean"}

    weights = str(tmp_path / "run" / "det10-tiny.safetensors")
    m = cd.evaluate(root, format="chestx-det10", weights=weights, progress=False)
    assert m["task"] == "cxr-detect" and m["weights"] == "det10-tiny"
    assert (m["n_images"], m["n_positive_images"], m["n_negative_images"]) == (40, 29, 11)
    assert m["labels"] == list(CHESTX_DET10_CLASSES) and set(m["ap_50"]) == set(CHESTX_DET10_CLASSES)
    assert all(0.0 <= v <= 1.0 for v in m["ap_50"].values()) and 0.0 <= m["map_50"] <= 1.0
    assert 0.0 <= m["ap_50_agnostic"] <= 1.0 and 0.0 <= m["rsna_score"] <= 1.0
    _check_recall(m["average_recall_at_fp"])
    assert set(m["average_recall_at_fp_per_class"]) == set(CHESTX_DET10_CLASSES)
    for per_class in m["average_recall_at_fp_per_class"].values():
        _check_recall(per_class)
    assert m["fp_per_negative_image"] >= 0.0

    # the CLI on the official test images of the renamed release (7 here)
    out = tmp_path / "m.json"
    assert main(["--no-progress", "evaluate", "cxr-detect", "--data", str(root), "--format", "chestx-det10",
                 "--annotations", "labels/test_renamed_c535e9a.json", "--weights", weights, "--out", str(out)]) == 0
    cli = json.loads(out.read_text())
    assert cli["n_images"] == 7 and set(cli["labels"]) <= set(CHESTX_DET10_CLASSES)
    _check_recall(cli["average_recall_at_fp"])
