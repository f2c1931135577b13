"""Chest X-ray classification layouts -> records with pulmo's labels.

Labels, in model order: ``normal``, ``bacterial_pneumonia``, ``viral_pneumonia``, ``covid19``.

* :func:`kermany_records`: Kermany et al. 2018 ``chest_xray`` (``{train,test,val}/{NORMAL,PNEUMONIA}``;
  bacterial vs viral from ``personN_bacteria_M`` / ``personN_virus_M``; patient = ``personN`` or
  ``IM-NNNN``). Paediatric (1-5 years).
* :func:`covid_chestxray_records`: ieee8023 ``covid-chestxray-dataset`` (``metadata.csv``): frontal X-rays
  (PA, AP, AP Supine) only; ``finding`` mapped to the labels; unknown or other findings (fungal, lipoid,
  unspecified "Pneumonia", "todo") excluded and counted. Adult.
* :func:`covid_radiography_records`: COVID-19 Radiography Database (``COVID/images``, ``Normal/images``);
  no patient ids are published (each image is its own group).
* :func:`folder_records`: one sub-folder per label, folder names = label names (``other_finding`` too).
* :func:`other_finding_records`: chest X-rays whose finding is none of the four (TB of TBX11K and
  Montgomery/Shenzhen, the non-pneumonia boxes of ChestX-Det10 and NIH ChestX-ray14), labelled
  :data:`OTHER_FINDING`, and :func:`extra_normal_records` (the ChestX-Det10 / NIH "No Finding" images), so the
  classifier learns adult normals from more than one hospital and can say "outside my classes".

:func:`remove_near_duplicates` drops images whose perceptual hash (pHash, ``imagehash``) is within a
Hamming distance of an image from a higher-priority source (the sources share about 90 images).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pulmo.errors import InputError

logger = logging.getLogger(__name__)

LABELS = ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid19"]
OTHER_FINDING = "other_finding"
"""Label of a chest X-ray with a finding outside :data:`LABELS` (TB, effusion, nodule, mass, fracture, ...)."""
OTHER_FORMATS = ("tbx11k", "montgomery-shenzhen", "chestx-det10", "nih")
# findings of the box datasets that are (or look like) pneumonia: not "outside the classes"
_PNEUMONIA_LIKE = {"consolidation", "pneumonia", "infiltrate", "infiltration"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
FRONTAL_VIEWS = {"PA", "AP", "AP Supine", "AP supine"}
_BACTERIA = ("streptococcus", "klebsiella", "legionella", "e.coli", "bacterial", "chlamydophila", "mycoplasma",
             "staphylococcus", "nocardia", "aspergillosis_no")
_VIRUSES = ("sars", "mers", "varicella", "influenza", "herpes", "viral")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def kermany_records(root: str | Path) -> list[dict[str, Any]]:
    """Records ``{"image", "label", "patient_id", "source", "age_group"}`` of the Kermany layout.

    Accepts the dataset root (with ``train/``, ``test/``, ``val/``) or one split folder.

    Raises:
        InputError: no ``NORMAL`` / ``PNEUMONIA`` folders found.
    """
    root = Path(root)
    splits = [root / s for s in ("train", "test", "val") if (root / s).is_dir()] or [root]
    records = []
    for split in splits:
        for cls in ("NORMAL", "PNEUMONIA"):
            for p in _images(split / cls):
                name = p.stem
                if cls == "NORMAL":
                    label = "normal"
                    m = re.match(r"^(.*IM-\d+)", name)
                else:
                    label = "bacterial_pneumonia" if "bacteria" in name else "viral_pneumonia" if "virus" in name else None
                    m = re.match(r"^(person\d+)", name)
                if label is None:
                    continue
                records.append({"image": str(p), "label": label, "patient_id": f"kermany-{m.group(1) if m else name}",
                                "source": "kermany", "age_group": "paediatric"})
    if not records:
        raise InputError(f"{root}: no NORMAL/ or PNEUMONIA/ images found; expected the Kermany chest_xray layout")
    return records


def map_ieee8023_finding(finding: str) -> str | None:
    """Map an ieee8023 ``finding`` to a pulmo label, or None when it is not one of them."""
    f = finding.strip().lower()
    if f.startswith("covid-19") or "covid-19" in f.split("/"):
        return "covid19"
    if f == "no finding":
        return "normal"
    if any(b in f for b in _BACTERIA):
        return "bacterial_pneumonia"
    if any(v in f for v in _VIRUSES):
        return "viral_pneumonia"
    return None


def covid_chestxray_records(root: str | Path, counts: Counter | None = None) -> list[dict[str, Any]]:
    """Records of ieee8023 frontal X-rays with a mappable finding. Excluded findings are counted into
    ``counts`` (if given) and logged.

    Raises:
        InputError: ``metadata.csv`` missing or nothing usable.
    """
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise InputError(f"{root}: metadata.csv missing; expected the covid-chestxray-dataset layout")
    files = _images(root / "images")
    by_name = {p.name: p for p in files}
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    excluded: Counter = counts if counts is not None else Counter()
    records, seen = [], set()
    with open(meta, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = {row["filename"] for row in rows}
    for row in rows:
        if row.get("modality", "X-ray") != "X-ray" or row.get("view") not in FRONTAL_VIEWS:
            continue
        # copies may be re-encoded (.jpeg -> .jpg): match the exact name, else the one file of that stem
        # whose own name is not listed in the metadata
        path = by_name.get(row["filename"])
        if path is None:
            free = [p for p in by_stem.get(Path(row["filename"]).stem, []) if p.name not in names]
            path = free[0] if len(free) == 1 else None
        if path is None or path in seen:
            continue
        seen.add(path)
        label = map_ieee8023_finding(row["finding"])
        if label is None:
            excluded[row["finding"]] += 1
            continue
        records.append({"image": str(path), "label": label, "patient_id": f"ieee8023-{row['patientid']}",
                        "source": "covid-chestxray", "age_group": "adult"})
    if excluded:
        logger.info("%s: excluded %d images with other findings: %s", root, sum(excluded.values()), dict(excluded))
    if not records:
        raise InputError(f"{root}: no frontal X-ray with a usable finding")
    return records


def covid_radiography_records(root: str | Path) -> list[dict[str, Any]]:
    """Records of the COVID-19 Radiography Database (``COVID/images`` -> covid19, ``Normal/images`` -> normal).

    Images directly in ``COVID/`` / ``Normal/`` are taken when there is no ``images`` sub-folder. The database
    publishes no patient ids: ``patient_id`` is ``covid-radiography-<file stem>`` (each image its own group).

    Args:
        root: the database folder holding ``COVID/`` and ``Normal/``.

    Returns:
        Records ``{"image", "label", "patient_id", "source": "covid-radiography", "age_group": "adult"}``.

    Raises:
        InputError: no image (.png, .jpg, .jpeg, .dcm) under either folder.
    """
    root = Path(root)
    records = []
    for folder, label in (("COVID", "covid19"), ("Normal", "normal")):
        for p in _images(root / folder / "images") or _images(root / folder):
            records.append({"image": str(p), "label": label, "patient_id": f"covid-radiography-{p.stem}",
                            "source": "covid-radiography", "age_group": "adult"})
    if not records:
        raise InputError(f"{root}: no COVID/images or Normal/images found; expected the COVID-19 Radiography layout")
    return records


def folder_records(root: str | Path) -> list[dict[str, Any]]:
    """Records of a folder with one sub-folder per label (names from :data:`LABELS` or
    :data:`OTHER_FINDING`); ``folder`` = the sub-folder's name. A file named ``PATIENT__rest.png`` belongs to
    patient ``PATIENT`` (so images of one patient stay in one split); any other file is its own patient.

    Args:
        root: the folder of label sub-folders.

    Returns:
        Records ``{"image", "label", "patient_id": "<root name>-<patient>", "source": <root name>,
        "age_group": "unknown", "folder"}``.

    Raises:
        InputError: a sub-folder is not a label name, or no image (.png, .jpg, .jpeg, .dcm) is found in the
            label sub-folders (also when ``root`` is not a folder).
    """
    root = Path(root)
    names = LABELS + [OTHER_FINDING]
    unknown = [d.name for d in root.iterdir() if d.is_dir() and d.name not in names] if root.is_dir() else []
    if unknown:
        raise InputError(f"{root}: sub-folders {unknown} are not labels; expected folders named {names}")
    records = [{"image": str(p), "label": label, "patient_id": f"{root.name}-{p.stem.split('__')[0] if '__' in p.stem else p.stem}",
                "source": root.name,
                "age_group": "unknown", "folder": label} for label in names for p in _images(root / label)]
    if not records:
        raise InputError(f"{root}: no images in label sub-folders {names}")
    return records


def _box_dataset_records(format: str, root: Path) -> list[dict[str, Any]]:
    from pulmo.datasets.detection import chestx_det10_records, nih_bbox_records, tbx11k_records

    if format == "tbx11k":
        return [r for r in tbx11k_records(root, _only_json(root / "annotations" / "json"))]
    if format == "chestx-det10":
        out = []
        for f in sorted((root / "labels").glob("*_nih_names_*.json")):
            out += chestx_det10_records(f, root / "images", source="chestx-det10")
        return out
    csvs = sorted(root.glob("BBox_List_2017*.csv"))
    if not csvs:
        raise InputError(f"{root}: no BBox_List_2017.csv (NIH ChestX-ray14 layout)")
    return nih_bbox_records(csvs[0], root / "images" if (root / "images").is_dir() else root)


def _only_json(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return files[0] if len(files) == 1 else None


def other_finding_records(format: str, root: str | Path) -> list[dict[str, Any]]:
    """Chest X-rays with a finding outside :data:`LABELS`, labelled :data:`OTHER_FINDING`.

    Args:
        format: one of :data:`OTHER_FORMATS`: ``tbx11k`` (every TB image of the COCO JSON), ``montgomery-shenzhen``
            (``images/*_1.png``: the datasets' own TB label is the file name's last digit), ``chestx-det10`` (the
            NIH-named ChestX-Det10 JSONs in ``root/labels``, images in ``root/images``) and ``nih``
            (``BBox_List_2017*.csv`` + ``images/``). For the two box datasets, images with any pneumonia-like
            box (consolidation, pneumonia, infiltrate) are left out: they are not outside the classes.
        root: the dataset folder in that layout.

    Returns:
        Records ``{"image", "label": "other_finding", "finding": str, "patient_id", "source", "age_group":
        "adult"}``.

    Raises:
        InputError: unknown format, missing folder or labels, or no such image.
    """
    root = Path(root)
    if format not in OTHER_FORMATS:
        raise InputError(f"unknown other-finding format {format!r}; expected one of {OTHER_FORMATS}")
    if not root.is_dir():
        raise InputError(f"{root}: folder not found (other-finding format {format!r})")
    out = []
    if format == "montgomery-shenzhen":
        for p in _images(root / "images"):
            if p.stem.endswith("_1"):
                out.append({"image": str(p), "label": OTHER_FINDING, "finding": "tuberculosis",
                            "patient_id": f"montgomery-shenzhen-{p.stem}", "source": "montgomery-shenzhen",
                            "age_group": "adult"})
    else:
        for r in _box_dataset_records(format, root):
            found = {str(x).lower() for x in r["labels"]}
            if not found or found & _PNEUMONIA_LIKE:
                continue
            finding = "tuberculosis" if format == "tbx11k" else ", ".join(sorted(found))
            out.append({"image": r["image"], "label": OTHER_FINDING, "finding": finding,
                        "patient_id": r["patient_id"], "source": r["source"], "age_group": "adult"})
    if not out:
        raise InputError(f"{root}: no image with a finding outside {LABELS} in the {format!r} layout")
    return out


def extra_normal_records(format: str, root: str | Path) -> list[dict[str, Any]]:
    """Adult "No Finding" chest X-rays of a box dataset (``chestx-det10`` or ``nih`` layout, see
    :func:`other_finding_records`), labelled ``normal``: adult normals from another hospital than the COVID-19
    sources, against the source shortcut (DeGrave et al., Nature Machine Intelligence 2021).

    Raises:
        InputError: unknown format, missing folder or labels, or no such image.
    """
    root = Path(root)
    if format not in ("chestx-det10", "nih"):
        raise InputError(f"unknown normal-image format {format!r}; expected 'chestx-det10' or 'nih'")
    if not root.is_dir():
        raise InputError(f"{root}: folder not found (normal-image format {format!r})")
    out = [{"image": r["image"], "label": "normal", "patient_id": r["patient_id"], "source": r["source"],
            "age_group": "adult"} for r in _box_dataset_records(format, root) if not r["labels"]]
    if not out:
        raise InputError(f"{root}: no image without findings in the {format!r} layout")
    return out


def phash(path: str | Path) -> np.ndarray:
    """64-bit perceptual hash (DCT pHash, ``imagehash``) of an image as a bool array (64,)."""
    import imagehash
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(imagehash.phash(im.convert("L")).hash, dtype=bool).ravel()


def remove_near_duplicates(records: list[dict[str, Any]], max_distance: int = 4,
                           priority: tuple[str, ...] = ("kermany", "covid-chestxray", "covid-radiography")
                           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Drop images that are near-duplicates (pHash Hamming distance <= ``max_distance``) of an image from a
    different, higher-priority source (sources with patient ids first). Returns ``(kept, dropped)``; each
    dropped record gets ``duplicate_of``."""
    hashes = np.stack([phash(r["image"]) for r in records]).astype(np.uint8)
    rank = [priority.index(r["source"]) if r["source"] in priority else len(priority) for r in records]
    order = np.argsort(rank, kind="stable")
    kept_idx: list[int] = []
    dropped = []
    for i in order:
        if kept_idx:
            kh = hashes[kept_idx]
            dist = (kh != hashes[i]).sum(axis=1)
            j = int(np.argmin(dist))
            if dist[j] <= max_distance and records[kept_idx[j]]["source"] != records[i]["source"]:
                dropped.append({**records[i], "duplicate_of": records[kept_idx[j]]["image"], "distance": int(dist[j])})
                continue
        kept_idx.append(int(i))
    kept = [records[i] for i in sorted(kept_idx)]
    return kept, dropped
