"""Detection dataset adapters on the real label files of ../shared/data/cxr (counts from their README.txt)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pulmo.datasets.detection import (
    CHESTX_DET10_CLASSES,
    NIH_BBOX_CLASSES,
    chestx_det10_records,
    coco_categories,
    label_counts,
    nih_bbox_records,
    rsna_pneumonia_records,
    tbx11k_records,
)
from pulmo.errors import InputError
from tests.conftest import data_path

TBX11K_JSON = ("cxr", "TBX11K", "annotations", "json", "TBX11K_train_only_tb.json")


def _check_record_shapes(records):
    for r in records:
        b = r["boxes_xyxy"]
        assert b.dtype == np.float64 and b.ndim == 2 and b.shape[1] == 4
        assert len(r["labels"]) == len(b)
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert {"image", "patient_id", "source"} <= r.keys()


# ---------------------------------------------------------------------------------------------- TBX11K

def test_tbx11k_counts_match_readme():
    root = data_path("cxr", "TBX11K")
    counts = Counter()
    records = tbx11k_records(root, counts=counts)
    # README "This copy": the official train split's TB images, 599 images, 902 boxes (train: 724 active / 178
    # latent); classes come from the JSON categories
    assert len(records) == 599
    assert counts["images"] == 599 and counts["boxes"] == 902 and counts["missing_images"] == 0
    assert label_counts(records) == {"ActiveTuberculosis": 724, "ObsoletePulmonaryTuberculosis": 178}
    assert Counter(len(r["labels"]) for r in records) == {1: 318, 2: 260, 3: 20, 4: 1}
    assert all(Path(r["image"]).is_file() for r in records)
    assert {r["source"] for r in records} == {"tbx11k"}
    assert len({r["patient_id"] for r in records}) == 599
    _check_record_shapes(records)
    boxes = np.concatenate([r["boxes_xyxy"] for r in records])
    assert boxes.min() >= 0 and boxes.max() <= 512  # px of the 512 x 512 images
    # COCO xywh -> xyxy: first annotation of tb0005 is [381.83, 126.87, 40.24, 44.57]
    first = next(r for r in records if r["image"].endswith("tb0005.jpg"))
    np.testing.assert_allclose(first["boxes_xyxy"][0], [381.8337, 126.8734, 422.0706, 171.4392], atol=1e-3)
    assert coco_categories(data_path(*TBX11K_JSON)) == [
        "ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis"]
    assert coco_categories(data_path(*TBX11K_JSON), used_only=True) == [
        "ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"]


def test_tbx11k_missing_images_are_counted_and_skipped(tmp_path, caplog):
    src = data_path("cxr", "TBX11K")
    root = tmp_path / "TBX11K"
    (root / "annotations" / "json").mkdir(parents=True)
    (root / "imgs" / "tb").mkdir(parents=True)
    ann = root / "annotations" / "json" / "TBX11K_train_only_tb.json"
    ann.symlink_to(data_path(*TBX11K_JSON))
    present = sorted((src / "imgs" / "tb").iterdir())[:10]
    for p in present:
        (root / "imgs" / "tb" / p.name).symlink_to(p)
    # a normal image (no annotation) in the full TBX11K JSONs comes back with empty boxes
    data = json.loads(ann.read_text())
    data["images"].append({"id": 10**6, "file_name": "health/h0001.png", "width": 512, "height": 512})
    (root / "imgs" / "health").mkdir()
    (root / "imgs" / "health" / "h0001.png").write_bytes(b"")
    (root / "annotations" / "json" / "with_normal.json").write_text(json.dumps(data))

    counts = Counter()
    with caplog.at_level(logging.WARNING, logger="pulmo.datasets.detection"):
        records = tbx11k_records(root, "annotations/json/TBX11K_train_only_tb.json", counts=counts)
    assert len(records) == 10
    assert counts["missing_images"] == 589
    assert counts["boxes"] + counts["missing_boxes"] == 902
    assert "589 of 599 images" in caplog.text

    records = tbx11k_records(root, root / "annotations" / "json" / "with_normal.json")
    normal = records[-1]
    assert normal["image"].endswith("h0001.png") and normal["labels"] == []
    assert normal["boxes_xyxy"].shape == (0, 4)
    # two JSONs and no choice: a clear error, not a guess
    with pytest.raises(InputError, match="exactly one COCO JSON"):
        tbx11k_records(root)


def test_coco_bad_files_raise_input_error(tmp_path):
    root = tmp_path / "t"
    (root / "annotations" / "json").mkdir(parents=True)
    (root / "imgs").mkdir()
    ann = root / "annotations" / "json" / "a.json"
    ann.write_text("{not json")
    with pytest.raises(InputError, match=r"a\.json: not a valid JSON"):
        tbx11k_records(root)
    base = {"images": [{"id": 1, "file_name": "x.png"}], "categories": [{"id": 1, "name": "ActiveTuberculosis"}]}
    ann.write_text(json.dumps(base | {"annotations": [{"id": 7, "image_id": 1, "category_id": 1,
                                                       "bbox": [10, 10, -5, 20]}]}))
    with pytest.raises(InputError, match="annotation 7.*non-positive width"):
        tbx11k_records(root)
    ann.write_text(json.dumps(base | {"annotations": [{"id": 7, "image_id": 2, "category_id": 1,
                                                       "bbox": [10, 10, 5, 20]}]}))
    with pytest.raises(InputError, match="image_id 2 is not in 'images'"):
        tbx11k_records(root)
    ann.write_text(json.dumps(base | {"annotations": []}))
    with pytest.raises(InputError, match="image folder not found"):
        tbx11k_records(tmp_path / "nowhere", ann)


# ---------------------------------------------------------------------------------------------- ChestX-Det10

@pytest.mark.parametrize("split, n_images, n_empty, per_class", [
    ("train", 3001, 681, {"Consolidation": 2091, "Effusion": 1720, "Nodule": 789, "Fibrosis": 618,
                          "Fracture": 546, "Atelectasis": 289, "Calcification": 280, "Emphysema": 232,
                          "Pneumothorax": 169, "Mass": 129}),
    ("test", 542, 83, {"Consolidation": 446, "Effusion": 372, "Nodule": 166, "Fibrosis": 120, "Fracture": 115,
                       "Calcification": 67, "Emphysema": 66, "Atelectasis": 51, "Pneumothorax": 42, "Mass": 31}),
])
def test_chestx_det10_counts_match_readme(split, n_images, n_empty, per_class):
    ann = data_path("cxr", "labels_only", "chestx_det10", f"{split}.json")
    counts = Counter()
    records = chestx_det10_records(ann, "images", counts=counts, check_images=False)
    assert len(records) == n_images == counts["images"]
    assert sum(not r["labels"] for r in records) == n_empty
    assert label_counts(records) == per_class
    assert set(per_class) == set(CHESTX_DET10_CLASSES)
    assert counts["boxes"] == sum(per_class.values())
    _check_record_shapes(records)
    boxes = np.concatenate([r["boxes_xyxy"] for r in records if r["labels"]])
    assert boxes.min() >= 0 and boxes.max() <= 1024  # xyxy px of the 1024 x 1024 images


def test_chestx_det10_missing_images_counted(tmp_path, caplog):
    ann = data_path("cxr", "labels_only", "chestx_det10", "test.json")
    entries = json.loads(ann.read_text())
    image_dir = tmp_path / "test_data"
    image_dir.mkdir()
    (image_dir / entries[0]["file_name"]).write_bytes(b"")  # 36199.png, no finding
    (image_dir / (Path(entries[1]["file_name"]).stem + ".jpg")).write_bytes(b"")  # re-encoded copy: same stem
    counts = Counter()
    with caplog.at_level(logging.WARNING, logger="pulmo.datasets.detection"):
        records = chestx_det10_records(ann, image_dir, counts=counts)
    assert [Path(r["image"]).name for r in records] == ["36199.png", "36302.jpg"]
    assert records[0]["labels"] == [] and records[1]["labels"] == ["Effusion"]
    np.testing.assert_array_equal(records[1]["boxes_xyxy"], [[799, 666, 937, 761]])
    assert counts["missing_images"] == 540 and counts["missing_boxes"] == 1476 - 1
    assert "540 of 542 images" in caplog.text
    with pytest.raises(InputError, match="pass check_images=False"):
        chestx_det10_records(ann, tmp_path / "absent")


def test_chestx_det_polygon_variant_reads_with_the_same_adapter():
    ann = data_path("cxr", "labels_only", "chestx_det", "ChestX_Det_train.json")
    records = chestx_det10_records(ann, "images", check_images=False, source="chestx-det")
    assert len(records) == 3025  # README: 13 classes, train 3025 images
    assert len(label_counts(records)) == 13


def test_chestx_det10_bad_entries(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"file_name": "1.png", "syms": ["Mass", "Nodule"], "boxes": [[1, 2, 30, 40]]}]))
    with pytest.raises(InputError, match=r"bad\.json: entry 0 \(1\.png\).*equal length"):
        chestx_det10_records(bad, tmp_path, check_images=False)
    bad.write_text(json.dumps([{"file_name": "1.png", "syms": ["Mass"], "boxes": [[30, 2, 10, 40]]}]))
    with pytest.raises(InputError, match="x2 <= x1"):
        chestx_det10_records(bad, tmp_path, check_images=False)
    bad.write_text(json.dumps({"file_name": "1.png"}))
    with pytest.raises(InputError, match="expected a JSON list"):
        chestx_det10_records(bad, tmp_path, check_images=False)


# ---------------------------------------------------------------------------------------------- RSNA

def test_rsna_counts_match_readme(tmp_path, caplog):
    labels = data_path("cxr", "labels_only", "rsna_pneumonia", "stage_2_train_labels.csv")
    counts = Counter()
    records = rsna_pneumonia_records(labels, "stage_2_train_images", counts=counts, check_images=False)
    # README: 30227 rows, 26684 patientIds, 9555 boxes (x, y, w, h in 1024 px), Target 1/0
    assert len(records) == 26684 and counts["boxes"] == 9555
    assert sum(bool(r["labels"]) for r in records) == 6012
    assert Counter(len(r["labels"]) for r in records) == {0: 20672, 1: 2614, 2: 3266, 3: 119, 4: 13}
    assert label_counts(records) == {"Pneumonia": 9555}
    boxes = np.concatenate([r["boxes_xyxy"] for r in records])
    assert boxes.min() >= 0 and boxes.max() <= 1024
    assert records[0]["image"].endswith("0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm")
    assert records[0]["patient_id"] == "rsna-0004cfab-14fd-4e49-80ba-63a80b6bddd6"

    # with a DICOM folder holding 2 of the images: the rest are counted and skipped
    image_dir = tmp_path / "stage_2_train_images"
    image_dir.mkdir()
    positive = next(r for r in records if len(r["labels"]) == 2)
    for r in (records[0], positive):
        (image_dir / Path(r["image"]).name).write_bytes(b"")
    counts = Counter()
    with caplog.at_level(logging.WARNING, logger="pulmo.datasets.detection"):
        kept = rsna_pneumonia_records(labels, image_dir, counts=counts)
    assert [r["patient_id"] for r in kept] == [records[0]["patient_id"], positive["patient_id"]]
    assert counts["missing_images"] == 26682 and counts["missing_boxes"] == 9553
    np.testing.assert_array_equal(kept[1]["boxes_xyxy"], positive["boxes_xyxy"])
    assert "26682 of 26684 images" in caplog.text


def test_rsna_xywh_to_xyxy_and_bad_rows(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("patientId,x,y,width,height,Target\np1,,,,,0\np2,10,20,30,40,1\np2,100,100,5,5,1\n")
    records = rsna_pneumonia_records(csv_file, tmp_path, check_images=False)
    assert [len(r["labels"]) for r in records] == [0, 2]
    np.testing.assert_array_equal(records[1]["boxes_xyxy"], [[10, 20, 40, 60], [100, 100, 105, 105]])
    csv_file.write_text("patientId,x,y,width,height,Target\np2,,,,,1\n")
    with pytest.raises(InputError, match=r"labels\.csv: line 2: Target is 1 but the box is empty"):
        rsna_pneumonia_records(csv_file, tmp_path, check_images=False)
    csv_file.write_text("patientId,x,y,w,h,Target\n")
    with pytest.raises(InputError, match=r"columns \['width', 'height'\] missing"):
        rsna_pneumonia_records(csv_file, tmp_path, check_images=False)


# ---------------------------------------------------------------------------------------------- NIH

NIH_FULL_COUNTS = {"Atelectasis": 180, "Effusion": 153, "Cardiomegaly": 146, "Infiltrate": 123, "Pneumonia": 120,
                   "Pneumothorax": 98, "Mass": 85, "Nodule": 79}
NIH_SAMPLE_COUNTS = {"Atelectasis": 1, "Cardiomegaly": 3, "Infiltrate": 1, "Mass": 1, "Nodule": 3, "Pneumonia": 3}


def test_nih_official_bbox_list_counts_match_readme():
    bbox = data_path("cxr", "labels_only", "nih_chestxray14", "BBox_List_2017.csv")
    assert bbox.read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,")  # the official odd header
    counts = Counter()
    records = nih_bbox_records(bbox, "images", counts=counts, check_images=False)
    # README: 984 boxes, 880 images, 8 classes
    assert len(records) == 880 and counts["boxes"] == 984
    assert label_counts(records) == NIH_FULL_COUNTS and set(NIH_FULL_COUNTS) == set(NIH_BBOX_CLASSES)
    _check_record_shapes(records)
    first = records[0]
    assert first["patient_id"] == "nih-00013118" and first["labels"] == ["Atelectasis"]
    np.testing.assert_allclose(first["boxes_xyxy"], [[225.084745762712, 547.019216763771,
                                                      225.084745762712 + 86.7796610169491,
                                                      547.019216763771 + 79.1864406779661]])


def test_nih_no_finding_negatives_from_data_entry():
    root = data_path("cxr", "labels_only", "nih_chestxray14")
    counts = Counter()
    records = nih_bbox_records(root / "BBox_List_2017.csv", "images", counts=counts, check_images=False,
                               data_entry=root / "Data_Entry_2017_v2020.csv.gz")
    negatives = records[880:]
    assert len(negatives) == 60361 and counts["boxes"] == 984  # "No Finding" images of Data_Entry v2020
    assert all(r["boxes_xyxy"].shape == (0, 4) and not r["labels"] for r in negatives)
    assert negatives[0]["patient_id"] == "nih-" + Path(negatives[0]["image"]).name.split("_")[0]


def test_nih_sample_full_list_twelve_images_present(caplog):
    root = data_path("cxr", "ChestX-ray14_bbox_sample")
    counts = Counter()
    with caplog.at_level(logging.WARNING, logger="pulmo.datasets.detection"):
        records = nih_bbox_records(root / "BBox_List_2017.csv", root / "images", counts=counts)
    # README: all 984 NIH boxes on 880 images; 12 images present
    assert len(records) == 12 and counts["boxes"] == 12
    assert counts["missing_images"] == 868 and counts["missing_boxes"] == 972
    assert label_counts(records) == NIH_SAMPLE_COUNTS
    assert all(Path(r["image"]).is_file() for r in records)
    assert "868 of 880 images" in caplog.text


def test_nih_sample_cleaned_subset_header():
    root = data_path("cxr", "ChestX-ray14_bbox_sample")
    counts = Counter()
    records = nih_bbox_records(root / "BBox_List_2017_subset.csv", root / "images", counts=counts,
                               data_entry=root / "Data_Entry_2017_v2020_subset.csv")
    assert len(records) == 12 and counts["missing_images"] == 0
    assert label_counts(records) == NIH_SAMPLE_COUNTS
    r = next(r for r in records if r["image"].endswith("00004296_000.png"))
    np.testing.assert_allclose(r["boxes_xyxy"], [[731.428571428571, 753.100529100529,
                                                  731.428571428571 + 119.195767195767,
                                                  753.100529100529 + 93.189417989418]])
    assert r["patient_id"] == "nih-00004296"


def test_nih_finds_images_in_the_official_tree_and_rejects_bad_headers(tmp_path):
    csv_file = tmp_path / "BBox_List_2017.csv"
    csv_file.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1,2,3,4\n"
                        "00000002_000.png,Nodule,1,2,3,4\n")
    tree = tmp_path / "images_001" / "images"
    tree.mkdir(parents=True)
    (tree / "00000001_000.png").write_bytes(b"")
    counts = Counter()
    records = nih_bbox_records(csv_file, tmp_path, counts=counts)
    assert [Path(r["image"]).relative_to(tmp_path).as_posix() for r in records] == [
        "images_001/images/00000001_000.png"]
    assert counts["missing_images"] == 1
    csv_file.write_text("Image,Label,x,y,w,h\n")
    with pytest.raises(InputError, match=r"BBox_List_2017\.csv: header .* is not"):
        nih_bbox_records(csv_file, tmp_path)
    csv_file.write_text("Image Index,Finding Label,x,y,w,h\n00000001_000.png,Mass,1,2,abc,4\n")
    with pytest.raises(InputError, match=r"line 2: box coordinate 'abc' is not a number"):
        nih_bbox_records(csv_file, tmp_path)
