"""Every typed error of AutoRetouch, in one hierarchy. Standard library only.

Code raises these; each edge translates them once: the server's middleware by class into
``{"error": {"code", "message"}}`` with ``status``, the client back from ``code`` into the same
class (``by_code``), the CLI into one line and ``exit_code``, the GIMP plug-in into its message.
Messages say what is wrong and what to do in words that fit every edge: no CLI flag names.

The GIMP plug-in runs on GIMP's own Python, so ``autoretouch gimp install`` copies this module
beside it as ``autoretouch_errors.py``.
"""

from __future__ import annotations

EXIT_FAILURE = 1  # the work failed (bad file, server down, out of memory, ...)
EXIT_USAGE = 2  # the command line asked for something impossible


class AutoRetouchError(Exception):
    """Base of every error a user can cause or fix."""

    code = "error"
    status = 500  # HTTP status when it reaches the server's edge
    exit_code = EXIT_FAILURE


class BadOptionError(AutoRetouchError):
    """An option (strength, tile size, device, precision, ...) is out of range or unknown."""

    code, status, exit_code = "bad_option", 400, EXIT_USAGE


class BadConfigError(BadOptionError):
    """A server or trainer setting is impossible; found before anything starts."""

    code = "bad_config"


class BadImageError(AutoRetouchError):
    """An image cannot be read, decoded, or is of a shape or type the engine does not take."""

    code, status = "bad_image", 400


class UnsupportedFormatError(AutoRetouchError):
    """The file or body type is not one AutoRetouch reads or writes."""

    code, status = "unsupported_type", 415


class TooLargeError(AutoRetouchError):
    """The image (or request body) is larger than the configured limit."""

    code, status = "too_large", 413


class WriteError(AutoRetouchError):
    """An output file cannot be written (no permission, disk full, folder gone); nothing partial is left."""

    code = "write_failed"


class CheckpointError(AutoRetouchError):
    """A checkpoint file is missing, not a checkpoint, of another version, or has wrong weights."""

    code = "bad_checkpoint"


class FaceModelError(AutoRetouchError):
    """The face models are missing or not the pinned files (an install problem, not the photo's)."""

    code = "face_model"


class BusyError(AutoRetouchError):
    """The queue is full; the caller should retry after ``retry_after`` seconds."""

    code, status = "busy", 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CancelledError(AutoRetouchError):
    """The work was cancelled by its caller between two tiles."""

    code, status = "cancelled", 409


class OutOfMemoryError(AutoRetouchError):
    """The device ran out of memory even at the smallest tile."""

    code, status = "out_of_memory", 503


class UnauthorizedError(AutoRetouchError):
    """The request lacks the server's bearer token, or has a wrong one."""

    code, status = "unauthorized", 401


class ForbiddenError(AutoRetouchError):
    """The request comes from a web page or names a foreign host."""

    code, status = "forbidden", 403


class NotFoundError(AutoRetouchError):
    """No such route or job (it never existed, or it expired)."""

    code, status = "not_found", 404


class BadRequestError(AutoRetouchError):
    """An HTTP request that is malformed or ambiguous before its content is looked at."""

    code, status = "bad_request", 400


class MethodNotAllowedError(AutoRetouchError):
    code, status = "method_not_allowed", 405


class NotReadyError(AutoRetouchError):
    """The job's result was asked for before the job finished."""

    code, status = "not_ready", 409


class InternalError(AutoRetouchError):
    """A bug; the server logged it under ``error_id``, which the message carries."""

    code, status = "internal", 500


class ServerError(AutoRetouchError):
    """The server answered in a way this client does not understand (another version, a bug)."""

    code, status = "server_error", 502


class ServerUnavailableError(ServerError):
    """No AutoRetouch server answers at the address."""

    code = "server_unavailable"


class DataError(AutoRetouchError):
    """Training data has no usable pairs, an unknown layout, or a split that is empty."""

    code = "bad_data"


class VggWeightsError(AutoRetouchError):
    """Perceptual loss is on but the VGG-19 weights file is missing or is not VGG-19."""

    code = "bad_vgg_weights"


class ResumeError(AutoRetouchError):
    """A training run cannot resume: no checkpoint, or different hyperparameters."""

    code = "bad_resume"


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def by_code() -> dict[str, type[AutoRetouchError]]:
    """Error class of every code, so a client raises what the server raised."""
    return {cls.code: cls for cls in [AutoRetouchError, *_all_subclasses(AutoRetouchError)]}


def status_by_code() -> dict[str, int]:
    """HTTP status of every code, for the API's documentation and its tests."""
    return {code: cls.status for code, cls in by_code().items()}
