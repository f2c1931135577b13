"""Typed model cards: :class:`ModelCard` (a read-only mapping over a card's JSON) and its :class:`InputSpec`.

A card is the JSON object beside a weight file (see :mod:`pulmo.weights`). :func:`pulmo.weights.resolve_card`
and :func:`pulmo.weights.list_weights` return :class:`ModelCard` objects: every key reads as before
(``card["labels"]``, ``card.get("thresholds")``, ``dict(card)``), and typed properties give the fields the code
uses (``card.labels``, ``card.thresholds``, ``card.input.size``, ...). A card is checked when it is built:
``name``, ``task`` and ``architecture`` are strings, ``sha256`` is present and 64 hex digits (weights that cannot be
verified are never loaded), ``labels`` is a list, ``input`` / ``thresholds`` / ``display_names`` / ``model_kwargs``
are objects; anything else is a :class:`~pulmo.errors.WeightsError` naming the card file.

The card is read-only: the top level cannot be assigned, and the typed properties return copies.
:meth:`ModelCard.to_dict` gives a mutable deep copy (to edit and save a card). Cards built during training stay
plain dicts until :func:`pulmo.weights.save_weights` writes them.

:meth:`InputSpec.prepare` runs a card's preprocessing, chosen by the card's task (:data:`RECIPES`):

* :data:`CXR_RECIPE` (``lung-seg``, ``cxr-detect``, ``cxr-detect-unet``): ``normalize_cxr`` (0.5-99.5
  percentile -> [0, 1]), then a bilinear resize to ``size``, aspect not kept;
* :data:`CLASSIFY_RECIPE` (``cxr-classify``): :func:`pulmo.transforms.classifier_input` with the card's
  ``crop`` / ``crop_margin`` / ``lung_mask`` / ``equalize`` (normalisation, lung-field crop, lung masking,
  histogram equalisation, resize); it needs the image's lung mask (``prepare(image, lungs=mask)``);
* :data:`GATE_RECIPE` (``input-gate``): :func:`pulmo.transforms.gate_input` (stride to <= 4 x size, the same
  normalisation, Pillow bilinear resize).

Other inputs (CT windows and crops, lesion and nodule models) are prepared by their task's code and
:meth:`~InputSpec.prepare` refuses them (:class:`~pulmo.errors.NotAvailableError`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pulmo.errors import InputError, NotAvailableError, WeightsError

if TYPE_CHECKING:  # numpy / torch only when an input is prepared: cards stay light
    import numpy as np

    from pulmo.io import Image2D

SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")

#: The preprocessing :meth:`InputSpec.prepare` can run: ``normalize_cxr`` then ``resize_image`` to ``size``.
CXR_RECIPE = "normalize_cxr+resize"

#: Card tasks whose code prepares an image with :data:`CXR_RECIPE` (and nothing else).
CXR_RECIPE_TASKS = frozenset({"lung-seg", "cxr-detect", "cxr-detect-unet"})

#: The chest X-ray classifier's preprocessing: :func:`pulmo.transforms.classifier_input` with the card's settings.
CLASSIFY_RECIPE = "classifier_input"

#: The input gate's preprocessing: :func:`pulmo.transforms.gate_input` at the card's (square) ``size``.
GATE_RECIPE = "gate_input"

#: Card task -> the recipe :meth:`InputSpec.prepare` runs for it (a task not listed: no recipe).
RECIPES: Mapping[str, str] = MappingProxyType({**{t: CXR_RECIPE for t in sorted(CXR_RECIPE_TASKS)},
                                                "cxr-classify": CLASSIFY_RECIPE, "input-gate": GATE_RECIPE})

#: ``InputSpec`` fields of their own; every other key of the ``input`` block is in :attr:`InputSpec.extra`.
_INPUT_FIELDS = ("size", "channels", "normalisation")


def check_sha256(value: Any, where: str) -> str:
    """``value`` when it is a sha256 (64 hex digits).

    Raises:
        WeightsError: no sha256 (None or empty: pulmo loads only weights it can verify) or not 64 hex digits;
            the message names ``where`` (the card file).
    """
    if not value:
        raise WeightsError(f"model card {where}: no 'sha256'; a sha256 of the weight file is required, pulmo loads "
                           "only weights it can verify (save_weights writes it)")
    if not isinstance(value, str) or not SHA256_PATTERN.match(value):
        raise WeightsError(f"model card {where}: 'sha256' = {str(value)[:80]!r} is not a sha256 (64 hex digits)")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class InputSpec:
    """What a model takes as input: a card's ``input`` block, typed, and executable where pulmo has one function
    for the preprocessing: :meth:`prepare` turns an image into the model's input array (float32 ``(h, w)`` in
    [0, 1]) by the recipe of the card's task (:data:`RECIPES`: the lung / detector models, the chest X-ray
    classifier with its lung mask, the input gate), and refuses other inputs.

    Attributes:
        size: working size in px (``(h, w)``; ``(d, h, w)`` for a volume), or None when the card gives none
            (the nodule detector works at a spacing, not a size).
        channels: input channels, or None.
        normalisation: the card's description of the intensity mapping ("" when it has none).
        recipe: the preprocessing :meth:`prepare` runs (:data:`CXR_RECIPE`, :data:`CLASSIFY_RECIPE` or
            :data:`GATE_RECIPE`, from the card's task through :data:`RECIPES`), or None: the task's own code
            prepares the input.
        extra: every other key of the ``input`` block, read-only (``crop``, ``window_hu``, ``spacing_mm``, ...;
            the typed properties below read them).
        where: the card (file or name) for error messages.
    """

    size: tuple[int, ...] | None = None
    channels: int | None = None
    normalisation: str = ""
    recipe: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    where: str = field(default="", repr=False, compare=False)

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None, *, task: str | None = None, where: str = "",
                  default_size: tuple[int, ...] | None = None) -> InputSpec:
        """The spec of a card's ``input`` block.

        Args:
            block: the ``input`` object (None: an empty one).
            task: the task whose code reads the input (decides :attr:`recipe`).
            where: the card file or name, for error messages.
            default_size: the size when the block gives none.

        Raises:
            WeightsError: ``block`` is not an object, ``size`` is not a list of positive integers, ``channels``
                not a positive integer or ``normalisation`` not a string.
        """
        if block is None:
            block = {}
        if not isinstance(block, Mapping):
            raise WeightsError(f"model card {where}: 'input' must be an object, not {type(block).__name__}")
        size = block.get("size", default_size)
        if size is not None:
            if (not isinstance(size, (list, tuple)) or not size
                    or not all(_is_int(s) and s > 0 for s in size)):
                raise WeightsError(f"model card {where}: input.size = {str(size)[:80]!r} must be a list of positive "
                                   "integers")
            size = tuple(int(s) for s in size)
        channels = block.get("channels")
        if channels is not None and not (_is_int(channels) and channels > 0):
            raise WeightsError(f"model card {where}: input.channels = {str(channels)[:80]!r} must be a positive "
                               "integer")
        normalisation = block.get("normalisation", "")
        if not isinstance(normalisation, str):
            raise WeightsError(f"model card {where}: input.normalisation must be a string")
        extra = {k: copy.deepcopy(v) for k, v in block.items() if k not in _INPUT_FIELDS}
        return cls(size=size, channels=channels, normalisation=normalisation,
                   recipe=RECIPES.get(task) if task else None,
                   extra=MappingProxyType(extra), where=where)

    @classmethod
    def from_card(cls, card: Mapping[str, Any], *, task: str | None = None,
                  default_size: tuple[int, ...] | None = None) -> InputSpec:
        """The spec of a card (a :class:`ModelCard` or a plain card dict, e.g. one built during training).

        Args:
            card: the card.
            task: the task whose code reads the input (default: the card's ``task``).
            default_size: the size when the card gives none.

        Raises:
            WeightsError: as :meth:`from_dict`.
        """
        where = str(card.get("_card") or card.get("name") or "(unsaved card)")
        return cls.from_dict(card.get("input"), task=task or card.get("task"), where=where,
                             default_size=default_size)

    # -- typed accessors of the ``input`` keys the code reads ---------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """Any key of the ``input`` block (``size``, ``channels``, ``normalisation`` included)."""
        if key in _INPUT_FIELDS:
            value = getattr(self, key)
            return default if value is None else value
        return self.extra.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """The ``input`` block as a mutable dict (``size`` as a list)."""
        out: dict[str, Any] = {}
        if self.size is not None:
            out["size"] = list(self.size)
        if self.channels is not None:
            out["channels"] = self.channels
        if self.normalisation:
            out["normalisation"] = self.normalisation
        out.update(copy.deepcopy(dict(self.extra)))
        return out

    def _number(self, *keys: str) -> float | None:
        for key in keys:
            if key in self.extra:
                v = self.extra[key]
                if not _is_number(v):
                    raise WeightsError(f"model card {self.where}: input.{key} = {str(v)[:80]!r} is not a number")
                return float(v)
        return None

    def _integer(self, key: str) -> int | None:
        v = self.extra.get(key)
        if v is None:
            return None
        if not _is_int(v):
            raise WeightsError(f"model card {self.where}: input.{key} = {str(v)[:80]!r} is not an integer")
        return int(v)

    def _flag(self, key: str) -> bool:
        v = self.extra.get(key, False)
        if not isinstance(v, bool):
            raise WeightsError(f"model card {self.where}: input.{key} = {str(v)[:80]!r} is not true / false")
        return v

    def _numbers(self, *keys: str) -> tuple[float, ...] | None:
        for key in keys:
            if key in self.extra:
                v = self.extra[key]
                if not isinstance(v, (list, tuple)) or not all(_is_number(x) for x in v):
                    raise WeightsError(f"model card {self.where}: input.{key} = {str(v)[:80]!r} is not a list of "
                                       "numbers")
                return tuple(float(x) for x in v)
        return None

    @property
    def spacing_mm(self) -> float | None:
        """Working voxel spacing in mm (the nodule detector's ``spacing_mm``), or None."""
        return self._number("spacing_mm")

    @property
    def window_hu(self) -> tuple[float, float] | None:
        """The HU window ``(low, high)`` CT values are mapped through (``window_hu``; ``hu_window`` on the nodule
        detector's card), or None."""
        w = self._numbers("window_hu", "hu_window")
        if w is not None and len(w) != 2:
            raise WeightsError(f"model card {self.where}: the input HU window {list(w)} is not [low, high]")
        return None if w is None else (w[0], w[1])

    @property
    def context(self) -> int | None:
        """Slices of context either side of the segmented slice (nodule-seg: channels = 2 * context + 1)."""
        return self._integer("context")

    @property
    def crop(self) -> str | None:
        """How the image is framed before resizing (``"lungs"``, ``"none"``, or a description), or None when the
        card does not say (the classifier's recipe then crops to the lungs:
        :data:`pulmo.transforms.classifier.DEFAULT_CROP`)."""
        v = self.extra.get("crop")
        if v is not None and not isinstance(v, str):
            raise WeightsError(f"model card {self.where}: input.crop = {str(v)[:80]!r} is not a string")
        return v

    @property
    def crop_margin(self) -> float | None:
        """Margin added around the crop, as a fraction of its size, or None."""
        return self._number("crop_margin")

    @property
    def equalize(self) -> bool:
        """Histogram equalisation before resizing (False when the card does not say)."""
        return self._flag("equalize")

    @property
    def lung_mask(self) -> bool:
        """Pixels outside the lungs are blanked (False when the card does not say)."""
        return self._flag("lung_mask")

    @property
    def pixel_mm_est(self) -> float | None:
        """Estimated pixel size (mm) of the training crops, or None."""
        return self._number("pixel_mm_est")

    @property
    def patch(self) -> int | None:
        """Training patch size in px (cxr-detect-unet), or None."""
        return self._integer("patch")

    @property
    def tile(self) -> int | None:
        """Inference tile size in px (cxr-detect-unet overlap-tile stitching), or None."""
        return self._integer("tile")

    @property
    def anchors_mm(self) -> tuple[float, ...] | None:
        """Anchor sizes in mm (nodule detector), or None."""
        return self._numbers("anchors_mm")

    # -- the executable part ------------------------------------------------------------------------------------

    def prepare(self, image: Image2D | np.ndarray, *, lungs: np.ndarray | None = None) -> np.ndarray:
        """The model input of a greyscale 2-D image, by the card's :attr:`recipe`: float32 ``(h, w)`` = ``size``.

        * :data:`CXR_RECIPE`: ``resize_image(normalize_cxr(pixels), size)``, values in [0, 1], as
          :class:`pulmo.tasks.lung_seg.LungSegmenter` and :func:`pulmo.tasks.cxr_detect.prepare_image` feed their
          models.
        * :data:`CLASSIFY_RECIPE`: :func:`pulmo.transforms.classifier_input` with ``crop`` (default
          ``"lungs"``), ``crop_margin`` (default 0.1), ``lung_mask`` and ``equalize`` (default False), values in
          [0, 1], as :class:`pulmo.tasks.cxr_classify.CxrClassifier` feeds its model.
        * :data:`GATE_RECIPE`: ``gate_input(pixels, size)`` (stride to <= 4 x size a side, non-finite values ->
          0, ``normalize_cxr``, Pillow bilinear resize), values in [0, 1], as
          :class:`pulmo.tasks.input_gate.InputGateModel` feeds its model.

        Args:
            image: an :class:`~pulmo.io.Image2D` or its ``(H, W)`` pixel array (any real dtype).
            lungs: the image's lung mask ``(H, W)`` (bool or 0/1), for :data:`CLASSIFY_RECIPE` when the card
                crops to the lungs (``crop == "lungs"``) or masks them (``lung_mask``); ignored otherwise.

        Returns:
            float32 ``(h, w)`` in [0, 1] (zeros for a constant image).

        Raises:
            NotAvailableError: the card's input has no recipe here (another task's preprocessing).
            WeightsError: the card gives no 2-D ``size`` (a non-square one for the gate), an unknown ``crop`` or
                a malformed ``crop_margin`` / ``lung_mask`` / ``equalize``.
            InputError: the pixels are not ``(H, W)`` (a colour image); the classifier's recipe needs a lung mask
                and ``lungs`` is None, or ``lungs`` is not the image's shape.
        """
        if self.recipe not in (CXR_RECIPE, CLASSIFY_RECIPE, GATE_RECIPE):
            raise NotAvailableError(
                f"model card {self.where}: InputSpec.prepare runs the recipes of "
                f"{', '.join(sorted(RECIPES))} cards; this input "
                f"({self.normalisation or 'no normalisation given'}) is prepared by its task's own code")
        if self.size is None or len(self.size) != 2:
            raise WeightsError(f"model card {self.where}: input.size = {self.size} is not a 2-D size (h, w)")
        from pulmo.transforms import classifier_input, gate_input, normalize_cxr, resize_image
        from pulmo.transforms.classifier import CROP_MODES, DEFAULT_CROP, DEFAULT_CROP_MARGIN, needs_lungs

        pixels = getattr(image, "pixels", image)
        where = image.source.get("path", "image") if hasattr(image, "source") else "image"
        if getattr(pixels, "ndim", None) != 2:
            raise InputError(f"{where}: expected a greyscale radiograph (H, W), got shape "
                             f"{getattr(pixels, 'shape', None)}")
        if self.recipe == CXR_RECIPE:
            return resize_image(normalize_cxr(pixels), self.size)
        if self.recipe == GATE_RECIPE:
            if self.size[0] != self.size[1]:
                raise WeightsError(f"model card {self.where}: input.size = {list(self.size)}: the gate's input is "
                                   "square")
            return gate_input(pixels, self.size[0])
        crop = self.crop or DEFAULT_CROP
        if crop not in CROP_MODES:
            raise WeightsError(f"model card {self.where}: input.crop = {crop!r} is not one of {list(CROP_MODES)}")
        margin = self.crop_margin
        if needs_lungs(crop, self.lung_mask) and lungs is None:
            raise InputError(f"{where}: the input of model card {self.where} (crop={crop!r}, "
                             f"lung_mask={self.lung_mask}) needs the image's lung mask: pass "
                             "prepare(image, lungs=mask), mask (H, W) e.g. LungSegmenter().predict(image)")
        return classifier_input(pixels, self.size, lungs=lungs, crop=crop, lung_mask=self.lung_mask,
                                equalize=self.equalize, margin=DEFAULT_CROP_MARGIN if margin is None else margin)[0]

    @classmethod
    def cxr(cls, size: tuple[int, int] | int) -> InputSpec:
        """The spec of :data:`CXR_RECIPE` at ``size`` (an int: square), for code that has a size but no card
        (training datasets)."""
        hw = (int(size), int(size)) if _is_int(size) else tuple(int(s) for s in size)  # type: ignore[union-attr]
        return cls(size=hw, channels=1, normalisation="normalize_cxr (0.5-99.5 percentile -> [0, 1]), resized to "
                   "size", recipe=CXR_RECIPE, where="(no card)")

    @classmethod
    def classifier(cls, size: tuple[int, int] | int, *, crop: str | None = None, lung_mask: bool = False,
                   equalize: bool = False, crop_margin: float | None = None, normalisation: str = "") -> InputSpec:
        """The spec of :data:`CLASSIFY_RECIPE` at ``size`` (an int: square) with these settings (None: the
        recipe's default), for code that has settings but no card (the classifier's training cache).

        Raises:
            WeightsError: a setting of the wrong type (when :meth:`prepare` reads it).
        """
        hw = (int(size), int(size)) if _is_int(size) else tuple(int(s) for s in size)  # type: ignore[union-attr]
        extra: dict[str, Any] = {"lung_mask": lung_mask, "equalize": equalize}
        if crop is not None:
            extra["crop"] = crop
        if crop_margin is not None:
            extra["crop_margin"] = crop_margin
        return cls(size=hw, channels=1, normalisation=normalisation, recipe=CLASSIFY_RECIPE,
                   extra=MappingProxyType(extra), where="(no card)")


class ModelCard(Mapping[str, Any]):
    """A checked, read-only model card.

    A :class:`~collections.abc.Mapping` over the card's JSON object plus the runtime keys ``_path`` (the weight
    file) and ``_card`` (the card file) when it was read from disk: ``card["labels"]``, ``card.get("x")``,
    ``"x" in card``, ``dict(card)`` and ``json.dumps(dict(card))`` work as on the dict it replaces. The
    properties give the fields typed.

    Args:
        data: the card object (copied deeply: later changes to it do not reach the card).
        where: the card file (or name) named in errors (default: ``_card``, else ``name``).

    Raises:
        WeightsError: ``data`` is not an object; ``architecture``, ``name`` or ``task`` is not a string; no
            ``sha256`` or not 64 hex digits; ``labels`` is not a list; ``input``, ``thresholds``,
            ``display_names`` or ``model_kwargs`` is not an object; or ``input`` is malformed
            (:meth:`InputSpec.from_dict`). The message names the card file.
    """

    __slots__ = ("_data", "_input", "_where")

    def __init__(self, data: Mapping[str, Any], where: str | Path | None = None):
        if not isinstance(data, Mapping):
            raise WeightsError(f"{where}: a model card is a JSON object, not {type(data).__name__}")
        where = str(where or data.get("_card") or data.get("name") or "(unnamed card)")
        _check(data, where)
        object.__setattr__(self, "_data", copy.deepcopy(dict(data)))
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_input", InputSpec.from_dict(self._data.get("input"), task=self._data["task"],
                                                               where=where))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path | None = None) -> ModelCard:
        """A checked card of ``data`` (see the class); ``where`` names the card file in errors."""
        return cls(data, where)

    # -- Mapping ------------------------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a ModelCard is read-only (use to_dict() for a mutable copy); cannot set {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelCard, (self._data, self._where))

    def __repr__(self) -> str:
        return (f"ModelCard(name={self.name!r}, task={self.task!r}, architecture={self.architecture!r}, "
                f"sha256={self.sha256[:12]!r}...)")

    def to_dict(self) -> dict[str, Any]:
        """A mutable deep copy of the card (runtime keys ``_path`` / ``_card`` included)."""
        return copy.deepcopy(self._data)

    # -- typed fields -------------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The card file (or name) that errors name."""
        return self._where

    @property
    def name(self) -> str:
        """The weight set's name."""
        return self._data["name"]

    @property
    def task(self) -> str:
        """The task the weights are for (``lung-seg``, ``cxr-detect``, ...)."""
        return self._data["task"]

    @property
    def architecture(self) -> str:
        """The registered model name (:func:`pulmo.models.create_model`)."""
        return self._data["architecture"]

    @property
    def labels(self) -> list[str]:
        """The output classes / channels in order (``[]`` when the card lists none)."""
        return [str(x) for x in self._data.get("labels") or []]

    @property
    def display_names(self) -> dict[str, str]:
        """Label -> name shown to a reader, from the card (``{}`` when it has none)."""
        return {str(k): str(v) for k, v in (self._data.get("display_names") or {}).items()}

    def display_name(self, label: str) -> str:
        """The name shown for ``label`` (the label itself when the card gives none)."""
        return self.display_names.get(label, label)

    @property
    def thresholds(self) -> dict[str, float]:
        """The numeric operating thresholds (``{"lung": 0.5}``, ``{"score": 0.35}``, ...); descriptions (``rule``)
        and nested tables are left out (read them with ``card["thresholds"]``)."""
        return {k: float(v) for k, v in (self._data.get("thresholds") or {}).items() if _is_number(v)}

    @property
    def input(self) -> InputSpec:
        """The input the model takes (:class:`InputSpec`)."""
        return self._input

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the architecture (a copy)."""
        return copy.deepcopy(self._data.get("model_kwargs") or {})

    @property
    def training(self) -> dict[str, Any]:
        """Provenance: data, split, command, seed, code version, ... (a copy; ``{}`` when absent)."""
        return copy.deepcopy(self._data.get("training") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        """Held-out metrics as the card reports them (a copy; ``{}`` when absent)."""
        return copy.deepcopy(self._data.get("metrics") or {})

    @property
    def scope(self) -> dict[str, Any] | None:
        """``{"classes", "trained_on", "cannot_see"}`` (a copy), or None when the card has none."""
        scope = self._data.get("scope")
        return None if scope is None else copy.deepcopy(scope)

    @property
    def license(self) -> str | None:
        """Licence of the weights and their training data, or None."""
        v = self._data.get("license")
        return None if v is None else str(v)

    @property
    def file(self) -> str | None:
        """The weight file's name beside the card."""
        return self._data.get("file")

    @property
    def sha256(self) -> str:
        """Hex sha256 of the weight file (always present: a card without one is refused)."""
        return self._data["sha256"]

    @property
    def path(self) -> Path | None:
        """The weight file (``_path``), or None for a card not read from disk."""
        p = self._data.get("_path")
        return None if p is None else Path(p)

    @property
    def card_path(self) -> Path | None:
        """The card file (``_card``), or None for a card not read from disk."""
        p = self._data.get("_card")
        return None if p is None else Path(p)


def _check(data: Mapping[str, Any], where: str) -> None:
    """Raise a WeightsError naming ``where`` for the first malformed field of a card (see :class:`ModelCard`)."""
    arch = data.get("architecture")
    if arch is None:
        raise WeightsError(f"model card {where}: no 'architecture' (the registered model name the weights are for)")
    if not isinstance(arch, str):
        raise WeightsError(f"model card {where}: 'architecture' = {str(arch)[:80]!r} is not a string (the registered "
                           "model name the weights are for)")
    check_sha256(data.get("sha256"), where)
    for key in ("name", "task"):
        if not isinstance(data.get(key), str):
            raise WeightsError(f"model card {where}: '{key}' = {str(data.get(key))[:80]!r} must be a string")
    labels = data.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise WeightsError(f"model card {where}: 'labels' must be a list, not {type(labels).__name__}")
    for key in ("input", "thresholds", "display_names", "model_kwargs"):
        value = data.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise WeightsError(f"model card {where}: '{key}' must be an object, not {type(value).__name__}")


__all__ = ["CLASSIFY_RECIPE", "CXR_RECIPE", "CXR_RECIPE_TASKS", "GATE_RECIPE", "RECIPES", "InputSpec", "ModelCard", "check_sha256"]
