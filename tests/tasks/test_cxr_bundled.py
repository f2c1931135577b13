"""Golden tests of the bundled chest X-ray classifier and detector on real images they never saw: the
"outside my classes" answer on TB from a hospital no training image came from, in-scope answers kept on
held-out patients, and the detector quiet on held-out healthy chests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pulmo.datasets import patient_fold
from pulmo.datasets.cxr_labels import OTHER_FINDING, kermany_records, other_finding_records
from pulmo.io import read_image
from pulmo.weights import WEIGHTS_DIR
from tests.conftest import data_path


def _card(name: str) -> dict:
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"no bundled {name} weights")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def classifier():
    card = _card("cxr-classify")
    if OTHER_FINDING not in card["labels"]:
        pytest.skip("the bundled classifier has no other_finding class")
    from pulmo.tasks.cxr_classify import CxrClassifier

    return CxrClassifier()


def test_unseen_tb_hospital_is_not_called_covid19_in_scope(classifier):
    """Montgomery / Shenzhen TB X-rays: the card leaves that source out of training; the target is <= 20 % of
    unseen TB called COVID-19 while in scope."""
    assert "montgomery-shenzhen" in classifier.card["training"]["excluded_sources"]
    records = other_finding_records("montgomery-shenzhen", data_path("cxr", "montgomery_shenzhen"))[::6]
    preds = [classifier.predict(read_image(r["image"])) for r in records]
    called = sum(p["predicted"] == "covid19" and p["in_scope"] for p in preds)
    assert len(preds) == 12 and called <= 2
    assert all(p["out_of_scope_score"] is not None and 0 <= p["out_of_scope_score"] <= 1 for p in preds)
    assert all(p["in_scope"] is False for p in preds if p["predicted"] == OTHER_FINDING)


def test_held_out_kermany_patients_stay_in_scope(classifier):
    """Children never seen (the card's patient split: test fold) keep an in-scope answer, mostly right."""
    split = classifier.card["training"]["split"]
    assert "sha1(seed 0" in split
    records = [r for r in kermany_records(data_path("cxr", "chest_xray_pneumonia"))
               if patient_fold(r["patient_id"], 0) < 0.15][::4][:15]
    preds = [classifier.predict(read_image(r["image"])) for r in records]
    kept = np.mean([p["in_scope"] for p in preds])
    normal_right = np.mean([(p["predicted"] == "normal") == (r["label"] == "normal") for p, r in zip(preds, records)])
    assert kept >= 0.8 and normal_right >= 0.8


def test_bundled_detector_is_quiet_on_held_out_healthy_images():
    card = _card("cxr-detect")
    held = set(card["training"].get("test_negatives", []))
    if not held:
        pytest.skip("the bundled detector was trained without negative images")
    from pulmo.tasks.cxr_detect import Detector, load_negatives, negative_key

    cxr = data_path("cxr")
    negs = [r for r in load_negatives([f"covid-radiography={cxr / 'COVID-19_Radiography_Dataset'}",
                                       f"chestx-det10={cxr / 'ChestX-Det10_nih_sample'}",
                                       f"covid-chestxray={cxr / 'covid-chestxray-dataset'}"])
            if negative_key(r) in held]
    negs = [r for r in negs if r["source"] != "covid-radiography"] + [r for r in negs if r["source"] ==
                                                                     "covid-radiography"][:10]
    det = Detector()
    boxes = [len(det.predict(read_image(r["image"]))) for r in negs]
    assert len(boxes) >= 12 and np.mean(boxes) <= 0.35, boxes
