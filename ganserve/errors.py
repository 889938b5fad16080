"""The errors a user can fix: one base class, one type per kind of problem.

Each message says in one line what is wrong and, where it helps, what to do. The command line prints these without
a traceback and exits with status 2; any other exception is a bug and shows its traceback. Errors about a bad value
are also ValueErrors.
"""

from __future__ import annotations


class GanserveError(Exception):
    """A problem with the user's input, files or machine, explained in the message."""


class UsageError(GanserveError, ValueError):
    """A command-line flag or function argument that cannot be used (a bad choice, a number out of range)."""


class ConfigError(GanserveError, ValueError):
    """An invalid model or training configuration."""


class SpecError(GanserveError, ValueError):
    """A seed list, layer spec or latent parameter that cannot be used; `field` names the request parameter it
    concerns (when known)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnsupportedError(SpecError):
    """A parameter the model cannot honour at all: style mixing asked of a model without a w space (ProGAN)."""


class ModelLoadError(GanserveError):
    """A model directory that cannot be loaded (missing, incomplete, or weights that do not fit the config)."""


class BackendUnavailable(GanserveError):
    """An inference backend that cannot run on this machine."""


class ExportError(GanserveError):
    """An export that failed or whose graphs do not agree with PyTorch."""


class ImportRefused(GanserveError):
    """A checkpoint that `ganserve import` will not read: truncated, of another network, or naming code to run."""


class DataError(GanserveError):
    """A training data set that cannot be used."""


class RunError(GanserveError):
    """A training run that cannot start or resume as asked."""


class ServeError(GanserveError):
    """A server that cannot start, or stopped abnormally."""
