"""Training presets: the five reports' recipes listed, resolved with --dry-run, and each one's model built and
trained for one step on real data (shortened: one step, small inputs; a pipeline test, not a claim of accuracy)."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from PIL import Image

from pulmo.cli import main
from pulmo.presets import list_presets, load_preset
from tests.conftest import ROOT, data_path, synthetic_cxr, tiny_tbx11k

PRESETS = {"rsna-pneumonia-unet": "cxr-detect-unet", "chestx-det-retinanet-r101": "cxr-detect",
           "nodulenet-lidc": "nodule", "covid-cxr-lungseg-classify": "cxr-classify",
           "covid-ct-res-attention-unet": "lesion-seg"}

#: hyper-parameters each report prints, as --dry-run must show them
REPORTED = {
    "rsna-pneumonia-unet": {"architecture": "unet-rsna-pneumonia", "depth": 5, "elastic": "report", "epochs": 1},
    "chestx-det-retinanet-r101": {"architecture": "retinanet-r101-fpn", "size": 1024, "fpn_channels": 256,
                                  "batch_size": 2, "epochs": 10, "format": "chestx-det10"},
    "nodulenet-lidc": {"channels": [32, 64, 64, 64], "blocks": [2, 2, 3, 3], "back_channels": [64, 128],
                       "back_blocks": [3, 3]},
    "covid-cxr-lungseg-classify": {"architecture": "densenet121", "lung_mask": True, "optimizer": "adam",
                                   "lr": 0.002, "val_fraction": 0.2, "test_fraction": 0.1},
    "covid-ct-res-attention-unet": {"architecture": "res-attention-unet", "decoder": "full", "loss": "bce",
                                    "optimizer": "adam", "lr": 0.0001, "batch_size": 2, "epochs": 200, "size": 256},
}


def test_list_presets_names_the_five_with_their_source(capsys):
    assert {p["name"]: p["task"] for p in list_presets()} == PRESETS
    assert main(["train", "--list-presets"]) == 0
    out = capsys.readouterr().out
    for name, task in PRESETS.items():
        assert f"pulmo train {task} --preset {name}" in out
    assert "ResNet-101 FPN P3-P7" in out and "BCEWithLogits" in out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dry_run_prints_the_reports_hyperparameters_and_flags_override_them(name, capsys):
    task = PRESETS[name]
    assert main(["train", task, "--preset", name, "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["preset"] == name and resolved["task"] == task and resolved["deviations"]
    config = resolved["config"]
    for key, value in REPORTED[name].items():
        assert config[key] == value, (key, config[key])
    assert config["out_dir"] == f"runs/{name}" and config["name"] == name
    assert main(["train", task, "--preset", name, "--dry-run", "--epochs", "3", "--lr", "0.5"]) == 0
    overridden = yaml.safe_load(capsys.readouterr().out)["config"]
    assert overridden["epochs"] == 3 and overridden["lr"] == 0.5  # flags win over the preset


def test_wrong_task_or_unknown_preset_is_one_clear_error(capsys):
    assert main(["train", "nodule", "--preset", "covid-cxr-lungseg-classify", "--dry-run"]) == 2
    assert "is for pulmo train cxr-classify, not nodule" in capsys.readouterr().err
    assert main(["train", "nodule", "--preset", "nope", "--dry-run"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_preset_files_say_their_deviations_in_the_header():
    from importlib import resources

    for name in PRESETS:
        text = resources.files("pulmo.presets").joinpath(f"{name}.yaml").read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        assert header[0].startswith(f"# {name}:") and any("Deviations" in line for line in header)
        assert load_preset(name)["deviations"]


def _classify_folders(tmp_path):
    root = tmp_path / "cls"
    for label, shift in (("normal", 0), ("covid19", 60)):
        (root / label).mkdir(parents=True)
        for i in range(20):
            image, _ = synthetic_cxr(64, abs(shift) + i)
            Image.fromarray(image).save(root / label / f"{i}.png")
    return root


def _one_step_args(name, tmp_path):
    """Data flags (real data where the task needs it) and shortening flags for one training step."""
    short = ["--epochs", "1", "--max-steps-per-epoch", "1", "--out-dir", str(tmp_path / "run")]
    if name == "rsna-pneumonia-unet":  # RSNA is label files only here: the same route on real TBX11K boxes
        return ["--data", str(tiny_tbx11k(tmp_path)), "--format", "tbx11k", "--annotations",
                "annotations/json/tb.json", "--size", "128", "--patch", "64", "--tile", "64", "--batch-size", "2",
                *short]
    if name == "chestx-det-retinanet-r101":
        return ["--data", str(data_path("cxr", "ChestX-Det10_nih_sample")), "--size", "256", *short]
    if name == "nodulenet-lidc":
        config = tmp_path / "short.yaml"  # --config layered over the preset: keys without a flag
        config.write_text(yaml.safe_dump({"val_samples": 2}))
        return ["--backgrounds", str(ROOT / "examples" / "ct" / "LIDC-IDRI-0001"), "--patch", "32",
                "--samples-per-epoch", "2", "--config", str(config), *short]
    if name == "covid-cxr-lungseg-classify":
        return ["--folders", str(_classify_folders(tmp_path)), "--size", "64", "--batch-size", "4",
                "--cache-dir", str(tmp_path / "cache"), *short]
    return ["--data", str(data_path("ct", "COVID-SemiSeg")), *short]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_builds_its_model_and_trains_one_step(name, tmp_path):
    task = PRESETS[name]
    assert main(["--no-progress", "train", task, "--preset", name, *_one_step_args(name, tmp_path)]) == 0
    run = tmp_path / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    preset = load_preset(name)["config"]
    for key in ("architecture", "optimizer", "lr", "channels", "blocks", "loss", "decoder", "lung_mask"):
        if key in preset:
            assert config[key] == preset[key], key  # the run used the report's settings
    card = json.loads((run / f"{name}.json").read_text())
    assert card["name"] == name and (run / f"{name}.safetensors").is_file()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["train_loss"] == history[0]["train_loss"]  # one epoch, a finite loss
    if name == "covid-cxr-lungseg-classify":
        # the report's two-stage system in analyze: the user's lung-masked classifier gets the bundled lung mask
        os.environ.pop("PULMO_WEIGHTS", None)
        out = tmp_path / "analyzed"
        try:
            assert main(["--no-progress", "analyze", str(ROOT / "examples" / "cxr" / "00022084_000.png"), "--out",
                         str(out), "--weights", f"cxr-classify={run / f'{name}.safetensors'}"]) == 0
        finally:
            os.environ.pop("PULMO_WEIGHTS", None)
        c = json.loads((out / "findings.json").read_text())["classification"]
        assert c["lung_masked_input"] is True and set(c["probabilities"]) >= {"normal", "covid19"}
