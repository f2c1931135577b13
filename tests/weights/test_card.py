"""Typed model cards (:mod:`pulmo.weights.card`): the fields of every bundled card, the checks that refuse a
malformed card (a WeightsError naming the file, exit code 4), the Mapping compatibility of :class:`ModelCard`
and :meth:`InputSpec.prepare` equal bit for bit to the preprocessing lung-seg and cxr-detect had before."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from pulmo.errors import InputError, NotAvailableError, WeightsError
from pulmo.io import Image2D, read_image
from pulmo.transforms import normalize_cxr, resize_image, resize_probability
from pulmo.weights import WEIGHTS_DIR, InputSpec, ModelCard, list_weights, resolve_card, save_weights
from tests.conftest import data_path, synthetic_cxr

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CXR = ROOT / "examples" / "cxr" / "00001369_000.png"
BUNDLED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.json"))


def _raw(name: str) -> dict:
    return json.loads((WEIGHTS_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize("name", BUNDLED)
def test_typed_fields_of_every_bundled_card(name):
    raw = _raw(name)
    card = resolve_card(name)
    assert isinstance(card, ModelCard) and isinstance(card, Mapping)
    assert card.name == raw["name"] and card.task == raw["task"] and card.architecture == raw["architecture"]
    assert card.labels == raw["labels"] and all(isinstance(x, str) for x in card.labels)
    assert card.display_names == raw.get("display_names", {})
    numeric = {k: v for k, v in raw["thresholds"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert card.thresholds == numeric and numeric, "every bundled card has a numeric threshold"
    assert card.sha256 == raw["sha256"] and len(card.sha256) == 64
    assert card.file == raw["file"] and card.path == WEIGHTS_DIR / raw["file"] and card.path.is_file()
    assert card.card_path == WEIGHTS_DIR / f"{name}.json"
    assert card.model_kwargs == raw.get("model_kwargs", {}) and card.training == raw["training"]
    assert card.metrics == raw["metrics"] and card.scope == raw["scope"] and card.license == raw["license"]
    spec, block = card.input, raw["input"]
    assert isinstance(spec, InputSpec)
    assert spec.size == (tuple(block["size"]) if "size" in block else None)
    assert spec.channels == block.get("channels") and spec.normalisation == block.get("normalisation", "")
    assert dict(spec.extra) == {k: v for k, v in block.items() if k not in ("size", "channels", "normalisation")}
    assert spec.to_dict() == block
    assert (spec.recipe is not None) == (raw["task"] in ("lung-seg", "cxr-detect", "cxr-classify", "input-gate"))


def test_typed_input_accessors():
    nodule, nodule_seg = resolve_card("nodule").input, resolve_card("nodule-seg").input
    assert nodule.spacing_mm == 1.5 and nodule.window_hu == (-1200.0, 600.0) and nodule.size is None
    assert nodule.anchors_mm == (5.0, 10.0, 20.0, 30.0) and nodule.context is None
    assert nodule_seg.window_hu == (-1000.0, 900.0) and nodule_seg.context == 1 and nodule_seg.channels == 3
    assert nodule_seg.pixel_mm_est == 0.69 and nodule_seg.spacing_mm is None
    clf = resolve_card("cxr-classify").input
    assert (clf.crop, clf.equalize, clf.lung_mask, clf.crop_margin) == ("lungs", True, False, 0.1)
    lung = resolve_card("lung-seg-unet").input
    assert (lung.crop, lung.equalize, lung.lung_mask, lung.window_hu) == (None, False, False, None)
    assert lung.get("resize") == "bilinear, aspect not kept" and lung.get("size") == (256, 256)
    gate = resolve_card("input-gate")
    assert gate.display_names["cxr"] == "frontal chest radiograph" and gate.display_name("other") == "neither"
    assert resolve_card("nodule").display_name("nodule") == "nodule"


def test_list_weights_returns_model_cards():
    cards = list_weights()
    assert [c.card_path for c in cards] == sorted(WEIGHTS_DIR.glob("*.json"))  # sorted by card file
    assert all(isinstance(c, ModelCard) for c in cards)


# -- refusals ----------------------------------------------------------------------------------------------------


def _card_file(tmp_path: Path, **changes) -> Path:
    """A copy of the bundled lung-seg card under tmp_path (its weight file is not needed to read the card);
    ``changes`` set keys, None removes one."""
    card = _raw("lung-seg-unet")
    card["file"] = "w.safetensors"
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    path = tmp_path / "w.json"
    path.write_text(json.dumps(card))
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"sha256": None}, "a sha256 of the weight file is required"),
    ({"sha256": ""}, "a sha256 of the weight file is required"),
    ({"sha256": "abc123"}, "64 hex digits"),
    ({"sha256": "g" * 64}, "64 hex digits"),
    ({"sha256": 12345}, "64 hex digits"),
    ({"architecture": 42}, "'architecture' = '42' is not a string"),
    ({"architecture": None}, "no 'architecture'"),
    ({"task": ["lung-seg"]}, "'task'"),
    ({"name": None}, "'name'"),
    ({"labels": "lung"}, "'labels' must be a list"),
    ({"input": [256, 256]}, "'input' must be an object"),
    ({"thresholds": 0.5}, "'thresholds' must be an object"),
    ({"input": {"size": [256, "256"]}}, "input.size"),
    ({"input": {"size": [256, 256], "channels": 0}}, "input.channels"),
])
def test_a_malformed_card_is_a_weights_error_naming_the_file(tmp_path, changes, message):
    card_path = _card_file(tmp_path, **changes)
    with pytest.raises(WeightsError) as exc:
        resolve_card(card_path.with_suffix(".safetensors"))
    assert exc.value.exit_code == 4
    assert str(card_path) in str(exc.value) and message in str(exc.value)


def test_from_dict_checks_a_card_not_read_from_disk():
    raw = _raw("cxr-detect")
    card = ModelCard.from_dict(raw, "somewhere/cxr-detect.json")
    assert card.path is None and card.card_path is None and card.where == "somewhere/cxr-detect.json"
    del raw["sha256"]
    with pytest.raises(WeightsError, match=r"somewhere/cxr-detect\.json.*sha256 of the weight file is required"):
        ModelCard.from_dict(raw, "somewhere/cxr-detect.json")
    with pytest.raises(WeightsError, match="JSON object"):
        ModelCard.from_dict([1, 2], "x.json")  # type: ignore[arg-type]


def test_a_wrongly_typed_input_value_is_a_weights_error_when_read(tmp_path):
    card_path = _card_file(tmp_path, input={"size": [256, 256], "spacing_mm": "1.5 mm", "equalize": "yes"})
    spec = resolve_card(card_path.with_suffix(".safetensors")).input
    with pytest.raises(WeightsError, match=r"input\.spacing_mm"):
        _ = spec.spacing_mm
    with pytest.raises(WeightsError, match=r"input\.equalize"):
        _ = spec.equalize


# -- Mapping compatibility -----------------------------------------------------------------------------------------


def test_a_model_card_reads_like_the_dict_it_replaces():
    raw = _raw("lung-seg-unet")
    card = resolve_card("lung-seg-unet")
    plain = dict(card)
    assert plain.pop("_path") == str(WEIGHTS_DIR / raw["file"]) and plain.pop("_card") == str(card.card_path)
    assert plain == raw
    assert card["labels"] == raw["labels"] and card.get("thresholds") == raw["thresholds"]
    assert card.get("no-such-key") is None and card.get("no-such-key", 3) == 3 and "sha256" in card
    assert len(card) == len(raw) + 2 and set(card) == set(raw) | {"_path", "_card"}
    assert card["input"]["size"] == [256, 256] and card == resolve_card("lung-seg-unet")
    assert json.loads(json.dumps(dict(card))) == dict(card)
    assert {**card}["name"] == "lung-seg-unet"


def test_a_model_card_is_read_only_and_to_dict_is_a_mutable_copy():
    card = resolve_card("cxr-detect")
    with pytest.raises(TypeError):
        card["sha256"] = "0" * 64  # type: ignore[index]
    with pytest.raises(TypeError):
        del card["sha256"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        card.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        card.update({})  # type: ignore[attr-defined]
    mutable = card.to_dict()
    mutable["thresholds"]["score"] = 0.99
    del mutable["sha256"]
    assert card.thresholds["score"] == 0.35 and len(card.sha256) == 64
    training = card.training
    training["seed"] = -1  # the typed properties are copies
    assert card["training"].get("seed") != -1
    data = card.to_dict()
    built = ModelCard(data)
    data["labels"].append("x")  # the card copied its data
    assert built.labels == card.labels


def test_a_model_card_survives_pickle_and_deepcopy():
    card = resolve_card("nodule-seg")
    for other in (pickle.loads(pickle.dumps(card)), copy.deepcopy(card)):
        assert isinstance(other, ModelCard) and other == card and other.input == card.input
    assert "nodule-seg" in repr(card)


def test_save_weights_writes_a_card_resolve_card_accepts(tmp_path):
    model = torch.nn.Conv2d(1, 1, 1)
    written = save_weights(model, tmp_path / "t.safetensors", {"name": "t", "architecture": "unet-rsna", "task": "x",
                                                              "labels": ["a"], "thresholds": {"a": 0.5, "rule": "-"}})
    assert isinstance(written, dict)  # cards built during training stay plain dicts
    card = resolve_card(tmp_path / "t.safetensors")
    assert card.sha256 == written["sha256"] and card.thresholds == {"a": 0.5} and card.input == InputSpec()


# -- the executable input ------------------------------------------------------------------------------------------


def test_prepare_is_the_old_lung_seg_preprocessing_bit_for_bit():
    image = read_image(EXAMPLE_CXR)
    card = resolve_card("lung-seg-unet")
    old = resize_image(normalize_cxr(image.pixels), tuple(card["input"].get("size", (256, 256))))
    new = card.input.prepare(image)
    assert new.dtype == np.float32 and new.shape == (256, 256)
    assert np.array_equal(new, old) and new.tobytes() == old.tobytes()
    assert np.array_equal(card.input.prepare(image.pixels), old)


def test_lung_segmenter_probabilities_unchanged():
    from pulmo.models import model_device
    from pulmo.tasks.lung_seg import LungSegmenter

    image = read_image(EXAMPLE_CXR)
    seg = LungSegmenter(backend="torch")  # the PyTorch path (the ONNX one is compared in tests/runtime)
    assert isinstance(seg.card, ModelCard) and seg.size == (256, 256)
    with torch.no_grad():  # the code of LungSegmenter.probabilities before it used card.input.prepare
        x = resize_image(normalize_cxr(image.pixels), tuple(seg.card.get("input", {}).get("size", (256, 256))))
        prob = torch.sigmoid(seg.model(torch.from_numpy(x)[None, None].to(model_device(seg.model))))
        old = resize_probability(prob, image.shape)[0].cpu().numpy()
    assert np.array_equal(seg.probabilities(image), old)


def test_lung_segmenter_with_a_plain_training_card():
    from pulmo.tasks.lung_seg import LungSegmenter

    seg = LungSegmenter(model=torch.nn.Identity(), card={"name": "t", "input": {"size": [32, 48]}})
    assert seg.size == (32, 48) and seg.input.recipe is not None
    assert LungSegmenter(model=torch.nn.Identity(), card={}).size == (256, 256)
    x = seg.input.prepare(read_image(EXAMPLE_CXR))
    assert x.shape == (32, 48)


def test_cxr_detect_prepare_image_unchanged():
    from pulmo.tasks.cxr_detect import prepare_image

    image = read_image(EXAMPLE_CXR)
    card = resolve_card("cxr-detect")
    size = int(card["input"]["size"][0])
    h, w = image.pixels.shape
    old_x, old_scale = resize_image(normalize_cxr(image.pixels), (size, size)).astype(np.float32), (w / size, h / size)
    for arg in (size, card.input):
        x, scale = prepare_image(image, arg)
        assert x.dtype == np.float32 and np.array_equal(x, old_x) and scale == old_scale
    with pytest.raises(InputError, match="greyscale"):
        prepare_image(Image2D(pixels=np.zeros((8, 8, 3)), spacing=None, source={"path": "x.png"}), card.input)


@pytest.mark.parametrize("name", ["lesion-seg", "nodule", "nodule-seg"])
def test_prepare_refuses_an_input_it_cannot_run(name):
    with pytest.raises(NotAvailableError) as exc:
        resolve_card(name).input.prepare(np.zeros((16, 16), np.float32))
    assert exc.value.exit_code == 5 and name in str(exc.value) and "own code" in str(exc.value)


def test_prepare_refuses_a_colour_image():
    with pytest.raises(InputError, match="greyscale"):
        resolve_card("lung-seg-unet").input.prepare(Image2D(pixels=np.zeros((8, 8, 3)), source={"path": "c.png"}))
    assert InputSpec.cxr(64).prepare(np.ones((10, 20), np.float32)).shape == (64, 64)


# -- the classifier's and the input gate's recipes -------------------------------------------------------------------


def test_prepare_runs_the_classifier_recipe_on_a_generated_image():
    card = resolve_card("cxr-classify")
    assert card.input.recipe == "classifier_input" and card.input.crop == "lungs"
    image, lungs = synthetic_cxr(96, 0)
    x = card.input.prepare(Image2D(image.astype(np.float32), None, {}), lungs=lungs)
    assert x.dtype == np.float32 and x.shape == tuple(card["input"]["size"]) == (224, 224)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # histogram-equalised: the range is used
    assert np.array_equal(card.input.prepare(image.astype(np.float32), lungs=lungs), x)  # pixels alone


def test_the_classifier_recipe_without_a_lung_mask_is_a_clear_error():
    card = resolve_card("cxr-classify")
    with pytest.raises(InputError, match=r"needs the image's lung mask: pass prepare\(image, lungs=mask\)") as exc:
        card.input.prepare(np.random.default_rng(0).random((64, 64), np.float32))
    assert exc.value.exit_code == 3 and "cxr-classify" in str(exc.value) and "crop='lungs'" in str(exc.value)
    # without cropping or masking the recipe needs no lung mask
    whole = InputSpec.classifier(32, crop="none", equalize=True).prepare(np.arange(40 * 50.0).reshape(40, 50))
    assert whole.shape == (32, 32) and whole.dtype == np.float32
    with pytest.raises(InputError, match="lung mask"):
        InputSpec.classifier(32, crop="none", lung_mask=True).prepare(np.ones((40, 50), np.float32))
    with pytest.raises(InputError, match="shape"):
        card.input.prepare(np.ones((40, 50), np.float32), lungs=np.ones((40, 49), bool))


def test_prepare_runs_the_gate_recipe_on_a_generated_image():
    card = resolve_card("input-gate")
    assert card.input.recipe == "gate_input"
    pixels = np.random.default_rng(1).normal(1000, 300, (700, 600)).astype(np.int16)
    x = card.input.prepare(pixels)
    assert x.dtype == np.float32 and x.shape == tuple(card["input"]["size"]) == (128, 128)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > x.min()
    assert not card.input.prepare(np.full((50, 60), 7.0)).any()  # a constant picture maps to zeros


def test_prepare_equals_what_the_classifier_and_the_gate_feed_their_models():
    """On a real chest X-ray: the classifier's and the gate's model inputs are ``card.input.prepare`` bit for bit."""
    from pulmo.tasks.cxr_classify import Predictor as ClassifyPredictor
    from pulmo.tasks.input_gate import Predictor as GatePredictor

    image = read_image(data_path("cxr", "chest_xray_pneumonia", "train", "PNEUMONIA",
                                 "person1001_bacteria_2932.jpeg"))
    fed = []  # hooks on the PyTorch modules: the torch backend (the ONNX one feeds the same arrays, tests/runtime)
    clf = ClassifyPredictor.from_weights(backend="torch")
    hook = clf.model.register_forward_hook(lambda _m, inp, _out: fed.append(inp[0][0, 0].numpy().copy()))
    try:
        pred = clf.predict(image)
    finally:
        hook.remove()
    x = clf.card.input.prepare(image, lungs=pred["lungs"])
    assert np.array_equal(fed[0], x) and np.array_equal(pred["input"], x) and x.shape == (224, 224)
    gate = GatePredictor.from_weights(backend="torch")
    hook = gate.model.register_forward_hook(lambda _m, inp, _out: fed.append(inp[0][0, 0].numpy().copy()))
    try:
        gate.predict(image)
    finally:
        hook.remove()
    assert np.array_equal(fed[1], gate.card.input.prepare(image)) and fed[1].shape == (128, 128)
