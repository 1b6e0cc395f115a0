"""HTTP client of the AutoRetouch GIMP plug-in: standard library only, no GIMP.

``run_job`` posts one request body to ``/v1/jobs``, polls ``/v1/jobs/{id}`` (reporting progress
through a callback) and fetches the result.  Every failure is raised as
``autoretouch_protocol.RetouchError`` with a sentence for the user.  The plug-in calls it from a
worker thread; nothing here touches GIMP.

GIMP 3.0 gives a plug-in no notice when the user cancels its progress bar: GIMP sends the
plug-in a quit message and kills it 10 ms later.  So the plug-in starts a ``Watchdog`` — this file
run as a script in a child process — that holds the id of the running job and cancels it on the
server (``DELETE /v1/jobs/{id}``) if its parent disappears before saying the job is finished::

    python3 autoretouch_client.py --watch http://127.0.0.1:8377   # reads "job ID" / "done" lines
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

import autoretouch_protocol as protocol
from autoretouch_protocol import CancelledByUser, RetouchError

MSGPACK = "application/x-msgpack"
REQUEST_TIMEOUT_S = 30.0     # one HTTP exchange; the job itself may run for many minutes
BUSY_RETRIES = 5             # 503 answers honoured (with Retry-After) before giving up
POLL_INTERVAL_S = 0.25


class Client:
    """Talks to one AutoRetouch server.  ``token`` defaults to the AUTORETOUCH_TOKEN variable."""

    def __init__(self, base_url: str, timeout: float = REQUEST_TIMEOUT_S,
                 token: Optional[str] = None) -> None:
        self.base_url = protocol.normalize_url(base_url)
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("AUTORETOUCH_TOKEN") or None
        # The server is local: never route its requests through an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                query: Optional[dict] = None, content_type: Optional[str] = None) -> bytes:
        url = protocol.endpoint(self.base_url, path, query)
        for attempt in range(BUSY_RETRIES + 1):
            req = urllib.request.Request(url, data=body, method=method)
            if content_type:
                req.add_header("Content-Type", content_type)
                req.add_header("Accept", content_type)
            if self.token:
                req.add_header("Authorization", f"Bearer {self.token}")
            try:
                with self._opener.open(req, timeout=self.timeout) as reply:
                    return reply.read()
            except urllib.error.HTTPError as err:
                payload = err.read()
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if err.code == 503 and attempt < BUSY_RETRIES:
                    time.sleep(_retry_delay(retry_after))
                    continue
                raise RetouchError(protocol.server_error_message(
                    self.base_url, err.code, payload, retry_after)) from None
            except urllib.error.URLError as err:
                raise RetouchError(self._connection_message(err.reason)) from None
            except (socket.timeout, TimeoutError):
                raise RetouchError(protocol.timeout_message(self.base_url, self.timeout)) from None
            except (ConnectionError, OSError) as err:
                raise RetouchError(self._connection_message(err)) from None
        raise AssertionError("unreachable")

    def _connection_message(self, reason: object) -> str:
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return protocol.timeout_message(self.base_url, self.timeout)
        if isinstance(reason, ConnectionRefusedError):
            return protocol.not_running_message(self.base_url)
        if isinstance(reason, socket.gaierror):
            return (f"The server address in {self.base_url} cannot be resolved ({reason}). "
                    f"Check the server URL; the default is {protocol.DEFAULT_URL}.")
        return (f"Cannot reach the AutoRetouch server at {self.base_url} ({reason}). "
                f"Is it running? {protocol.START_HINT[0].upper() + protocol.START_HINT[1:]}.")

    def submit(self, body: bytes, strength: float) -> str:
        reply = self.request("POST", "/v1/jobs", body, {"strength": f"{strength:g}"}, MSGPACK)
        job_id = _json(reply, self.base_url).get("id")
        if not job_id:
            raise RetouchError(f"The server at {self.base_url} accepted the image but sent no job "
                               "id. Check that it is an AutoRetouch server of the same version.")
        return str(job_id)

    def status(self, job_id: str) -> dict:
        return _json(self.request("GET", f"/v1/jobs/{job_id}"), self.base_url)

    def result(self, job_id: str) -> bytes:
        return self.request("GET", f"/v1/jobs/{job_id}/result", content_type=MSGPACK)

    def cancel(self, job_id: str) -> None:
        """Best effort: a job that is already gone is fine."""
        try:
            self.request("DELETE", f"/v1/jobs/{job_id}")
        except RetouchError:
            pass


def run_job(client: Client, body: bytes, strength: float,
            on_progress: Callable[[float], None] = lambda fraction: None,
            cancel: Optional[threading.Event] = None,
            on_job: Callable[[str], None] = lambda job_id: None,
            poll_interval: float = POLL_INTERVAL_S) -> bytes:
    """Run one job to the end and return the result body.

    ``on_job`` is told the job id as soon as the server gives it (the watchdog needs it);
    setting ``cancel`` deletes the job on the server and raises ``CancelledByUser``.
    """
    job_id = client.submit(body, strength)
    on_job(job_id)
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise CancelledByUser("AutoRetouch was cancelled.")
            state = client.status(job_id)
            name = state.get("state")
            if isinstance(state.get("progress"), (int, float)):
                on_progress(min(max(float(state["progress"]), 0.0), 1.0))
            if name == "done":
                on_progress(1.0)
                return client.result(job_id)
            if name == "failed":
                raise RetouchError(protocol.job_error_message(client.base_url, state.get("error")))
            if name == "cancelled":
                raise CancelledByUser(f"The AutoRetouch job was cancelled on the server at "
                                      f"{client.base_url}.")
            if name not in ("queued", "running"):
                raise RetouchError(f"The server at {client.base_url} reported an unknown job state "
                                   f"{name!r}. Check that the plug-in and the server are the same "
                                   "version.")
            if cancel is not None:
                cancel.wait(poll_interval)
            else:
                time.sleep(poll_interval)
    except BaseException:
        client.cancel(job_id)   # never leave a job running that nobody will collect
        raise


def _json(body: bytes, base_url: str) -> dict:
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise RetouchError(f"The server at {base_url} answered with something that is not "
                           "AutoRetouch JSON. Check the server URL.")
    return value


def _retry_delay(header: Optional[str]) -> float:
    try:
        return min(max(float(header), 0.1), 10.0) if header else 1.0
    except ValueError:
        return 1.0


# --------------------------------------------------------------------------------------------
# Watchdog: cancels the job on the server if the plug-in process dies (GIMP's progress cancel).


class Watchdog:
    """A child process that DELETEs the current job unless told ``done`` before its stdin closes."""

    def __init__(self, base_url: str, python: Optional[str] = None) -> None:
        self._proc: Optional[subprocess.Popen] = None
        python = python or sys.executable
        if not python:
            return  # no interpreter to start: cancel then only works from the dialog
        try:
            self._proc = subprocess.Popen(
                [python, os.path.abspath(__file__), "--watch", base_url],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))  # no console on Windows
        except OSError:
            self._proc = None

    def _say(self, line: str) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.write(line.encode("utf-8") + b"\n")
                self._proc.stdin.flush()
            except OSError:
                pass

    def watch(self, job_id: str) -> None:
        self._say(f"job {job_id}")

    def close(self) -> None:
        """The job ended (either way) and the plug-in handled it: stop watching."""
        if self._proc is None:
            return
        self._say("done")
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._proc = None


def watch_main(base_url: str, lines) -> int:
    job_id = None
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else raw.strip()
        if line == "done":
            return 0
        if line.startswith("job "):
            job_id = line[4:].strip()
    # stdin closed without "done": the plug-in died (GIMP cancelled it) while the job ran.
    if job_id:
        Client(base_url, timeout=10.0).cancel(job_id)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--watch":
        sys.exit(watch_main(sys.argv[2], sys.stdin.buffer))
    print(__doc__)
    sys.exit(2)
