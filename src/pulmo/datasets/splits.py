"""Deterministic patient-level splits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


def patient_fold(patient_id: str, seed: int = 0) -> float:
    """A stable pseudo-random number in [0, 1) for a patient (sha1 of seed and id).

    Depends only on the patient id and the seed, so a patient stays on the same side of a split when the
    dataset grows.
    """
    digest = hashlib.sha1(f"{seed}:{patient_id}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


def split_by_patient(records: Sequence[dict[str, Any]], val_fraction: float = 0.2, seed: int = 0,
                     key: str = "patient_id", exact: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into (train, validation) so that no patient is on both sides.

    Args:
        records: dicts holding ``key``.
        val_fraction: the expected share of patients in validation, in (0, 1).
        seed: changes the assignment.
        exact: hold out exactly ``round(val_fraction * n_patients)`` patients (at least one), the ones
            with the smallest :func:`patient_fold`; for small sets, where the default independent
            per-patient draw can leave validation nearly empty.

    Returns:
        ``(train, val)`` lists, in the input order.

    Raises:
        ValueError: ``val_fraction`` is not in (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if exact:
        patients = sorted({str(r[key]) for r in records}, key=lambda p: patient_fold(p, seed))
        held = set(patients[:max(1, round(val_fraction * len(patients)))])
        in_val = [str(r[key]) in held for r in records]
    else:
        in_val = [patient_fold(str(r[key]), seed) < val_fraction for r in records]
    train = [r for r, v in zip(records, in_val) if not v]
    val = [r for r, v in zip(records, in_val) if v]
    return train, val
