"""The result of ``pulmo analyze`` for one input, in original image coordinates.

``findings.json`` schema (``schema_version`` "1.3"; 1.1 added ``input.gate``; 1.2 added
``classification.in_scope`` / ``out_of_scope_score`` / ``statement``, whole-image heatmap normalisation, nodule
``volume_mm3`` (was ``volume_ml``) and ``key_slice_image``; 1.3 types the sections in :class:`Findings`
(:class:`CxrLungs` / :class:`CtLungs`, :class:`Infection`, :class:`Classification`, :class:`Detection`,
:class:`Nodule`: each key a typed field, units in the names, checked when set) with the same keys, values and
key order as 1.2: no key is added, removed or renamed):

* ``schema_version``, ``pulmo_version``, ``created`` (UTC ISO 8601)
* ``input``: ``path``, ``format``, ``image_size`` ``{"height", "width"}`` (px), ``spacing_mm``
  ``[row, column]`` or null, ``photometric``, ``bit_depth``; ``gate``: the input gate's decision
  (:mod:`pulmo.gate`): ``decision`` ("accepted"), ``as`` ("cxr" | "ct_slice" | "ct_volume"), ``checks``
  ``[{"check", "passed", ...values}]``, for 2D inputs ``scores`` {cxr, ct_slice, other: calibrated p} and
  ``model`` {name, sha256, thresholds}, for DICOM ``dicom`` (the tag decision: kind, modality, SOP class,
  body part, view position, photometric)
* ``modality``: ``"cxr"`` or ``"ct"``
* ``lungs``: ``mask`` (CXR: PNG 0/255 at the original size; CT: NIfTI in the input geometry); CXR:
  ``area_px``, ``area_cm2`` (null when the spacing is unknown), ``n_components``, ``convention``;
  CT volume: ``volume_ml``, ``method``, ``coverage`` {complete, cut_at, end_slice_area_cm2, note}: whether the
  scan holds the whole lung field (:func:`pulmo.transforms.ct.lung_coverage`)
* ``infection`` (CT): ``mask`` (NIfTI, 0 background, 1.. labels), ``labels``, ``volume_ml`` and
  ``percent_of_lung`` (volume) or ``area_px`` / ``area_cm2`` (single slice), ``n_slices_with_infection``,
  ``key_slice`` (axial index with the most infection), per-class ``<label>_ml`` for a three-class model;
  CT volumes: ``postprocessing`` (the HU rules of :mod:`pulmo.transforms.ct_postprocess`, the model's raw
  volume and the mL each rule removed) and ``scope`` (what the lesion model was trained on)
* ``classification`` (CXR, when a classifier is bundled): ``probabilities`` {label: p} (calibrated, sum 1;
  ``other_finding`` = a finding outside the four classes), ``predicted`` (top label), ``in_scope`` (false when
  the top label is ``other_finding`` or ``out_of_scope_score`` >= ``out_of_scope_threshold``; null for a four-class model, which cannot tell),
  ``out_of_scope_score`` (p(other_finding), null for a four-class model), ``statement`` (the diagnosis, or
  "finding outside the classifier's classes ..." when not in scope), ``calibrated`` (temperature scaling),
  ``temperature``, ``calibration_ece`` (held-out ECE of the card), ``lung_masked_input``, ``input_crop``,
  ``heatmaps`` {"gradcam": PNG, "gradcam++": PNG} (normalised over the whole image,
  ``heatmap_normalisation``), ``heatmap_energy_in_lungs`` {method: fraction of the map's weight inside the
  lungs}
* ``detections`` (CXR, when a detector is bundled): ``[{"label", "name", "score", "box_xyxy"}]`` (``name``: the clinical display name) with ``box_xyxy``
  ``[x1, y1, x2, y2]`` in original pixels, scores in [0, 1] at or above the model card's threshold, highest
  first; an empty list when nothing passes the threshold
* ``nodules`` (CT volume, when a nodule model is bundled): ``[{"center_xyz_mm", "center_zyx_index",
  "diameter_mm", "volume_mm3", "probability", "slice_index", "key_slice_image", "mask_method"}]``, most probable
  first: ``center_xyz_mm`` world LPS mm, ``center_zyx_index`` voxel indices (float), ``diameter_mm`` of the
  equivalent sphere, ``volume_mm3`` in mm³ (replaces the former ``volume_ml``), ``probability`` in [0, 1] at or
  above the card's threshold, ``slice_index`` the key axial z index, ``key_slice_image`` the PNG of that slice
  with the nodule's numbered marker, ``mask_method`` the model whose outline gives the mask, diameter and volume:
  ``"nodule-seg (2.5-D U-Net, real LIDC crops)"`` (when ``nodule-seg`` weights are bundled, listed in ``models``)
  or ``"nodule (NoduleNet mask head)"``; plus ``nodule_mask`` (NIfTI in the input geometry, 1.. = nodule number)
* ``models``: ``[{"task", "name", "architecture", "sha256", "scope"}]`` (``scope``: the card's ``{"classes",
  "trained_on", "cannot_see"}`` and, where a whole source was left out, ``external_check``: how the model did there; ``calibration_ece`` where the card reports a held-out ECE; detectors add
  their threshold)
* ``files``: the other files written: ``overlays`` (a list of PNG names), ``report``, ``config``; for a DICOM
  input ``dicom_seg`` and ``dicom_sr`` (the reason in ``dicom_error`` when they could not be built)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

SCHEMA_VERSION = "1.3"


class _Unset:
    """The default of an optional section field: the key is not written (None is written as null)."""

    def __repr__(self) -> str:
        return "UNSET"

    def __deepcopy__(self, memo: dict) -> _Unset:
        return self

    def __reduce__(self) -> str:
        return "UNSET"  # unpickled as the module's one UNSET


UNSET: Any = _Unset()
"""An optional section field left unset: its key is absent from ``to_dict()`` (a None field is written as null)."""


def _matches(tp: Any, value: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (str, int, float, bool, None, Any, unions, list[...],
    dict[str, ...]); an int is a float, a bool is neither; a tuple is a list."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(a, value) for a in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(arg, v) for v in value)
    if origin is dict:
        _, arg = typing.get_args(tp) or (Any, Any)
        return isinstance(value, Mapping) and all(isinstance(k, str) and _matches(arg, v) for k, v in value.items())
    return isinstance(value, tp)


def _plain(value: Any) -> Any:
    """A deep copy of ``value`` with every typed section replaced by its ``to_dict()``."""
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


class _Section(Mapping):
    """A typed findings section that reads like the ``findings.json`` dict it writes.

    Each field is the JSON key of the same name; ``section["key"]``, ``.get``, ``in``, ``dict(section)``,
    ``{**section}`` and ``==`` with a dict see the keys ``to_dict()`` writes (an unset optional field is absent).
    ``section["key"] = value`` sets the field (type-checked, as is every assignment); an unknown key or a value of
    the wrong type is a TypeError naming the section, the field and the expected type.
    """

    _EXTRA_SUFFIXES: ClassVar[tuple[str, ...]] = ()  # keys ending so go to the ``extra_field`` dict
    _EXTRA_FIELD: ClassVar[str | None] = None
    _EXTRA_BEFORE: ClassVar[str | None] = None  # the extra keys are written before this field (else last)

    @classmethod
    @functools.cache
    def _hints(cls) -> dict[str, Any]:
        return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}

    def __setattr__(self, name: str, value: Any) -> None:
        hints = type(self)._hints()
        if name in hints and value is not UNSET and not _matches(hints[name], value):
            expected = getattr(hints[name], "__name__", None) if isinstance(hints[name], type) else str(hints[name])
            raise TypeError(f"{type(self).__name__}.{name}: expected {expected}, got {type(value).__name__} "
                            f"{value!r:.80}")
        object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Section:
        """The section of a ``findings.json`` dict (its keys are the field names); an unknown or missing key or
        a value of the wrong type is a TypeError."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict: expected a dict, got {type(data).__name__} {data!r:.80}")
        names = set(cls._hints()) - {cls._EXTRA_FIELD}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                kwargs[key] = value
            elif cls._EXTRA_FIELD and isinstance(key, str) and key.endswith(cls._EXTRA_SUFFIXES):
                extra[key] = value
            else:
                raise TypeError(f"{cls.__name__}.from_dict: unknown key {key!r}; expected {sorted(names)}")
        if cls._EXTRA_FIELD:
            kwargs[cls._EXTRA_FIELD] = extra
        try:
            return cls(**kwargs)
        except TypeError as exc:
            if str(exc).startswith(cls.__name__ + "."):
                raise
            raise TypeError(f"{cls.__name__}.from_dict: {exc}") from None

    def _items(self) -> Iterator[tuple[str, Any]]:
        extra = getattr(self, self._EXTRA_FIELD) if self._EXTRA_FIELD else {}
        for f in dataclasses.fields(self):
            if f.name == self._EXTRA_BEFORE:
                yield from extra.items()
            if f.name != self._EXTRA_FIELD and getattr(self, f.name) is not UNSET:
                yield f.name, getattr(self, f.name)
        if self._EXTRA_BEFORE is None:
            yield from extra.items()

    def to_dict(self) -> dict[str, Any]:
        """The ``findings.json`` dict of the section (a deep copy; unset optional fields left out)."""
        return {k: _plain(v) for k, v in self._items()}

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items():
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items())

    def __len__(self) -> int:
        return sum(1 for _ in self._items())

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._hints() and key != self._EXTRA_FIELD:
            setattr(self, key, value)
        elif self._EXTRA_FIELD and isinstance(key, str) and key.endswith(self._EXTRA_SUFFIXES):
            getattr(self, self._EXTRA_FIELD)[key] = value
        else:
            raise TypeError(f"{type(self).__name__}: unknown key {key!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._items())})"


_section = dataclasses.dataclass(kw_only=True, eq=False, repr=False)


@_section
class CxrLungs(_Section):
    """``lungs`` of a chest X-ray.

    Attributes:
        mask: the lung mask file (PNG 0/255 at the original size).
        area_px: lung pixels.
        area_cm2: lung area in cm², None when the pixel spacing is unknown.
        n_components: connected components of the mask.
        convention: what the mask covers ("visible lung fields").
    """

    mask: str
    area_px: int
    area_cm2: float | None
    n_components: int
    convention: str


@_section
class CtLungs(_Section):
    """``lungs`` of a CT volume (``volume_ml``, ``coverage``) or of a CT slice in HU (``area_px``).

    Attributes:
        mask: the lung mask file (NIfTI in the input geometry; PNG for a slice).
        volume_ml: lung volume in mL (volume).
        area_px: lung pixels (slice).
        method: how the lungs were found (HU thresholds).
        coverage: whether the scan holds the whole lung field: ``{complete, cut_at, end_slice_area_cm2, note}``.
    """

    mask: str
    volume_ml: float = UNSET
    area_px: int = UNSET
    method: str = UNSET
    coverage: dict[str, Any] = UNSET


@_section
class Infection(_Section):
    """``infection`` of a CT volume (``volume_ml``, ``percent_of_lung``, slices, ``scope``, ``postprocessing``)
    or slice (``area_px``, ``area_cm2``, ``percent_of_lung``).

    Attributes:
        mask: the label file (NIfTI / PNG, 0 background, 1.. labels).
        labels: the label names, ``labels[i]`` = value i.
        volume_ml: infection volume in mL.
        area_px: infection pixels (slice).
        area_cm2: infection area in cm² (slice), None when the spacing is unknown.
        percent_of_lung: infection / lungs in %, None without lungs.
        n_slices_with_infection: axial slices holding infection.
        key_slice: the axial index with the most infection, None without infection.
        class_volumes: per-class ``<label>_ml`` (volume) or ``<label>_px`` (slice) of a three-class model;
            written as keys of the section (after ``key_slice``), not as a ``class_volumes`` key.
        scope: what the lesion model was trained on.
        postprocessing: the HU rules, the model's raw volume and the mL each rule removed.
    """

    _EXTRA_SUFFIXES: ClassVar[tuple[str, ...]] = ("_ml", "_px")
    _EXTRA_FIELD: ClassVar[str | None] = "class_volumes"
    _EXTRA_BEFORE: ClassVar[str | None] = "scope"

    mask: str
    labels: list[str]
    volume_ml: float = UNSET
    area_px: int = UNSET
    area_cm2: float | None = UNSET
    percent_of_lung: float | None = UNSET
    n_slices_with_infection: int = UNSET
    key_slice: int | None = UNSET
    class_volumes: dict[str, float] = dataclasses.field(default_factory=dict)
    scope: str = UNSET
    postprocessing: dict[str, Any] = UNSET


@_section
class Classification(_Section):
    """``classification`` of a chest X-ray (see the module docstring for each key).

    Attributes:
        probabilities: {label: calibrated p in [0, 1]} (sum 1).
        predicted: the top label.
        in_scope: False for a finding outside the classes; None for a four-class model.
        out_of_scope_score: p(other_finding) in [0, 1]; None for a four-class model.
        out_of_scope_threshold: the score at or above which the image is out of scope.
        statement: the diagnosis sentence.
        calibrated: temperature scaling applied.
        temperature: the temperature.
        calibration_ece: held-out expected calibration error of the card, None when not reported.
        lung_masked_input: the classifier sees the lungs only.
        input_crop: the crop of its input.
        heatmaps: {method: PNG file}.
        heatmap_normalisation: how the maps are normalised.
        heatmap_energy_in_lungs: {method: fraction in [0, 1] of the map's weight inside the lungs}.
    """

    probabilities: dict[str, float]
    predicted: str
    in_scope: bool | None
    out_of_scope_score: float | None
    out_of_scope_threshold: float | None
    statement: str
    calibrated: bool
    temperature: float
    calibration_ece: float | None
    lung_masked_input: bool
    input_crop: str
    heatmaps: dict[str, str]
    heatmap_normalisation: str
    heatmap_energy_in_lungs: dict[str, float]


@_section
class Detection(_Section):
    """One CXR lesion box.

    Attributes:
        label: the dataset's label.
        name: the clinical display name.
        score: in [0, 1], at or above the card's threshold.
        box_xyxy: ``[x1, y1, x2, y2]`` in original pixels.
    """

    label: str
    name: str
    score: float
    box_xyxy: list[float]


@_section
class Nodule(_Section):
    """One CT nodule.

    Attributes:
        center_xyz_mm: centre, world LPS mm.
        center_zyx_index: centre, voxel indices (float).
        diameter_mm: diameter of the equivalent sphere, mm.
        volume_mm3: volume, mm³.
        probability: in [0, 1], at or above the card's threshold.
        slice_index: the key axial z index.
        mask_method: the model whose outline gives the mask, diameter and volume (set by the pipeline).
        key_slice_image: the PNG of the key slice with the nodule's marker (set when the report is written).
    """

    center_xyz_mm: list[float]
    center_zyx_index: list[float]
    diameter_mm: float
    volume_mm3: float
    probability: float
    slice_index: int
    mask_method: str = UNSET
    key_slice_image: str = UNSET


def _one(kind: type[_Section] | None, name: str) -> typing.Callable[[Findings, Any], Any]:
    def convert(findings: Findings, value: Any) -> Any:
        cls = kind or (CxrLungs if getattr(findings, "modality", None) == "cxr" else CtLungs)
        if isinstance(value, (CxrLungs, CtLungs)) and kind is None:
            return value
        if isinstance(value, _Section) and not isinstance(value, cls):
            raise TypeError(f"Findings.{name}: expected {cls.__name__} or a dict, got {type(value).__name__}")
        return cls.from_dict(value)
    return convert


def _many(kind: type[_Section], name: str) -> typing.Callable[[Findings, Any], Any]:
    def convert(findings: Findings, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"Findings.{name}: expected a list of {kind.__name__} or dicts, got "
                            f"{type(value).__name__} {value!r:.80}")
        return [kind.from_dict(v) for v in value]
    return convert


_SECTIONS = {"lungs": _one(None, "lungs"), "infection": _one(Infection, "infection"),
             "classification": _one(Classification, "classification"),
             "detections": _many(Detection, "detections"), "nodules": _many(Nodule, "nodules")}


@dataclasses.dataclass
class Findings:
    """Findings for one image; ``to_dict()`` gives the ``findings.json`` content.

    Every field is the ``findings.json`` key of the same name (see the module docstring for their contents);
    a field that is None is written as null (the step did not run or does not apply to the modality).
    The sections are typed: ``lungs`` :class:`CxrLungs` / :class:`CtLungs` (by ``modality``), ``infection``
    :class:`Infection`, ``classification`` :class:`Classification`, ``detections`` a list of :class:`Detection`,
    ``nodules`` a list of :class:`Nodule`; a dict (or list of dicts) given or assigned to one is converted
    (``from_dict``), a wrong key or value type is a TypeError.

    Attributes:
        input: the input's path, format, size (px), spacing (mm) and gate decision.
        modality: ``"cxr"`` or ``"ct"``.
        lungs: the lung mask file and its area (px, cm²) or volume (mL).
        infection: CT infection mask, labels and volume (mL) or area.
        classification: CXR class probabilities in [0, 1] (sum 1), scope and heatmaps.
        detections: CXR boxes ``[x1, y1, x2, y2]`` in original px with scores in [0, 1].
        nodules: CT nodules (world LPS mm, voxel indices, diameter mm, volume mm³, probability in [0, 1]).
        nodule_mask: file name of the nodule label volume (NIfTI, 1.. = nodule number).
        models: the models that ran (task, name, architecture, sha256, scope).
        files: other files written: ``{"overlays": [...], "report", "config"}``; for a DICOM input also
            ``dicom_seg`` and ``dicom_sr``, or ``dicom_error``.
        created: UTC time of creation, ISO 8601 to the second.
    """

    input: dict[str, Any]
    modality: str
    lungs: CxrLungs | CtLungs | None = None
    infection: Infection | None = None
    classification: Classification | None = None
    detections: list[Detection] | None = None
    nodules: list[Nodule] | None = None
    nodule_mask: str | None = None
    models: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    created: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SECTIONS and value is not None:
            value = _SECTIONS[name](self, value)
        object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Findings:
        """Findings from a ``findings.json`` dict (``schema_version`` and ``pulmo_version`` are not kept)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"schema_version", "pulmo_version"}
        if unknown:
            raise TypeError(f"Findings.from_dict: unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """The ``findings.json`` content: ``schema_version``, ``pulmo_version``, then every field (deep copies;
        the typed sections as their ``to_dict()``)."""
        from pulmo.version import __version__

        d = {"schema_version": SCHEMA_VERSION, "pulmo_version": __version__}
        d.update({f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return d
