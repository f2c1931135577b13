"""Lung-mask dataset layouts.

* :func:`image_mask_records`: the ``images/`` + ``masks/`` layout (same file stem, masks 0/255), used by
  Montgomery / Shenzhen (NLM), JSRT/SCR exports and most Kaggle lung-mask sets.
  Lungs drawn as the visible lung fields.
* :func:`covid_chestxray_mask_records`: ieee8023 ``covid-chestxray-dataset`` (``metadata.csv`` + ``images/``)
  with the V7 Labs lung masks (``masks_v7_lung/<stem>.png``; optional ``masks_v7_ignore/``). V7 masks
  include the retro-cardiac lung.

Each record is a dict: ``image``, ``mask``, ``ignore`` (path or None), ``patient_id``, ``source``,
``convention`` (``"visible"`` or ``"v7"``).
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pulmo.errors import InputError
from pulmo.io import read_image
from pulmo.transforms import normalize_cxr, resize_image, resize_mask

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
CONVENTIONS = ("visible", "v7")


def _nlm_patient(stem: str) -> str:
    # CHNCXR_0601_1 / MCUCXR_0001_0: one image per patient; the last field is the TB label.
    m = re.match(r"^((?:CHN|MCU)CXR_\d+)", stem)
    return m.group(1) if m else stem


def image_mask_records(root: str | Path, source: str | None = None) -> list[dict[str, Any]]:
    """Records of an ``images/`` + ``masks/`` folder pair (visible-lung-field convention).

    Raises:
        InputError: ``root/images`` or ``root/masks`` missing, or no image has a mask.
    """
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise InputError(f"{d}: folder missing; expected the images/ + masks/ layout under {root}")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    records, missing = [], 0
    for p in sorted(img_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = masks.get(p.stem) or masks.get(p.stem + "_mask")
        if mask is None:
            missing += 1
            continue
        src = source or ("shenzhen" if p.stem.startswith("CHNCXR") else
                         "montgomery" if p.stem.startswith("MCUCXR") else root.name)
        records.append({"image": str(p), "mask": str(mask), "ignore": None, "patient_id": _nlm_patient(p.stem),
                        "source": src, "convention": "visible"})
    if missing:
        logger.warning("%s: %d images without a mask were skipped", root, missing)
    if not records:
        raise InputError(f"{root}: no image in images/ has a mask of the same stem in masks/")
    return records


def covid_chestxray_mask_records(root: str | Path) -> list[dict[str, Any]]:
    """Records of ``covid-chestxray-dataset`` images that have a V7 lung mask.

    ``metadata.csv`` gives the patient (``patientid``); images are matched by file stem, since copies
    may be re-encoded (``.jpeg`` -> ``.jpg``).

    Raises:
        InputError: ``metadata.csv`` or ``masks_v7_lung/`` missing, or no image with a mask.
    """
    root = Path(root)
    meta, mask_dir = root / "metadata.csv", root / "masks_v7_lung"
    if not meta.is_file() or not mask_dir.is_dir():
        raise InputError(f"{root}: expected metadata.csv and masks_v7_lung/ (covid-chestxray-dataset + V7 masks)")
    images = {p.stem: p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    ignore_dir = root / "masks_v7_ignore"
    records, seen = [], set()
    with open(meta, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            stem = Path(row["filename"]).stem
            mask = mask_dir / f"{stem}.png"
            if stem in seen or stem not in images or not mask.is_file():
                continue
            seen.add(stem)
            ignore = ignore_dir / f"{stem}.png"
            records.append({"image": str(images[stem]), "mask": str(mask),
                            "ignore": str(ignore) if ignore.is_file() else None,
                            "patient_id": f"ieee8023-{row['patientid']}", "source": "covid-chestxray-v7",
                            "convention": "v7"})
    if not records:
        raise InputError(f"{root}: no image listed in metadata.csv has a V7 lung mask")
    return records


class LungSegDataset(Dataset):
    """Lung segmentation samples at a square working size, cached in memory after the first read.

    Each item is a dict with ``image`` float32 ``(1, S, S)`` in [0, 1], ``label`` float32 ``(2, S, S)``
    (channel 0: visible-lung-field mask, channel 1: V7 anatomical-lung mask; only the record's own
    convention is filled) and ``weight`` float32 ``(2, S, S)`` (1 where the label is defined: the record's
    channel, minus V7 "ignore" regions), plus ``index``.
    """

    def __init__(self, records: list[dict[str, Any]], size: int = 256, transform=None):
        self.records = records
        self.size = size
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Record ``i`` at the working size ``S``, read once and cached (not augmented).

        Returns:
            ``(image, label, weight)``: float32 ``(1, S, S)`` in [0, 1] (:func:`normalize_cxr`, bilinear
            resize), and float32 ``(2, S, S)`` label and weight in {0, 1} (see the class docstring).

        Raises:
            InputError: the image cannot be read, or the mask's size differs from the image's.
        """
        if i not in self._cache:
            r = self.records[i]
            image = normalize_cxr(read_image(r["image"]).pixels)
            mask = np.asarray(Image.open(r["mask"]).convert("L")) > 127
            if mask.shape != image.shape:
                raise InputError(f"{r['mask']}: mask size {mask.shape} differs from image size {image.shape}")
            s = (self.size, self.size)
            ch = CONVENTIONS.index(r["convention"])
            label = np.zeros((2, *s), np.float32)
            weight = np.zeros((2, *s), np.float32)
            label[ch] = resize_mask(mask, s)
            weight[ch] = 1.0
            if r.get("ignore"):
                ign = np.asarray(Image.open(r["ignore"]).convert("L")) > 0
                weight[ch] *= 1.0 - resize_mask(ign, s)
            self._cache[i] = (resize_image(image, s)[None].astype(np.float32), label, weight)
        return self._cache[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label, weight = self.load(i)
        sample = {"image": image, "label": label, "weight": weight}
        if self.transform is not None:
            sample = self.transform(sample)
        return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in sample.items()} | {"index": i}
