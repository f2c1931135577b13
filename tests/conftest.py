"""Shared fixtures: one torch thread, the real data folder (skip when absent), tiny generated inputs."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PULMO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """A path under ../shared/data; skips the test when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (set PULMO_SHARED_DATA or place ../shared/data)")
    return p


LIDC_SERIES = ("ct", "LIDC-IDRI", "LIDC-IDRI-0001",
               "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178",
               "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192")


def synthetic_cxr(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny fake radiograph (two dark ellipses = lungs in a brighter body) and its lung mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    mask = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):
        mask |= ((xx - cx + rng.normal(0, 0.02)) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    image = np.where(mask, 60, 170) + rng.normal(0, 8, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def tiny_tbx11k(tmp_path: Path, n: int = 8) -> Path:
    """The first ``n`` TB images of the real TBX11K copy with their boxes, as a TBX11K-layout folder whose label
    file is ``annotations/json/tb.json`` (skips when the shared data is absent)."""
    import json
    import shutil

    src = data_path("cxr", "TBX11K")
    coco = json.loads((src / "annotations" / "json" / "TBX11K_train_only_tb.json").read_text())
    images = coco["images"][:n]
    ids = {im["id"] for im in images}
    root = tmp_path / "tbx"
    (root / "annotations" / "json").mkdir(parents=True)
    (root / "imgs" / "tb").mkdir(parents=True)
    for im in images:
        shutil.copy(src / "imgs" / im["file_name"], root / "imgs" / im["file_name"])
    coco.update(images=images, annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
    (root / "annotations" / "json" / "tb.json").write_text(json.dumps(coco))
    return root


def write_tiny_lung_dataset(root: Path) -> Path:
    """Write an images/ + masks/ folder of 12 synthetic 64-px radiographs (Shenzhen-style names) at ``root``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(12):
        image, mask = synthetic_cxr(64, seed=i)
        Image.fromarray(image).save(root / "images" / f"CHNCXR_{i:04d}_0.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"CHNCXR_{i:04d}_0.png")
    return root


@pytest.fixture
def tiny_lung_dataset(tmp_path: Path) -> Path:
    """An images/ + masks/ folder of 12 synthetic 64-px radiographs."""
    return write_tiny_lung_dataset(tmp_path / "tiny")
