"""Dataset adapters on the real layouts, and the patient split."""

from __future__ import annotations

from collections import Counter

import pytest

from pulmo.datasets import LungSegDataset, covid_chestxray_mask_records, image_mask_records, split_by_patient
from pulmo.errors import InputError
from tests.conftest import data_path


def test_montgomery_shenzhen_layout():
    records = image_mask_records(data_path("cxr", "montgomery_shenzhen"))
    assert len(records) == 72
    assert Counter(r["source"] for r in records) == {"shenzhen": 59, "montgomery": 13}
    assert all(r["convention"] == "visible" for r in records)


def test_covid_chestxray_v7_masks():
    records = covid_chestxray_mask_records(data_path("cxr", "covid-chestxray-dataset"))
    assert len(records) == 427  # every V7 lung mask of the README has its image
    assert sum(r["ignore"] is not None for r in records) == 50
    assert len({r["patient_id"] for r in records}) < len(records)  # several images per patient


def test_split_is_patient_disjoint_and_deterministic():
    records = covid_chestxray_mask_records(data_path("cxr", "covid-chestxray-dataset"))
    train, val = split_by_patient(records, 0.2, seed=0)
    assert {r["patient_id"] for r in train}.isdisjoint({r["patient_id"] for r in val})
    assert 0.1 < len(val) / len(records) < 0.35
    _, val2 = split_by_patient(list(reversed(records)), 0.2, seed=0)
    assert {r["image"] for r in val} == {r["image"] for r in val2}
    with pytest.raises(ValueError):
        split_by_patient(records, 1.5)


def test_dataset_item_shapes(tiny_lung_dataset):
    ds = LungSegDataset(image_mask_records(tiny_lung_dataset), size=32)
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
    assert item["label"].shape == (2, 32, 32)
    assert float(item["weight"][0].min()) == 1.0 and float(item["weight"][1].max()) == 0.0  # visible channel only
    assert item["label"][0].sum() > 0


def test_bad_layout(tmp_path):
    with pytest.raises(InputError, match="images"):
        image_mask_records(tmp_path)
