"""Cancels the plug-in's job on the server if GIMP kills the plug-in: standard library only, no GIMP.

GIMP 3.0 gives a plug-in no notice when the user cancels its progress bar: GIMP sends the
plug-in a quit message and kills it 10 ms later.  So the plug-in starts a ``Watchdog`` — this file
run as a script in a child process — that holds the id of the running job and cancels it on the
server (``DELETE /v1/jobs/{id}``) if its parent disappears before saying the job is finished::

    python3 autoretouch_watchdog.py --watch http://127.0.0.1:8377   # reads "job ID" / "done" lines
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterable, Optional

from autoretouch_client import Client


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


def watch_main(base_url: str, lines: Iterable) -> int:
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
