"""Bundled weight sets: ``<name>.safetensors`` + ``<name>.json`` model card in this folder.

A card holds: ``name``, ``architecture`` (registry name), ``model_kwargs``, ``task``, ``labels`` (output
channels in order), ``thresholds``, ``input`` (working size, normalisation, channels), ``training`` (data,
split, command, seed), ``metrics`` (on the validation split), ``license``, ``file`` and ``sha256``.
``file`` is a plain file name beside the card (no folders, no ``..``, not absolute). ``sha256`` is
required: reading refuses a card without one, loading checks it against the file, and never unpickles
(safetensors). :func:`resolve_card` and :func:`list_weights` return checked, read-only
:class:`~pulmo.weights.card.ModelCard` mappings (typed fields, :class:`~pulmo.weights.card.InputSpec`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulmo.errors import WeightsError
from pulmo.weights.card import InputSpec, ModelCard, check_sha256

if TYPE_CHECKING:  # torch and safetensors load only when weights do: the weight choice and cards stay light
    from torch import nn

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_weights() -> list[ModelCard]:
    """The cards of every bundled weight set, sorted by name.

    Raises:
        WeightsError: a card is unreadable, its ``file`` is not a plain file name, or it fails the checks of
            :class:`~pulmo.weights.card.ModelCard` (no sha256, ...).
    """
    return [ModelCard(_read_card(p), p) for p in sorted(WEIGHTS_DIR.glob("*.json"))]


def _plain_file_name(value: str) -> bool:
    return (bool(value) and value not in (".", "..") and not re.search(r"[/\\:\x00]", value)
            and not Path(value).is_absolute())


def _read_card(card_path: Path) -> dict[str, Any]:
    """Read a card and resolve its weight file (``_path``) and its own location (``_card``).

    Raises:
        WeightsError: unreadable or not a JSON object, or ``file`` is not a plain file name (a path with
            folders, ``..``, a drive or absolute could point the loader anywhere).
    """
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{card_path}: unreadable model card ({exc})") from None
    if not isinstance(card, dict):
        raise WeightsError(f"{card_path}: a model card is a JSON object, not {type(card).__name__}")
    name = card.get("file", card_path.stem + ".safetensors")
    if not isinstance(name, str) or not _plain_file_name(name):
        raise WeightsError(f"model card {card_path}: 'file' = {str(name)[:200]!r} must be the plain name of a file "
                           "beside the card (no folders, no '..', not absolute)")
    card["_path"] = str(card_path.with_name(name))
    card["_card"] = str(card_path)
    return card


def resolve_card(weights: str | Path) -> ModelCard:
    """Find the card of a bundled weight name, or of a ``.safetensors`` path (card = same stem ``.json``).

    Returns:
        The checked, read-only card (:class:`~pulmo.weights.card.ModelCard`; ``to_dict()`` for a mutable copy).

    Raises:
        WeightsError: no such bundled weights, no card beside the file, an unreadable card, a card whose
            ``file`` is a path, a card without ``architecture``, without a valid ``sha256`` or otherwise
            malformed (:class:`~pulmo.weights.card.ModelCard`).
    """
    p = Path(weights)
    if p.suffix == ".safetensors":
        card_path = p.with_suffix(".json")
    else:
        card_path = WEIGHTS_DIR / f"{weights}.json"
    if not card_path.is_file():
        names = [c["name"] for c in list_weights()]
        raise WeightsError(f"weights {str(weights)!r} not found (no card {card_path}); bundled: {names}")
    return ModelCard(_read_card(card_path), card_path)


def verify_sha256(card: Mapping[str, Any]) -> Path:
    """The card's weight file, after checking it exists and its sha256 is the card's.

    Raises:
        WeightsError: the card has no sha256 (required: weights that cannot be verified are not loaded) or one
            that is not 64 hex digits, the file is missing, or its sha256 does not match.
    """
    where = card.get("_card") or card.get("name")
    expected = check_sha256(card.get("sha256"), where)
    path = Path(card["_path"])
    if not path.is_file():
        raise WeightsError(f"{path}: weight file missing for card {card.get('name')!r}")
    digest = sha256_of(path)
    if digest != expected.lower():
        raise WeightsError(f"{path}: its sha256 does not match the card's ({digest[:12]}... vs {expected[:12]}...)")
    return path


def load_into(model: nn.Module, card: Mapping[str, Any]) -> nn.Module:
    """Load a card's safetensors file into ``model`` after checking its sha256.

    Args:
        model: the model to fill (strict: every tensor must fit).
        card: a card from :func:`resolve_card`.

    Returns:
        ``model``.

    Raises:
        WeightsError: the card has no sha256 (required: weights that cannot be verified are not loaded) or
            one that is not 64 hex digits, the file is missing, its sha256 does not match, it is not a
            readable safetensors file, or its tensors do not fit the model.
    """
    path = verify_sha256(card)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: cannot read safetensors file ({exc})") from None
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit {card.get('architecture')!r}: {str(exc)[:300]}") from None
    return model


def save_weights(model: nn.Module, path: str | Path, card: dict[str, Any], half: bool = True) -> dict[str, Any]:
    """Save ``model`` as safetensors (floating tensors in fp16 when ``half``) and its card beside it.

    Returns the card as written, with ``file`` and ``sha256`` filled in.

    Args:
        model: the model; its state dict is copied to the CPU (integer buffers keep their dtype).
        path: the ``.safetensors`` file to write (parent folders are created); the card goes to the same stem
            with ``.json``.
        card: the model card; keys starting with ``_`` (runtime-only, e.g. ``_path``) are not written.
        half: store floating tensors as fp16 (``"dtype": "float16"`` in the card), else as they are
            (``"dtype": "float32"``).

    Returns:
        The card as written, with ``file`` (the weight file's name), ``sha256`` (hex) and ``dtype``.

    Raises:
        OSError: the folder or the files cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[k] = v.half() if half and v.is_floating_point() else v
    from safetensors.torch import save_file

    save_file(state, str(path))
    card = {k: v for k, v in card.items() if not k.startswith("_")}
    card.update({"file": path.name, "sha256": sha256_of(path), "dtype": "float16" if half else "float32"})
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def weight_bytes(card: Mapping[str, Any]) -> int:
    """Size of a card's weight file in bytes (0 when missing)."""
    p = Path(card["_path"])
    return p.stat().st_size if p.is_file() else 0


def model_entry(card: Mapping[str, Any], task: str | None = None, **extra: Any) -> dict[str, Any]:
    """The ``findings.json`` ``models`` entry of a weight set: which weights produced a finding and what they
    can and cannot judge.

    Args:
        card: a model card (:func:`resolve_card`).
        task: the task name (default: the card's ``task``).
        **extra: more fields (``score_threshold``, ``probability_threshold``, ...).

    Returns:
        ``{"task", "name", "architecture", "sha256", "scope", ...}``; ``scope`` is the card's ``{"classes",
        "trained_on", "cannot_see"}`` (``None`` when the card has none) and ``calibration_ece`` the held-out
        expected calibration error when the card reports one.
    """
    entry = {"task": task or card.get("task"), "name": card.get("name"), "architecture": card.get("architecture"),
             "sha256": card.get("sha256"), "scope": card.get("scope")}
    ece = (card.get("calibration") or {}).get("test_ece")
    if ece is not None:
        entry["calibration_ece"] = ece
    entry.update(extra)
    return entry


#: The environment variable that carries ``pulmo analyze --weights`` / ``pulmo serve --weights`` choices (a JSON
#: object {task: .safetensors path}) to the pipeline, and to the service's worker processes, which inherit it.
OVERRIDE_ENV = "PULMO_WEIGHTS"

#: Tasks whose weights the pipeline loads, and the card ``task`` values each accepts (the pipeline's detector is the
#: RetinaNet; a ``cxr-detect-unet`` weight set is scored by ``pulmo evaluate cxr-detect`` only).
PIPELINE_TASKS = {"input-gate": ("input-gate",), "lung-seg": ("lung-seg",), "cxr-classify": ("cxr-classify",),
                  "cxr-detect": ("cxr-detect",), "lesion-seg": ("lesion-seg",),
                  "nodule": ("nodule",), "nodule-seg": ("nodule-seg",)}


def parse_weight_overrides(items: list[str] | tuple[str, ...], *, registered: Collection[str]) -> dict[str, str]:
    """Check ``TASK=FILE`` choices of user-trained weights against their cards, before any input is read.

    Each ``FILE`` is a ``.safetensors`` with its card (same stem, ``.json``) beside it, as ``pulmo train`` writes
    them. Checked: a pipeline task (:data:`PIPELINE_TASKS`), the card's ``task`` fits it, the card's
    ``architecture`` is registered and its sha256 matches the file.

    Args:
        items: the ``TASK=FILE`` strings.
        registered: the registered architecture names, deprecated aliases included
            (``{m["name"] for m in pulmo.list_models(include_aliases=True)}``; passed in,
            so that ``pulmo.weights`` does not import ``pulmo.models``, which imports it).

    Returns:
        ``{task: absolute path}``.

    Raises:
        WeightsError: a malformed item, an unknown task, a missing file or card, a card of another task, an
            unregistered architecture, or a sha256 mismatch (one message naming the item).
    """
    chosen: dict[str, str] = {}
    for item in items:
        task, sep, file = str(item).partition("=")
        if not sep or not task or not file:
            raise WeightsError(f"weight override {item!r} (--weights): expected TASK=FILE.safetensors, e.g. "
                               "cxr-detect=runs/det/cxr-detect.safetensors")
        if task not in PIPELINE_TASKS:
            raise WeightsError(f"weight override {item!r} (--weights): unknown task {task!r}; expected one of "
                               f"{', '.join(PIPELINE_TASKS)}")
        path = Path(file).expanduser().resolve()
        if path.suffix != ".safetensors" or not path.is_file():
            raise WeightsError(f"weight override {item!r} (--weights): {path} is not a .safetensors file")
        card = resolve_card(path)
        if card.get("task") not in PIPELINE_TASKS[task]:
            raise WeightsError(f"weight override {item!r} (--weights): the card {card['_card']} is for task {card.get('task')!r}, not "
                               f"{task!r}")
        if card["architecture"] not in registered:
            raise WeightsError(f"weight override {item!r} (--weights): architecture {card['architecture']!r} of the card is not a "
                               "registered model (pulmo models)")
        try:
            verify_sha256(card)
        except WeightsError as exc:
            raise WeightsError(f"weight override {item!r} (--weights): {exc}") from None
        chosen[task] = str(path)
    return chosen


def set_weight_overrides(chosen: dict[str, str]) -> None:
    """Make the pipeline (and worker processes started afterwards) load ``chosen`` {task: path} in place of the
    bundled weights (:data:`OVERRIDE_ENV`); an empty mapping restores the bundled ones."""
    if chosen:
        os.environ[OVERRIDE_ENV] = json.dumps(chosen)
    else:
        os.environ.pop(OVERRIDE_ENV, None)


def resolve_weights(task: str, weights: str | None, default: str) -> str:
    """The weights the pipeline loads for ``task``: ``weights`` when a caller names them, else the user's choice
    (:func:`set_weight_overrides`), else the bundled ``default``.

    Args:
        task: the pipeline task name (a key of the override mapping).
        weights: a bundled weight name or ``.safetensors`` path named by the caller, or None / "".
        default: the bundled weight name used when nothing else is chosen.

    Returns:
        A weight name or path (not checked for existence here).

    Raises:
        WeightsError: ``$PULMO_WEIGHTS`` (:data:`OVERRIDE_ENV`) is set but is not valid JSON.
    """
    if weights:
        return weights
    try:
        chosen = json.loads(os.environ.get(OVERRIDE_ENV) or "{}")
    except json.JSONDecodeError:
        raise WeightsError(f"${OVERRIDE_ENV} is not a JSON object of task -> weight file") from None
    return chosen.get(task, default)


def weights_available(weights: str) -> bool:
    """True when ``weights`` names a bundled weight set or an existing ``.safetensors`` file."""
    p = Path(weights)
    return p.is_file() if p.suffix == ".safetensors" else (WEIGHTS_DIR / f"{weights}.json").is_file()


def cached_loader(task: str, default: str, build: Any, optional: bool = False, doc: str = "") -> Any:
    """A pipeline model loader ``loader(weights=None)``: resolves the weights (:func:`resolve_weights`), builds
    ``build(weights)`` once per weight set and process, and, when ``optional``, returns None (logged) if the
    weights are not bundled. ``loader.cache_clear()`` forgets the loaded models."""
    @functools.lru_cache(maxsize=4)
    def _load(weights: str) -> Any:
        if optional and not weights_available(weights):
            logger.info("no bundled %s weights: %s skipped", weights, task)
            return None
        return build(weights)

    def loader(weights: str | None = None) -> Any:
        return _load(resolve_weights(task, weights, default))

    loader.cache_clear = _load.cache_clear  # type: ignore[attr-defined]
    loader.__doc__ = doc or f"The {task} model, loaded once per process (bundled {default!r} unless --weights)."
    return loader


__all__ = ["OVERRIDE_ENV", "PIPELINE_TASKS", "WEIGHTS_DIR", "InputSpec", "ModelCard", "cached_loader", "list_weights",
           "load_into", "model_entry", "parse_weight_overrides", "resolve_card", "resolve_weights", "save_weights",
           "set_weight_overrides", "sha256_of", "verify_sha256", "weight_bytes", "weights_available"]
