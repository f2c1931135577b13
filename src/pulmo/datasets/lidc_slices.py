"""LIDC-IDRI nodule crops with one mask per radiologist ("LIDC-IDRI-slices" layout).

The layout, as published on Kaggle (``zhangweiled/lidcidri``) and mirrored in ``shared/data/ct/LIDC-IDRI-slices``::

    <root>/<patient>/nodule-<k>/images/slice-<i>.png      8-bit grey, lung-windowed axial crop, nodule centred
    <root>/<patient>/nodule-<k>/mask-<r>/slice-<i>.png    0/255 mask of reader r (r = 0..3), same size

``<root>`` may also be a folder holding ``LIDC-IDRI-slices/`` or the ``.tar.gz`` of that folder (read member by
member with :mod:`tarfile`, nothing extracted). The public release has 128 x 128 crops; the development copy
keeps the centre 64 x 64 (128 x 128 where a mask reaches within 2 px of the 64-px border). Slices ``i`` are
consecutive axial slices of the nodule in order; the images are not Hounsfield units and no pixel spacing,
slice thickness or world position is stored.

The data are LIDC-IDRI (Armato et al., "The Lung Image Database Consortium (LIDC) and Image Database Resource
Initiative (IDRI): a completed reference database of lung nodules on CT scans", Med. Phys. 38(2), 2011): up to
four radiologists outlined each nodule >= 3 mm; a reader whose mask is empty on every slice did not outline it.

Derived here (documented in ``docs/nodule-seg.md``):

* the **50 % consensus** (the LIDC convention, also :func:`pulmo.datasets.lidc.consensus_mask`): pixels marked
  by at least half of the readers who outlined the nodule (1 of 1, 1 of 2, 2 of 3, 2 of 4);
* an **equivalent diameter** in px: per outlining reader, the area-equivalent diameter ``2 sqrt(A / pi)`` of the
  largest axial cross-section (the LIDC/LUNA16 size convention of :mod:`pulmo.datasets.lidc`), averaged over the
  readers; and an **estimate in mm**, ``diameter_px * MM_PER_PX``, see :data:`MM_PER_PX`;
* the **8-bit window** the crops were made with, estimated statistically: :data:`CROP_WINDOW_HU`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pulmo.datasets.splits import split_by_patient
from pulmo.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

#: The HU window ``(low, high)`` that maps a CT to the crops' grey levels: ``grey = 255 * (HU - low) / (high - low)``
#: clipped to [0, 255] (centre -50 HU, width 1900 HU). The dataset does not state it, and LIDC-IDRI-0001 (whose
#: crops would allow an exact pixel match) is held out of this copy, so it was estimated statistically: the grey
#: levels of the crops (11,994 slices of 2,039 nodules, pixels farther than 3 px from every reader's mask: the
#: lung, vessels and chest wall around the nodules) against the HU of LIDC-IDRI-0001 at the same kind of places
#: (64 x 64 patches centred on its 4-reader nodule, on every slice, and on its 10 distinct < 3 mm / non-nodule
#: marks; nodule masks excluded the same way), windowed with every candidate ``low`` -1150..-850 and ``high``
#: 500..1400 HU (10/20 HU steps). Distance: :func:`tissue_conditional_w1` (Wasserstein-1 in grey levels between
#: the two distributions below grey 64, plus the same above it, so the share of chest wall in the field of view,
#: which differs between one scan and 673 patients, does not bend the fit). Best fit ``[-990, 900]`` (distance
#: 9.75; bootstrap 95 % interval over patients and patches: low -1010..-980, high 860..980); ``[-1000, 900]``
#: scores 9.85 and agrees with the two other estimates: the plain Wasserstein-1 fit ``[-1000, 840]``
#: (low -1010..-987, high 740..946) and the two-peak calibration (lung parenchyma mode -880 HU <-> grey 15, soft
#: tissue mode +55 HU <-> grey 134 gives ``[-998, 1005]``). Clipping: 0.63 % of crop pixels are 0 and 0.01 % are
#: 255. The usual lung windows fit far worse: C -600 W 1500 (distance 76.9; lung parenchyma at grey 79 instead
#: of 15), C -500 W 1400 (78.8), ``[-1200, 600]`` (51.3), ``[-1000, 400]`` (47.6; soft tissue at 193 instead of
#: 134). The upper limit is the less certain one (little tissue above +100 HU near nodules): 840-1005 across the
#: three estimates, i.e. about +-6 grey levels at soft-tissue density. Reproduce with :func:`fit_crop_window`
#: (``docs/nodule-seg.md``).
CROP_WINDOW_HU: tuple[float, float] = (-1000.0, 900.0)

#: Estimated in-plane pixel size of the crops, mm/px: the quantiles (5-95 %) of the crops' equivalent diameters in
#: px of the nodules outlined by >= 3 readers (1,039 here) matched to the quantiles of the LUNA16 reference
#: diameters (``annotations.csv``, the LIDC nodules with >= 3 readers, 1,183 rows): the geometric mean ratio is
#: 0.689 and the quartile ratios 0.69 / 0.68 / 0.69 (10 % / 90 %: 0.69 / 0.71). The ratio is flat across sizes,
#: as expected of crops kept at the scans' native spacing (LIDC in-plane spacing 0.46-0.98 mm, typically ~0.7 mm),
#: so one nodule's mm value can be off by about +-30 % while the size groups as a whole are on LUNA16's scale.
MM_PER_PX: float = 0.69

#: Size groups of the evaluation, estimated mm (see :data:`MM_PER_PX`): ``< 6``, ``6-10``, ``> 10``.
SIZE_BINS_MM: tuple[float, float] = (6.0, 10.0)

_MEMBER = re.compile(r"(?:^|/)([^/]+)/(nodule-\d+)/(images|mask-(\d+))/slice-(\d+)\.png$")
_NODULE_DIR = re.compile(r"^nodule-(\d+)$")
_SLICE = re.compile(r"^slice-(\d+)\.png$")


@dataclasses.dataclass
class LidcSliceNodule:
    """One nodule of the crops: its slice stack, every reader's mask and the derived labels.

    Attributes:
        patient_id: the LIDC patient (``LIDC-IDRI-NNNN``).
        nodule: the nodule folder name (``nodule-<k>``).
        images: uint8 ``(S, H, W)`` lung-windowed grey levels (see :data:`CROP_WINDOW_HU`), slices in order of ``i``.
        masks: bool ``(R, S, H, W)``, one mask per reader folder ``mask-0..R-1`` (R = 4 in the release); readers
            absent from the folder are all-False.
        slice_ids: the ``i`` of each slice (sorted).
    """

    patient_id: str
    nodule: str
    images: np.ndarray
    masks: np.ndarray
    slice_ids: list[int]

    @property
    def readers(self) -> list[int]:
        """Indices of the readers who outlined the nodule (a mask not empty on some slice)."""
        return [int(r) for r in np.flatnonzero(self.masks.reshape(len(self.masks), -1).any(axis=1))]

    @property
    def n_readers(self) -> int:
        """Number of readers with a non-empty mask, 0-4."""
        return len(self.readers)

    @property
    def consensus(self) -> np.ndarray:
        """bool ``(S, H, W)`` 50 % consensus of the outlining readers (:func:`consensus_mask`)."""
        return consensus_mask(self.masks)

    @property
    def crop_px(self) -> int:
        """Side of the crop in px (64 or 128)."""
        return int(self.images.shape[-1])

    @property
    def diameter_px(self) -> float:
        """Equivalent diameter in px (:func:`equivalent_diameter_px`)."""
        return equivalent_diameter_px(self.masks)

    @property
    def diameter_mm(self) -> float:
        """Estimated equivalent diameter in mm: ``diameter_px * MM_PER_PX`` (an estimate; see :data:`MM_PER_PX`)."""
        return self.diameter_px * MM_PER_PX

    @property
    def key(self) -> str:
        """``<patient>/<nodule>``."""
        return f"{self.patient_id}/{self.nodule}"


@dataclasses.dataclass
class LidcSlices:
    """The nodules read from one dataset root.

    Attributes:
        nodules: the nodules with at least one non-empty reader mask, sorted by patient and nodule number.
        skipped_empty: ``<patient>/<nodule>`` of the nodules whose masks are all empty (no reader outlined them;
            skipped, since they have no reference).
        source: the folder or ``.tar.gz`` read.
    """

    nodules: list[LidcSliceNodule]
    skipped_empty: list[str]
    source: str

    @property
    def n_skipped_empty(self) -> int:
        """Number of skipped all-empty nodules."""
        return len(self.skipped_empty)

    @property
    def patients(self) -> list[str]:
        """Sorted distinct patient ids of :attr:`nodules`."""
        return sorted({n.patient_id for n in self.nodules})


def consensus_mask(masks: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Pixels marked by at least ``level`` of the readers who outlined a nodule (LIDC 50 % consensus).

    A reader whose mask is empty on every slice did not outline the nodule and does not vote, so the rule is
    1 of 1, 1 of 2, 2 of 3 and 2 of 4 readers at ``level=0.5``.

    Args:
        masks: ``(R, ...)`` one binary mask per reader (any trailing shape, e.g. ``(R, S, H, W)``).
        level: fraction of the outlining readers, in ``(0, 1]``.

    Returns:
        bool array of ``masks.shape[1:]``; all False when no reader outlined anything.

    Raises:
        ConfigError: ``level`` outside ``(0, 1]``.
    """
    if not 0.0 < level <= 1.0:
        raise ConfigError(f"consensus level {level!r}; expected a fraction in (0, 1]")
    m = np.asarray(masks) > 0
    outlined = m.reshape(len(m), -1).any(axis=1)
    if not outlined.any():
        return np.zeros(m.shape[1:], dtype=bool)
    votes = m[outlined].sum(axis=0)
    return votes >= level * int(outlined.sum()) - 1e-9


def equivalent_diameter_px(masks: np.ndarray) -> float:
    """Equivalent diameter of a nodule in px: per outlining reader, ``2 sqrt(A / pi)`` of the largest axial
    cross-section A (px²), averaged over the readers who outlined it (LIDC/LUNA16 size convention).

    Args:
        masks: bool ``(R, S, H, W)``.

    Returns:
        Diameter in px (0.0 when every mask is empty). No spacing is stored in the crops: see :data:`MM_PER_PX`.
    """
    m = np.asarray(masks) > 0
    areas = m.reshape(m.shape[0], m.shape[1], -1).sum(axis=2).max(axis=1)
    areas = areas[areas > 0]
    return float(np.mean(2.0 * np.sqrt(areas / np.pi))) if len(areas) else 0.0


def size_group(diameter_mm: float) -> str:
    """The evaluation size group of an estimated diameter: ``"<6mm"``, ``"6-10mm"`` or ``">10mm"``."""
    lo, hi = SIZE_BINS_MM
    if diameter_mm < lo:
        return f"<{lo:g}mm"
    return f"{lo:g}-{hi:g}mm" if diameter_mm <= hi else f">{hi:g}mm"


def hu_to_crop_grey(hu: np.ndarray, window: tuple[float, float] = CROP_WINDOW_HU) -> np.ndarray:
    """Map CT values in HU to the crops' 8-bit grey levels through :data:`CROP_WINDOW_HU`.

    Args:
        hu: any shape, Hounsfield units.
        window: ``(low, high)`` HU mapped to 0 and 255.

    Returns:
        uint8 array of the same shape (rounded, clipped).
    """
    lo, hi = window
    g = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


def tissue_conditional_w1(a: np.ndarray, b: np.ndarray, split: int = 64) -> float:
    """Distance between two 256-bin grey-level histograms: Wasserstein-1 (in grey levels) of the parts below
    ``split`` plus that of the parts at and above it, each part normalised to 1.

    Comparing the lung part and the dense part separately makes the distance blind to how much of the field of
    view is chest wall, which differs between one scan and a dataset; what remains is where each tissue lands.

    Args:
        a, b: ``(256,)`` non-negative counts.
        split: grey level separating lung from dense tissue (64 ~ -520 HU under :data:`CROP_WINDOW_HU`).
    """
    def w1(p: np.ndarray, q: np.ndarray) -> float:
        if p.sum() <= 0 or q.sum() <= 0:
            return float(len(p))
        return float(np.abs(np.cumsum(p) / p.sum() - np.cumsum(q) / q.sum()).sum())

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return w1(a[:split], b[:split]) + w1(a[split:], b[split:])


def fit_crop_window(crop_hist: np.ndarray, hu_values: np.ndarray, lows: Iterable[float] = range(-1150, -849, 10),
                    highs: Iterable[float] = range(500, 1401, 20), split: int = 64) -> dict[str, Any]:
    """Estimate the 8-bit window of windowed crops from HU samples of the same kind of tissue (grid search).

    Args:
        crop_hist: ``(256,)`` grey-level counts of the crops.
        hu_values: HU samples of comparable regions of a CT (1-D, any length).
        lows, highs: candidate window limits in HU.
        split: see :func:`tissue_conditional_w1`.

    Returns:
        ``{"low", "high", "distance", "grid": [(low, high, distance), ...]}`` with the smallest distance.

    Raises:
        InputError: empty inputs or a crop histogram that is not 256 bins.
    """
    crop_hist = np.asarray(crop_hist, dtype=np.float64)
    hu = np.asarray(hu_values, dtype=np.float32).ravel()
    if crop_hist.shape != (256,) or crop_hist.sum() <= 0 or hu.size == 0:
        raise InputError(f"fit_crop_window needs a 256-bin crop histogram (got shape {crop_hist.shape}) and HU "
                         f"samples (got {hu.size})")
    values, counts = np.unique(np.rint(hu), return_counts=True)
    grid = []
    for lo in lows:
        for hi in highs:
            if hi <= lo:
                continue
            g = hu_to_crop_grey(values, (float(lo), float(hi)))
            h = np.bincount(g, weights=counts, minlength=256)
            grid.append((float(lo), float(hi), tissue_conditional_w1(h, crop_hist, split)))
    if not grid:
        raise InputError("fit_crop_window: no candidate window with high > low")
    lo, hi, d = min(grid, key=lambda t: t[2])
    return {"low": lo, "high": hi, "distance": d, "grid": grid}


def _decode_png(data: bytes | Path, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: unreadable PNG ({exc})") from None


def _iter_folder(root: Path, patients: set[str] | None) -> Iterator[tuple[str, str, str, int, Any, str]]:
    for pdir in sorted(p for p in root.iterdir() if p.is_dir()):
        if patients is not None and pdir.name not in patients:
            continue
        for ndir in sorted(d for d in pdir.iterdir() if d.is_dir() and _NODULE_DIR.match(d.name)):
            for kind_dir in sorted(d for d in ndir.iterdir() if d.is_dir()):
                if kind_dir.name != "images" and not re.fullmatch(r"mask-\d+", kind_dir.name):
                    continue
                for f in kind_dir.iterdir():
                    m = _SLICE.match(f.name)
                    if m:
                        yield pdir.name, ndir.name, kind_dir.name, int(m.group(1)), f, str(f)


def _iter_tar(path: Path, patients: set[str] | None) -> Iterator[tuple[str, str, str, int, Any, str]]:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = _MEMBER.search(member.name)
                if not m or (patients is not None and m.group(1) not in patients):
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                yield m.group(1), m.group(2), m.group(3), int(m.group(5)), fh.read(), f"{path}:{member.name}"
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{path}: unreadable tar archive ({exc})") from None


def _dataset_root(path: Path) -> Path:
    """The folder holding the patient folders: ``path`` itself or its ``LIDC-IDRI-slices/`` child."""
    child = path / "LIDC-IDRI-slices"
    return child if child.is_dir() else path


def read_lidc_slices(data: str | Path, patients: Sequence[str] | None = None, progress: bool = False) -> LidcSlices:
    """Read every nodule of an LIDC-IDRI-slices folder or ``.tar.gz``.

    Args:
        data: the folder of patient folders, a folder holding ``LIDC-IDRI-slices/``, or the ``.tar.gz``.
        patients: read only these patients (default: all).
        progress: show a progress bar over files.

    Returns:
        :class:`LidcSlices`; nodules whose masks are all empty are skipped and listed in ``skipped_empty``.

    Raises:
        InputError: ``data`` missing, no nodule in the layout, an unreadable PNG, a mask without its image slice
            (or an image slice without a mask slice in a reader folder that exists), or sizes that differ within
            a nodule.
    """
    path = Path(data)
    wanted = set(patients) if patients is not None else None
    if path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar"))):
        files: Iterator = _iter_tar(path, wanted)
    elif path.is_dir():
        files = _iter_folder(_dataset_root(path), wanted)
    else:
        raise InputError(f"{path}: LIDC-IDRI-slices data not found (expected the extracted folder "
                         "<patient>/nodule-<k>/{images,mask-0..3}/slice-<i>.png or its .tar.gz)")
    raw: dict[tuple[str, str], dict[str, dict[int, tuple[np.ndarray, str]]]] = {}
    for patient, nodule, kind, i, content, where in tqdm(files, desc="lidc-slices", disable=not progress,
                                                         unit="png", leave=False):
        raw.setdefault((patient, nodule), {}).setdefault(kind, {})[i] = (_decode_png(content, where), where)
    if not raw:
        raise InputError(f"{path}: no nodule found in the LIDC-IDRI-slices layout "
                         "(<patient>/nodule-<k>/{images,mask-0..3}/slice-<i>.png)"
                         + (f" for patients {sorted(wanted)[:5]}" if wanted else ""))
    nodules, skipped = [], []
    order = sorted(raw, key=lambda k: (k[0], int(k[1].split("-")[1])))
    for patient, nodule in order:
        n = _assemble(patient, nodule, raw.pop((patient, nodule)), path)
        if n.n_readers == 0:
            skipped.append(n.key)
        else:
            nodules.append(n)
    if skipped:
        logger.info("lidc-slices: %d nodules with all-empty masks skipped", len(skipped))
    return LidcSlices(nodules, skipped, str(path))


def _assemble(patient: str, nodule: str, parts: dict[str, dict[int, tuple[np.ndarray, str]]],
              source: Path) -> LidcSliceNodule:
    where = f"{source}: {patient}/{nodule}"
    if "images" not in parts:
        raise InputError(f"{where}: reader masks but no images/ slices")
    ids = sorted(parts["images"])
    images = [parts["images"][i][0] for i in ids]
    shape = images[0].shape
    for i, (im, name) in zip(ids, (parts["images"][i] for i in ids)):
        if im.shape != shape:
            raise InputError(f"{name}: slice size {im.shape} differs from {shape} of the nodule's first slice")
    reader_ids = sorted(int(k.split("-")[1]) for k in parts if k.startswith("mask-"))
    n_readers = max(4, reader_ids[-1] + 1) if reader_ids else 4
    masks = np.zeros((n_readers, len(ids), *shape), dtype=bool)
    for r in reader_ids:
        slices = parts[f"mask-{r}"]
        extra = sorted(set(slices) - set(ids))
        if extra:
            raise InputError(f"{slices[extra[0]][1]}: mask slice without an image slice-{extra[0]}.png")
        missing = sorted(set(ids) - set(slices))
        if missing:
            raise InputError(f"{where}: mask-{r}/slice-{missing[0]}.png missing (images/ has it)")
        for j, i in enumerate(ids):
            m, name = slices[i]
            if m.shape != shape:
                raise InputError(f"{name}: mask size {m.shape} differs from the image size {shape}")
            masks[r, j] = m > 127
    return LidcSliceNodule(patient, nodule, np.stack(images).astype(np.uint8), masks, ids)


def split_nodules(nodules: Sequence[LidcSliceNodule], test_fraction: float = 0.2, val_fraction: float = 0.1,
                  seed: int = 0) -> tuple[list[LidcSliceNodule], list[LidcSliceNodule], list[LidcSliceNodule]]:
    """Patient-level (train, validation, test) split with :func:`pulmo.datasets.split_by_patient` (``exact``):
    the ``test_fraction`` of patients with the smallest :func:`pulmo.datasets.patient_fold` are the test set, then
    ``val_fraction`` of all patients (taken the same way from the rest) the validation set. No patient is on two
    sides.

    Args:
        nodules: the nodules of :func:`read_lidc_slices`.
        test_fraction, val_fraction: shares of patients, each in (0, 1), summing to less than 1.
        seed: seed of :func:`pulmo.datasets.patient_fold`.

    Returns:
        ``(train, val, test)`` lists of nodules, in input order.

    Raises:
        ConfigError: fractions out of range, or fewer than 3 patients (each side needs one).
    """
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ConfigError(f"test_fraction {test_fraction} and val_fraction {val_fraction} must be in (0, 1) and sum "
                          "to less than 1")
    records = [{"patient_id": n.patient_id, "nodule": n} for n in nodules]
    n_patients = len({r["patient_id"] for r in records})
    if n_patients < 3:
        raise ConfigError(f"a train/validation/test split by patient needs at least 3 patients, got {n_patients}")
    rest, test = split_by_patient(records, test_fraction, seed, exact=True)
    train, val = split_by_patient(rest, val_fraction / (1 - test_fraction), seed, exact=True)
    return [r["nodule"] for r in train], [r["nodule"] for r in val], [r["nodule"] for r in test]


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size x size`` window of the last two axes (unchanged when already that small)."""
    h, w = array.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return array[..., top:top + size, left:left + size]


def context_stack(images: np.ndarray, index: int, context: int = 1) -> np.ndarray:
    """Slices ``index - context .. index + context`` of ``images`` ``(S, H, W)`` as channels
    ``(2 context + 1, H, W)``; beyond the ends of the stack the end slice is repeated."""
    idx = np.clip(np.arange(index - context, index + context + 1), 0, len(images) - 1)
    return images[idx]


class NoduleSliceDataset(Dataset):
    """2.5-D training samples: one per slice of every nodule.

    Items: ``image`` float32 ``(2 context + 1, size, size)`` in [0, 1] (grey / 255; slices i-1, i, i+1 for
    ``context=1``) and ``label`` float32 ``(1, size, size)`` 0/1, the 50 % consensus of slice i. Crops larger than
    ``size`` are centre-cropped (the nodule is at the centre of every crop); smaller ones are refused.

    Raises:
        InputError: a crop smaller than ``size``.
    """

    def __init__(self, nodules: Sequence[LidcSliceNodule], size: int = 64, context: int = 1, transform=None):
        self.size, self.context, self.transform = size, context, transform
        self.items: list[tuple[int, int]] = []
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        for k, n in enumerate(nodules):
            if min(n.images.shape[-2:]) < size:
                raise InputError(f"{n.key}: crop {n.images.shape[-2:]} smaller than the working size {size}")
            self._images.append(centre_crop(n.images, size))
            self._labels.append(centre_crop(n.consensus, size))
            self.items += [(k, i) for i in range(len(n.images))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        k, i = self.items[j]
        image = context_stack(self._images[k], i, self.context).astype(np.float32) / 255.0
        sample = {"image": image, "label": self._labels[k][i][None].astype(np.float32)}
        if self.transform is not None:
            sample = self.transform(sample)
        return {key: torch.as_tensor(np.asarray(v), dtype=torch.float32) for key, v in sample.items()}


__all__ = ["CROP_WINDOW_HU", "MM_PER_PX", "SIZE_BINS_MM", "LidcSliceNodule", "LidcSlices", "NoduleSliceDataset",
           "centre_crop", "consensus_mask", "context_stack", "equivalent_diameter_px", "fit_crop_window",
           "hu_to_crop_grey", "read_lidc_slices", "size_group", "split_nodules", "tissue_conditional_w1"]
