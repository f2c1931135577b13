"""PNG / JPEG (and other Pillow raster formats) chest X-ray reader.

Pillow is used for decoding. 8- and 16-bit greyscale are read as is; an RGB(A) file is accepted only when
its colour channels are equal up to JPEG noise (a greyscale radiograph saved as colour). A true colour
photograph is rejected: a CAD model fed a photo returns a confident, meaningless answer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pulmo.errors import InputError, OutOfScopeError
from pulmo.io.image import Image2D
from pulmo.io.scope import InputLimits, check_pixels

# A greyscale radiograph saved as JPEG RGB differs between channels by a few grey levels at most.
# Colour photographs differ by tens of levels over large areas.
_MAX_MEAN_CHANNEL_DIFF = 3.0
_MAX_P99_CHANNEL_DIFF = 24.0
#: Largest share of (mostly) transparent pixels (alpha < 128) of a radiograph saved with an alpha channel.
_MAX_TRANSPARENT = 0.01


def channel_difference(rgb: np.ndarray, full_scale: float = 255.0) -> tuple[float, float]:
    """How far an RGB image is from grey: ``(mean, 99th percentile)`` of the largest difference between
    neighbouring channels, in grey levels of 255.

    Args:
        rgb: ``(H, W, 3)`` any real dtype.
        full_scale: the value that maps to 255 (255 for 8-bit; the data maximum for other depths).
    """
    c = np.asarray(rgb, dtype=np.float32)
    diff = np.maximum(np.abs(c[..., 0] - c[..., 1]), np.abs(c[..., 1] - c[..., 2])) * (255.0 / max(1.0, full_scale))
    return float(diff.mean()), float(np.percentile(diff, 99))


def read_raster(path: str | Path, limits: InputLimits | None = None) -> Image2D:
    """Read a PNG/JPEG chest X-ray. The size in the header is checked against ``limits`` before decoding
    (Pillow opens lazily), so a decompression bomb costs milliseconds and no memory.

    Args:
        path: the image file.
        limits: size limits (default :data:`pulmo.io.scope.DEFAULT_LIMITS`).

    Returns:
        :class:`Image2D` with float32 pixels ``(H, W)`` in the file's grey levels (0..255 for 8-bit,
        0..65535 for 16-bit), ``spacing=None``, modality ``"cxr"``.

    Raises:
        OutOfScopeError: over the pixel limit, or a picture with more than 1 % transparent pixels (alpha < 128).
        InputError: the file cannot be decoded or is truncated, has a mode that is not greyscale, or is
            a colour image whose channels differ.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # pulmo applies its own, lower pixel limit from the header below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im_ctx = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise OutOfScopeError(f"{path}: {exc}; over pulmo's pixel limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot decode the image ({exc}); expected a complete PNG or JPEG file") from None
    try:
        with im_ctx as im:
            check_pixels(path, im.size[1], im.size[0], int(getattr(im, "n_frames", 1) or 1), limits)
            im.load()
            fmt, mode = im.format, im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot decode the image ({exc}); expected a complete PNG or JPEG file") from None

    if mode in ("LA", "RGBA") and arr.ndim == 3:
        transparent = float((arr[..., -1] < 128).mean())
        if transparent > _MAX_TRANSPARENT:
            raise OutOfScopeError(f"{path}: {transparent:.1%} of the picture is transparent (an icon or a graphic, not "
                                  "a radiograph); pulmo accepts opaque greyscale radiographs")
    if mode in ("L", "LA"):
        grey = arr[..., 0] if arr.ndim == 3 else arr
        bit_depth = 8
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = arr
        bit_depth = 16
    elif mode == "1":
        grey = arr.astype(np.uint8) * 255
        bit_depth = 1
    elif mode in ("RGB", "RGBA"):
        rgb = arr[..., :3].astype(np.float32)
        mean_diff, p99 = channel_difference(rgb)
        if mean_diff > _MAX_MEAN_CHANNEL_DIFF or p99 > _MAX_P99_CHANNEL_DIFF:
            raise InputError(
                f"{path}: a colour image (mean channel difference {mean_diff:.1f} grey levels, 99th "
                f"percentile {p99:.0f}); expected a greyscale radiograph"
            )
        grey = rgb.mean(axis=-1)
        bit_depth = 8
    else:
        raise InputError(f"{path}: unsupported image mode {mode!r}; expected greyscale (L, I;16) or grey RGB")

    if grey.ndim != 2 or min(grey.shape) < 16:
        raise InputError(f"{path}: image of shape {grey.shape} is too small; expected at least 16 x 16 pixels")
    return Image2D(
        pixels=np.ascontiguousarray(grey, dtype=np.float32),
        spacing=None,
        modality="cxr",
        source={"path": str(path), "format": fmt, "mode": mode, "bit_depth": bit_depth, "photometric": "MONOCHROME2"},
    )
