"""The HTTP client of the retouch server, for the ``autoretouch`` CLI and batch runs.

    if server_available(DEFAULT_URL):
        out = retouch_picture(picture, DEFAULT_URL, strength=1.0)        # Picture -> Picture
    body = retouch_file_bytes(jpeg_bytes, url)                           # encoded file -> encoded file

``retouch_picture`` sends the pixels as the msgpack message and keeps the Picture's ICC
profile and EXIF itself, so the result equals an in-process ``engine.retouch`` exactly.
Server errors come back as the same typed errors (BadImageError, TooLargeError, ...);
a server that cannot be reached is a ServerUnavailableError. Standard library only, no
event loop: each call is one blocking HTTP exchange (or a poll loop for progress).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Callable

from . import imageio
from .errors import (
    AutoRetouchError, BadImageError, BadOptionError, BusyError, CancelledError, OutOfMemoryError,
    TooLargeError, UnsupportedFormatError,
)
from .imageio import Picture
from .server.protocol import MSGPACK_TYPE, decode_message, encode_message
from .server.settings import DEFAULT_URL

__all__ = ["DEFAULT_URL", "ServerError", "ServerUnavailableError", "server_available", "health",
           "retouch_picture", "retouch_file_bytes"]

_TYPED = {cls.code: cls for cls in (BadImageError, BadOptionError, UnsupportedFormatError, TooLargeError,
                                     CancelledError, OutOfMemoryError)}
_POLL_SECONDS = 0.2


class ServerError(AutoRetouchError):
    """The server failed in a way that has no typed error here (a bug, a refusal, a protocol error)."""

    code = "server_error"


class ServerUnavailableError(ServerError):
    code = "server_unavailable"


def server_available(url: str = DEFAULT_URL, timeout: float = 0.5, token: str | None = None) -> bool:
    """True when an AutoRetouch server answers its health check at ``url``."""
    try:
        return health(url, timeout, token).get("status") == "ok"
    except (AutoRetouchError, ValueError):
        return False


def servers_to_use(explicit: list[str] | None, checkpoint: str | None, token: str | None) -> list[str]:
    """Where commands send work: the servers named; else the default server when it answers and
    no local model was asked for (a server has its own); else none, meaning in-process."""
    if explicit:
        return list(explicit)
    if checkpoint is None and server_available(DEFAULT_URL, token=token):
        return [DEFAULT_URL]
    return []


def health(url: str = DEFAULT_URL, timeout: float = 5.0, token: str | None = None) -> dict:
    return json.loads(_request("GET", url, "/v1/health", token=token, timeout=timeout)[1])


def retouch_picture(
    picture: Picture, url: str = DEFAULT_URL, strength: float = 1.0, token: str | None = None,
    progress: Callable[[float], None] | None = None, timeout: float = 600.0, busy_wait: float = 600.0,
) -> Picture:
    """The retouched picture from the server; ICC profile, EXIF and format stay as they are.

    With ``progress``, the jobs API is used and ``progress(fraction)`` called as it advances.
    A busy server is retried after its Retry-After for up to ``busy_wait`` seconds.
    """
    body = encode_message(picture.pixels, strength)
    if progress is None:
        answer = _retry_busy(busy_wait, lambda: _request(
            "POST", url, "/v1/retouch", body, MSGPACK_TYPE, token, timeout)[1])
    else:
        answer = _run_job(url, body, MSGPACK_TYPE, token, timeout, busy_wait, progress)
    pixels = decode_message(answer, max_pixels=picture.pixels.shape[0] * picture.pixels.shape[1]).pixels
    if pixels.shape != picture.pixels.shape or pixels.dtype != picture.pixels.dtype:
        raise ServerError(f"the server answered pixels of shape {pixels.shape} {pixels.dtype}, "
                          f"not {picture.pixels.shape} {picture.pixels.dtype}")
    return picture.with_pixels(pixels)


def retouch_file_bytes(
    data: bytes, url: str = DEFAULT_URL, strength: float = 1.0, token: str | None = None,
    timeout: float = 600.0, busy_wait: float = 600.0,
) -> bytes:
    """An encoded PNG, JPEG or TIFF in, the retouched file in the same format out."""
    content_type = imageio.MIME_TYPES[imageio.sniff_format(data)]
    path = f"/v1/retouch?strength={float(strength)!r}"
    return _retry_busy(busy_wait, lambda: _request("POST", url, path, data, content_type, token, timeout)[1])


def _run_job(url: str, body: bytes, content_type: str, token: str | None, timeout: float,
             busy_wait: float, progress: Callable[[float], None]) -> bytes:
    created = _retry_busy(busy_wait, lambda: _request("POST", url, "/v1/jobs", body, content_type, token, timeout)[1])
    job = f"/v1/jobs/{json.loads(created)['id']}"
    try:
        while True:
            status = json.loads(_request("GET", url, job, token=token, timeout=timeout)[1])
            progress(float(status.get("progress", 0.0)))
            if status["state"] == "done":
                return _request("GET", url, f"{job}/result", token=token, timeout=timeout)[1]
            if status["state"] in ("failed", "cancelled"):
                raise _typed_error(0, status.get("error") or {})
            time.sleep(_POLL_SECONDS)
    finally:  # done or not, free the server's memory now (an interrupted editor cancels its job)
        try:
            _request("DELETE", url, job, token=token, timeout=5.0)
        except AutoRetouchError:
            pass


def _retry_busy(busy_wait: float, call: Callable[[], bytes]) -> bytes:
    deadline = time.monotonic() + busy_wait
    while True:
        try:
            return call()
        except BusyError as exc:
            if time.monotonic() + exc.retry_after > deadline:
                raise
            time.sleep(exc.retry_after)


def _request(method: str, url: str, path: str, body: bytes | None = None, content_type: str | None = None,
             token: str | None = None, timeout: float = 600.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url.rstrip("/") + path, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            payload = exc.read()
        try:
            error = json.loads(payload)["error"]
        except (ValueError, KeyError, TypeError):
            error = {"message": payload[:200].decode("utf-8", "replace")}
        raise _typed_error(exc.code, error, exc.headers.get("Retry-After")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnavailableError(
            f"the AutoRetouch server is not running at {url} ({reason}): start it with "
            "`autoretouch-server`, or leave out --server to retouch in this process"
        ) from None


def _typed_error(status: int, error: dict, retry_after: str | None = None) -> AutoRetouchError:
    code, message = error.get("code", ""), error.get("message", f"HTTP {status}")
    if code == "busy" or status == 503 and retry_after:
        try:
            wait = float(retry_after or 1)
        except ValueError:
            wait = 1.0
        return BusyError(message, retry_after=wait)
    cls = _TYPED.get(code)
    return cls(message) if cls else ServerError(f"the server refused the request (HTTP {status}, {code or 'no code'}): {message}")
