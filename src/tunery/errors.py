"""Exceptions for user-facing problems. Each message names the value, the place and the fix."""


class TuneryError(Exception):
    """Base class: a problem the user can fix. The CLI prints the message and exits non-zero."""


class ConfigError(TuneryError):
    """The configuration is invalid."""


class DataError(TuneryError):
    """A data file cannot be read or fails validation."""


class BackboneError(TuneryError):
    """A backbone name cannot be resolved."""


class RunError(TuneryError):
    """A run directory or registry name is missing, incomplete or inconsistent."""


class CompressionError(TuneryError):
    """A compressed model failed its checks (parity, accuracy drop, collapse); nothing was kept."""


class ExplainError(TuneryError, ValueError):
    """An explanation request is invalid: an unknown method, option or target."""


class UnsupportedMethodError(ExplainError):
    """The run's backend cannot run the explanation method asked for (gradients on an ONNX run)."""
