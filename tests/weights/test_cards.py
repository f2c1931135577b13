"""Model cards: a sha256 is required, ``file`` must be a plain name beside the card, and every refusal is a
WeightsError (exit code 4), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from pulmo.errors import WeightsError
from pulmo.models import create_model
from pulmo.weights import WEIGHTS_DIR, list_weights, load_into, resolve_card, save_weights, sha256_of


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict]:
    """A valid weight file and card (``w.safetensors`` + ``w.json``) for the registered ``unet-rsna``."""
    model = create_model("unet-rsna", features=4)
    card = save_weights(model, tmp_path / "w.safetensors", {"name": "w", "architecture": "unet-rsna",
                                                            "model_kwargs": {"features": 4}, "task": "test"})
    return tmp_path / "w.json", card


def _rewrite(card_path: Path, **changes) -> None:
    card = json.loads(card_path.read_text())
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    card_path.write_text(json.dumps(card))


def test_every_bundled_card_has_a_matching_sha256_and_a_plain_file():
    cards = list_weights()
    assert cards, "no bundled weights"
    for card in cards:
        assert len(card.get("sha256", "")) == 64, card["name"]
        assert "/" not in card["file"] and "\\" not in card["file"] and card["file"] != ".."
        path = Path(card["_path"])
        assert path.parent == WEIGHTS_DIR and path.is_file(), card["name"]
        assert sha256_of(path) == card["sha256"], card["name"]


def test_a_valid_card_loads(saved):
    card_path, _ = saved
    model = create_model("unet-rsna", weights=str(card_path.with_suffix(".safetensors")))
    assert not model.training


@pytest.mark.parametrize("value", [None, "", "abc123"])
def test_a_card_without_a_valid_sha256_is_refused(saved, value):
    card_path, _ = saved
    if value is None:
        _rewrite(card_path, sha256=None)
    else:
        _rewrite(card_path, sha256=value)
    with pytest.raises(WeightsError) as exc:
        create_model("unet-rsna", weights=str(card_path.with_suffix(".safetensors")))
    assert exc.value.exit_code == 4
    message = str(exc.value)
    assert str(card_path) in message and "sha256" in message
    if not value:
        assert "required" in message
    else:
        assert "64 hex digits" in message


def test_load_into_refuses_a_card_dict_without_sha256(saved):
    card_path, _ = saved
    card = resolve_card(card_path.with_suffix(".safetensors")).to_dict()  # a ModelCard is read-only
    del card["sha256"]
    with pytest.raises(WeightsError, match="sha256 of the weight file is required"):
        load_into(Tiny(), card)


@pytest.mark.parametrize("file_value", ["../w.safetensors", "sub/w.safetensors", "sub\\w.safetensors",
                                        "/etc/passwd", "C:\\w.safetensors", "..", ".", "", 42, None])
def test_a_card_whose_file_is_a_path_is_a_weights_error(saved, file_value):
    card_path, _ = saved
    card = json.loads(card_path.read_text())
    card["file"] = file_value
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError) as exc:
        resolve_card(card_path.with_suffix(".safetensors"))
    assert exc.value.exit_code == 4
    assert str(card_path) in str(exc.value) and "plain name" in str(exc.value)


def test_other_broken_cards_are_weights_errors(saved):
    card_path, _ = saved
    weights = str(card_path.with_suffix(".safetensors"))
    card_path.write_text("[1, 2]")
    with pytest.raises(WeightsError, match="JSON object"):
        resolve_card(weights)
    card_path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(WeightsError, match="unreadable model card"):
        resolve_card(weights)
    card_path.write_text(json.dumps({"name": "w", "file": "w.safetensors", "sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="architecture"):
        create_model("unet-rsna", weights=weights)


def test_a_sha256_mismatch_is_still_refused(saved):
    card_path, _ = saved
    _rewrite(card_path, sha256="0" * 64)
    with pytest.raises(WeightsError, match="does not match"):
        create_model("unet-rsna", weights=str(card_path.with_suffix(".safetensors")))
