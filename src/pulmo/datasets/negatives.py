"""Images without lesions as negatives for a chest X-ray detector, read from classification datasets (Kermany,
COVID-19 Radiography Database, ieee8023) and detection datasets (ChestX-Det10 no-finding entries) in their own
layouts, or from any image folder.

Its own module because it reads both kinds of layout: :mod:`pulmo.datasets.cxr_labels` (classification) and
:mod:`pulmo.datasets.detection` (boxes) stay independent of each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pulmo.datasets.cxr_labels import covid_chestxray_records, covid_radiography_records, kermany_records
from pulmo.datasets.detection import IMAGE_SUFFIXES, _boxes, chestx_det10_records
from pulmo.errors import InputError

NEGATIVE_FORMATS = ("kermany", "covid-radiography", "covid-chestxray", "chestx-det10", "folder")


def negative_records(format: str, root: str | Path) -> list[dict[str, Any]]:
    """Images with no lesion (``boxes_xyxy`` of shape ``(0, 4)``) from a classification or detection dataset in
    its own layout, as negatives for a detector (a detector trained on positive images only has never seen a
    healthy chest).

    Args:
        format: one of :data:`NEGATIVE_FORMATS`:

            * ``kermany``: ``NORMAL/`` images of the Kermany ``chest_xray`` layout (paediatric);
            * ``covid-radiography``: ``Normal/images`` of the COVID-19 Radiography Database (adult);
            * ``covid-chestxray``: ieee8023 frontal images whose ``finding`` is ``No Finding``;
            * ``chestx-det10``: the no-finding entries (empty ``syms``) of the ChestX-Det10 JSON files with NIH
              names in ``root/labels/*_nih_names_*.json``, images in ``root/images`` (the layout of the
              ChestX-Det10 NIH sample);
            * ``folder``: every image under ``root`` (each file its own patient).
        root: the dataset folder in that layout.

    Returns:
        Records as the other adapters (``labels`` empty), with the patient ids of the source (Kermany
        ``IM-NNNN``, ieee8023 ``patientid``, else one patient per file) and ``source`` = ``format`` (``folder``:
        the folder's name).

    Raises:
        InputError: unknown format, a missing folder or label file, or no negative image found.
    """
    root = Path(root)
    if format not in NEGATIVE_FORMATS:
        raise InputError(f"unknown negative-image format {format!r}; expected one of {NEGATIVE_FORMATS}")
    if not root.is_dir():
        raise InputError(f"{root}: negative images folder not found (format {format!r})")
    if format in ("kermany", "covid-radiography", "covid-chestxray"):
        reader = {"kermany": kermany_records, "covid-radiography": covid_radiography_records,
                  "covid-chestxray": covid_chestxray_records}[format]
        found = [(r["image"], r["patient_id"]) for r in reader(root) if r["label"] == "normal"]
    elif format == "chestx-det10":
        files = sorted((root / "labels").glob("*_nih_names_*.json"))
        if not files:
            raise InputError(f"{root}/labels: no ChestX-Det10 JSON with NIH names (*_nih_names_*.json)")
        found = []
        for f in files:
            found += [(r["image"], f"nih-{Path(r['image']).stem.split('_')[0]}")
                      for r in chestx_det10_records(f, root / "images", source="chestx-det10") if not r["labels"]]
    else:
        found = [(str(p), f"{root.name}-{p.stem}") for p in sorted(root.rglob("*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    source = root.name if format == "folder" else format
    if not found:
        raise InputError(f"{root}: no image without findings found in the {format!r} layout")
    return [{"image": image, "boxes_xyxy": _boxes([]), "labels": [], "patient_id": pid, "source": source}
            for image, pid in found]


__all__ = ["NEGATIVE_FORMATS", "negative_records"]
