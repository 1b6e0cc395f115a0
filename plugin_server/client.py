"""The one HTTP client of the retouch server: for the CLI, batch runs and the GIMP plug-in.

Standard library only (``autoretouch gimp install`` copies it beside the plug-in as
``autoretouch_client.py``); each call is one blocking exchange, or a poll loop for progress::

    client = Client("http://127.0.0.1:8377")
    reply = client.retouch(png_bytes, "image/png", RetouchOptions(strength=0.8))   # Reply(body, faces, mask)
    reply = client.run_job(message, wire.MSGPACK_TYPE, options, on_progress=print, on_status=print)

One policy everywhere: a busy server (503) is retried after its ``Retry-After`` until
``busy_wait`` seconds have passed; jobs are polled every ``POLL_SECONDS``; loopback servers
are never reached through a proxy from the environment. Every error the server sends comes
back as the same typed error (by its code); a server that cannot be reached is a
ServerUnavailableError.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, NamedTuple

try:
    from . import wire
    from .errors import AutoRetouchError, BusyError, CancelledError, ServerError, ServerUnavailableError, by_code
except ImportError:  # copied beside the GIMP plug-in, outside the package
    import autoretouch_wire as wire
    from autoretouch_errors import (
        AutoRetouchError, BusyError, CancelledError, ServerError, ServerUnavailableError, by_code,
    )

REQUEST_SECONDS = 600.0  # one exchange; a synchronous 24 MP retouch on a CPU takes about 10 s
POLL_SECONDS = 0.25
BUSY_WAIT_SECONDS = 600.0
START_HINT = "start it with `autoretouch-server` (or `make serve`)"


class Reply(NamedTuple):
    body: bytes  # the retouched image, in the request's format
    faces: int | None  # faces found (0: nothing was changed); None when face finding was off
    mask: bytes | None = None  # the skin mask, in the request's format, when asked for


def normalize_url(url: str | None) -> str:
    """A server URL as a user typed it, checked, without a trailing slash; empty means the default."""
    text = (url or "").strip() or wire.DEFAULT_URL
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerUnavailableError(f"the server address {url!r} is not an http:// URL; the default is {wire.DEFAULT_URL}")
    try:
        parts.port
    except ValueError:
        raise ServerUnavailableError(f"the server address {url!r} has an invalid port") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """Talks to one AutoRetouch server. ``token`` defaults to the AUTORETOUCH_TOKEN variable."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = REQUEST_SECONDS,
                 busy_wait: float = BUSY_WAIT_SECONDS) -> None:
        self.url = normalize_url(url)
        self.token = token if token is not None else os.environ.get(wire.TOKEN_ENV) or None
        self.timeout, self.busy_wait = timeout, busy_wait
        # A proxy from the environment must never see (or break) traffic to this machine.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback_url(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def available(self, timeout: float = 0.5) -> bool:
        """True when an AutoRetouch server answers its health check."""
        try:
            return self.health(timeout).get("status") == "ok"
        except AutoRetouchError:
            return False

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        return _json(self.request("GET", wire.HEALTH, timeout=timeout), self.url)

    def retouch(self, body: bytes, content_type: str, options: wire.RetouchOptions) -> Reply:
        """One synchronous retouch: the answer is in the request's format (no mask: use run_job)."""
        answer, headers = self._retrying("POST", wire.RETOUCH, body, content_type, options.to_query(), None)
        return Reply(answer, _faces(headers.get(wire.FACES_HEADER), self.url))

    def submit(self, body: bytes, content_type: str, options: wire.RetouchOptions) -> str:
        job = _json(self.request("POST", wire.JOBS, body, content_type, options.to_query()), self.url)
        if not job.get("id"):
            raise ServerError(f"the server at {self.url} accepted the image but sent no job id; "
                              "is it an AutoRetouch server of the same version?")
        return str(job["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        status = _json(self.request("GET", f"{wire.JOBS}/{job_id}"), self.url)
        if status.get("state") not in wire.JOB_STATES:
            raise ServerError(f"the server at {self.url} reported an unknown job state {status.get('state')!r}; "
                              "are the client and the server the same version?")
        return status

    def result(self, job_id: str) -> bytes:
        return self.request("GET", f"{wire.JOBS}/{job_id}/result")

    def cancel(self, job_id: str) -> None:
        """Best effort: a job that is already gone is fine."""
        try:
            self.request("DELETE", f"{wire.JOBS}/{job_id}", timeout=10.0)
        except AutoRetouchError:
            pass

    def mask(self, job_id: str) -> bytes:
        return self.request("GET", f"{wire.JOBS}/{job_id}/mask")

    def run_job(
        self, body: bytes, content_type: str, options: wire.RetouchOptions,
        on_progress: Callable[[float], None] = lambda fraction: None,
        cancel: threading.Event | None = None,
        on_job: Callable[[str], None] = lambda job_id: None,
        on_status: Callable[[dict[str, Any]], None] = lambda status: None,
    ) -> Reply:
        """Run one job to its end and return its result, reporting progress as it goes.

        ``on_progress`` gets the fraction done, ``on_status`` every polled status (its ``phase``,
        ``face`` and ``faces`` say what the server is doing, for a progress text).
        ``on_job`` is told the id as soon as the server gives it; setting ``cancel`` cancels
        the job on the server and raises CancelledError. The job is always deleted at the end,
        so the server frees its memory now.
        """
        job_id = self.submit(body, content_type, options)
        on_job(job_id)
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("the retouch was cancelled")
                status = self.status(job_id)
                on_progress(min(max(float(status.get("progress") or 0.0), 0.0), 1.0))
                on_status(status)
                if status["state"] == "done":
                    faces = _faces(status.get("faces"), self.url)
                    mask = self.mask(job_id) if options.mask and faces is not None else None
                    return Reply(self.result(job_id), faces, mask)
                if status["state"] in ("failed", "cancelled"):
                    raise typed_error(0, status.get("error") or {}, self.url)
                if cancel is not None:
                    cancel.wait(POLL_SECONDS)
                else:
                    time.sleep(POLL_SECONDS)
        finally:
            self.cancel(job_id)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                query: dict[str, str] | None = None, timeout: float | None = None) -> bytes:
        """One exchange, retried while the server is busy; errors come back typed."""
        return self._retrying(method, path, body, content_type, query, timeout)[0]

    def _retrying(self, method: str, path: str, body: bytes | None, content_type: str | None,
                  query: dict[str, str] | None, timeout: float | None) -> tuple[bytes, Any]:
        deadline = time.monotonic() + self.busy_wait
        while True:
            try:
                return self._exchange(method, path, body, content_type, query, timeout or self.timeout)
            except BusyError as exc:
                if time.monotonic() + exc.retry_after > deadline:
                    raise
                time.sleep(exc.retry_after)

    def _exchange(self, method: str, path: str, body: bytes | None, content_type: str | None,
                  query: dict[str, str] | None, timeout: float) -> tuple[bytes, Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as exc:
            with exc:
                payload = exc.read()
            try:
                error = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                error = {"message": payload[:200].decode("utf-8", "replace").strip() or f"HTTP {exc.code}"}
            raise typed_error(exc.code, error, self.url, exc.headers.get("Retry-After")) from None
        except (socket.timeout, TimeoutError):
            raise ServerError(f"the AutoRetouch server at {self.url} did not answer within {timeout:g} s; "
                              "it may be overloaded or stuck: restart it and try again") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServerError(f"the AutoRetouch server at {self.url} did not answer within {timeout:g} s") from None
            raise ServerUnavailableError(
                f"the AutoRetouch server is not running at {self.url} ({reason}): {START_HINT}, "
                "or retouch without a server"
            ) from None


def typed_error(status: int, error: dict[str, Any], url: str, retry_after: str | None = None) -> AutoRetouchError:
    """The typed error for a server's JSON error: the same class the server raised."""
    code, message = str(error.get("code") or ""), str(error.get("message") or f"HTTP {status}")
    if code == "busy" or (status == 503 and retry_after):
        try:
            wait = float(retry_after or 1)
        except ValueError:
            wait = 1.0
        return BusyError(message, retry_after=min(max(wait, 0.1), 60.0))
    cls = by_code().get(code)
    if cls is None or cls is BusyError:
        return ServerError(f"the server at {url} refused the request (HTTP {status}, {code or 'no code'}): {message}")
    return cls(message)


def _faces(value: object, url: str) -> int | None:
    """The faces a result reports: a count, or None where face finding was off."""
    if value == "off":
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ServerError(f"the server at {url} did not say how many faces it found; "
                          "are the client and the server the same version?") from None


def _json(body: bytes, url: str) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise ServerError(f"the server at {url} answered with something that is not AutoRetouch JSON; check its address")
    return value
