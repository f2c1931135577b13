"""LUNA16: the challenge layout (scans as MetaImage, the reference and candidate CSV files).

LUNA16 (Setio et al., "Validation, comparison, and combination of algorithms for automatic detection of
pulmonary nodules in computed tomography images: the LUNA16 challenge", Med. Image Anal. 42, 2017) re-packs
888 LIDC-IDRI scans (slice thickness <= 2.5 mm) as ``subset0`` ... ``subset9/<seriesuid>.mhd`` + ``.raw``
(the DICOM geometry kept: origin = the first slice's ImagePositionPatient, LPS) with CSV files:

* ``annotations.csv``: ``seriesuid,coordX,coordY,coordZ,diameter_mm``, the 1186 nodules >= 3 mm marked by
  >= 3 of 4 LIDC readers (world mm, LPS);
* ``annotations_excluded.csv``: the same columns, findings that count neither as hit nor as false positive
  (nodules < 3 mm, non-nodules, nodules of 1-2 readers, and the individual reader marks of the reference
  nodules; ``diameter_mm`` is -1 where unknown, which the evaluation script takes as 10 mm);
* ``candidates.csv`` / ``candidates_V2.csv``: ``seriesuid,coordX,coordY,coordZ,class`` (1 = within a
  reference nodule), the candidate locations of the false-positive-reduction track;
* a submission (CAD output): ``seriesuid,coordX,coordY,coordZ,probability``.

World coordinates are ``(x, y, z)`` in mm, DICOM patient LPS; voxel indices are ``(z, y, x)`` of the
:class:`~pulmo.io.Volume` array. :func:`world_to_voxel` / :func:`voxel_to_world` use the volume's origin,
spacing and direction (:meth:`~pulmo.io.Volume.world_to_index`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pulmo.errors import InputError
from pulmo.io import Volume, read_image

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")


@dataclass(frozen=True)
class Luna16Annotation:
    """A row of ``annotations.csv`` (or ``annotations_excluded.csv``).

    Attributes:
        seriesuid: SeriesInstanceUID of the scan.
        centre: ``(x, y, z)`` world mm (LPS).
        diameter_mm: nodule diameter in mm; -1 when unknown (excluded point findings). The LUNA16 script
            ``noduleCADEvaluationLUNA16.py`` takes a negative diameter as 10 mm and uses any other as it is,
            so 0 or NaN is never hit (:func:`pulmo.metrics.froc.effective_diameters`).
    """

    seriesuid: str
    centre: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class Luna16Candidate:
    """A row of ``candidates.csv`` or of a CAD submission.

    Attributes:
        seriesuid: SeriesInstanceUID of the scan.
        centre: ``(x, y, z)`` world mm (LPS).
        label: the ``class`` column (1 nodule, 0 not) or ``None`` in a submission.
        probability: the ``probability`` column or ``None`` in ``candidates.csv``.
    """

    seriesuid: str
    centre: tuple[float, float, float]
    label: int | None = None
    probability: float | None = None


def _rows(path: str | Path, required: tuple[str, ...]) -> tuple[Path, list[str], list[tuple[int, dict[str, str]]]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(f"{path}: columns {missing} missing (header {header}); expected {list(required)}")
            reader.fieldnames = header
            return path, header, [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text CSV file ({exc})") from None
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from None


def _float(row: dict[str, str], column: str, path: Path, line: int) -> float:
    value = (row.get(column) or "").strip()
    try:
        out = float(value)
    except ValueError:
        raise InputError(f"{path}: line {line}: {column} is {value!r}; expected a number") from None
    if column.startswith("coord") and not math.isfinite(out):
        raise InputError(f"{path}: line {line}: {column} is {value!r}; expected a finite coordinate in mm")
    return out


def _uid(row: dict[str, str], path: Path, line: int) -> str:
    uid = (row.get("seriesuid") or "").strip()
    if not uid:
        raise InputError(f"{path}: line {line}: empty seriesuid")
    return uid


def read_annotations(path: str | Path) -> list[Luna16Annotation]:
    """Parse LUNA16 ``annotations.csv`` or ``annotations_excluded.csv``.

    Args:
        path: the CSV file (columns ``seriesuid,coordX,coordY,coordZ,diameter_mm``; extra columns ignored).

    Returns:
        One :class:`Luna16Annotation` per row, in file order.

    Raises:
        InputError: the file is missing, a column is missing, or a value is not a number (the message
            names the file and line).
    """
    path, _, rows = _rows(path, ANNOTATION_COLUMNS)
    out = []
    for line, row in rows:
        centre = tuple(_float(row, c, path, line) for c in ("coordX", "coordY", "coordZ"))
        out.append(Luna16Annotation(_uid(row, path, line), centre, _float(row, "diameter_mm", path, line)))
    return out


def read_candidates(path: str | Path) -> list[Luna16Candidate]:
    """Parse LUNA16 ``candidates.csv`` / ``candidates_V2.csv`` (``class``) or a submission (``probability``).

    Args:
        path: the CSV file with ``seriesuid,coordX,coordY,coordZ`` and ``class`` and/or ``probability``.

    Returns:
        One :class:`Luna16Candidate` per row, in file order.

    Raises:
        InputError: the file is missing, has neither a ``class`` nor a ``probability`` column, or a value
            is not a number (the message names the file and line).
    """
    path, header, rows = _rows(path, CANDIDATE_COLUMNS)
    if "class" not in header and "probability" not in header:
        raise InputError(f"{path}: neither a 'class' nor a 'probability' column (header {header}); expected one")
    out = []
    for line, row in rows:
        centre = tuple(_float(row, c, path, line) for c in ("coordX", "coordY", "coordZ"))
        label = None
        if "class" in header:
            value = _float(row, "class", path, line)
            if value not in (0.0, 1.0):
                raise InputError(f"{path}: line {line}: class is {row['class']!r}; expected 0 or 1")
            label = int(value)
        probability = _float(row, "probability", path, line) if "probability" in header else None
        out.append(Luna16Candidate(_uid(row, path, line), centre, label, probability))
    return out


def annotations_by_series(annotations: Iterable[Luna16Annotation],
                          seriesuids: Iterable[str] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Group annotations per scan as arrays, the input of :func:`pulmo.metrics.froc.froc`.

    Args:
        annotations: the rows.
        seriesuids: scans to include even without annotations (they get empty arrays).

    Returns:
        ``{seriesuid: (centres (M, 3) world mm xyz, diameters (M,) mm)}``.
    """
    grouped: dict[str, list[Luna16Annotation]] = {uid: [] for uid in seriesuids}
    for a in annotations:
        grouped.setdefault(a.seriesuid, []).append(a)
    return {uid: (np.array([a.centre for a in rows], dtype=np.float64).reshape(-1, 3),
                  np.array([a.diameter_mm for a in rows], dtype=np.float64)) for uid, rows in grouped.items()}


def candidates_by_series(candidates: Iterable[Luna16Candidate]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Group CAD candidates per scan: ``{seriesuid: (centres (N, 3) world mm, probabilities (N,))}``.

    Rows without a probability use their ``class`` label as the score.

    Raises:
        InputError: a row has neither a probability nor a label.
    """
    grouped: dict[str, list[Luna16Candidate]] = {}
    for c in candidates:
        grouped.setdefault(c.seriesuid, []).append(c)
    out = {}
    for uid, rows in grouped.items():
        scores = []
        for c in rows:
            score = c.probability if c.probability is not None else c.label
            if score is None:
                raise InputError(f"candidate {c.centre} of series {uid} has neither a probability nor a class")
            scores.append(float(score))
        out[uid] = (np.array([c.centre for c in rows], dtype=np.float64).reshape(-1, 3), np.array(scores))
    return out


def find_scans(root: str | Path) -> dict[str, Path]:
    """Map every ``subset*/<seriesuid>.mhd`` under ``root`` to its path.

    Args:
        root: the LUNA16 folder holding ``subset0`` ... ``subset9`` (or one subset folder itself).

    Raises:
        InputError: ``root`` is not a folder or holds no ``.mhd`` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; expected the LUNA16 folder with subset0..subset9")
    found = {p.name[:-4]: p for p in sorted(root.glob("subset*/*.mhd"))}
    found.update({p.name[:-4]: p for p in sorted(root.glob("*.mhd"))})
    if not found:
        raise InputError(f"{root}: no subset*/<seriesuid>.mhd file found (LUNA16 layout)")
    return found


def read_scan(root: str | Path, seriesuid: str) -> Volume:
    """Read one LUNA16 scan ``subset*/<seriesuid>.mhd`` (+ ``.raw``) as a :class:`~pulmo.io.Volume` in HU.

    Raises:
        InputError: the scan is not under ``root``, or the .mhd / .raw cannot be read.
    """
    scans = find_scans(root)
    if seriesuid not in scans:
        raise InputError(f"{root}: scan {seriesuid}.mhd not found in any subset folder")
    volume = read_image(scans[seriesuid])
    if not isinstance(volume, Volume):
        raise InputError(f"{scans[seriesuid]}: a 2D image; expected a CT volume")
    volume.source.setdefault("series_uid", seriesuid)
    return volume


def world_to_voxel(volume: Volume, world_xyz: np.ndarray) -> np.ndarray:
    """World ``(N, 3)`` ``(x, y, z)`` mm (LPS) -> continuous voxel indices ``(N, 3)`` ``(z, y, x)``.

    Round to get the voxel holding the point (index ``i`` covers ``[i - 0.5, i + 0.5)``).
    """
    return volume.world_to_index(np.asarray(world_xyz, dtype=np.float64).reshape(-1, 3))


def voxel_to_world(volume: Volume, index_zyx: np.ndarray) -> np.ndarray:
    """Voxel indices ``(N, 3)`` ``(z, y, x)`` -> world ``(N, 3)`` ``(x, y, z)`` mm (LPS)."""
    return volume.index_to_world(np.asarray(index_zyx, dtype=np.float64).reshape(-1, 3))
