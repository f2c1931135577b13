"""Turn the files of one upload into the input of one analysis, safely.

An upload is stored under ``jobs/<id>/input/`` with neutral names (``upload_000.dcm``, ...: a client's
file names can hold patient names and are never kept or logged), then resolved into what
:func:`pulmo.pipeline.analyze_image` reads:

=====================================  =========================================================
upload                                 analysis input
=====================================  =========================================================
one PNG / JPEG / DICOM / NIfTI / NRRD  that file
``.mhd`` + its data file (``.raw``)    the ``.mhd`` (its ``ElementDataFile`` renamed to match)
several DICOM files of one CT series   the ``input/`` folder
one ``.zip``                           extracted safely to ``input/unzipped/``; then the series
                                       folder, or the single image / volume it holds
=====================================  =========================================================

Zip members are written under neutral names too: each folder becomes ``d0000``, ``d0001``, ... and each
file ``m00000<suffix>`` (its position in the archive and its known suffix), so a member name never
reaches the filesystem (no patient names on disk, in the job store or in ``OSError`` messages, and no
name too long for the filesystem). A ``.mhd`` header's ``ElementDataFile`` is rewritten to its data
file's neutral name. Extraction refuses absolute paths, ``..`` components, drive letters, symlinks,
encrypted members, members more than ``MAX_ZIP_DEPTH`` folders deep and names that clash (the same
path twice, or a file ``a`` beside members under ``a/``), and caps the member count and the total
uncompressed size (counted while extracting, so a lying header cannot get past it).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from pulmo.io import folder_is_dicom_series, is_supported_file
from pulmo.io.dicom import is_dicom_file
from pulmo.service.errors import (
    BadZipError,
    UnsupportedFileError,
    UploadTooLargeError,
    ZipNameClashError,
    ZipPathTooDeepError,
)

SUPPORTED = ("PNG, JPEG, DICOM, NIfTI (.nii, .nii.gz), MetaImage (.mhd with its .raw, or .mha), NRRD (.nrrd), "
             "several DICOM files of one CT series, or a .zip of a DICOM series")
_KNOWN_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".raw", ".zraw", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg",
                   ".dcm", ".dicom", ".ima", ".zip", ".tif", ".tiff", ".bmp")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_CHUNK = 1024 * 1024
MAX_ZIP_DEPTH = 32  # folders above a member; DICOM exports nest 3 to 6 deep


@dataclasses.dataclass
class SavedFile:
    """One uploaded file as stored: ``index`` in the upload (0-based), the client's ``original`` name (for
    error messages to that client only), the stored ``path`` and its ``size`` in bytes.

    Attributes:
        index: position of the file in the upload, 0-based.
        original: the client's file name (base name only, at most 200 characters; "" when none was sent).
        path: where the file is stored on the server.
        size: its size in bytes.
    """

    index: int
    original: str
    path: Path
    size: int

    @property
    def label(self) -> str:
        """How error messages name the file: its position and the client's name."""
        return f"file #{self.index + 1} ({self.original!r})" if self.original else f"file #{self.index + 1}"


@dataclasses.dataclass
class ExtractedZip:
    """What :func:`safe_extract_zip` wrote: ``bytes_written`` in total, and ``names``, the client's member
    name of each extracted file keyed by its neutral path relative to the extraction folder (posix), for
    messages to that client only.

    Attributes:
        bytes_written: total bytes of the extracted files.
        names: neutral posix path relative to the extraction folder -> the client's member name.
    """

    bytes_written: int
    names: dict[str, str]


@dataclasses.dataclass
class PreparedInput:
    """The analysis input: ``input_rel`` relative to the job folder, and the upload ``kind``
    (``image``, ``volume``, ``dicom-series``, ``zip``).

    Attributes:
        input_rel: path of the analysis input (a file or a folder) relative to the job folder.
        kind: ``"image"``, ``"volume"``, ``"dicom-series"`` or ``"zip"``.
    """

    input_rel: str
    kind: str


def known_suffix(name: str) -> str:
    """The lower-case suffix of ``name`` if it is one the formats need (``.nii.gz`` as one), else ``""``."""
    low = name.lower()
    return next((s for s in _KNOWN_SUFFIXES if low.endswith(s)), "")


def client_basename(name: str | None) -> str:
    """The last component of a client's file name (both ``/`` and ``\\`` separators), at most 200 chars."""
    return re.split(r"[/\\]", name or "")[-1][:200]


def stored_name(index: int, original: str) -> str:
    """The neutral name an uploaded file is stored under: ``upload_<index:03d><suffix>``."""
    return f"upload_{index:03d}{known_suffix(original)}"


def mib(n_bytes: float) -> str:
    """``n_bytes`` in MiB for messages: ``0.1``, ``512``."""
    return f"{n_bytes / 2**20:.1f}".removesuffix(".0")


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _is_zip(f: SavedFile) -> bool:
    return f.path.name.endswith(".zip") or _head(f.path, 4) in _ZIP_MAGIC


def _suffix(path: Path) -> str:
    return known_suffix(path.name)


def _header_lines(path: Path, limit: int = 65536) -> list[str]:
    return _head(path, limit).decode("latin-1").splitlines()


def _plain_name(value: str) -> bool:
    return bool(value) and not re.search(r"[/\\:]", value) and value not in (".", "..") and "\x00" not in value


def metaimage_data_file(path: Path, label: str) -> str | None:
    """The ``ElementDataFile`` of a MetaImage header: ``None`` for ``LOCAL`` (data in the same file), else
    a plain file name in the same folder.

    Raises:
        UnsupportedFileError: no ``ElementDataFile``, a ``LIST`` of files, or a path (absolute, with
            folders or ``..``), which could make the reader open any file of the server.
    """
    for line in _header_lines(path):
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            value = value.strip()
            if value == "LOCAL":
                return None
            if value.startswith("LIST") or "%" in value or not _plain_name(value):
                raise UnsupportedFileError(f"{label}: ElementDataFile {value[:80]!r} is not supported; expected a "
                                           "plain file name in the same upload (e.g. scan.raw) or LOCAL")
            return value
    raise UnsupportedFileError(f"{label}: no ElementDataFile line; not a MetaImage header")


def check_nrrd_attached(path: Path, label: str) -> None:
    """Refuse a NRRD whose header names a detached data file (``data file:``), which could point anywhere.

    Raises:
        UnsupportedFileError: a ``.nhdr`` or a ``.nrrd`` with a ``data file`` field.
    """
    if path.name.lower().endswith(".nhdr"):
        raise UnsupportedFileError(f"{label}: detached NRRD headers (.nhdr) are not supported; upload a .nrrd "
                                   "with attached data")
    for line in _header_lines(path):
        if not line.strip():
            break
        if re.match(r"\s*data ?file\s*:", line, flags=re.IGNORECASE):
            raise UnsupportedFileError(f"{label}: NRRD with a detached data file is not supported; upload a .nrrd "
                                       "with attached data")


def _check_single(f: SavedFile) -> None:
    suffix = _suffix(f.path)
    if suffix in (".mhd", ".mha"):
        data = metaimage_data_file(f.path, f.label)
        if data is not None:
            raise UnsupportedFileError(f"{f.label}: the MetaImage header refers to the data file {data!r}, which "
                                       "was not uploaded; send the .mhd and its data file together")
    elif suffix in (".nrrd", ".nhdr"):
        check_nrrd_attached(f.path, f.label)
    if not is_supported_file(f.path):
        hint = (" (NIfTI, MetaImage and NRRD files are recognised by their suffix: .nii, .nii.gz, .mhd, .mha, "
                ".nrrd)" if not suffix else "")
        raise UnsupportedFileError(f"{f.label} is not a supported image{hint}; expected {SUPPORTED}")


def _prepare_mhd_pair(files: list[SavedFile]) -> PreparedInput:
    headers = [f for f in files if _suffix(f.path) == ".mhd"]
    if len(headers) != 1:
        raise UnsupportedFileError(f"{len(headers)} .mhd headers in one upload; send one .mhd with its data file "
                                   "per job")
    header = headers[0]
    data = metaimage_data_file(header.path, header.label)
    others = [f for f in files if f is not header]
    if data is None:
        raise UnsupportedFileError(f"{header.label} holds its data (ElementDataFile = LOCAL); upload it alone")
    matches = [f for f in others if f.original == data] or [f for f in others if f.original.lower() == data.lower()]
    if not matches:
        raise UnsupportedFileError(f"{header.label} refers to the data file {data!r}, which is not among the "
                                   f"{len(others)} other uploaded files")
    if len(others) != 1:
        raise UnsupportedFileError(f"a MetaImage upload is the .mhd and its data file {data!r}; "
                                   f"{len(others) - 1} other files were sent too (one study per job)")
    _point_data_file(header.path, matches[0].path.name)
    return PreparedInput(f"input/{header.path.name}", "volume")


def _point_data_file(header: Path, data_name: str) -> None:
    """Rewrite a MetaImage header's ``ElementDataFile`` to ``data_name`` (a neutral name beside it)."""
    lines = header.read_bytes().decode("latin-1").splitlines()
    lines = [f"ElementDataFile = {data_name}" if ln.partition("=")[0].strip() == "ElementDataFile" else ln
             for ln in lines]
    header.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def prepare_upload(input_dir: Path, files: list[SavedFile], max_unzipped_bytes: int,
                   max_zip_members: int) -> PreparedInput:
    """Resolve the stored files of one upload into the analysis input (see the module table).

    Args:
        input_dir: ``jobs/<id>/input`` holding ``files``.
        files: the stored files, in upload order (each non-empty).
        max_unzipped_bytes: limit of a zip's total uncompressed size, bytes.
        max_zip_members: limit of a zip's member count.

    Returns:
        The :class:`PreparedInput` (path relative to the job folder).

    Raises:
        UnsupportedFileError: an unsupported file, or files that are not one study.
        BadZipError: a corrupt or unsafe zip.
        UploadTooLargeError: a zip beyond the limits.
    """
    zips = [f for f in files if _is_zip(f)]
    if zips:
        if len(files) != 1:
            raise UnsupportedFileError(f"{zips[0].label} is a zip; a zip must be the only file of its upload "
                                       f"({len(files)} files were sent)")
        target = input_dir / "unzipped"
        extracted = safe_extract_zip(zips[0].path, target, max_unzipped_bytes, max_zip_members, zips[0].label)
        zips[0].path.unlink()
        return PreparedInput(resolve_folder(target, input_dir.parent, zips[0].label, extracted.names), "zip")
    if len(files) == 1:
        _check_single(files[0])
        kind = "volume" if _suffix(files[0].path) in _VOLUME_SUFFIXES else "image"
        return PreparedInput(f"input/{files[0].path.name}", kind)
    if any(_suffix(f.path) == ".mhd" for f in files):
        return _prepare_mhd_pair(files)
    for f in files:
        if not is_dicom_file(f.path):
            raise UnsupportedFileError(
                f"{f.label} is not DICOM; several files in one upload must be the DICOM files of one CT series "
                f"(or a .mhd with its .raw). Send one job per image; expected {SUPPORTED}")
    if not folder_is_dicom_series(input_dir):
        raise UnsupportedFileError(f"the {len(files)} DICOM files are not a CT series (expected Modality CT with "
                                   "ImagePositionPatient); send one job per radiograph")
    return PreparedInput("input", "dicom-series")


def resolve_folder(folder: Path, job_dir: Path, label: str, names: dict[str, str] | None = None) -> str:
    """The analysis input inside an extracted zip: the folder for a DICOM series, else its single image or
    volume. A MetaImage header is pointed at its data file's neutral name.

    Args:
        folder: the extraction folder.
        job_dir: the job folder; the result is relative to it.
        label: how messages name the zip.
        names: the client's member names by neutral path relative to ``folder`` (see
            :class:`ExtractedZip`), for messages; without it messages name the stored files.

    Returns:
        The analysis input, relative to ``job_dir`` (neutral names only).

    Raises:
        UnsupportedFileError: nothing supported, several images / volumes (one study per job), or a
            MetaImage header whose data file is not beside it in the zip.
    """
    names = names or {}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    dicom = [p for p in files if is_dicom_file(p)]
    volumes = [p for p in files if _suffix(p) in _VOLUME_SUFFIXES]

    def rel(p: Path) -> str:
        return p.relative_to(job_dir).as_posix()

    def client_name(p: Path) -> str:
        key = p.relative_to(folder).as_posix()
        return names.get(key, key)

    if dicom and volumes:
        raise UnsupportedFileError(f"{label} holds both DICOM files and {len(volumes)} volume file(s); one study "
                                   "per job")
    if len(dicom) >= 2:
        if not folder_is_dicom_series(folder, recursive=True):
            raise UnsupportedFileError(f"{label}: its {len(dicom)} DICOM files are not a CT series (expected Modality "
                                       "CT with ImagePositionPatient); send one job per radiograph")
        return rel(folder)
    if len(volumes) > 1:
        raise UnsupportedFileError(f"{label} holds {len(volumes)} volume files; one volume per job")
    if volumes:
        v = volumes[0]
        member = f"{label}: member {client_name(v)[:200]!r}"
        if _suffix(v) in (".mhd", ".mha"):
            data = metaimage_data_file(v, member)
            if data is not None:
                beside = _sibling_by_client_name(v, data, folder, names)
                if beside is None:
                    raise UnsupportedFileError(f"{member} refers to the data file {data!r}, which is not in the zip "
                                               "beside it")
                _point_data_file(v, beside.name)
        elif _suffix(v) in (".nrrd", ".nhdr"):
            check_nrrd_attached(v, member)
        return rel(v)
    if dicom:
        return rel(dicom[0])
    images = [p for p in files if is_supported_file(p)]
    if len(images) == 1:
        return rel(images[0])
    if images:
        raise UnsupportedFileError(f"{label} holds {len(images)} images; one image per job")
    raise UnsupportedFileError(f"{label} holds no supported image ({len(files)} files); expected {SUPPORTED}")


def _sibling_by_client_name(header: Path, data: str, folder: Path, names: dict[str, str]) -> Path | None:
    """The extracted file beside ``header`` that the client called ``data`` (exact name first, then
    ignoring case); without ``names`` (files not renamed), the file ``data`` itself."""
    if not names:
        candidate = header.parent / data
        return candidate if candidate.is_file() else None
    siblings = {}
    for p in header.parent.iterdir():
        if p.is_file() and p != header:
            original = names.get(p.relative_to(folder).as_posix())
            if original is not None:
                siblings[PurePosixPath(original.replace("\\", "/")).name] = p
    return siblings.get(data) or next((p for n, p in siblings.items() if n.lower() == data.lower()), None)


def _member_path(name: str, k: int, label: str) -> PurePosixPath | None:
    """The safe relative path of a zip member, ``None`` for members to skip (macOS resource forks)."""
    unified = name.replace("\\", "/")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    why = None
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        why = "an absolute path"
    elif any(p == ".." for p in parts):
        why = "a '..' component"
    elif "\x00" in unified:
        why = "a NUL character"
    if why:
        raise BadZipError(f"{label}: member #{k + 1} ({name[:120]!r}) has {why}; refused (path traversal)")
    if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return None
    return PurePosixPath(*parts)


def _neutral_plan(members: list[tuple[int, zipfile.ZipInfo, PurePosixPath]], explicit_dirs: set[PurePosixPath],
                  n_members: int, label: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Map member paths to neutral ones (``d0000/m00007.dcm``), refusing depth and name clashes first."""
    files: dict[PurePosixPath, int] = {}
    dirs: dict[PurePosixPath, int] = {}  # every folder some member needs -> the first member needing it
    for k, info, rel in members:
        if len(rel.parts) - 1 > MAX_ZIP_DEPTH:
            raise ZipPathTooDeepError(f"{label}: member #{k + 1} lies {len(rel.parts) - 1} folders deep; the limit "
                                      f"is {MAX_ZIP_DEPTH}. Zip the series folder itself")
        if rel in files:
            raise ZipNameClashError(f"{label}: member #{k + 1} ({info.filename[:120]!r}) appears twice (also member "
                                    f"#{files[rel] + 1}); refused")
        files[rel] = k
        for parent in rel.parents:
            if parent != PurePosixPath("."):
                dirs.setdefault(parent, k)
    for rel, k in files.items():
        if rel in dirs or rel in explicit_dirs:
            raise ZipNameClashError(f"{label}: member #{k + 1} ({str(rel)[:120]!r}) is a file, but other members "
                                    "are inside a folder of the same name; refused (the archive cannot be unpacked)")
    width = max(5, len(str(n_members)))
    neutral_dirs: dict[PurePosixPath, PurePosixPath] = {PurePosixPath("."): PurePosixPath(".")}
    plan = []
    for k, info, rel in members:
        parent = PurePosixPath(".")
        for d in reversed(rel.parents[:-1]):  # a, a/b for a/b/c.dcm
            if d not in neutral_dirs:
                neutral_dirs[d] = neutral_dirs[parent] / f"d{len(neutral_dirs) - 1:04d}"
            parent = d
        plan.append((info, neutral_dirs[parent] / f"m{k:0{width}d}{known_suffix(rel.name)}"))
    return plan


def safe_extract_zip(zip_path: Path, dest: Path, max_total_bytes: int, max_members: int,
                     label: str = "the zip") -> ExtractedZip:
    """Extract a zip archive into ``dest`` under neutral names, refusing anything unsafe.

    Every member is checked before anything is written: absolute paths, drive letters, ``..``
    components, NUL characters, symlinks (Unix mode in ``external_attr``), encrypted members, members more
    than ``MAX_ZIP_DEPTH`` folders deep and clashing names are refused. The member count and the declared
    total size are checked first, then the bytes actually decompressed are counted while writing, so a
    zip bomb whose headers lie is stopped at ``max_total_bytes`` too. Files are written as
    ``d0000/.../m00000<suffix>`` (see the module docstring): the client's names, however long, never
    reach the filesystem.

    Args:
        zip_path: the uploaded archive.
        dest: the extraction folder (created).
        max_total_bytes: limit of the uncompressed total.
        max_members: limit of the member count.
        label: how messages name the archive.

    Returns:
        The :class:`ExtractedZip` (bytes written, client names by neutral path).

    Raises:
        BadZipError: not a zip, corrupt data (CRC), an unsupported compression or an unsafe member;
            :class:`~pulmo.service.errors.ZipNameClashError` for clashing names and
            :class:`~pulmo.service.errors.ZipPathTooDeepError` for too deep a member.
        UploadTooLargeError: more than ``max_members`` members or more than ``max_total_bytes`` uncompressed.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BadZipError(f"{label} is not a valid zip archive") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise UploadTooLargeError(f"{label} has {len(infos)} members; the limit is {max_members}")
        if not infos:
            raise BadZipError(f"{label} is an empty zip archive")
        declared = sum(i.file_size for i in infos)
        if declared > max_total_bytes:
            raise UploadTooLargeError(f"{label} would unpack to {mib(declared)} MiB; the limit is "
                                      f"{mib(max_total_bytes)} MiB")
        members: list[tuple[int, zipfile.ZipInfo, PurePosixPath]] = []
        explicit_dirs: set[PurePosixPath] = set()
        for k, info in enumerate(infos):
            rel = _member_path(info.filename, k, label)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise BadZipError(f"{label}: member #{k + 1} ({info.filename[:120]!r}) is a symbolic link; refused")
            if info.flag_bits & 0x1:
                raise BadZipError(f"{label}: member #{k + 1} is encrypted; upload an unencrypted zip")
            if rel is None:
                continue
            if info.is_dir():
                explicit_dirs.add(rel)
            else:
                members.append((k, info, rel))
        plan = _neutral_plan(members, explicit_dirs, len(infos), label)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        names: dict[str, str] = {}
        try:
            for info, rel in plan:
                target = dest.joinpath(*rel.parts)
                if root not in target.resolve().parents:  # neutral names: cannot happen; kept as a last guard
                    raise BadZipError(f"{label}: member {info.filename[:120]!r} resolves outside the extraction folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                names[rel.as_posix()] = info.filename
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_total_bytes:
                            raise UploadTooLargeError(f"{label} unpacks to more than {mib(max_total_bytes)} "
                                                      "MiB (the limit); refused")
                        out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise BadZipError(f"{label} is corrupt ({type(exc).__name__}: {str(exc)[:120]})") from None
        except NotImplementedError:
            raise BadZipError(f"{label} uses a compression method that is not supported; use deflate") from None
        except RuntimeError as exc:  # zipfile raises RuntimeError for encrypted members
            raise BadZipError(f"{label} cannot be read ({str(exc)[:120]})") from None
    return ExtractedZip(written, names)


def remove_tree(path: Path) -> None:
    """Remove a job folder (missing is fine)."""
    shutil.rmtree(path, ignore_errors=True)
