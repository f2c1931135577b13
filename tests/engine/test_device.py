"""The engine's device abstraction: TrainConfig.device, resolve_device, the DDP backend choice, moving nested
batches, and a tiny model trained through fit on the CPU (this machine: a CUDA build of torch without a GPU)."""

from __future__ import annotations

import collections
import json

import pytest
import torch
import yaml
from torch.utils.data import Dataset

from pulmo.engine import TrainConfig, distributed, fit, load_config
from pulmo.engine.distributed import choose_backend, resolve_device
from pulmo.engine.trainer import to_device
from pulmo.errors import ConfigError


@pytest.fixture
def no_torchrun(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def _fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)


class _Pairs(Dataset):
    """Items ``{"image": (2, 8, 8), "label": (1, 8, 8), "extra": {"boxes": [(1, 4)]}}``: a nested batch."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(2, 8, 8, generator=g), "label": torch.rand(1, 8, 8, generator=g),
                "extra": {"boxes": [torch.full((1, 4), float(i))]}}


def _fit_tiny(tmp_path, seen, **config):
    model = torch.nn.Conv2d(2, 1, 3, padding=1)

    def loss_fn(m, batch):
        seen.append({
            "autocast_cpu": torch.is_autocast_enabled("cpu"),
            "autocast_dtype": torch.get_autocast_dtype("cpu"),
            "devices": {t.device.type for t in (batch["image"], batch["label"], batch["extra"]["boxes"][0],
                                                 next(m.parameters()))},
        })
        out = m(batch["image"])
        seen[-1]["out_dtype"] = out.dtype
        return torch.nn.functional.mse_loss(out.float(), batch["label"])

    def evaluate_fn(m):
        seen.append({"eval_device": next(m.parameters()).device.type, "grad": torch.is_grad_enabled()})
        return {"score": 0.0}

    cfg = TrainConfig(**{"epochs": 1, "batch_size": 2, "out_dir": str(tmp_path / "run"), "progress": False, **config})
    return fit(model, _Pairs(), loss_fn, evaluate_fn, cfg, monitor="score")


# ---------------------------------------------------------------------------------------------- config

def test_config_device_default_and_validation():
    assert TrainConfig().device == "auto"
    for name in ("cpu", "cuda", "auto"):
        assert TrainConfig(device=name).device == name
    with pytest.raises(ConfigError, match=r"device 'gpu'.*auto, cpu, cuda"):
        TrainConfig(device="gpu")
    with pytest.raises(ConfigError, match="'tpu'"):  # from YAML / command-line overrides as well
        load_config(TrainConfig, None, {"device": "tpu"})
    assert load_config(TrainConfig, None, {"device": "cpu"}).device == "cpu"


# ---------------------------------------------------------------------------------------------- resolve_device

def test_auto_resolves_to_the_cpu_on_this_machine(no_torchrun):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_clear_config_error(no_torchrun, monkeypatch):
    _fake_gpus(monkeypatch, 0)  # also what an unpatched CUDA build without a GPU reports
    with pytest.raises(ConfigError, match=r"device 'cuda': no CUDA GPU is available.*use device cpu or auto"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'mps'"):
        resolve_device("mps")


def test_cuda_on_this_machine_fails_before_training(no_torchrun, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        _fit_tiny(tmp_path, [], device="cuda")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resolve_device_with_gpus(no_torchrun, monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    # under torchrun each process takes the GPU of its LOCAL_RANK
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    # more processes on the node than GPUs: auto falls back to the CPU on every rank, cuda is an error
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="LOCAL_RANK 3"):
        resolve_device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cpu")  # rank 0 has a GPU, but the node lacks one for rank 3


# ---------------------------------------------------------------------------------------------- backend

def test_backend_gloo_for_cpu_and_cuda_without_gpu(no_torchrun, monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert choose_backend(torch.device("cpu")) == "gloo"
    assert choose_backend("cpu") == "gloo"
    assert choose_backend(torch.device("cuda", 0)) == "gloo"


def test_backend_nccl_only_with_a_gpu_for_the_rank(no_torchrun, monkeypatch):
    _fake_gpus(monkeypatch, 1)
    assert choose_backend(torch.device("cuda", 0)) == "nccl"
    assert choose_backend(torch.device("cpu")) == "gloo"  # a CPU run on a GPU machine stays on gloo
    monkeypatch.setenv("LOCAL_RANK", "1")  # a second process on a one-GPU node
    assert choose_backend(torch.device("cuda", 1)) == "gloo"
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert choose_backend(torch.device("cuda", 0)) == "gloo"


def test_setup_without_torchrun_starts_no_process_group(no_torchrun):
    assert distributed.setup(torch.device("cpu")) == (0, 1)
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------------------------------- batches

def test_to_device_moves_every_tensor_of_a_nested_batch():
    Pair = collections.namedtuple("Pair", "a b")
    batch = {"image": torch.zeros(2, 1, 4, 4), "label": torch.ones(2, dtype=torch.long),
             "targets": [{"boxes": torch.zeros(1, 4), "labels": torch.ones(1, dtype=torch.long)},
                         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
             "pair": Pair(torch.zeros(1), (torch.zeros(2), "name")), "id": ["a", "b"], "n": 2}
    # the meta device stands in for a GPU: a tensor left behind keeps device "cpu"
    moved = to_device(batch, torch.device("meta"))
    tensors = [moved["image"], moved["label"], moved["pair"].a, moved["pair"].b[0]]
    tensors += [t for target in moved["targets"] for t in target.values()]
    assert len(tensors) == 8 and all(t.device.type == "meta" for t in tensors)
    assert moved["label"].dtype == torch.long and moved["targets"][1]["boxes"].shape == (0, 4)
    assert isinstance(moved["pair"], Pair) and isinstance(moved["targets"], list)
    assert moved["pair"].b[1] == "name" and moved["id"] == ["a", "b"] and moved["n"] == 2
    assert batch["image"].device.type == "cpu"  # the input is not modified
    same = to_device(batch, "cpu")
    assert same["image"] is batch["image"]  # already there: no copy


def test_lung_seg_loss_follows_its_inputs_device():
    """The loss's own tensors (channel weights) go to the logits' device (meta: any CPU tensor mixed in fails)."""
    from pulmo.tasks.lung_seg import segmentation_loss

    def args(device):
        g = torch.Generator().manual_seed(0)
        t = [torch.randn(2, 2, 8, 8, generator=g), (torch.rand(2, 2, 8, 8, generator=g) > 0.5).float(),
             torch.ones(2, 2, 8, 8)]
        return [x.to(device) for x in t]

    channel_weight = torch.tensor([1.0, 0.5])
    assert segmentation_loss(*args("meta"), channel_weight).device.type == "meta"
    cpu = segmentation_loss(*args("cpu"), channel_weight)
    assert cpu.device.type == "cpu" and torch.isfinite(cpu)


# ---------------------------------------------------------------------------------------------- fit

def test_fit_auto_trains_on_the_cpu_here(no_torchrun, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    seen = []
    summary = _fit_tiny(tmp_path, seen, device="auto")
    steps = [s for s in seen if "devices" in s]
    assert len(steps) == 2 and all(s["devices"] == {"cpu"} for s in steps)
    assert all(not s["autocast_cpu"] and s["out_dtype"] == torch.float32 for s in steps)
    assert [s for s in seen if "eval_device" in s] == [{"eval_device": "cpu", "grad": False}]
    assert summary["epochs_run"] == 1 and (tmp_path / "run" / "best.safetensors").is_file()


def test_fit_puts_model_and_batches_on_the_resolved_device(no_torchrun, tmp_path, monkeypatch):
    """With the meta device standing in for a GPU, the loss sees the model and every batch tensor there."""
    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device("meta"))

    class _Stop(Exception):
        pass

    seen = []

    def loss_fn(m, batch):
        seen.append({t.device.type for t in (batch["image"], batch["label"], batch["extra"]["boxes"][0],
                                             *m.parameters())})
        raise _Stop

    cfg = TrainConfig(epochs=1, batch_size=2, out_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(_Stop):
        fit(torch.nn.Conv2d(2, 1, 3, padding=1), _Pairs(), loss_fn, lambda m: {"score": 0.0}, cfg, monitor="score")
    assert seen == [{"meta"}]


def test_fit_cpu_bf16_autocasts_on_the_cpu(no_torchrun, tmp_path):
    seen = []
    _fit_tiny(tmp_path, seen, device="cpu", bf16=True)
    steps = [s for s in seen if "devices" in s]
    assert len(steps) == 2
    assert all(s["autocast_cpu"] and s["autocast_dtype"] == torch.bfloat16 for s in steps), steps
    assert all(s["out_dtype"] == torch.bfloat16 and s["devices"] == {"cpu"} for s in steps)
    assert not torch.is_autocast_enabled("cpu")  # only around the loss


def test_resume_loads_the_checkpoint_onto_the_cpu(no_torchrun, tmp_path, monkeypatch):
    """last.pt is read with map_location="cpu" (a GPU run's checkpoint resumes on a CPU-only machine)."""
    _fit_tiny(tmp_path, [], device="cpu")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _fit_tiny(tmp_path, [], device="cpu", epochs=2, resume=True)
    assert calls == ["cpu"]
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]


# ---------------------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("flags, expected", [([], "auto"), (["--device", "cpu"], "cpu"),
                                             (["--device", "cuda"], "cuda")])
def test_cli_device_flag(capsys, flags, expected):
    from pulmo.cli import main

    assert main(["train", "lung-seg", "--dry-run", *flags]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["config"]["device"] == expected


def test_cli_device_flag_rejects_other_values(capsys):
    from pulmo.cli import main

    with pytest.raises(SystemExit):
        main(["train", "lung-seg", "--dry-run", "--device", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
