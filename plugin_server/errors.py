"""The typed errors of AutoRetouch.

Code inside raises these; each edge (HTTP middleware, CLI, GIMP plug-in) translates them once.
``code`` is the stable machine-readable name used in the HTTP JSON error body.
"""

from __future__ import annotations


class AutoRetouchError(Exception):
    """Base of every error a user can cause or fix."""

    code = "error"


class CheckpointError(AutoRetouchError):
    """A checkpoint file is missing, not a checkpoint, of another version, or has wrong weights."""

    code = "bad_checkpoint"


class BadImageError(AutoRetouchError):
    """An image cannot be read, decoded, or is of a shape or type the engine does not take."""

    code = "bad_image"


class BadOptionError(AutoRetouchError):
    """An option (strength, tile size, device, precision, ...) is out of range or unknown."""

    code = "bad_option"


class UnsupportedFormatError(AutoRetouchError):
    """The file or body type is not one AutoRetouch reads or writes."""

    code = "unsupported_type"


class TooLargeError(AutoRetouchError):
    """The image has more pixels than the configured limit."""

    code = "too_large"


class BusyError(AutoRetouchError):
    """The queue is full; the caller should retry later."""

    code = "busy"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CancelledError(AutoRetouchError):
    """The work was cancelled by its caller between two tiles."""

    code = "cancelled"


class OutOfMemoryError(AutoRetouchError):
    """The device ran out of memory even at the smallest tile."""

    code = "out_of_memory"
