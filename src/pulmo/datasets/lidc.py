"""LIDC-IDRI: the reader XML files, reader masks, clustering across readers and the LUNA16 reference.

The Lung Image Database Consortium image collection (Armato et al., "The Lung Image Database Consortium
(LIDC) and Image Database Resource Initiative (IDRI): a completed reference database of lung nodules on CT
scans", Med. Phys. 38(2), 2011) gives every CT series one XML read file (``LidcReadMessage``, namespace
``http://www.nih.gov``) holding up to four ``readingSession`` elements, one per radiologist, from the
unblinded read. Each reading session lists:

* ``unblindedReadNodule`` with ``characteristics`` (subtlety, internalStructure, calcification,
  sphericity, margin, lobulation, spiculation, texture, malignancy; ratings 1-5, calcification 1-6) and
  one ``roi`` per slice: ``imageZposition`` (mm), ``imageSOP_UID``, ``inclusion`` (``FALSE`` marks a hole)
  and the outline as ``edgeMap`` points (``xCoord`` = column, ``yCoord`` = row, in pixels): a nodule
  >= 3 mm;
* ``unblindedReadNodule`` without characteristics and with a single ``edgeMap`` point: a nodule < 3 mm
  (only its approximate centre is marked);
* ``nonNodule`` with a ``locus`` point: a lesion the reader judged not to be a nodule.

Reader outlines are drawn so that the outline pixels lie just *outside* the nodule (LIDC reader
instructions, also pylidc's default), so :func:`reader_marks` fills the polygon interior and drops the
outline pixels unless ``include_contour=True``.

The LUNA16 challenge (Setio et al., "Validation, comparison, and combination of algorithms for automatic
detection of pulmonary nodules in computed tomography images: the LUNA16 challenge", Med. Image Anal. 42,
2017) uses the nodules >= 3 mm marked by at least 3 of the 4 readers as its reference, with the centre and
diameter averaged over the readers' marks. :func:`cluster_marks` groups the readers' marks of one nodule,
:func:`luna16_reference` keeps the clusters with >= 3 readers, :func:`luna16_excluded` lists the reader
marks LUNA16 counts as excluded findings, :func:`consensus_mask` builds the voxel mask agreed by >= 50 % of a
cluster's readers.

Coordinates: voxel indices are ``(z, y, x)`` = (slice, row, column) of the :class:`~pulmo.io.Volume`;
world coordinates are ``(x, y, z)`` in mm, DICOM patient LPS, the convention of LUNA16 ``annotations.csv``.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from skimage.draw import line as draw_line
from skimage.draw import polygon as draw_polygon

from pulmo.errors import InputError
from pulmo.io import Volume, read_image

logger = logging.getLogger(__name__)

#: The XML namespace of LIDC read files.
LIDC_NAMESPACE = "http://www.nih.gov"
#: Characteristic names of an ``unblindedReadNodule`` (LIDC XML schema).
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture", "malignancy")
#: Kinds of a reader mark.
KIND_NODULE = "nodule_ge3mm"
KIND_SMALL_NODULE = "nodule_lt3mm"
KIND_NON_NODULE = "non_nodule"


# --------------------------------------------------------------------------------------------- XML records


@dataclass
class LidcRoi:
    """One outline of a nodule on one slice, as written in the XML.

    Attributes:
        z_position: ``imageZposition`` in mm (the slice's ImagePositionPatient z).
        sop_uid: ``imageSOP_UID``, the SOPInstanceUID of the slice ("" when absent).
        inclusion: ``False`` for an exclusion outline (a hole cut out of the nodule).
        points_xy: int array ``(P, 2)`` of ``(column, row)`` pixel coordinates, in drawing order.
    """

    z_position: float
    sop_uid: str
    inclusion: bool
    points_xy: np.ndarray


@dataclass
class LidcNodule:
    """An ``unblindedReadNodule`` of one reader.

    Attributes:
        reader: index of the reading session in the file (0-based).
        nodule_id: the reader's ``noduleID`` (not shared across readers).
        kind: :data:`KIND_NODULE` (>= 3 mm: outlines and characteristics) or :data:`KIND_SMALL_NODULE`
            (< 3 mm: a single point).
        rois: the outlines, one or more per slice.
        characteristics: ratings by name (see :data:`CHARACTERISTICS`); empty for < 3 mm nodules.
    """

    reader: int
    nodule_id: str
    kind: str
    rois: list[LidcRoi]
    characteristics: dict[str, int] = field(default_factory=dict)


@dataclass
class LidcNonNodule:
    """A ``nonNodule`` mark (a lesion judged not to be a nodule): one point.

    Attributes:
        reader: index of the reading session (0-based).
        non_nodule_id: the reader's ``nonNoduleID``.
        z_position: ``imageZposition`` in mm.
        sop_uid: ``imageSOP_UID`` ("" when absent).
        point_xy: ``(column, row)`` pixel coordinates of the ``locus``.
    """

    reader: int
    non_nodule_id: str
    z_position: float
    sop_uid: str
    point_xy: tuple[int, int]


@dataclass
class LidcReadingSession:
    """One radiologist's read (``readingSession``).

    Attributes:
        index: position of the session in the file (0-based; the ``reader`` of its marks).
        radiologist_id: ``servicingRadiologistID`` ("" when absent).
        annotation_version: ``annotationVersion`` ("" when absent).
        nodules: the session's ``unblindedReadNodule`` marks (>= 3 mm with outlines, < 3 mm as one point).
        non_nodules: the session's ``nonNodule`` marks.
    """

    index: int
    radiologist_id: str
    annotation_version: str
    nodules: list[LidcNodule]
    non_nodules: list[LidcNonNodule]


@dataclass
class LidcRead:
    """A parsed LIDC XML read file.

    Attributes:
        path: the XML file.
        series_uid: ``SeriesInstanceUid`` of the CT series the reads belong to ("" when absent).
        study_uid: ``StudyInstanceUID`` ("" when absent).
        sessions: the reading sessions in file order (usually 4).
    """

    path: Path
    series_uid: str
    study_uid: str
    sessions: list[LidcReadingSession]

    @property
    def nodules(self) -> list[LidcNodule]:
        """All nodules >= 3 mm of all readers."""
        return [n for s in self.sessions for n in s.nodules if n.kind == KIND_NODULE]

    @property
    def small_nodules(self) -> list[LidcNodule]:
        """All nodules < 3 mm of all readers."""
        return [n for s in self.sessions for n in s.nodules if n.kind == KIND_SMALL_NODULE]

    @property
    def non_nodules(self) -> list[LidcNonNodule]:
        """All non-nodule marks of all readers."""
        return [n for s in self.sessions for n in s.non_nodules]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(element: ET.Element | None, name: str, default: str = "") -> str:
    child = None if element is None else element.find(f"{{*}}{name}")
    return default if child is None or child.text is None else child.text.strip()


def _number(text: str, path: Path, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: {what} is {text!r}; expected a number") from None


def _points(element: ET.Element, tag: str, path: Path, what: str) -> np.ndarray:
    pts = []
    for e in element.findall(f"{{*}}{tag}"):
        x, y = _text(e, "xCoord"), _text(e, "yCoord")
        pts.append((round(_number(x, path, f"{what} xCoord")), round(_number(y, path, f"{what} yCoord"))))
    return np.asarray(pts, dtype=np.int64).reshape(-1, 2)


def parse_lidc_xml(path: str | Path) -> LidcRead:
    """Parse an LIDC-IDRI XML read file (``LidcReadMessage``) into its reader marks.

    A nodule is ``>= 3 mm`` when it has characteristics or more than one outline point, ``< 3 mm``
    otherwise (the LIDC marks those with a single centre point and no characteristics). Namespaces are
    matched loosely, so files with or without the ``http://www.nih.gov`` namespace are read.

    Args:
        path: the XML file (in the TCIA layout it sits in the series folder next to the DICOM slices).

    Returns:
        :class:`LidcRead` with one :class:`LidcReadingSession` per ``readingSession``.

    Raises:
        InputError: the file is missing, is not well-formed XML, is not an ``LidcReadMessage`` (the CXR
            reads of LIDC are ``IdriReadMessage``), or a coordinate or z position is not a number, or a
            nodule outline has no points.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such LIDC XML file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a well-formed XML file ({exc})") from None
    if _local(root.tag) != "LidcReadMessage":
        raise InputError(f"{path}: XML root is <{_local(root.tag)}>; expected an LIDC CT read <LidcReadMessage>")
    header = root.find("{*}ResponseHeader")
    series_uid = _text(header, "SeriesInstanceUid")
    study_uid = _text(header, "StudyInstanceUID")
    sessions = []
    for index, session in enumerate(root.findall("{*}readingSession")):
        nodules = []
        for element in session.findall("{*}unblindedReadNodule"):
            nodule_id = _text(element, "noduleID")
            what = f"reader {index} nodule {nodule_id!r}"
            characteristics = {}
            chars = element.find("{*}characteristics")
            if chars is not None:
                for c in chars:
                    if c.text is not None and c.text.strip():
                        name = _local(c.tag)
                        characteristics[name] = round(_number(c.text.strip(), path, f"{what} {name}"))
            rois = []
            for roi in element.findall("{*}roi"):
                points = _points(roi, "edgeMap", path, what)
                if len(points) == 0:
                    raise InputError(f"{path}: {what} has an roi without edgeMap points")
                rois.append(LidcRoi(
                    z_position=_number(_text(roi, "imageZposition"), path, f"{what} imageZposition"),
                    sop_uid=_text(roi, "imageSOP_UID"),
                    inclusion=_text(roi, "inclusion", "TRUE").upper() != "FALSE",
                    points_xy=points,
                ))
            if not rois:
                logger.warning("%s: %s has no roi; ignored", path, what)
                continue
            n_points = sum(len(r.points_xy) for r in rois)
            kind = KIND_NODULE if characteristics or n_points > 1 else KIND_SMALL_NODULE
            nodules.append(LidcNodule(index, nodule_id, kind, rois, characteristics))
        non_nodules = []
        for element in session.findall("{*}nonNodule"):
            mark_id = _text(element, "nonNoduleID")
            what = f"reader {index} non-nodule {mark_id!r}"
            points = _points(element, "locus", path, what)
            if len(points) == 0:
                raise InputError(f"{path}: {what} has no locus point")
            non_nodules.append(LidcNonNodule(
                reader=index, non_nodule_id=mark_id,
                z_position=_number(_text(element, "imageZposition"), path, f"{what} imageZposition"),
                sop_uid=_text(element, "imageSOP_UID"),
                point_xy=(int(points[0, 0]), int(points[0, 1])),
            ))
        sessions.append(LidcReadingSession(index, _text(session, "servicingRadiologistID"),
                                           _text(session, "annotationVersion"), nodules, non_nodules))
    return LidcRead(path=path, series_uid=series_uid, study_uid=study_uid, sessions=sessions)


def find_lidc_xml(folder: str | Path, series_uid: str | None = None) -> Path:
    """The LIDC XML read file of a series folder (TCIA layout ``patient/study/series/*.xml``).

    Args:
        folder: the series folder (searched without recursion first, then recursively).
        series_uid: when given, the XML's ``SeriesInstanceUid`` must match it.

    Raises:
        InputError: no ``LidcReadMessage`` XML (for ``series_uid``) in the folder, or several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    candidates = sorted(folder.glob("*.xml")) or sorted(folder.rglob("*.xml"))
    found = []
    for p in candidates:
        try:
            read = parse_lidc_xml(p)
        except InputError:
            continue
        if series_uid is None or read.series_uid == series_uid:
            found.append(p)
    if not found:
        wanted = f" for series {series_uid}" if series_uid else ""
        raise InputError(f"{folder}: no LIDC XML read file (LidcReadMessage){wanted} found")
    if len(found) > 1:
        raise InputError(f"{folder}: {len(found)} LIDC XML read files {[p.name for p in found]}; pass one")
    return found[0]


# ---------------------------------------------------------------------------------- slices of the volume


@dataclass
class SliceIndex:
    """Finds the slice of a :class:`~pulmo.io.Volume` an XML mark refers to.

    By SOPInstanceUID when the volume came from a DICOM series (``source["files"]`` in slice order),
    else by the slice's world z nearest to ``imageZposition`` (within half a slice spacing).

    Attributes:
        z_positions: ``(Z,)`` world z in mm of each slice's first voxel.
        tolerance_mm: largest accepted z distance in mm.
        sop_to_slice: SOPInstanceUID -> slice index (empty when unknown).
    """

    z_positions: np.ndarray
    tolerance_mm: float
    sop_to_slice: dict[str, int]

    @classmethod
    def from_volume(cls, volume: Volume, read_sop_uids: bool = True) -> SliceIndex:
        """Build the index; reads the SOPInstanceUIDs of ``volume.source["files"]`` (headers only)."""
        index = np.zeros((volume.shape[0], 3))
        index[:, 0] = np.arange(volume.shape[0])
        z_positions = volume.index_to_world(index)[:, 2]
        sop_to_slice: dict[str, int] = {}
        files = volume.source.get("files") or []
        if read_sop_uids and len(files) == volume.shape[0]:
            for k, f in enumerate(files):
                try:
                    ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                except Exception as exc:  # noqa: BLE001 - fall back to z matching for this slice
                    logger.debug("%s: SOPInstanceUID not readable (%s)", f, exc)
                    continue
                uid = str(ds.get("SOPInstanceUID", ""))
                if uid:
                    sop_to_slice[uid] = k
        return cls(z_positions, 0.5 * float(volume.spacing[0]), sop_to_slice)

    def slice_of(self, z_position: float, sop_uid: str, where: str) -> int:
        """Slice index of a mark; ``where`` names the mark in error messages.

        Raises:
            InputError: neither the SOP UID is known nor is a slice within the tolerance of ``z_position``.
        """
        if sop_uid and sop_uid in self.sop_to_slice:
            k = self.sop_to_slice[sop_uid]
            if abs(self.z_positions[k] - z_position) > self.tolerance_mm:
                logger.debug("%s: imageZposition %.2f mm but its SOP UID is slice %d at z %.2f mm; using the UID",
                             where, z_position, k, self.z_positions[k])
            return k
        k = int(np.argmin(np.abs(self.z_positions - z_position)))
        distance = abs(float(self.z_positions[k]) - z_position)
        if distance > self.tolerance_mm + 1e-6:
            raise InputError(
                f"{where}: imageZposition {z_position:.2f} mm matches no slice of the volume (nearest "
                f"{self.z_positions[k]:.2f} mm, slices {self.z_positions.min():.2f}..{self.z_positions.max():.2f} mm)"
                + (f" and SOP UID {sop_uid} is not in the series" if sop_uid else "")
            )
        return k


# --------------------------------------------------------------------------------------- reader marks


@dataclass
class NoduleMark:
    """One reader's nodule >= 3 mm in the geometry of a volume.

    The mask is stored as a crop: voxel ``mask[i, j, k]`` is voxel ``offset + (i, j, k)`` of the volume.

    Attributes:
        reader: reading session index (0-based).
        nodule_id: the reader's nodule id.
        characteristics: the ratings (malignancy 1-5, ...).
        mask: bool ``(dz, dy, dx)`` crop of the nodule voxels.
        offset: ``(z, y, x)`` voxel index of ``mask[0, 0, 0]``.
        centre_index: ``(z, y, x)`` centre of mass of the mask in voxels (continuous).
        centre_world: ``(x, y, z)`` centre of mass in world mm (LPS).
        bbox_centre_world: ``(x, y, z)`` centre of the outline points' bounding box in world mm.
        diameter_mm: area-equivalent diameter of the largest axial cross-section, ``2 sqrt(A / pi)``, mm.
        volume_mm3: voxel count x voxel volume, mm³.
        n_rois: number of outlines.
    """

    reader: int
    nodule_id: str
    characteristics: dict[str, int]
    mask: np.ndarray
    offset: tuple[int, int, int]
    centre_index: np.ndarray
    centre_world: np.ndarray
    bbox_centre_world: np.ndarray
    diameter_mm: float
    volume_mm3: float
    n_rois: int

    def full_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The mask pasted into a zero volume of ``shape`` ``(Z, Y, X)``."""
        return paste_mask(self.mask, self.offset, shape)


@dataclass
class PointMark:
    """A point mark: a nodule < 3 mm or a non-nodule.

    Attributes:
        reader: reading session index (0-based).
        mark_id: the reader's id.
        kind: :data:`KIND_SMALL_NODULE` or :data:`KIND_NON_NODULE`.
        index: ``(z, y, x)`` voxel index (int).
        world: ``(x, y, z)`` world mm (LPS).
    """

    reader: int
    mark_id: str
    kind: str
    index: tuple[int, int, int]
    world: np.ndarray


def paste_mask(mask: np.ndarray, offset: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Paste a cropped bool mask at ``offset`` ``(z, y, x)`` into a zero volume of ``shape``; clipped."""
    full = np.zeros(shape, dtype=bool)
    lo = np.maximum(np.asarray(offset), 0)
    hi = np.minimum(np.asarray(offset) + mask.shape, shape)
    if np.any(hi <= lo):
        return full
    src = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))
    full[tuple(slice(a, b) for a, b in zip(lo, hi))] = mask[src]
    return full


def _outline(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels on the closed polyline through the points (the points themselves for LIDC's 8-connected chains)."""
    region = np.zeros(shape, dtype=bool)
    n = len(rows)
    for i in range(n):
        j = (i + 1) % n
        rr, cc = draw_line(int(rows[i]), int(cols[i]), int(rows[j]), int(cols[j]))
        keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        region[rr[keep], cc[keep]] = True
    return region


def _rasterise(rois: list[tuple[int, LidcRoi]], shape: tuple[int, int, int],
               include_contour: bool) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Fill inclusion outlines, cut exclusion outlines; returns (crop, offset)."""
    ks = [k for k, _ in rois]
    pts = np.concatenate([r.points_xy for _, r in rois])
    x0, y0 = np.clip(pts.min(axis=0), 0, [shape[2] - 1, shape[1] - 1])
    x1, y1 = np.clip(pts.max(axis=0), 0, [shape[2] - 1, shape[1] - 1])
    z0, z1 = min(ks), max(ks)
    crop_shape = (z1 - z0 + 1, int(y1 - y0 + 1), int(x1 - x0 + 1))
    mask = np.zeros(crop_shape, dtype=bool)
    for inclusion in (True, False):  # holes are cut after every inclusion outline is drawn
        for k, roi in rois:
            if roi.inclusion != inclusion:
                continue
            rows, cols = roi.points_xy[:, 1] - y0, roi.points_xy[:, 0] - x0
            outline = _outline(rows, cols, crop_shape[1:])
            region = outline.copy()
            if len(roi.points_xy) >= 3:
                rr, cc = draw_polygon(rows, cols, shape=crop_shape[1:])
                region[rr, cc] = True
            if inclusion:
                mask[k - z0] |= region if include_contour else region & ~outline
            else:
                mask[k - z0] &= ~region  # an exclusion outline and its inside are not nodule
    return mask, (int(z0), int(y0), int(x0))


def _nodule_mark(nodule: LidcNodule, volume: Volume, slices: SliceIndex, where: str,
                 include_contour: bool) -> NoduleMark:
    rois = [(slices.slice_of(r.z_position, r.sop_uid, f"{where} roi"), r) for r in nodule.rois]
    mask, offset = _rasterise(rois, volume.shape, include_contour)
    if not mask.any():  # outlines too small to have an interior: take the outline pixels themselves
        logger.debug("%s: outlines enclose no pixel; using the outline pixels", where)
        mask, offset = _rasterise(rois, volume.shape, include_contour=True)
    idx = np.argwhere(mask)
    centre_index = idx.mean(axis=0) + np.asarray(offset)
    pts = np.concatenate([np.c_[np.full(len(r.points_xy), k), r.points_xy[:, ::-1]] for k, r in rois])
    bbox_centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
    voxel_area = float(volume.spacing[1] * volume.spacing[2])
    largest = float(mask.sum(axis=(1, 2)).max()) * voxel_area
    return NoduleMark(
        reader=nodule.reader, nodule_id=nodule.nodule_id, characteristics=dict(nodule.characteristics),
        mask=mask, offset=offset, centre_index=centre_index,
        centre_world=volume.index_to_world(centre_index[None])[0],
        bbox_centre_world=volume.index_to_world(bbox_centre[None])[0],
        diameter_mm=2.0 * math.sqrt(largest / math.pi),
        volume_mm3=float(mask.sum()) * voxel_area * float(volume.spacing[0]),
        n_rois=len(rois),
    )


def reader_marks(read: LidcRead, volume: Volume, include_contour: bool = False,
                 slices: SliceIndex | None = None) -> tuple[list[NoduleMark], list[PointMark], list[PointMark]]:
    """Map every reader mark of an XML read to the voxel and world geometry of ``volume``.

    Each roi is matched to its slice by SOPInstanceUID (DICOM series) or by ``imageZposition``; outlines
    are filled per slice with :func:`skimage.draw.polygon` (pixel centres inside or on the outline), the
    outline pixels (the polyline through the ``edgeMap`` points) are removed unless ``include_contour``
    (LIDC outlines lie just outside the nodule), and ``inclusion=FALSE`` outlines cut holes (outline
    pixels and inside). A nodule whose outlines enclose no pixel keeps its outline pixels.

    Args:
        read: the parsed XML (:func:`parse_lidc_xml`).
        volume: the CT series the XML belongs to (DICOM folder or its .mhd conversion).
        include_contour: keep the outline pixels in the masks.
        slices: a prepared :class:`SliceIndex` (built from ``volume`` when ``None``).

    Returns:
        ``(nodules, small_nodules, non_nodules)``: :class:`NoduleMark` per reader nodule >= 3 mm,
        :class:`PointMark` per nodule < 3 mm (at the mean of its points) and per non-nodule.

    Raises:
        InputError: a mark's slice is not in the volume (see :meth:`SliceIndex.slice_of`).
    """
    if read.series_uid and volume.source.get("series_uid") and read.series_uid != volume.source["series_uid"]:
        logger.warning("%s: XML series %s differs from the volume's series %s", read.path, read.series_uid,
                       volume.source["series_uid"])
    slices = slices or SliceIndex.from_volume(volume)
    nodules, small, non_nodules = [], [], []
    for session in read.sessions:
        for n in session.nodules:
            where = f"{read.path}: reader {session.index} nodule {n.nodule_id!r}"
            if n.kind == KIND_NODULE:
                nodules.append(_nodule_mark(n, volume, slices, where, include_contour))
                continue
            roi = n.rois[0]
            k = slices.slice_of(roi.z_position, roi.sop_uid, where)
            col, row = np.concatenate([r.points_xy for r in n.rois]).mean(axis=0)
            small.append(_point_mark(session.index, n.nodule_id, KIND_SMALL_NODULE, k, row, col, volume))
        for m in session.non_nodules:
            where = f"{read.path}: reader {session.index} non-nodule {m.non_nodule_id!r}"
            k = slices.slice_of(m.z_position, m.sop_uid, where)
            non_nodules.append(_point_mark(session.index, m.non_nodule_id, KIND_NON_NODULE, k, m.point_xy[1],
                                           m.point_xy[0], volume))
    return nodules, small, non_nodules


def _point_mark(reader: int, mark_id: str, kind: str, k: int, row: float, col: float, volume: Volume) -> PointMark:
    index = np.array([k, row, col], dtype=np.float64)
    return PointMark(reader, mark_id, kind, (int(k), round(float(row)), round(float(col))),
                     volume.index_to_world(index[None])[0])


# ------------------------------------------------------------------------------ clustering and consensus


@dataclass
class NoduleCluster:
    """The marks of different readers taken to be one nodule.

    Attributes:
        marks: one :class:`NoduleMark` per reader, sorted by reader.
        centre_world: ``(x, y, z)`` mean of the marks' mask centres of mass in world mm (LPS).
        diameter_mm: mean of the marks' diameters in mm.
    """

    marks: list[NoduleMark]
    centre_world: np.ndarray
    diameter_mm: float

    @property
    def n_readers(self) -> int:
        """Number of readers who marked the nodule."""
        return len(self.marks)

    @property
    def readers(self) -> list[int]:
        """Reading session indices of the marks."""
        return [m.reader for m in self.marks]

    @property
    def bbox_centre_world(self) -> np.ndarray:
        """``(x, y, z)`` mean of the marks' outline bounding-box centres, world mm (LPS).

        The centre some LIDC tools report; it can sit 1-2 mm from the mass centre :attr:`centre_world` of an
        irregular nodule (LUNA16's reference agrees with the mass centre).
        """
        return np.mean([m.bbox_centre_world for m in self.marks], axis=0)

    def characteristic(self, name: str) -> list[int]:
        """One characteristic (``"malignancy"``, ...) of each reader who rated it."""
        return [m.characteristics[name] for m in self.marks if name in m.characteristics]

    def consensus_mask(self, level: float = 0.5) -> tuple[np.ndarray, tuple[int, int, int]]:
        """See :func:`consensus_mask`."""
        return consensus_mask(self.marks, level)


def cluster_marks(marks: list[NoduleMark], min_distance_mm: float = 3.0,
                  radius_fraction: float = 1.0) -> list[NoduleCluster]:
    """Group the readers' nodule >= 3 mm marks into nodules, at most one mark per reader per nodule.

    Two marks of different readers may belong together when their centres (mask centres of mass, world
    mm) are closer than ``max(min_distance_mm, radius_fraction * max(d1, d2) / 2)``, i.e. one centre lies
    within the larger mark's radius. Pairs are merged closest first (single linkage) as long as the two
    groups share no reader. This replaces the manual matching behind LUNA16 (Setio et al. 2017) with a
    simple rule; touching nodules of very different size may need a smaller ``radius_fraction``.

    Args:
        marks: :class:`NoduleMark` of all readers of one scan.
        min_distance_mm: the smallest linking distance in mm (small nodules, one slice apart).
        radius_fraction: scale of the size-based linking distance.

    Returns:
        Clusters sorted by decreasing number of readers, then by world z, y, x.
    """
    n = len(marks)
    parent = list(range(n))
    members: dict[int, set[int]] = {i: {marks[i].reader} for i in range(n)}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            if marks[i].reader == marks[j].reader:
                continue
            distance = float(np.linalg.norm(marks[i].centre_world - marks[j].centre_world))
            limit = max(min_distance_mm, radius_fraction * max(marks[i].diameter_mm, marks[j].diameter_mm) / 2)
            if distance < limit:
                pairs.append((distance, i, j))
    for _, i, j in sorted(pairs):
        a, b = find(i), find(j)
        if a == b or members[a] & members[b]:
            continue
        parent[b] = a
        members[a] |= members.pop(b)
    groups: dict[int, list[NoduleMark]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(marks[i])
    clusters = []
    for group in groups.values():
        group.sort(key=lambda m: m.reader)
        clusters.append(NoduleCluster(
            marks=group,
            centre_world=np.mean([m.centre_world for m in group], axis=0),
            diameter_mm=float(np.mean([m.diameter_mm for m in group])),
        ))
    clusters.sort(key=lambda c: (-c.n_readers, *c.centre_world[::-1]))
    return clusters


def consensus_mask(marks: list[NoduleMark], level: float = 0.5) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Voxels marked by at least ``level`` of the readers who marked a nodule (LIDC 50 % consensus).

    Args:
        marks: the marks of one nodule (a :class:`NoduleCluster`'s ``marks``).
        level: fraction of those readers in ``(0, 1]``; 0.5 = 2 of 4, 2 of 3, 1 of 2.

    Returns:
        ``(mask, offset)``: bool crop ``(dz, dy, dx)`` over the union of the marks and the ``(z, y, x)``
        voxel index of its first voxel (paste with :func:`paste_mask`).

    Raises:
        ValueError: no marks, or ``level`` outside ``(0, 1]``.
    """
    if not marks:
        raise ValueError("consensus_mask needs at least one mark")
    if not 0 < level <= 1:
        raise ValueError(f"level {level}; expected a fraction in (0, 1]")
    lo = np.min([m.offset for m in marks], axis=0)
    hi = np.max([np.asarray(m.offset) + m.mask.shape for m in marks], axis=0)
    votes = np.zeros(tuple(hi - lo), dtype=np.int16)
    for m in marks:
        start = np.asarray(m.offset) - lo
        votes[tuple(slice(s, s + d) for s, d in zip(start, m.mask.shape))] += m.mask
    return votes >= level * len(marks) - 1e-9, tuple(int(v) for v in lo)


def luna16_reference(clusters: list[NoduleCluster], seriesuid: str = "", min_readers: int = 3) -> list[dict[str, Any]]:
    """The LUNA16 reference: nodules >= 3 mm marked by at least ``min_readers`` of the readers.

    Rows follow LUNA16 ``annotations.csv`` (Setio et al. 2017): ``seriesuid``, ``coordX``, ``coordY``,
    ``coordZ`` (world mm, LPS; the mean of the readers' centres) and ``diameter_mm`` (the mean of the readers'
    diameters), plus ``n_readers``.
    """
    rows = []
    for c in clusters:
        if c.n_readers >= min_readers:
            x, y, z = (float(v) for v in c.centre_world)
            rows.append({"seriesuid": seriesuid, "coordX": x, "coordY": y, "coordZ": z,
                         "diameter_mm": c.diameter_mm, "n_readers": c.n_readers})
    return rows


#: ``diameter_mm`` of an excluded point mark (nodule < 3 mm, non-nodule) in LUNA16 ``annotations_excluded.csv``:
#: unknown, which the LUNA16 evaluation script maps to 10 mm.
UNKNOWN_DIAMETER_MM = -1.0


def luna16_excluded(clusters: list[NoduleCluster], small_nodules: list[PointMark], non_nodules: list[PointMark],
                    seriesuid: str = "", min_readers: int = 3) -> list[dict[str, Any]]:
    """The LUNA16 excluded findings (``annotations_excluded.csv``) of one scan, from its reader marks.

    The LUNA16 evaluation script ``noduleCADEvaluationLUNA16.py`` (Setio et al. 2017) ignores a candidate
    that hits no reference nodule but one of these findings (within its radius, a diameter ``< 0`` taken as
    10 mm). Rows, in this order:

    * ``kind="reader_mark"``: every reader's own mark of each reference nodule (cluster with
      ``>= min_readers`` readers), at the mark's mask centre of mass with the mark's own diameter
      (LUNA16 lists the individual reader marks of included nodules as excluded findings as well);
    * ``kind="nodule_lt_readers"``: each cluster of fewer than ``min_readers`` readers, at the mean centre
      with the mean diameter;
    * ``kind="nodule_lt3mm"`` / ``"non_nodule"``: every reader's point mark of a nodule < 3 mm or of a
      non-nodule, with diameter :data:`UNKNOWN_DIAMETER_MM` (-1, as in ``annotations_excluded.csv``;
      the script then uses 10 mm, a 5 mm radius).

    Args:
        clusters: the scan's nodule clusters (:func:`cluster_marks`).
        small_nodules: the nodule < 3 mm point marks.
        non_nodules: the non-nodule point marks.
        seriesuid: written into every row.
        min_readers: readers needed for a reference nodule (3, as LUNA16).

    Returns:
        Rows ``{"seriesuid", "coordX", "coordY", "coordZ"`` (world mm, LPS) ``, "diameter_mm", "kind",
        "reader"}`` (``reader`` is ``None`` for a cluster row).
    """
    def row(centre: np.ndarray, diameter: float, kind: str, reader: int | None) -> dict[str, Any]:
        x, y, z = (float(v) for v in centre)
        return {"seriesuid": seriesuid, "coordX": x, "coordY": y, "coordZ": z, "diameter_mm": float(diameter),
                "kind": kind, "reader": reader}

    rows = [row(m.centre_world, m.diameter_mm, "reader_mark", m.reader)
            for c in clusters if c.n_readers >= min_readers for m in c.marks]
    rows += [row(c.centre_world, c.diameter_mm, "nodule_lt_readers", None)
             for c in clusters if c.n_readers < min_readers]
    rows += [row(p.world, UNKNOWN_DIAMETER_MM, p.kind, p.reader) for p in [*small_nodules, *non_nodules]]
    return rows


# ---------------------------------------------------------------------------------------- one scan


@dataclass
class LidcScan:
    """A CT series with its LIDC reads in the volume's geometry.

    Attributes:
        volume: the CT (:class:`~pulmo.io.Volume`).
        read: the parsed XML.
        nodules: every reader's nodule >= 3 mm (:class:`NoduleMark`).
        small_nodules: every reader's nodule < 3 mm (:class:`PointMark`).
        non_nodules: every reader's non-nodule (:class:`PointMark`).
        clusters: the nodules >= 3 mm grouped across readers (:func:`cluster_marks`).
    """

    volume: Volume
    read: LidcRead
    nodules: list[NoduleMark]
    small_nodules: list[PointMark]
    non_nodules: list[PointMark]
    clusters: list[NoduleCluster]

    @property
    def seriesuid(self) -> str:
        """SeriesInstanceUID (of the XML, else of the volume)."""
        return self.read.series_uid or str(self.volume.source.get("series_uid", ""))

    def luna16_reference(self, min_readers: int = 3) -> list[dict[str, Any]]:
        """See :func:`luna16_reference`."""
        return luna16_reference(self.clusters, self.seriesuid, min_readers)

    def luna16_excluded(self, min_readers: int = 3) -> list[dict[str, Any]]:
        """See :func:`luna16_excluded`."""
        return luna16_excluded(self.clusters, self.small_nodules, self.non_nodules, self.seriesuid, min_readers)

    def consensus_volume(self, min_readers: int = 3, level: float = 0.5) -> np.ndarray:
        """Bool ``(Z, Y, X)`` union of the consensus masks of the clusters with ``>= min_readers`` readers."""
        full = np.zeros(self.volume.shape, dtype=bool)
        for c in self.clusters:
            if c.n_readers >= min_readers:
                full |= paste_mask(*c.consensus_mask(level), self.volume.shape)
        return full


def load_lidc_scan(series_folder: str | Path, xml_path: str | Path | None = None, volume: Volume | None = None,
                   include_contour: bool = False) -> LidcScan:
    """Read an LIDC-IDRI series folder (TCIA layout) with its XML read file into an :class:`LidcScan`.

    Args:
        series_folder: the folder of the series' DICOM slices (and, in the TCIA layout, its XML).
        xml_path: the XML file when it is kept elsewhere (default: :func:`find_lidc_xml` in the folder).
        volume: the already-read volume of the series (default: :func:`pulmo.io.read_image`).
        include_contour: keep the outline pixels in the reader masks (see :func:`reader_marks`).

    Raises:
        InputError: unreadable series or XML, or marks that fall outside the series.
    """
    series_folder = Path(series_folder)
    volume = volume if volume is not None else read_image(series_folder)
    if not isinstance(volume, Volume):
        raise InputError(f"{series_folder}: not a CT volume")
    xml = Path(xml_path) if xml_path is not None else find_lidc_xml(series_folder, volume.source.get("series_uid"))
    read = parse_lidc_xml(xml)
    nodules, small, non_nodules = reader_marks(read, volume, include_contour=include_contour)
    return LidcScan(volume, read, nodules, small, non_nodules, cluster_marks(nodules))
