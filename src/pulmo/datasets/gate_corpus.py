"""The training corpus of the input gate: frontal chest radiographs, axial CT slices and everything else.

Three classes (:data:`GATE_LABELS`): ``cxr`` (a frontal chest radiograph), ``ct_slice`` (a whole axial
CT slice, in HU or windowed) and ``other`` (anything pulmo must refuse). Every item is rendered once with
:func:`pulmo.transforms.gate_input`, the same function the gate applies at inference, and kept as uint8
``(128, 128)``.

Sources, all real data in their public layouts under one data root (``cxr/`` and ``ct/`` below it):

* ``cxr``: every image of ``cxr/covid-chestxray-dataset/images``, ``cxr/chest_xray_pneumonia``,
  ``cxr/COVID-19_Radiography_Dataset``, ``cxr/montgomery_shenzhen/images``, ``cxr/TBX11K/imgs``,
  ``cxr/ChestX-ray14_bbox_sample/images`` and ``cxr/ChestX-Det10_nih_sample/images``, read with
  :func:`pulmo.io.read_image` exactly as ``pulmo analyze`` reads them.
* ``ct_slice``: the axial slices of ``ct/LIDC-IDRI`` (DICOM, HU) and ``ct/pyradiomics_lung`` (NRRD, HU),
  each in HU and through lung (C -600 / W 1500), mediastinal (40 / 400) and bone (400 / 1800) windows;
  the COVID-SemiSeg slices (8-bit, already windowed).
* ``other``: LIDC-IDRI nodule crops (``ct/LIDC-IDRI-slices``, read from the tar.gz), lung-mask PNGs
  (Montgomery/Shenzhen, V7, COVID-SemiSeg ground truth), the natural and microscopy images that
  scikit-image ships in ``skimage.data`` (random crops), and generated pictures (constant, noise,
  gradients, checkerboards, stripes, shapes, text, blobs, smooth clouds).

Splits are by group: a patient (CXR: the dataset's patient id where it has one, else the image),
a block of 5 neighbouring CT slices, a nodule patient, a mask's image, a scikit-image picture, a
generator seed. ``source`` names the dataset, for leave-one-source-out evaluation.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from pulmo.datasets.splits import patient_fold
from pulmo.errors import InputError
from pulmo.transforms import GATE_SIZE, gate_input, window_hu

logger = logging.getLogger(__name__)

GATE_LABELS = ("cxr", "ct_slice", "other")
CXR_SOURCES = {
    "covid-chestxray": "cxr/covid-chestxray-dataset/images",
    "kermany": "cxr/chest_xray_pneumonia",
    "covid-radiography": "cxr/COVID-19_Radiography_Dataset",
    "montgomery-shenzhen": "cxr/montgomery_shenzhen/images",
    "tbx11k": "cxr/TBX11K/imgs",
    "nih-chestxray14": "cxr/ChestX-ray14_bbox_sample/images",
    "nih-chestx-det10": "cxr/ChestX-Det10_nih_sample/images",
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CT_WINDOWS = {"lung": (-600.0, 1500.0), "mediastinal": (40.0, 400.0), "bone": (400.0, 1800.0)}


@dataclass
class GateCorpus:
    """Rendered gate items.

    Attributes:
        images: uint8 ``(N, 128, 128)``, :func:`gate_input` times 255.
        labels: int64 ``(N,)`` indices into :data:`GATE_LABELS`.
        groups: ``N`` split-group ids (patient, slice block, picture, seed).
        sources: ``N`` dataset names.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: list[str]
    sources: list[str]

    def save(self, path: str | Path) -> Path:
        """Write the corpus as a compressed ``.npz``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=self.images, labels=self.labels, groups=np.array(self.groups),
                            sources=np.array(self.sources))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GateCorpus:
        """Read a corpus written by :meth:`save`."""
        with np.load(path) as z:
            return cls(z["images"], z["labels"], [str(g) for g in z["groups"]], [str(s) for s in z["sources"]])

    def held_out(self, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
        """bool ``(N,)``: True for items whose group falls in the held-out fraction (stable per group)."""
        return np.array([patient_fold(g, seed) < test_fraction for g in self.groups])


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(gate_input(x) * 255.0).astype(np.uint8)


def ieee_patient_ids(root: str | Path) -> dict[str, str]:
    """``{file name: patientid}`` of ``cxr/covid-chestxray-dataset/metadata.csv`` under ``root`` ({} when absent)."""
    meta = Path(root) / "cxr/covid-chestxray-dataset/metadata.csv"
    if not meta.is_file():
        return {}
    with open(meta, newline="") as fh:
        return {r["filename"]: r["patientid"] for r in csv.DictReader(fh)}


def cxr_group(source: str, path: Path, ieee_patients: dict[str, str]) -> str:
    """The split group of a chest X-ray: ``source:patient`` (ieee8023 patientid, Kermany ``personN`` /
    ``IM-NNNN``), else ``source:file stem`` (one image per patient in the other sources' file names)."""
    if source == "covid-chestxray":
        return f"{source}:{ieee_patients.get(path.name, path.stem)}"
    if source == "kermany":
        m = re.match(r"(person\d+|IM-\d+)", path.name)
        return f"{source}:{m.group(1) if m else path.stem}"
    return f"{source}:{path.stem}"


def _cxr_items(root: Path, progress: bool) -> list[tuple[np.ndarray, int, str, str]]:
    from pulmo.io import read_image

    ieee = ieee_patient_ids(root)
    items = []
    for source, rel in CXR_SOURCES.items():
        folder = root / rel
        if not folder.is_dir():
            logger.warning("gate corpus: %s missing, skipped", folder)
            continue
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and "mask" not in p.parts[-2])
        for p in tqdm(files, desc=f"cxr {source}", disable=not progress, leave=False):
            try:
                img = read_image(p)
            except InputError as exc:
                logger.warning("gate corpus: %s", exc)
                continue
            items.append((_u8(img.pixels), 0, cxr_group(source, p, ieee), source))
    return items


def _ct_items(root: Path) -> list[tuple[np.ndarray, int, str, str]]:
    from pulmo.io import read_image

    items = []
    volumes = {"lidc-idri": root / "ct/LIDC-IDRI", "pyradiomics": root / "ct/pyradiomics_lung/lung1_image.nrrd"}
    for source, path in volumes.items():
        if not path.exists():
            continue
        if path.is_dir():
            series = [p for p in path.rglob("*") if p.is_dir() and any(p.glob("*.dcm"))]
            vols = [read_image(s) for s in series]
        else:
            vols = [read_image(path)]
        for v in vols:
            for z in range(v.shape[0]):
                group = f"{source}:{v.source.get('series_uid', path.name)}:{z // 5}"
                hu = v.hu[z]
                items.append((_u8(hu), 1, group, source))
                for c, w in _CT_WINDOWS.values():
                    items.append((_u8(window_hu(hu, c, w)), 1, group, source))
    semiseg = root / "ct/COVID-SemiSeg/TrainingSet/MultiClassInfection-Train/Imgs"
    for p in sorted(semiseg.glob("*.jpg")) if semiseg.is_dir() else []:
        arr = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        items.append((_u8(arr), 1, f"covid-semiseg:{int(p.stem) // 2}", "covid-semiseg"))
    return items


def _mask_items(root: Path) -> list[tuple[np.ndarray, int, str, str]]:
    items = []
    folders = {"montgomery-shenzhen-masks": root / "cxr/montgomery_shenzhen/masks",
               "v7-lung-masks": root / "cxr/covid-chestxray-dataset/masks_v7_lung",
               "covid-semiseg-masks": root / "ct/COVID-SemiSeg/TrainingSet"}
    for source, folder in folders.items():
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*.png")):
            arr = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
            items.append((_u8(arr), 2, f"{source}:{p.stem}", source))
    return items


def _crop_items(root: Path, max_items: int) -> list[tuple[np.ndarray, int, str, str]]:
    tar_path = root / "ct/LIDC-IDRI-slices/LIDC-IDRI-slices.tar.gz"
    if not tar_path.is_file():
        return []
    items = []
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and "/images/" in member.name and member.name.endswith(".png")):
                continue
            patient = member.name.split("/")[1]
            fh = tar.extractfile(member)
            arr = np.asarray(Image.open(io.BytesIO(fh.read())).convert("L"), dtype=np.float32)
            items.append((_u8(arr), 2, f"lidc-crops:{patient}", "lidc-crops"))
    rng = np.random.default_rng(0)
    keep = sorted(rng.choice(len(items), size=min(max_items, len(items)), replace=False))
    return [items[i] for i in keep]


def skimage_pictures() -> dict[str, np.ndarray]:
    """The pictures of ``skimage.data`` available without a download, as float32 grey ``(H, W)``."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    out = {}
    for name in ("astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
                 "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                 "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
                 "shepp_logan_phantom", "text"):
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - a picture that needs a download (pooch) is skipped
            logger.debug("skimage.data.%s needs a download: skipped", name)
            continue
        if img.ndim == 3 and img.shape[-1] == 4:
            img = rgba2rgb(img)
        if img.ndim == 3:
            img = rgb2gray(img)
        out[name] = img.astype(np.float32)
    return out


def _natural_items(crops_per_picture: int, seed: int = 0) -> list[tuple[np.ndarray, int, str, str]]:
    rng = np.random.default_rng(seed)
    items = []
    for name, img in skimage_pictures().items():
        items.append((_u8(img), 2, f"skimage:{name}", "skimage"))
        h, w = img.shape
        for _ in range(crops_per_picture):
            ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[y:y + ch, x:x + cw]
            if rng.random() < 0.3:
                crop = crop.max() - crop
            items.append((_u8(crop), 2, f"skimage:{name}", "skimage"))
    return items


def generated_picture(kind: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One generated out-of-scope picture, float32 ``(size, size)`` in [0, 255].

    Args:
        kind: one of :data:`GENERATED_KINDS`.
        rng: numpy random generator.
        size: side in pixels.

    Raises:
        ValueError: ``kind`` is not one of :data:`GENERATED_KINDS`.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "constant":
        return np.full((size, size), float(rng.integers(0, 256)), np.float32)
    if kind == "near_constant":
        return np.clip(rng.integers(0, 256) + rng.normal(0, rng.uniform(0.5, 3), (size, size)), 0, 255).astype(np.float32)
    if kind == "uniform_noise":
        return rng.uniform(0, 255, (size, size)).astype(np.float32)
    if kind == "gaussian_noise":
        return np.clip(rng.normal(128, rng.uniform(10, 80), (size, size)), 0, 255).astype(np.float32)
    if kind == "salt_pepper":
        img = np.full((size, size), float(rng.integers(0, 256)), np.float32)
        m = rng.random((size, size))
        img[m < 0.05] = 0
        img[m > 0.95] = 255
        return img
    if kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        g = np.cos(a) * xx + np.sin(a) * yy
        return (255 * (g - g.min()) / (np.ptp(g) + 1e-6)).astype(np.float32)
    if kind == "radial":
        cy, cx = rng.uniform(0.2, 0.8, 2)
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        return (255 * (1 - r / r.max()) ** rng.uniform(0.5, 3)).astype(np.float32)
    if kind == "checkerboard":
        k = int(rng.integers(2, 32))
        return (255 * (((yy * k).astype(int) + (xx * k).astype(int)) % 2)).astype(np.float32)
    if kind == "stripes":
        k = rng.uniform(2, 40)
        a = rng.uniform(0, np.pi)
        return (127.5 + 127.5 * np.sin(2 * np.pi * k * (np.cos(a) * xx + np.sin(a) * yy))).astype(np.float32)
    if kind in ("shapes", "text"):
        im = Image.new("L", (size, size), int(rng.integers(0, 256)))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 12))):
            x0, y0 = rng.integers(0, size, 2)
            x1, y1 = x0 + rng.integers(8, size // 2), y0 + rng.integers(8, size // 2)
            fill = int(rng.integers(0, 256))
            if kind == "text":
                words = " ".join("".join(chr(int(c)) for c in rng.integers(65, 91, rng.integers(2, 9)))
                                 for _ in range(int(rng.integers(1, 6))))
                draw.text((int(x0) % (size - 20), int(y0) % (size - 12)), words, fill=fill)
            elif rng.random() < 0.5:
                draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=fill)
            else:
                draw.rectangle((int(x0), int(y0), int(x1), int(y1)), fill=fill)
        return np.asarray(im, dtype=np.float32)
    if kind == "blobs":
        from skimage.data import binary_blobs

        return 255 * binary_blobs(length=size, blob_size_fraction=rng.uniform(0.05, 0.3), volume_fraction=rng.uniform(
            0.2, 0.6), rng=int(rng.integers(0, 2**31))).astype(np.float32)
    if kind == "clouds":
        from scipy import ndimage

        img = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), rng.uniform(2, 30))
        return (255 * (img - img.min()) / (np.ptp(img) + 1e-9)).astype(np.float32)
    raise ValueError(f"unknown generated picture kind {kind!r}; expected one of {GENERATED_KINDS}")


GENERATED_KINDS = ("constant", "near_constant", "uniform_noise", "gaussian_noise", "salt_pepper", "gradient",
                   "radial", "checkerboard", "stripes", "shapes", "text", "blobs", "clouds")


def _generated_items(per_kind: int, seed: int = 0) -> list[tuple[np.ndarray, int, str, str]]:
    items = []
    for k, kind in enumerate(GENERATED_KINDS):
        for i in range(per_kind):
            rng = np.random.default_rng([seed, k, i])
            items.append((_u8(generated_picture(kind, rng)), 2, f"generated:{kind}:{i}", "generated"))
    return items


def build_gate_corpus(root: str | Path, max_crops: int = 1500, crops_per_picture: int = 12,
                      generated_per_kind: int = 60, progress: bool = True) -> GateCorpus:
    """Render the gate corpus from a data root (see the module docstring for the sources).

    Args:
        root: the data root holding ``cxr/`` and ``ct/``.
        max_crops: LIDC nodule crops kept (a random sample, seed 0).
        crops_per_picture: random crops of each scikit-image picture.
        generated_per_kind: generated pictures per kind of :data:`GENERATED_KINDS`.
        progress: tqdm bars.

    Returns:
        :class:`GateCorpus`.

    Raises:
        InputError: ``root`` holds no chest X-ray of any source.
    """
    root = Path(root)
    items = _cxr_items(root, progress)
    if not items:
        raise InputError(f"{root}: no chest X-ray source found; expected {sorted(CXR_SOURCES.values())}")
    items += _ct_items(root) + _mask_items(root) + _crop_items(root, max_crops)
    items += _natural_items(crops_per_picture) + _generated_items(generated_per_kind)
    return GateCorpus(images=np.stack([i[0] for i in items]).reshape(-1, GATE_SIZE, GATE_SIZE),
                      labels=np.array([i[1] for i in items], dtype=np.int64),
                      groups=[i[2] for i in items], sources=[i[3] for i in items])
