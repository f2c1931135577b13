"""The typed findings sections (schema 1.3): same findings.json keys, values and order as the dicts of 1.2."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from pulmo.findings import (
    SCHEMA_VERSION,
    Classification,
    CtLungs,
    CxrLungs,
    Detection,
    Findings,
    Infection,
    Nodule,
)

# findings.json of `pulmo analyze examples` (the example CT LIDC-IDRI-0001 and the X-ray 00001369_000)
EXAMPLES = sorted((Path(__file__).parent / "data" / "findings").glob("*.json"))
DETECTION = {"label": "Consolidation", "name": "consolidation", "score": 0.81, "box_xyxy": [10.5, 20.0, 110.0, 240.25]}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_findings_round_trip_unchanged(path):
    text = path.read_text()
    data = json.loads(text)
    findings = Findings.from_dict(data)
    out = findings.to_dict()
    assert out["schema_version"] == SCHEMA_VERSION == "1.3"
    assert json.dumps(out, indent=2) + "\n" == text  # same keys, values and key order
    for name in ("lungs", "infection", "classification"):
        section = getattr(findings, name)
        if data[name] is None:
            assert section is None
            continue
        assert type(section).from_dict(data[name]).to_dict() == data[name]
        assert section == data[name] and dict(section) == data[name] and {**section} == data[name]
        assert list(section) == list(data[name]) and len(section) == len(data[name])
        assert all(section[k] == v and section.get(k) == v for k, v in data[name].items())
    for name, kind in (("detections", Detection), ("nodules", Nodule)):
        if data[name] is not None:
            assert all(isinstance(s, kind) for s in getattr(findings, name))
            assert [kind.from_dict(d).to_dict() for d in data[name]] == data[name]


def test_sections_are_typed_by_modality():
    ct = Findings.from_dict(json.loads(EXAMPLES[0].read_text()))
    cxr = Findings.from_dict(json.loads(EXAMPLES[1].read_text()))
    assert ct.modality == "ct" and isinstance(ct.lungs, CtLungs) and isinstance(ct.infection, Infection)
    assert ct.lungs.volume_ml > 1000 and ct.lungs.coverage["complete"] is False
    (nodule,) = ct.nodules
    assert nodule.diameter_mm > 10 and nodule.volume_mm3 > 1000 and nodule.slice_index == nodule["slice_index"]
    assert cxr.modality == "cxr" and isinstance(cxr.lungs, CxrLungs) and isinstance(cxr.classification, Classification)
    assert cxr.lungs.area_px > 0 and cxr.classification.predicted == cxr.classification["predicted"]
    assert cxr.detections == [] and ct.detections is None and ct.classification is None


def test_assigned_dicts_become_sections_and_item_assignment_sets_fields():
    f = Findings(input={"path": "x"}, modality="cxr", detections=[DETECTION])
    (det,) = f.detections
    assert isinstance(det, Detection) and det.score == 0.81 and det == DETECTION
    f.nodules = [{"center_xyz_mm": [1.0, 2.0, 3.0], "center_zyx_index": [4.0, 5.0, 6.0], "diameter_mm": 7.5,
                  "volume_mm3": 220.9, "probability": 0.9, "slice_index": 4}]
    (n,) = f.nodules
    assert isinstance(n, Nodule) and "mask_method" not in n and "key_slice_image" not in n.to_dict()
    n["mask_method"] = "nodule (NoduleNet mask head)"
    n["key_slice_image"] = "nodule_1_axial_4.png"
    assert list(f.to_dict()["nodules"][0])[-2:] == ["mask_method", "key_slice_image"]
    assert f.to_dict()["detections"] == [DETECTION]


def test_unset_optional_fields_are_left_out_and_none_is_null():
    slice_inf = Infection(mask="infection_mask.png", labels=["background", "infection"], area_px=12, area_cm2=None,
                          percent_of_lung=None)
    assert slice_inf.to_dict() == {"mask": "infection_mask.png", "labels": ["background", "infection"],
                                   "area_px": 12, "area_cm2": None, "percent_of_lung": None}
    lungs = CtLungs(mask="lung_mask.png", area_px=40, method="HU threshold")
    assert list(lungs) == ["mask", "area_px", "method"] and "volume_ml" not in lungs
    again = pickle.loads(pickle.dumps(Findings(input={}, modality="ct", lungs=lungs, infection=slice_inf)))
    assert again.lungs.to_dict() == lungs.to_dict() and again.infection.to_dict() == slice_inf.to_dict()


def test_infection_per_class_volumes_are_keys_of_the_section():
    d = {"mask": "m.nii.gz", "labels": ["background", "ggo", "consolidation"], "volume_ml": 3.0,
         "percent_of_lung": 0.2, "n_slices_with_infection": 4, "key_slice": 7, "ggo_ml": 2.0,
         "consolidation_ml": 1.0, "scope": "s", "postprocessing": {"volume_ml": 3.0}}
    inf = Infection.from_dict(d)
    assert inf.class_volumes == {"ggo_ml": 2.0, "consolidation_ml": 1.0} and "class_volumes" not in inf
    assert json.dumps(inf.to_dict()) == json.dumps(d) and inf["ggo_ml"] == 2.0


@pytest.mark.parametrize(("kind", "data", "message"), [
    (Detection, {**DETECTION, "score": "high"}, "Detection.score: expected float, got str"),
    (Detection, {**DETECTION, "score": True}, "Detection.score"),
    (Detection, {**DETECTION, "box_xyxy": "1,2,3,4"}, "Detection.box_xyxy"),
    (Detection, {**DETECTION, "colour": "red"}, "Detection.from_dict: unknown key 'colour'"),
    (Detection, {"label": "x", "name": "y", "score": 0.5}, "box_xyxy"),
    (Detection, [1, 2], "Detection.from_dict: expected a dict, got list"),
    (CxrLungs, {"mask": "m.png", "area_px": 1.5, "area_cm2": None, "n_components": 2, "convention": "c"},
     "CxrLungs.area_px: expected int, got float"),
    (Infection, {"mask": "m", "labels": ["background"], "volume_ml": 1.0, "bogus": 1}, "unknown key 'bogus'"),
])
def test_a_wrong_key_or_type_is_a_clear_type_error(kind, data, message):
    with pytest.raises(TypeError, match=message.replace("(", r"\(")):
        kind.from_dict(data)


def test_wrong_values_are_refused_on_assignment():
    f = Findings(input={}, modality="ct", nodules=[])
    with pytest.raises(TypeError, match="Findings.nodules: expected a list"):
        f.nodules = {"center_xyz_mm": [0, 0, 0]}
    f.infection = {"mask": "m", "labels": ["background", "infection"]}
    with pytest.raises(TypeError, match="Infection.volume_ml"):
        f.infection["volume_ml"] = "3 mL"
    with pytest.raises(TypeError, match="unknown key 'volume'"):
        f.infection["volume"] = 3.0
    with pytest.raises(TypeError, match="Findings.infection: expected Infection"):
        f.infection = Detection.from_dict(DETECTION)
