"""Exception types whose messages are shown to users as one line."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (path, config, artifact). The message says what to do."""


class ConfigError(UserError):
    """A configuration key is unknown, missing, or of the wrong type."""


class ArtifactError(UserError):
    """A bases or model artifact is missing, corrupt, or does not fit the data."""


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image. Per-row: becomes a ``status = "error"`` row."""
