"""Training presets: one YAML file per reproduced report, each the report's recipe for one ``pulmo train`` task.

A preset file (``src/pulmo/presets/<name>.yaml``) is a mapping:

* ``task``: the ``pulmo train`` verb it configures (``cxr-detect``, ``lesion-seg``, ...);
* ``source``: one line naming the report and what it describes (``pulmo train --list-presets`` prints it);
* ``deviations``: every place the preset departs from the report, and why (this machine has no GPU and cannot
  download ImageNet weights; the report does not state a value), each overridable by a flag;
* ``config``: keys of the task's config dataclass (architecture, widths, loss, optimiser, learning rate, batch
  size, epochs, input size, augmentation). Data paths are never part of a preset: the user gives them.

The same facts are in the file's header comment, for a reader of the YAML. Resolution order in ``pulmo train``:
the preset, then ``--config FILE``, then the command-line flags (:func:`resolve`).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from pulmo.errors import ConfigError

_KEYS = {"task", "source", "deviations", "config"}


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` as ``{"name", "task", "source", "deviations": [str], "config": {key: value}}``.

    Raises:
        ConfigError: no such preset (the message lists the shipped ones), or a malformed file.
    """
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(names)} (pulmo train --list-presets)")
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or set(data) != _KEYS or not isinstance(data["config"], dict):
        raise ConfigError(f"preset {name}: expected the keys {sorted(_KEYS)} with a config mapping")
    return {"name": name, **data}


def list_presets() -> list[dict[str, Any]]:
    """Every shipped preset (see :func:`load_preset`)."""
    return [load_preset(n) for n in preset_names()]
