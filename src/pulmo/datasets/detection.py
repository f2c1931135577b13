"""Chest X-ray lesion-detection layouts -> box records.

Each adapter reads a public dataset in its own release format and returns one record per image::

    {"image": str,                       # path of the image file
     "boxes_xyxy": np.ndarray,           # float64 (N, 4), [x1, y1, x2, y2] in px of that image file
     "labels": list[str],                # N class names, as the dataset spells them
     "patient_id": str, "source": str}

Images without findings (normal images) are kept with ``boxes_xyxy`` of shape ``(0, 4)`` and no labels.
Pixel coordinates are continuous (x2 = x + width, no ``+ 1``), as in COCO and torchvision.

* :func:`coco_records` / :func:`tbx11k_records`: TBX11K (Liu et al., "Rethinking Computer-Aided
  Tuberculosis Diagnosis", CVPR 2020): MS-COCO JSON (``annotations/json/*.json``, ``bbox`` = ``[x, y, w, h]``
  px) + ``imgs/``; class names from the JSON ``categories`` (``ActiveTuberculosis`` = active TB,
  ``ObsoletePulmonaryTuberculosis`` = latent TB; ``PulmonaryTuberculosis`` exists but is unused).
* :func:`chestx_det10_records`: ChestX-Det10 (Liu et al., "ChestX-Det10: Chest X-ray Dataset on Detection of
  Thoracic Abnormalities", 2020): a JSON list of ``{"file_name", "syms", "boxes": [[x1, y1, x2, y2]]}``;
  the 10 findings of :data:`CHESTX_DET10_CLASSES`, empty ``syms`` = no finding. Reads both namings of the
  release (NIH ChestX-ray14 file names in its first commits, ``36199.png`` ... now; a name map links them);
  :func:`chestx_det10_folder_records` reads a dataset folder (``labels/`` + ``images/``). The same reader takes
  ChestX-Det (13 classes, extra ``polygons`` key, ignored).
* :func:`rsna_pneumonia_records`: RSNA Pneumonia Detection Challenge 2018 (Shih et al., Radiology: AI 2019):
  ``stage_2_train_labels.csv`` (``patientId, x, y, width, height, Target``; one row per box, one row with
  empty box and ``Target`` 0 for negatives) + ``<patientId>.dcm`` in one folder; 1024 x 1024 px.
* :func:`nih_bbox_records`: NIH ChestX-ray14 (Wang et al., "ChestX-ray8", CVPR 2017) ``BBox_List_2017.csv``
  (``Image Index, Finding Label, x, y, w, h`` in 1024 px; the official header reads
  ``Bbox [x,y,w,h],,,``) + the image folder (flat, or the official ``images_001/images/`` ... tree);
  optionally the ``No Finding`` images of ``Data_Entry_2017*.csv`` as negatives.

A record whose image file is missing is skipped, counted and reported with one logging warning per call.
Every adapter takes ``counts``: a dict (e.g. ``collections.Counter``) that it increments with

* ``images``: records returned, ``boxes``: boxes in them;
* ``missing_images``: records skipped because their image file is absent, ``missing_boxes``: their boxes;
* ``crowd_boxes`` (COCO only): ``iscrowd`` annotations skipped.

``check_images=False`` returns every record of the label file without looking for the images (label
statistics, or label files whose images are elsewhere).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pulmo.errors import InputError
from pulmo.geometry.boxes import xywh_to_xyxy

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".tif", ".tiff")

#: The 10 finding classes of ChestX-Det10 (alphabetical); an image with none of them is "no finding".
CHESTX_DET10_CLASSES = ("Atelectasis", "Calcification", "Consolidation", "Effusion", "Emphysema", "Fibrosis",
                        "Fracture", "Mass", "Nodule", "Pneumothorax")
#: The 8 box classes of NIH ChestX-ray14 ``BBox_List_2017.csv`` (note ``Infiltrate``, while
#: ``Data_Entry_2017.csv`` says ``Infiltration``).
NIH_BBOX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia",
                    "Pneumothorax")
#: Official TBX11K COCO category names -> the clinical terms used in the TBX11K paper.
TBX11K_CLINICAL_NAMES = {"ActiveTuberculosis": "active TB", "ObsoletePulmonaryTuberculosis": "latent TB",
                         "PulmonaryTuberculosis": "TB (activity unknown)"}
RSNA_LABEL = "Pneumonia"

Counts = MutableMapping[str, int]


# ---------------------------------------------------------------------------------------------- helpers

def _add(counts: Counts | None, key: str, n: int) -> None:
    if counts is not None:
        counts[key] = counts.get(key, 0) + n


def _number(value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: box coordinate {value!r} is not a number") from None
    if not math.isfinite(x):
        raise InputError(f"{where}: box coordinate {value!r} is not finite")
    return x


def _xywh_to_xyxy(values: Iterable[Any], where: str) -> list[float]:
    x, y, w, h = (_number(v, where) for v in values)
    if w <= 0 or h <= 0:
        raise InputError(f"{where}: box [x={x}, y={y}, w={w}, h={h}] has a non-positive width or height")
    return xywh_to_xyxy(np.array([[x, y, w, h]]))[0].tolist()


def _check_xyxy(values: Any, where: str) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise InputError(f"{where}: box {values!r} is not a list [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (_number(v, where) for v in values)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"{where}: box [x1={x1}, y1={y1}, x2={x2}, y2={y2}] has x2 <= x1 or y2 <= y1")
    return [x1, y1, x2, y2]


def _boxes(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid JSON file ({e})") from None


def _open_text(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: label file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


def _csv_reader(fh, path: Path, columns: Sequence[str], what: str) -> csv.DictReader:
    """A ``csv.DictReader`` over ``fh`` after checking its header holds ``columns``.

    Raises:
        InputError: a column is missing (the message names them, the file kind ``what`` and the header found).
    """
    reader = csv.DictReader(fh)
    absent = [c for c in columns if c not in (reader.fieldnames or [])]
    if absent:
        raise InputError(f"{path}: columns {absent} missing; expected {list(columns)} ({what}), got {reader.fieldnames}")
    return reader


class _ImageFinder:
    """Finds an image under ``folder``: the exact relative path, else a file of the same stem with another
    image suffix in the same sub-folder (copies re-encoded, e.g. PNG -> JPEG or DICOM -> PNG), else
    (``recursive``) the same name or stem anywhere below ``folder`` (e.g. NIH ``images_001/images/``).
    A folder (tree) is listed once, on its first miss, so absent images cost a dict lookup."""

    def __init__(self, folder: Path, recursive: bool = False):
        self.folder = folder
        self.recursive = recursive
        self._stems: dict[Path, dict[str, Path]] = {}
        self._tree: tuple[dict[str, Path], dict[str, Path]] | None = None

    def _stems_in(self, parent: Path) -> dict[str, Path]:
        if parent not in self._stems:
            files = sorted(parent.iterdir()) if parent.is_dir() else []
            stems: dict[str, Path] = {}
            for f in files:
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    stems.setdefault(f.stem, f)
            self._stems[parent] = stems
        return self._stems[parent]

    def _tree_index(self) -> tuple[dict[str, Path], dict[str, Path]]:
        if self._tree is None:
            by_name: dict[str, Path] = {}
            by_stem: dict[str, Path] = {}
            for f in sorted(self.folder.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    by_name.setdefault(f.name, f)
                    by_stem.setdefault(f.stem, f)
            self._tree = (by_name, by_stem)
        return self._tree

    def find(self, relative: str) -> Path | None:
        p = self.folder / relative
        if p.is_file():
            return p
        if not self.recursive:
            return self._stems_in(p.parent).get(p.stem)
        by_name, by_stem = self._tree_index()
        return by_name.get(p.name) or by_stem.get(p.stem)


def _image_folder(folder: str | Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found ({what}); pass check_images=False to read the "
                         f"labels without images")
    return folder


def _finish(records: list[dict[str, Any]], missing: int, missing_boxes: int, counts: Counts | None,
            label_file: Path, image_dir: Path | None) -> list[dict[str, Any]]:
    _add(counts, "images", len(records))
    _add(counts, "boxes", sum(len(r["labels"]) for r in records))
    _add(counts, "missing_images", missing)
    _add(counts, "missing_boxes", missing_boxes)
    if missing:
        logger.warning("%s: %d of %d images listed are not in %s; skipped them (%d boxes)", label_file, missing,
                       missing + len(records), image_dir, missing_boxes)
    return records


def label_counts(records: Iterable[dict[str, Any]]) -> Counter:
    """Number of boxes per class over ``records`` (a ``Counter`` label -> int)."""
    return Counter(label for r in records for label in r["labels"])


# ---------------------------------------------------------------------------------------------- COCO / TBX11K

def coco_categories(annotations: str | Path, used_only: bool = False) -> list[str]:
    """Category names of an MS-COCO detection JSON, in category-id order.

    Args:
        annotations: the COCO JSON file.
        used_only: keep only categories that have at least one annotation (TBX11K lists
            ``PulmonaryTuberculosis``, id 3, but never uses it).

    Returns:
        The names, e.g. ``["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"]`` for TBX11K.

    Raises:
        InputError: the file is missing, not JSON, or has no ``categories`` list.
    """
    path = Path(annotations)
    data = _read_json(path)
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats:
        raise InputError(f"{path}: no 'categories' list; expected an MS-COCO detection JSON")
    used = {a.get("category_id") for a in data.get("annotations", [])} if used_only else None
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"]) if used is None or c["id"] in used]


def coco_records(annotations: str | Path, image_dir: str | Path, source: str = "coco",
                 counts: Counts | None = None, check_images: bool = True,
                 patient_prefix: str | None = None) -> list[dict[str, Any]]:
    """Box records of an MS-COCO detection JSON (``images``, ``annotations``, ``categories``).

    ``bbox`` ``[x, y, w, h]`` (px) becomes ``[x, y, x + w, y + h]``; labels are the category names.
    Images with no annotation are kept with empty boxes; ``iscrowd`` annotations are skipped (counted as
    ``crowd_boxes``). No patient ids are published in COCO: each image is its own patient
    (``<patient_prefix>-<file stem>``).

    Args:
        annotations: the COCO JSON file.
        image_dir: the folder ``file_name`` is relative to.
        source: the ``source`` of each record.
        counts: incremented with ``images``, ``boxes``, ``missing_images``, ``missing_boxes``, ``crowd_boxes``.
        check_images: skip (and count) records whose image file is missing.
        patient_prefix: prefix of ``patient_id`` (default: ``source``).

    Returns:
        One record per image listed in the JSON, in file order.

    Raises:
        InputError: the JSON is missing or malformed, an annotation names an unknown image or category,
            a box is not 4 finite numbers with positive width and height, or ``image_dir`` is missing.
    """
    path = Path(annotations)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: no 'images' list; expected an MS-COCO detection JSON")
    try:
        cats = {c["id"]: c["name"] for c in data.get("categories", [])}
        by_image: dict[Any, list[dict[str, Any]]] = {im["id"]: [] for im in data["images"]}
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: a category lacks 'id' / 'name' or an image lacks 'id' ({e!r}); expected an "
                         f"MS-COCO detection JSON") from None
    crowd = 0
    for i, a in enumerate(data.get("annotations", [])):
        where = f"{path}: annotation {a.get('id', i)}"
        if a.get("image_id") not in by_image:
            raise InputError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in cats:
            raise InputError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories' "
                             f"{sorted(cats)}")
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        bbox = a.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise InputError(f"{where}: bbox {bbox!r} is not [x, y, w, h]")
        by_image[a["image_id"]].append({"box": _xywh_to_xyxy(bbox, where), "label": cats[a["category_id"]]})
    _add(counts, "crowd_boxes", crowd)
    if crowd:
        logger.warning("%s: skipped %d iscrowd annotations", path, crowd)

    folder = _image_folder(image_dir, f"images of {path.name}") if check_images else Path(image_dir)
    finder = _ImageFinder(folder)
    prefix = patient_prefix or source
    records, missing, missing_boxes = [], 0, 0
    for im in data["images"]:
        anns = by_image[im["id"]]
        name = str(im.get("file_name", ""))
        if not name:
            raise InputError(f"{path}: image {im['id']!r} has no file_name")
        image = finder.find(name) if check_images else folder / name
        if image is None:
            missing += 1
            missing_boxes += len(anns)
            continue
        records.append({"image": str(image), "boxes_xyxy": _boxes([a["box"] for a in anns]),
                        "labels": [a["label"] for a in anns], "patient_id": f"{prefix}-{Path(name).stem}",
                        "source": source})
    return _finish(records, missing, missing_boxes, counts, path, folder)


def tbx11k_records(root: str | Path, annotations: str | Path | None = None, counts: Counts | None = None,
                   check_images: bool = True) -> list[dict[str, Any]]:
    """Box records of the TBX11K layout (Liu et al., CVPR 2020): ``imgs/`` + ``annotations/json/*.json``.

    TBX11K boxes are in the 512 x 512 px images of the release; labels are the JSON category names
    (``ActiveTuberculosis``, ``ObsoletePulmonaryTuberculosis`` = latent TB; see
    :data:`TBX11K_CLINICAL_NAMES` and :func:`coco_categories`). Healthy and sick-but-non-TB images of
    ``TBX11K_train.json`` / ``TBX11K_val.json`` come back with empty boxes. TBX11K publishes no patient ids:
    ``patient_id`` is ``tbx11k-<file stem>``.

    Args:
        root: the dataset folder (holding ``imgs/`` and ``annotations/``).
        annotations: the COCO JSON, absolute or relative to ``root`` (e.g.
            ``annotations/json/TBX11K_train.json``). Default: the only JSON in ``root/annotations/json``.
        counts: incremented as in :func:`coco_records`.
        check_images: skip (and count) records whose image file is missing.

    Returns:
        One record per image of the JSON.

    Raises:
        InputError: the JSON cannot be found or chosen (several candidates and no ``annotations``), or as
            in :func:`coco_records`.
    """
    root = Path(root)
    if annotations is None:
        json_dir = root / "annotations" / "json"
        candidates = sorted(json_dir.glob("*.json")) if json_dir.is_dir() else []
        if len(candidates) != 1:
            found = [p.name for p in candidates] or "none"
            raise InputError(f"{json_dir}: expected exactly one COCO JSON when no annotations file is given, "
                             f"found {found}; pass annotations= (e.g. annotations/json/TBX11K_train.json)")
        ann_path = candidates[0]
    else:
        ann_path = Path(annotations)
        if not ann_path.is_absolute() and ((root / ann_path).is_file() or not ann_path.is_file()):
            ann_path = root / ann_path  # relative to root first (as `--annotations` of the CLI)
    return coco_records(ann_path, root / "imgs", source="tbx11k", counts=counts, check_images=check_images)


# ---------------------------------------------------------------------------------------------- ChestX-Det10

#: The file beside a ChestX-Det10 JSON that maps the renamed release's file names to the NIH ChestX-ray14 names.
CHESTX_DET10_NAME_MAP = "chestx_det10_nih_name_map.csv"


def read_chestx_det10_name_map(path: str | Path) -> dict[str, str]:
    """The ChestX-Det10 -> NIH ChestX-ray14 file-name map (``36204.png`` -> ``00000010_000.png``).

    The first ChestX-Det10 commits (Deepwise-AILab/ChestX-Det10-Dataset up to 117ba79, 2020-07-08) list the
    images under their NIH names; the current release (c535e9a) renamed them ``36199.png`` ... with the same
    entries in the same order, so the map is exact. The CSV has the columns ``chestx_det10_file_name`` and
    ``nih_image_index`` (``labels/chestx_det10_nih_name_map.csv`` of the ChestX-Det10 NIH sample).

    Raises:
        InputError: the file is missing, lacks a column, or maps one name to two NIH names.
    """
    path = Path(path)
    out: dict[str, str] = {}
    with _open_text(path) as fh:
        reader = _csv_reader(fh, path, ("chestx_det10_file_name", "nih_image_index"), "ChestX-Det10 -> NIH name map")
        for row in reader:
            det10, nih = row["chestx_det10_file_name"].strip(), row["nih_image_index"].strip()
            if out.setdefault(det10, nih) != nih:
                raise InputError(f"{path}: line {reader.line_num}: {det10} maps to both {out[det10]} and {nih}")
    return out


def chestx_det10_records(annotations: str | Path, image_dir: str | Path, counts: Counts | None = None,
                         check_images: bool = True, source: str = "chestx-det10",
                         name_map: str | Path | Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Box records of ChestX-Det10 (Liu et al. 2020; Deepwise AI Lab): ``train.json`` / ``test.json``.

    The file is a JSON list of ``{"file_name": "36200.png", "syms": [class, ...], "boxes": [[x1, y1, x2, y2],
    ...]}`` with boxes in px of the 1024 x 1024 images; ``syms[i]`` labels ``boxes[i]``; an empty list means
    no finding. Both published namings are read: the current release names the images ``36199.png`` ...;
    its first commits (117ba79) used the original NIH ChestX-ray14 names (``00000010_000.png``), same entries
    in the same order. With a name map (``name_map``, or :data:`CHESTX_DET10_NAME_MAP` found beside the JSON),
    an image not found under its ChestX-Det10 name is looked up under its NIH name, so the renamed JSON finds
    the original NIH PNGs and both files give the same records. Each image is its own patient
    (``<source>-<stem>``, the NIH stem when the NIH name is known; the NIH patient is the stem's first 8
    digits); the training/test split of the release is by image. ChestX-Det (13 classes, with ``polygons``)
    is read the same way.

    Args:
        annotations: the JSON file.
        image_dir: the folder holding the images named by ``file_name`` (or by their NIH names).
        counts: incremented with ``images``, ``boxes``, ``missing_images``, ``missing_boxes``.
        check_images: skip (and count) records whose image file is missing.
        source: the ``source`` of each record.
        name_map: ChestX-Det10 name -> NIH name: a mapping, or a CSV as :func:`read_chestx_det10_name_map`;
            ``None`` (default) reads :data:`CHESTX_DET10_NAME_MAP` beside ``annotations`` when it exists;
            ``{}`` turns the lookup off.

    Returns:
        One record per list entry, in file order; labels as spelled in ``syms``
        (see :data:`CHESTX_DET10_CLASSES`).

    Raises:
        InputError: the file is missing, not a JSON list of such entries, ``syms`` and ``boxes`` differ in
            length, a box is not 4 finite numbers with x2 > x1 and y2 > y1, ``image_dir`` is missing, or the
            name map is unreadable.
    """
    path = Path(annotations)
    data = _read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of {{'file_name', 'syms', 'boxes'}} (ChestX-Det10)")
    if name_map is None:
        beside = path.parent / CHESTX_DET10_NAME_MAP
        name_map = read_chestx_det10_name_map(beside) if beside.is_file() else {}
    elif not isinstance(name_map, Mapping):
        name_map = read_chestx_det10_name_map(name_map)
    folder = _image_folder(image_dir, f"images of {path.name}") if check_images else Path(image_dir)
    finder = _ImageFinder(folder)
    records, missing, missing_boxes = [], 0, 0
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not {"file_name", "syms", "boxes"} <= entry.keys():
            raise InputError(f"{path}: entry {i} is not an object with 'file_name', 'syms' and 'boxes'")
        name, syms, boxes = str(entry["file_name"]), entry["syms"], entry["boxes"]
        where = f"{path}: entry {i} ({name})"
        if not isinstance(syms, list) or not isinstance(boxes, list) or len(syms) != len(boxes):
            raise InputError(f"{where}: 'syms' and 'boxes' must be lists of equal length, got {syms!r} and "
                             f"{len(boxes) if isinstance(boxes, list) else boxes!r} boxes")
        rows = [_check_xyxy(b, where) for b in boxes]
        nih = name_map.get(name)
        if check_images:
            image = finder.find(name) or (finder.find(nih) if nih else None)
        else:
            image = folder / (nih or name)
        if image is None:
            missing += 1
            missing_boxes += len(rows)
            continue
        records.append({"image": str(image), "boxes_xyxy": _boxes(rows), "labels": [str(s) for s in syms],
                        "patient_id": f"{source}-{Path(nih or name).stem}", "source": source})
    return _finish(records, missing, missing_boxes, counts, path, folder)


def chestx_det10_label_files(root: str | Path) -> list[Path]:
    """The ChestX-Det10 JSON files of a dataset folder when none is named: in ``root/labels`` or ``root``,
    the NIH-named files (``*_nih_names_*.json``, the layout of the ChestX-Det10 NIH sample), else the
    release's ``train.json`` and ``test.json`` (those present), else the renamed files (``*_renamed_*.json``).
    Only one naming is returned: the namings hold the same entries.

    Raises:
        InputError: no such file.
    """
    root = Path(root)
    for folder in (root / "labels", root):
        nih = sorted(folder.glob("*_nih_names_*.json"))
        release = [folder / n for n in ("test.json", "train.json") if (folder / n).is_file()]
        renamed = sorted(folder.glob("*_renamed_*.json"))
        if nih or release or renamed:
            return nih or release or renamed
    raise InputError(f"{root}: no ChestX-Det10 label JSON (labels/*_nih_names_*.json, train.json / test.json or "
                     f"*_renamed_*.json); pass the file as annotations")


def chestx_det10_folder_records(root: str | Path, annotations: str | Path | Sequence[str | Path] | None = None,
                                counts: Counts | None = None, check_images: bool = True,
                                source: str = "chestx-det10") -> list[dict[str, Any]]:
    """Box records of a ChestX-Det10 folder: the JSON file(s) ``annotations`` (relative to ``root`` first, then
    as given; default :func:`chestx_det10_label_files`: train and test together), images in ``root/images``
    when that folder exists, else in ``root``; renamed JSONs find NIH-named images through the name map
    (see :func:`chestx_det10_records`).

    Raises:
        InputError: as :func:`chestx_det10_label_files` and :func:`chestx_det10_records`.
    """
    root = Path(root)
    if annotations is None:
        files = chestx_det10_label_files(root)
    else:
        files = []
        for a in [annotations] if isinstance(annotations, (str, Path)) else annotations:
            a = Path(a)
            files.append(root / a if not a.is_absolute() and (root / a).is_file() else a)
    image_dir = root / "images" if (root / "images").is_dir() else root
    records: list[dict[str, Any]] = []
    for f in files:
        records += chestx_det10_records(f, image_dir, counts=counts, check_images=check_images, source=source)
    return records


# ---------------------------------------------------------------------------------------------- RSNA

def rsna_pneumonia_records(labels_csv: str | Path, image_dir: str | Path, counts: Counts | None = None,
                           check_images: bool = True, label: str = RSNA_LABEL) -> list[dict[str, Any]]:
    """Box records of the RSNA Pneumonia Detection Challenge (RSNA / Kaggle 2018; Shih et al. 2019).

    ``stage_2_train_labels.csv`` has columns ``patientId, x, y, width, height, Target``: one row per box
    (``Target`` 1, box in px of the 1024 x 1024 DICOM) and one row with an empty box for images without
    pneumonia (``Target`` 0). The rows of a patient become one record (one image per patient; the image is
    ``<image_dir>/<patientId>.dcm``, or the same stem with another image suffix for converted copies).

    Args:
        labels_csv: the labels CSV.
        image_dir: the DICOM folder (``stage_2_train_images``).
        counts: incremented with ``images``, ``boxes``, ``missing_images``, ``missing_boxes``.
        check_images: skip (and count) records whose image file is missing.
        label: the class name given to every box (the challenge's ``stage_2_detailed_class_info.csv`` calls
            the positive class "Lung Opacity").

    Returns:
        One record per patient, in order of first appearance; ``source`` is ``"rsna-pneumonia"``.

    Raises:
        InputError: the CSV is missing or lacks a column, a ``Target`` is not 0 / 1, a ``Target`` 1 row has
            no valid box or a ``Target`` 0 row has one, or ``image_dir`` is missing.
    """
    path = Path(labels_csv)
    needed = ("patientId", "x", "y", "width", "height", "Target")
    per_patient: dict[str, list[list[float]]] = {}
    with _open_text(path) as fh:
        reader = _csv_reader(fh, path, needed, "RSNA stage_2_train_labels.csv")
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            pid, target = row["patientId"].strip(), row["Target"].strip()
            boxes = per_patient.setdefault(pid, [])
            has_box = any(row[c].strip() for c in ("x", "y", "width", "height"))
            if target == "1":
                if not has_box:
                    raise InputError(f"{where}: Target is 1 but the box is empty")
                boxes.append(_xywh_to_xyxy([row[c] for c in ("x", "y", "width", "height")], where))
            elif target == "0":
                if has_box:
                    raise InputError(f"{where}: Target is 0 but a box is given")
            else:
                raise InputError(f"{where}: Target {target!r} is not 0 or 1")
    folder = _image_folder(image_dir, f"DICOMs of {path.name}") if check_images else Path(image_dir)
    finder = _ImageFinder(folder)
    records, missing, missing_boxes = [], 0, 0
    for pid, rows in per_patient.items():
        image = finder.find(f"{pid}.dcm") if check_images else folder / f"{pid}.dcm"
        if image is None:
            missing += 1
            missing_boxes += len(rows)
            continue
        records.append({"image": str(image), "boxes_xyxy": _boxes(rows), "labels": [label] * len(rows),
                        "patient_id": f"rsna-{pid}", "source": "rsna-pneumonia"})
    return _finish(records, missing, missing_boxes, counts, path, folder)


# ---------------------------------------------------------------------------------------------- NIH

def _nih_patient(image_index: str) -> str:
    # NIH image names are <patient id, 8 digits>_<follow-up, 3 digits>.png
    return f"nih-{image_index.split('_')[0]}"


def nih_bbox_records(bbox_csv: str | Path, image_dir: str | Path, counts: Counts | None = None,
                     check_images: bool = True, data_entry: str | Path | None = None) -> list[dict[str, Any]]:
    """Box records of NIH ChestX-ray14 ``BBox_List_2017.csv`` (Wang et al., CVPR 2017).

    Columns are read by position (``Image Index, Finding Label, x, y, w, h``, px of the 1024 x 1024 PNG),
    so both the official header (``Image Index,Finding Label,Bbox [x,y,w,h],,,``, which a CSV reader splits
    into ``Bbox [x``, ``y``, ``w``, ``h]`` and empty names) and a cleaned ``x,y,w,h`` header work; trailing
    empty cells are ignored. Rows of one image become one record. The patient is the image name's first
    field (``00013118_008.png`` -> ``nih-00013118``). Images are looked up by name anywhere below
    ``image_dir`` (flat, or the official ``images_001/images/`` ... tree).

    Args:
        bbox_csv: ``BBox_List_2017.csv`` or a cut of it.
        image_dir: the folder (tree) of the PNGs.
        counts: incremented with ``images``, ``boxes``, ``missing_images``, ``missing_boxes``.
        check_images: skip (and count) records whose image file is missing.
        data_entry: optionally ``Data_Entry_2017*.csv`` (``.csv`` or ``.csv.gz``): its ``No Finding`` images
            are added as records with empty boxes (after the box records).

    Returns:
        One record per image, in order of first appearance; ``source`` is ``"nih-chestxray14"``; labels as
        in the file (:data:`NIH_BBOX_CLASSES`).

    Raises:
        InputError: a file is missing, its header is not the BBox / Data_Entry header, a row has fewer than 6
            cells or a bad box, or ``image_dir`` is missing.
    """
    path = Path(bbox_csv)
    per_image: dict[str, dict[str, list]] = {}
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["Image Index", "Finding Label"]:
            raise InputError(f"{path}: header {header} is not 'Image Index,Finding Label,x,y,w,h' "
                             f"(NIH BBox_List_2017.csv)")
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            cells = [c.strip() for c in row]
            while cells and not cells[-1]:
                cells.pop()
            if not cells:
                continue
            if len(cells) < 6:
                raise InputError(f"{where}: {len(cells)} cells, expected Image Index, Finding Label, x, y, w, h")
            entry = per_image.setdefault(cells[0], {"boxes": [], "labels": []})
            entry["boxes"].append(_xywh_to_xyxy(cells[2:6], where))
            entry["labels"].append(cells[1])
    negatives: dict[str, str] = {}
    if data_entry is not None:
        de_path = Path(data_entry)
        with _open_text(de_path) as fh:
            reader = _csv_reader(fh, de_path, ("Image Index", "Finding Labels"), "NIH Data_Entry_2017.csv")
            for row in reader:
                if row["Finding Labels"].strip() == "No Finding" and row["Image Index"] not in per_image:
                    pid = row.get("Patient ID", "").strip()
                    negatives[row["Image Index"]] = f"nih-{int(pid):08d}" if pid.isdigit() else _nih_patient(
                        row["Image Index"])

    folder = _image_folder(image_dir, f"images of {path.name}") if check_images else Path(image_dir)
    finder = _ImageFinder(folder, recursive=True)
    entries = [(name, e["boxes"], e["labels"], _nih_patient(name)) for name, e in per_image.items()]
    entries += [(name, [], [], pid) for name, pid in negatives.items()]
    records, missing, missing_boxes = [], 0, 0
    for name, rows, labels, pid in entries:
        image = finder.find(name) if check_images else folder / name
        if image is None:
            missing += 1
            missing_boxes += len(rows)
            continue
        records.append({"image": str(image), "boxes_xyxy": _boxes(rows), "labels": list(labels),
                        "patient_id": pid, "source": "nih-chestxray14"})
    return _finish(records, missing, missing_boxes, counts, path, folder)
