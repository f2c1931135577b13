"""Image containers with geometry: :class:`Image2D` (chest X-ray or a single CT slice), :class:`Volume`
(CT, HU) and :class:`LabelVolume` (a segmentation label volume on a CT's grid).

Axis conventions (the same for every reader and writer in :mod:`pulmo.io`):

* ``Image2D.pixels`` has shape ``(H, W)`` = (rows, columns); ``spacing`` is ``(row_spacing, column_spacing)``
  in mm, the order of DICOM PixelSpacing and of the array axes.
* ``Volume.hu`` has shape ``(Z, Y, X)`` = (slices, rows, columns), the order SimpleITK's
  ``GetArrayFromImage`` returns; ``spacing`` is ``(z, y, x)`` in mm, again in array-axis order.
  ``origin`` is the world position (mm, DICOM patient LPS) of voxel ``[0, 0, 0]`` as ``(x, y, z)``.
  ``direction`` is the ``(3, 3)`` ITK direction cosine matrix: column ``c`` is the LPS direction of the
  ITK index axis ``c``, where ITK index axes are ``(x, y, z)`` = (column, row, slice).
* ``LabelVolume.labels`` (a segmentation label volume: masks, lesion labels) has the axes and geometry of
  ``Volume.hu``; ``Volume.hu`` only ever holds Hounsfield units, never labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Image2D:
    """A 2D image with its geometry.

    Attributes:
        pixels: float32 array ``(H, W)``. For a chest X-ray: the stored values after the modality
            and VOI transforms, oriented so that higher = more attenuation (MONOCHROME2; bone bright).
            For a CT slice: Hounsfield units.
        spacing: ``(row_spacing, column_spacing)`` in mm, or ``None`` when the file does not say
            (PNG/JPEG usually do not).
        modality: ``"cxr"``, ``"ct"``, or ``None`` when the file does not tell (a 2D NIfTI, say).
        source: metadata of the source file: ``path``, ``format``, ``bit_depth``, ``photometric``, and
            for DICOM the transforms that were applied. Never contains pixel data.
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None = None
    modality: str | None = "cxr"
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return tuple(self.pixels.shape)  # type: ignore[return-value]


class VolumeGeometry:
    """World geometry of a ``(Z, Y, X)`` voxel grid, shared by :class:`Volume` and :class:`LabelVolume`.

    The subclass holds ``spacing`` (``(z, y, x)`` mm), ``origin`` (``(x, y, z)`` mm, LPS) and ``direction``
    (``(3, 3)`` ITK direction cosines), and names its voxel array in ``_voxels`` (see the module docstring).
    """

    _voxels: ClassVar[str]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` in voxels."""
        return tuple(getattr(self, self._voxels).shape)  # type: ignore[return-value]

    def index_to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(N, 3)`` in ``(z, y, x)`` order to world LPS mm ``(N, 3)`` in ``(x, y, z)``."""
        idx = np.atleast_2d(np.asarray(index_zyx, dtype=np.float64))[:, ::-1]  # -> (x, y, z) index order
        spacing_xyz = np.asarray(self.spacing, dtype=np.float64)[::-1]
        return np.asarray(self.origin) + (idx * spacing_xyz) @ np.asarray(self.direction).T

    def world_to_index(self, world_xyz: np.ndarray) -> np.ndarray:
        """Map world LPS mm ``(N, 3)`` in ``(x, y, z)`` to continuous voxel indices ``(N, 3)`` in ``(z, y, x)``."""
        w = np.atleast_2d(np.asarray(world_xyz, dtype=np.float64)) - np.asarray(self.origin)
        spacing_xyz = np.asarray(self.spacing, dtype=np.float64)[::-1]
        idx_xyz = (w @ np.linalg.inv(np.asarray(self.direction)).T) / spacing_xyz
        return idx_xyz[:, ::-1]


@dataclass
class Volume(VolumeGeometry):
    """A CT volume in Hounsfield units with its world geometry (see the module docstring for axes).

    ``hu`` only ever holds Hounsfield units; a segmentation label volume (a mask, lesion labels) is a
    :class:`LabelVolume`, read with :func:`pulmo.io.read_labels`.

    Attributes:
        hu: float32 array ``(Z, Y, X)`` in HU.
        spacing: ``(z, y, x)`` voxel size in mm.
        origin: ``(x, y, z)`` world position in mm (LPS) of voxel ``[0, 0, 0]``.
        direction: ``(3, 3)`` ITK direction cosines (columns = LPS direction of index axes x, y, z).
        source: metadata (path, format, series UID, excluded series, ...).
        modality: ``"ct"`` (every volume pulmo reads is taken as CT; read alike with ``Image2D.modality``).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: dict[str, Any] = field(default_factory=dict)
    modality: str = "ct"

    _voxels: ClassVar[str] = "hu"


@dataclass
class LabelVolume(VolumeGeometry):
    """A segmentation label volume (a mask, lesion or organ labels) with the geometry of :class:`Volume`.

    Read with :func:`pulmo.io.read_labels`; axes, spacing, origin and direction follow the module docstring,
    so a label volume drawn on a CT has the CT's ``shape`` and maps indices to the same world points.

    Attributes:
        labels: integer array ``(Z, Y, X)``: uint8 when every value is in 0..255, else int32. 0 is background;
            the other values are whatever the file's labelling means (1 = lesion for a binary mask).
        spacing: ``(z, y, x)`` voxel size in mm.
        origin: ``(x, y, z)`` world position in mm (LPS) of voxel ``[0, 0, 0]``.
        direction: ``(3, 3)`` ITK direction cosines (columns = LPS direction of index axes x, y, z).
        source: metadata (``path``, ``format``, ``stored_dtype``: the file's pixel type).
    """

    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: dict[str, Any] = field(default_factory=dict)

    _voxels: ClassVar[str] = "labels"
