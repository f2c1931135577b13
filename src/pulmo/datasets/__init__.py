"""Public dataset layouts -> records and torch Datasets.

The names below are imported on first use (PEP 562), so that a torch-free module such as
:mod:`pulmo.datasets.cxr_labels` or :mod:`pulmo.datasets.detection` can be imported without loading torch
(the ONNX inference path).
"""

from importlib import import_module
from typing import Any

_WHERE = {"LungSegDataset": "lung_masks", "covid_chestxray_mask_records": "lung_masks",
          "image_mask_records": "lung_masks", "patient_fold": "splits", "split_by_patient": "splits",
          "LesionSliceDataset": "covid_ct", "covid_semiseg_records": "covid_ct", "ct_volume_records": "covid_ct"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"pulmo.datasets.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'pulmo.datasets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_WHERE))


__all__ = ["LesionSliceDataset", "LungSegDataset", "covid_chestxray_mask_records", "covid_semiseg_records",
           "ct_volume_records", "image_mask_records", "patient_fold", "split_by_patient"]
