"""COVID-19 CT infection-segmentation layouts.

* :func:`covid_semiseg_records`: COVID-SemiSeg (Fan et al., Inf-Net, IEEE TMI 2020), which re-packages the
  MedSeg "COVID-19 CT segmentation dataset" (100 axial slices, > 40 patients) as 8-bit windowed JPEG
  slices with PNG masks:
  ``TrainingSet/LungInfection-Train/Doctor-label/{Imgs,GT}``, ``TestingSet/LungInfection-Test/{Imgs,GT}``
  (binary) and ``{TrainingSet/MultiClassInfection-Train,TestingSet/MultiClassInfection-Test}/{Imgs,GT}``
  (palette PNG: 0 background, 1 ground-glass, 2 consolidation). No patient ids are published; file names are
  MedSeg slice indices, and neighbouring indices tend to come from the same patient, so the hold-out groups
  slices in blocks of five indices.
* :func:`ct_volume_records`: the NIfTI layout of Ma et al. 2020 ("COVID-19 CT Lung and Infection
  Segmentation Dataset", Zenodo 3757476): ``COVID-19-CT-Seg_20cases/<case>.nii.gz`` + ``Infection_Mask/
  <case>.nii.gz`` (+ optional ``Lung_Mask/``). Volumes are in HU (the Radiopaedia cases are 0-255 already
  windowed; those are detected and used as windowed slices).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pulmo.errors import InputError
from pulmo.transforms import resize_image, window_hu

logger = logging.getLogger(__name__)

CLASS_NAMES = {"binary": ["infection"], "multiclass": ["background", "ground_glass", "consolidation"]}
_SEMISEG = {
    ("train", "binary"): "TrainingSet/LungInfection-Train/Doctor-label",
    ("test", "binary"): "TestingSet/LungInfection-Test",
    ("train", "multiclass"): "TrainingSet/MultiClassInfection-Train",
    ("test", "multiclass"): "TestingSet/MultiClassInfection-Test",
}


def covid_semiseg_records(root: str | Path, split: str = "train", classes: str = "binary") -> list[dict[str, Any]]:
    """Records ``{"image", "mask", "slice_index", "patient_id", "source", "input": "windowed"}``.

    Raises:
        InputError: unknown split/classes, or the split's ``Imgs/`` + ``GT/`` folders are missing or empty.
    """
    key = (split, classes)
    if key not in _SEMISEG:
        raise InputError(f"COVID-SemiSeg split {split!r} / classes {classes!r}; expected train|test and binary|multiclass")
    base = Path(root) / _SEMISEG[key]
    img_dir, gt_dir = base / "Imgs", base / "GT"
    if not img_dir.is_dir() or not gt_dir.is_dir():
        raise InputError(f"{base}: Imgs/ and GT/ missing; expected the COVID-SemiSeg layout ({_SEMISEG[key]})")
    records = []
    for p in sorted(img_dir.iterdir(), key=lambda q: (len(q.stem), q.stem)):
        gt = gt_dir / f"{p.stem}.png"
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or not gt.is_file():
            continue
        index = int(p.stem) if p.stem.isdigit() else -1
        records.append({"image": str(p), "mask": str(gt), "slice_index": index,
                        "patient_id": f"medseg-block{index // 5}" if index >= 0 else p.stem,
                        "source": "covid-semiseg", "input": "windowed"})
    if not records:
        raise InputError(f"{base}: no image in Imgs/ has a mask in GT/")
    return records


def ct_volume_records(root: str | Path) -> list[dict[str, Any]]:
    """Records ``{"volume", "mask", "patient_id", "source", "input": "hu"}`` of the Ma et al. 2020 layout.

    Raises:
        InputError: folders missing or no volume with an infection mask.
    """
    root = Path(root)
    vol_dir, mask_dir = root / "COVID-19-CT-Seg_20cases", root / "Infection_Mask"
    if not vol_dir.is_dir() or not mask_dir.is_dir():
        raise InputError(f"{root}: expected COVID-19-CT-Seg_20cases/ and Infection_Mask/ (Ma et al. 2020 layout)")
    masks = {p.name.split(".")[0]: p for p in mask_dir.iterdir() if ".nii" in p.name}
    records = [{"volume": str(p), "mask": str(masks[p.name.split(".")[0]]), "patient_id": p.name.split(".")[0],
                "source": "covid-ct-seg-20", "input": "hu"}
               for p in sorted(vol_dir.iterdir()) if ".nii" in p.name and p.name.split(".")[0] in masks]
    if not records:
        raise InputError(f"{root}: no volume in COVID-19-CT-Seg_20cases/ has a mask in Infection_Mask/")
    return records


def read_mask(path: str | Path) -> np.ndarray:
    """A COVID-SemiSeg mask as uint8 labels: binary 0/255 -> 0/1; palette 0/1/2 kept."""
    arr = np.asarray(Image.open(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    return (arr > 127).astype(np.uint8) if arr.max() > 2 else arr.astype(np.uint8)


def slices_from_volume(record: dict[str, Any], every_other: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axial slices ``[(image01 (H, W), labels (H, W))]`` of a volume record: every slice with infection and
    every ``every_other``-th slice without. HU volumes go through the lung window."""
    from pulmo.io import read_image, read_labels

    vol, labels = read_image(record["volume"]), read_labels(record["mask"]).labels
    hu = vol.hu
    image01 = hu / 255.0 if hu.min() >= 0 and hu.max() <= 255 else window_hu(hu)
    labels = labels.astype(np.uint8)
    out = []
    for k in range(hu.shape[0]):
        if labels[k].any() or k % every_other == 0:
            out.append((np.clip(image01[k], 0, 1).astype(np.float32), labels[k]))
    return out


class LesionSliceDataset(Dataset):
    """2D infection-segmentation samples at a square working size (cached).

    Items: ``image`` float32 ``(1, S, S)`` in [0, 1]; ``label`` float32 ``(1, S, S)`` (binary 0/1, or class
    indices 0/1/2 for ``classes="multiclass"``). Records are those of this module (``input`` ``windowed`` or
    ``hu``) or ``{"input": "slices", "pairs": [(image01 (H, W), labels (H, W)), ...]}`` prepared elsewhere.
    """

    def __init__(self, records: list[dict[str, Any]], size: int = 256, transform=None):
        self.size = size
        self.transform = transform
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        for r in records:
            if r["input"] == "hu":
                pairs = slices_from_volume(r)
            elif r["input"] == "slices":  # prepared by the task, e.g. infection-free CT slices
                pairs = r["pairs"]
            else:
                image = np.asarray(Image.open(r["image"]).convert("L"), dtype=np.float32) / 255.0
                mask = read_mask(r["mask"])
                if mask.shape != image.shape:
                    raise InputError(f"{r['mask']}: mask size {mask.shape} differs from the image {image.shape}")
                pairs = [(image, mask)]
            for image, labels in pairs:
                s = (size, size)
                img = resize_image(image, s)[None]
                lab = np.stack([resize_image((labels == c).astype(np.float32), s) for c in range(int(labels.max()) + 1)]
                               ).argmax(0)[None].astype(np.float32) if labels.max() > 0 else np.zeros((1, *s), np.float32)
                self.items.append((img.astype(np.float32), lab))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self.items[i]
        sample = {"image": image, "label": label}
        if self.transform is not None:
            sample = self.transform(sample)
        return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in sample.items()}
