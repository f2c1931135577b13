"""cxr-classify: adapters on the real layouts, de-duplication, metrics, calibration, a tiny training run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulmo.cli import main
from pulmo.datasets.cxr_labels import (
    covid_chestxray_records,
    covid_radiography_records,
    folder_records,
    kermany_records,
    map_ieee8023_finding,
    remove_near_duplicates,
)
from pulmo.errors import InputError
from pulmo.metrics import classification_report, roc_auc
from pulmo.tasks.cxr_classify import fit_temperature, split_three
from tests.conftest import data_path, synthetic_cxr


def test_kermany_layout_and_patients():
    records = kermany_records(data_path("cxr", "chest_xray_pneumonia"))
    assert Counter(r["label"] for r in records) == {"normal": 264, "bacterial_pneumonia": 264, "viral_pneumonia": 252}
    assert any(r["patient_id"] == "kermany-person1001" for r in records)
    assert len({r["patient_id"] for r in records}) < len(records)


def test_ieee8023_frontal_mapped_and_exclusions_counted():
    excluded: Counter = Counter()
    records = covid_chestxray_records(data_path("cxr", "covid-chestxray-dataset"), excluded)
    counts = Counter(r["label"] for r in records)
    assert counts["covid19"] == 427 and counts["normal"] == 19  # README: COVID-19 415 + 12 with ARDS; No Finding 19
    assert excluded["todo"] == 28 and excluded["Pneumocystis"] == 12
    assert len(records) == 498  # 559 present frontal images minus 61 with other findings (README counts)


@pytest.mark.parametrize("finding,label", [("COVID-19", "covid19"), ("COVID-19, ARDS", "covid19"),
                                           ("Pneumonia/Viral/COVID-19", "covid19"), ("Streptococcus", "bacterial_pneumonia"),
                                           ("Mycoplasma Bacterial Pneumonia", "bacterial_pneumonia"),
                                           ("SARS", "viral_pneumonia"), ("No Finding", "normal"), ("Pneumocystis", None),
                                           ("todo", None), ("Pneumonia", None)])
def test_finding_map(finding, label):
    assert map_ieee8023_finding(finding) == label


def test_cross_source_near_duplicates_removed():
    ieee = covid_chestxray_records(data_path("cxr", "covid-chestxray-dataset"))
    radio = [r for r in covid_radiography_records(data_path("cxr", "COVID-19_Radiography_Dataset")) if r["label"] == "covid19"]
    kept, dropped = remove_near_duplicates(ieee + radio)
    assert 30 <= len(dropped) <= 120  # the README measured about 73 shared images
    assert all(d["source"] == "covid-radiography" for d in dropped)  # the copy with patient ids is kept
    assert all(d["label"] == "covid19" for d in dropped)
    assert len(kept) + len(dropped) == len(ieee) + len(radio)


def test_three_way_split_is_patient_disjoint():
    records = kermany_records(data_path("cxr", "chest_xray_pneumonia"))
    s = split_three(records, 0.15, 0.15, 0)
    ids = {k: {r["patient_id"] for r in v} for k, v in s.items()}
    assert ids["train"].isdisjoint(ids["val"]) and ids["train"].isdisjoint(ids["test"]) and ids["val"].isdisjoint(ids["test"])
    assert 0.08 < len(s["test"]) / len(records) < 0.25


def test_metrics_hand_worked():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    prob = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.6, 0.4, 0, 0], [0.1, 0.1, 0.1, 0.7]])
    rep = classification_report([0, 1, 1, 3], prob, ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid19"])
    assert rep["accuracy"] == pytest.approx(0.75)
    assert rep["labels"] == ["normal", "bacterial_pneumonia", "covid19"]  # viral absent from the truth
    assert rep["per_class"]["bacterial_pneumonia"]["sensitivity"] == pytest.approx(0.5)
    assert rep["confusion_matrix"][1] == [1, 1, 0, 0]


def test_temperature_scaling_recovers_the_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 4))
    y = np.array([rng.choice(4, p=np.exp(lg) / np.exp(lg).sum()) for lg in true_logits])
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.1)


def test_folder_layout_errors(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(InputError, match="not labels"):
        folder_records(tmp_path)


def test_train_tiny_cli(tmp_path):
    """A tiny five-class run end to end: the card has the out-of-scope threshold, the results the scope, ECE,
    reliability and source checks; `evaluate --format folders` gives labelled per-folder metrics."""
    root = tmp_path / "data"
    for label, shift in (("normal", 0), ("covid19", 60), ("other_finding", -60)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            image, _ = synthetic_cxr(64, abs(shift) + i)
            image = np.clip(image.astype(int) + shift, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / label / f"{i}.png")
    out = tmp_path / "run"
    code = main(["--no-progress", "train", "cxr-classify", "--folders", str(root), "--crop", "none", "--size", "32",
                 "--epochs", "1", "--batch-size", "8", "--architecture", "resnet18", "--cache-dir", str(tmp_path / "c"),
                 "--out-dir", str(out)])
    assert code == 0
    card = json.loads((out / "cxr-classify.json").read_text())
    assert card["calibration"]["temperature"] > 0 and card["labels"][0] == "normal"
    assert card["labels"][-1] == "other_finding" and 0 < card["thresholds"]["out_of_scope"] <= 0.5
    assert card["input"]["crop"] == "none" and card["input"]["equalize"] is True
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["overall"]["n"] == card["training"]["n"]["test"]
    assert results["test"]["overall"]["confusion_labels"] == card["labels"]
    assert "in_scope_retention" in results["test"]["scope"] and results["test"]["reliability"]
    m_out = tmp_path / "m.json"
    assert main(["--no-progress", "evaluate", "cxr-classify", "--data", str(root), "--format", "folders",
                 "--weights", str(out / "cxr-classify.safetensors"), "--out", str(m_out)]) == 0
    m = json.loads(m_out.read_text())
    assert m["confusion_labels"] == card["labels"] and 0 <= m["ece"] <= 1
    assert set(m["per_folder"]) == {"normal", "covid19", "other_finding"}
    assert m["per_folder"]["normal"]["n"] == 12 and 0 <= m["per_folder"]["normal"]["in_scope_rate"] <= 1
    assert m["scope"]["other_finding"]["n"] == 12


def test_other_finding_records_leave_pneumonia_like_boxes_in_scope():
    from pulmo.datasets.cxr_labels import OTHER_FINDING, extra_normal_records, other_finding_records

    cxr = data_path("cxr")
    tb = other_finding_records("tbx11k", cxr / "TBX11K")
    assert len(tb) == 599 and {r["label"] for r in tb} == {OTHER_FINDING} and tb[0]["finding"] == "tuberculosis"
    ms = other_finding_records("montgomery-shenzhen", cxr / "montgomery_shenzhen")
    assert len(ms) == 72 and all(r["image"].endswith("_1.png") for r in ms)
    det = other_finding_records("chestx-det10", cxr / "ChestX-Det10_nih_sample")
    assert det and all("consolidation" not in r["finding"] for r in det)
    nih = other_finding_records("nih", cxr / "ChestX-ray14_bbox_sample")
    assert nih and all(not {"pneumonia", "infiltrate"} & set(r["finding"].split(", ")) for r in nih)
    assert len(extra_normal_records("chestx-det10", cxr / "ChestX-Det10_nih_sample")) == 11
    with pytest.raises(InputError, match="no image without findings"):
        extra_normal_records("nih", cxr / "ChestX-ray14_bbox_sample")  # every staged NIH image has boxes


def test_lung_crop_box_and_fallback():
    from pulmo.tasks.cxr_classify import Preprocessor

    pre = Preprocessor(32, lung_mask=False, crop="lungs", equalize=True)
    lungs = np.zeros((100, 200), bool)
    lungs[20:60, 50:150] = True
    assert pre.crop_box(lungs) == (16, 64, 40, 160)  # 10 % of 40 rows / 100 columns on each side
    assert pre.crop_box(np.zeros((100, 200), bool)) == (0, 100, 0, 200)  # no lungs: whole image
    image, _ = synthetic_cxr(96, 0)
    from pulmo.io import Image2D

    x, _mask, box = pre(Image2D(image.astype(np.float32), None, {}), lungs=np.pad(np.ones((40, 40), bool), 28))
    assert x.shape == (32, 32) and 0 <= x.min() and x.max() <= 1 and box == (24, 72, 24, 72)
    with pytest.raises(Exception, match="crop must be"):
        Preprocessor(32, False, crop="chest")


def test_scope_threshold_keeps_the_retention_and_flags_other_findings():
    from pulmo.tasks.cxr_classify import choose_scope_threshold, in_scope, scope_metrics

    labels = ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid19", "other_finding"]
    rng = np.random.default_rng(0)
    inside = rng.dirichlet([5, 1, 1, 5, 0.3], 200)
    other = rng.dirichlet([1, 0.2, 0.2, 3, 3], 50)
    prob = np.vstack([inside, other])
    y = np.array([int(np.argmax(p[:4])) for p in inside] + [4] * 50)
    thr = choose_scope_threshold(prob, y, labels, 0.95)
    keep = in_scope(prob, labels, thr)
    top_other = prob[:200].argmax(1) == 4
    assert keep[:200].mean() >= 0.95 - top_other.mean() - 1e-9 and thr <= 0.5
    records = [{"label": labels[k], "source": "s"} for k in y]
    m = scope_metrics(records, prob, labels, thr, n_resamples=20)
    assert m["in_scope_retention"]["rate"] == pytest.approx(keep[:200].mean())
    called = ((prob[200:].argmax(1) == 3) & keep[200:]).mean()
    assert m["other_finding"]["called_covid19_in_scope"] == pytest.approx(called)
    assert m["other_finding/s"]["n"] == 50
    # a four-class model is always in scope
    assert in_scope(prob[:, :4], labels[:4], None).all()


def test_source_probe_tells_separable_sources_and_not_random_ones():
    from pulmo.tasks.cxr_classify import source_predictability

    rng = np.random.default_rng(0)
    src = ["a"] * 60 + ["b"] * 60
    shifted = rng.normal(size=(120, 8)) + np.array([[3.0] + [0] * 7] * 60 + [[-3.0] + [0] * 7] * 60)
    noise = rng.normal(size=(120, 8))
    sep = source_predictability(shifted[::2], src[::2], shifted[1::2], src[1::2])
    rand = source_predictability(noise[::2], src[::2], noise[1::2], src[1::2])
    assert sep["balanced_accuracy"] > 0.95 and rand["balanced_accuracy"] < 0.75 and sep["chance"] == 0.5


def test_jpeg_augmentation_changes_pixels_not_shape():
    from pulmo.tasks.cxr_classify import RandJpegd

    x = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    out = RandJpegd(prob=1.0, quality=(10, 10))({"image": x})["image"]
    assert tuple(out.shape) == (1, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert float(np.abs(np.asarray(out) - x).mean()) > 0.01
    assert RandJpegd(prob=0.0)({"image": x})["image"] is x


def test_reliability_bins_match_the_ece():
    from pulmo.metrics.calibration import expected_calibration_error, reliability_bins

    rng = np.random.default_rng(1)
    prob = rng.dirichlet([1, 1, 1], 300)
    y = rng.integers(0, 3, 300)
    bins = reliability_bins(prob, y)
    ece = sum(b["n"] / 300 * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(expected_calibration_error(prob, y)) and sum(b["n"] for b in bins) == 300


def test_folder_files_named_patient_double_underscore_share_a_patient(tmp_path):
    for label, names in (("covid19", ["p7__a.png", "p7__b.png", "single.png"]), ("normal", ["n1.png"])):
        (tmp_path / label).mkdir()
        for n in names:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / label / n)
    patients = {Path(r["image"]).name: r["patient_id"] for r in folder_records(tmp_path)}
    assert patients["p7__a.png"] == patients["p7__b.png"] != patients["single.png"]
    assert patients["single.png"].endswith("-single") and patients["n1.png"].endswith("-n1")
