"""cxr-classify: adapters on the real layouts, de-duplication, metrics, calibration, a tiny training run."""

from __future__ import annotations

import json
from collections import Counter

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
    root = tmp_path / "data"
    for label, seed0 in (("normal", 0), ("covid19", 100)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            image, _ = synthetic_cxr(64, seed0 + i)
            if label == "covid19":
                image = np.clip(image.astype(int) + 60, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / label / f"{i}.png")
    out = tmp_path / "run"
    code = main(["--no-progress", "train", "cxr-classify", "--folders", str(root), "--no-lung-mask", "--size", "32",
                 "--epochs", "1", "--batch-size", "8", "--architecture", "resnet18", "--cache-dir", str(tmp_path / "c"),
                 "--out-dir", str(out)])
    assert code == 0
    card = json.loads((out / "cxr-classify.json").read_text())
    assert card["calibration"]["temperature"] > 0 and card["labels"][0] == "normal"
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["overall"]["n"] == card["training"]["n"]["test"]
