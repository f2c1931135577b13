"""Exceptions raised by pulmo.

Every error a user can cause is a :class:`PulmoError` subclass whose message names the bad value and
what was expected. ``pulmo.cli`` maps them to exit codes: 2 usage (:class:`ConfigError`), 3 bad input
(:class:`InputError`), 4 weights (:class:`WeightsError`), 5 a capability not available in this version
(:class:`NotAvailableError`).
"""

from __future__ import annotations


class PulmoError(Exception):
    """Base class of every error pulmo raises on purpose."""

    exit_code = 1


class ConfigError(PulmoError):
    """A configuration value or command-line option is invalid."""

    exit_code = 2


class InputError(PulmoError):
    """An input file or folder cannot be read or is not what the operation expects."""

    exit_code = 3


class WeightsError(PulmoError):
    """A weight file or model card is missing, corrupted (sha256 mismatch) or does not fit the model."""

    exit_code = 4


class TrainingDivergedError(PulmoError):
    """Training produced a non-finite loss (it diverged): a setting to change (a lower learning rate, warm-up,
    another optimiser), not a bug. The message names the epoch, the step and the learning rate. Exit code 1."""

    exit_code = 1


class NotAvailableError(PulmoError):
    """The input is valid but the capability it needs is not available in this version."""

    exit_code = 5


class OutOfScopeError(InputError):
    """The input is readable but outside what pulmo's models can judge (an MR image, a lateral view, a
    photograph, a constant picture, a volume that is not a chest CT, an image over the size limits).

    The message says what is wrong and what pulmo accepts. Exit code 3, like every bad input.
    """
