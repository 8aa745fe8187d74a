"""piwsl's own exception types.

Every error raised for bad user input derives from :class:`PiwslError`, names the file, frame and key
where it applies, and says what to do about it.
"""

from __future__ import annotations


class PiwslError(Exception):
    """Base class of all errors piwsl raises on purpose."""


class DataError(PiwslError, ValueError):
    """A data file, frame or label is missing, malformed or physically absurd."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        frame: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.frame = frame
        self.key = key
        self.hint = hint
        where = []
        if file is not None:
            where.append(f"file {file!r}")
        if frame is not None:
            where.append(f"frame {frame}")
        if key is not None:
            where.append(f"key {key!r}")
        text = message
        if where:
            text = f"{', '.join(where)}: {message}"
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class ConfigError(PiwslError, ValueError):
    """A configuration key or value is invalid."""


class UnknownElementError(PiwslError, ValueError):
    """A structure contains an element the model was not trained on."""


class CheckpointError(PiwslError, RuntimeError):
    """A checkpoint cannot be loaded (wrong format, version or model)."""


class NonFiniteError(PiwslError, FloatingPointError):
    """A loss, gradient or model output is NaN or infinite."""


class PriorError(PiwslError, RuntimeError):
    """A prior potential (Δ-learning baseline) is missing, differs from the recorded one, or
    failed on a structure."""
