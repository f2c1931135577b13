"""Server-rendered CT slices for the viewer: any axial, coronal or sagittal slice of a done CT job as a PNG, on
demand, so the viewer scrolls through every slice without NiiVue (``pip install`` alone).

Routes (added by :func:`add_slice_routes`, behind the same token check as the rest of ``/api/v1``):

* ``GET /api/v1/jobs/{id}/volume`` -> the geometry the viewer needs to lay out and scroll the three planes and
  to place nodule markers: ``shape`` ``[Z, Y, X]`` voxels, ``spacing_mm`` ``[z, y, x]``, ``flip`` (which index
  axes the display mirrors, see below), per plane the number of slices and the picture's size in px and mm,
  the window presets, the mask layers present, and each nodule's voxel extent from ``nodule_mask.nii.gz``
  (``bbox_zyx``: first and last voxel index); ``origin_mm`` (x, y, z LPS) and ``direction`` (the ITK cosine matrix,
  row-major) map world mm to voxel indices.
* ``GET /api/v1/jobs/{id}/slices/{plane}/{index}.png?layer=image&center=C&width=W`` -> one slice: ``layer``
  ``image`` is the CT in the window ``center`` / ``width`` (HU; default the lung window), ``lungs``,
  ``infection`` or ``nodules`` the mask in its colour on a transparent background (the viewer stacks them
  with its own opacity).

Display convention (radiological, as chest CT is read): axial with the patient's right on the screen's left
and anterior at the top; coronal with the patient's right on the left and superior at the top; sagittal with
anterior on the left and superior at the top. A PNG's pixel ``(row, column)`` is the voxel grid of the plane
(no resampling); the page stretches it to its size in mm. ``flip.x`` / ``flip.y`` / ``flip.z`` say whether the
column / row / slice index runs against the screen axis it is shown along (x: left to right, y: top to bottom
in axial, z: top to bottom in coronal and sagittal), so the page can map a voxel index to a pixel.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.responses import Response

from pulmo.service.errors import ServiceError

PLANES = ("axial", "coronal", "sagittal")
#: window presets, (centre, width) in HU
WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0), "bone": (400.0, 1800.0)}
#: mask layers: (file in the job's output, colour RGB)
MASKS = {"lungs": ("lung_mask.nii.gz", (0, 200, 120)), "infection": ("infection_mask.nii.gz", (230, 40, 40)),
         "nodules": ("nodule_mask.nii.gz", (255, 200, 0))}
VOLUME_FILE = "volume.nii.gz"


class SliceError(ServiceError):
    """A bad slice request (unknown plane or layer, index out of range, a window that is not a number)."""

    def __init__(self, message: str, status_code: int = 400, code: str = "bad_slice") -> None:
        super().__init__(message, status_code=status_code, code=code)


class _Loaded:
    """One NIfTI of a job's output as an array ``(Z, Y, X)`` and its ITK direction."""

    def __init__(self, path: Path) -> None:
        import SimpleITK as sitk

        image = sitk.ReadImage(str(path))
        self.array = sitk.GetArrayFromImage(image)
        self.spacing_zyx = tuple(float(s) for s in reversed(image.GetSpacing()))
        self.origin = tuple(float(o) for o in image.GetOrigin())
        self.direction = np.asarray(image.GetDirection(), np.float64).reshape(3, 3)


class VolumeCache:
    """The most recently used job volumes and masks, in memory (a 133-slice 512² CT is 70 MB as int16).

    Args:
        max_items: arrays kept (a CT job has up to 4: the volume and 3 masks).

    Entries are keyed by path, size and modification time, so a re-analysed or deleted job is never served
    stale.
    """

    def __init__(self, max_items: int = 8) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, int, int], _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> _Loaded:
        """The NIfTI at ``path`` as an array ``(Z, Y, X)`` with its spacing (mm, z-y-x), origin and ITK
        direction, read on first use and kept (least recently used entries dropped beyond ``max_items``).

        Raises:
            OSError: ``path`` does not exist (``FileNotFoundError``) or cannot be read.
            RuntimeError: SimpleITK cannot read the file.
        """
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        loaded = _Loaded(path)  # outside the lock: another job's slices need not wait for this read
        with self._lock:
            self._items[key] = loaded
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return loaded


def _flips(direction: np.ndarray) -> dict[str, bool]:
    """Which index axes run against the display axes, from the ITK (LPS) direction matrix whose columns are the
    x (column), y (row) and z (slice) index axes: x should point to the patient's left (+L), y to posterior
    (+P), z is shown superior-up (so an axis pointing +S is flipped on screen)."""
    sign = [float(np.sign(direction[int(np.argmax(np.abs(direction[:, k]))), k]) or 1.0) for k in range(3)]
    return {"x": sign[0] < 0, "y": sign[1] < 0, "z": sign[2] > 0}


def _plane_array(array: np.ndarray, plane: str, index: int, flip: dict[str, bool]) -> np.ndarray:
    """The 2D picture of slice ``index`` of ``plane`` from a ``(Z, Y, X)`` array, oriented for display."""
    if plane == "axial":
        out = array[index]  # (Y, X)
        rows, cols = flip["y"], flip["x"]
    elif plane == "coronal":
        out = array[:, index, :]  # (Z, X)
        rows, cols = flip["z"], flip["x"]
    else:
        out = array[:, :, index]  # (Z, Y)
        rows, cols = flip["z"], flip["y"]
    if rows:
        out = out[::-1]
    if cols:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _count(shape: tuple[int, ...], plane: str) -> int:
    return {"axial": shape[0], "coronal": shape[1], "sagittal": shape[2]}[plane]


def volume_info(out_dir: Path, cache: VolumeCache) -> dict[str, Any]:
    """The geometry of a done CT job for the viewer (see the module docstring).

    Raises:
        SliceError: the job has no ``volume.nii.gz`` (not a CT volume; 404 ``no_volume``).
    """
    vol = _volume(out_dir, cache)
    z, y, x = (int(s) for s in vol.array.shape)
    sz, sy, sx = vol.spacing_zyx
    flip = _flips(vol.direction)
    planes = {"axial": {"count": z, "width": x, "height": y, "width_mm": x * sx, "height_mm": y * sy},
              "coronal": {"count": y, "width": x, "height": z, "width_mm": x * sx, "height_mm": z * sz},
              "sagittal": {"count": x, "width": y, "height": z, "width_mm": y * sy, "height_mm": z * sz}}
    masks = [name for name, (file, _) in MASKS.items() if (out_dir / file).is_file()]
    nodules = []
    if "nodules" in masks:
        labels = cache.get(out_dir / MASKS["nodules"][0]).array
        from scipy import ndimage

        for k, box in enumerate(ndimage.find_objects(labels.astype(np.int32, copy=False))):
            if box is not None:
                nodules.append({"number": k + 1, "bbox_zyx": [[s.start for s in box], [s.stop - 1 for s in box]]})
    return {"shape": [z, y, x], "spacing_mm": [sz, sy, sx], "origin_mm": list(vol.origin),
            "direction": [float(v) for v in vol.direction.ravel()], "flip": flip, "planes": planes,
            "windows": {k: {"center": c, "width": w} for k, (c, w) in WINDOWS.items()}, "default_window": "lung",
            "masks": masks, "nodules": nodules}


def _volume(out_dir: Path, cache: VolumeCache) -> _Loaded:
    path = out_dir / VOLUME_FILE
    if not path.is_file():
        raise SliceError("this job has no CT volume (volume.nii.gz): slices exist only for CT volumes",
                         status_code=404, code="no_volume")
    return cache.get(path)


def render_slice(out_dir: Path, cache: VolumeCache, plane: str, index: int, layer: str = "image",
                 center: float | None = None, width: float | None = None) -> bytes:
    """One slice of a done CT job as PNG bytes.

    Args:
        out_dir: the job's output folder.
        cache: the loaded arrays.
        plane: ``axial``, ``coronal`` or ``sagittal``.
        index: slice index along the plane's axis (``0 <= index < count``; z, y or x voxel index).
        layer: ``image`` (8-bit grey, windowed) or a mask (``lungs``, ``infection``, ``nodules``: RGBA, its colour
            where the mask is set, transparent elsewhere).
        center, width: the window in HU (``image`` only); default the lung window (C -600, W 1500).

    Returns:
        The PNG file's bytes, ``(height, width)`` = the plane's voxel grid (see :func:`volume_info`).

    Raises:
        SliceError: unknown plane or layer, index out of range, a width that is not positive, or a mask the
            job does not have (404 ``unknown_layer``).
    """
    from PIL import Image

    if plane not in PLANES:
        raise SliceError(f"plane {plane[:20]!r}: expected one of {', '.join(PLANES)}")
    if layer != "image" and layer not in MASKS:
        raise SliceError(f"layer {layer[:20]!r}: expected image or one of {', '.join(MASKS)}")
    vol = _volume(out_dir, cache)
    flip = _flips(vol.direction)
    n = _count(vol.array.shape, plane)
    if not 0 <= index < n:
        raise SliceError(f"{plane} slice {index} is out of range: the volume has {n} {plane} slices (0..{n - 1})")
    if layer == "image":
        c, w = WINDOWS["lung"]
        c = c if center is None else float(center)
        w = w if width is None else float(width)
        if not (np.isfinite(c) and np.isfinite(w) and w > 0):
            raise SliceError(f"window centre {c:g} / width {w:g} HU: expected finite numbers with a width > 0")
        hu = _plane_array(vol.array, plane, index, flip).astype(np.float32)
        grey = np.clip((hu - (c - w / 2)) / w * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(grey, mode="L")
    else:
        file, colour = MASKS[layer]
        if not (out_dir / file).is_file():
            raise SliceError(f"this job has no {layer} mask", status_code=404, code="unknown_layer")
        mask = _plane_array(cache.get(out_dir / file).array, plane, index, flip) > 0
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask] = (*colour, 255)
        im = Image.fromarray(rgba, mode="RGBA")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def add_slice_routes(app: Any, auth: list[Any], output_dir: Any, api: str = "/api/v1") -> None:
    """Add the ``volume`` and ``slices`` routes to the service app.

    Args:
        app: the FastAPI app.
        auth: the dependencies of an authenticated route.
        output_dir: ``output_dir(job_id) -> Path`` of a done job (raising the service's 404 / 409 errors).
        api: the API prefix.
    """
    from fastapi import Query
    from fastapi.concurrency import run_in_threadpool

    cache = VolumeCache()
    app.state.volume_cache = cache
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}

    @app.get(f"{api}/jobs/{{job_id}}/volume", tags=["viewer"], dependencies=auth,
             summary="geometry of a done CT job for the slice viewer (planes, spacing, window presets, nodule extents)")
    async def get_volume(job_id: str) -> dict[str, Any]:
        out = output_dir(job_id)
        return await run_in_threadpool(volume_info, out, cache)

    @app.get(f"{api}/jobs/{{job_id}}/slices/{{plane}}/{{index}}.png", tags=["viewer"], dependencies=auth,
             response_class=Response, summary="one axial / coronal / sagittal slice of a done CT job as PNG "
             "(the CT in a window, or a mask layer)")
    async def get_slice(job_id: str, plane: str, index: int,
                        layer: str = Query("image", description="image, lungs, infection or nodules"),
                        center: float | None = Query(None, description="window centre, HU (image; default -600)"),
                        width: float | None = Query(None, description="window width, HU (image; default 1500)"),
                        ) -> Response:
        out = output_dir(job_id)
        png = await run_in_threadpool(render_slice, out, cache, plane, index, layer, center, width)
        return Response(png, media_type="image/png", headers=headers)
