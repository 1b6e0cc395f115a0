"""Helpers for the server tests: a real ``autoretouch-server`` process on a free loopback port.

    server = start_server(checkpoint_path, "--tile-size", "64")
    status, headers, body = server.request("GET", "/v1/health")
    server.rss_bytes()
    server.stop()

Requests go through http.client so that tests can send any Host or Origin header.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import SHARED_DATA, make_edit_model
from plugin_server import checkpoint
from plugin_server.wire import RetouchOptions

PORTRAITS = SHARED_DATA / "portraits"
TILE = 128  # small tiles: quick cancellation, and the same tiling in-process
# Face finding off: the whole image goes through the engine, so answers can be compared with
# engine.retouch pixel for pixel (face-aware retouching has its own tests, tests/test_faces.py).
WHOLE = "faces=false"
WHOLE_IMAGE = RetouchOptions(faces=False)


def make_checkpoint(path: Path) -> Path:
    """A seeded generator whose edit is clearly visible, saved as a checkpoint."""
    checkpoint.save(path, make_edit_model(metadata={"trained_on": "nothing (test weights)"}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
        timeout: float = 60.0, skip_host: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = dict(headers or {})
            if self.token and "Authorization" not in headers:
                headers["Authorization"] = f"Bearer {self.token}"
            conn.putrequest(method, path, skip_host=skip_host or "Host" in headers, skip_accept_encoding=True)
            if body is not None:
                headers.setdefault("Content-Length", str(len(body)))
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def raw(self, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """Send ``request`` as written (e.g. with no Host header at all) and read the whole answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, _, body = self.request(method, path, **kwargs)
        return status, json.loads(body)

    def health(self) -> dict[str, Any]:
        status, body = self.json("GET", "/v1/health")
        assert status == 200, body
        return body

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until nothing runs or waits on the server."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.health()["queue"]
            if queue["running"] == 0 and queue["queued"] == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"the server stayed busy: {queue}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    ckpt: Path | None, *args: str, log_dir: Path | None = None, token: str | None = None, timeout: float = 60.0,
) -> ServerProcess:
    """Start the server (``ckpt=None``: its bundled model) and wait until /v1/health answers;
    a port race is retried."""
    log_dir = log_dir or ckpt.parent
    for attempt in range(3):
        port = free_port()
        log_path = log_dir / f"server-{port}.log"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        env.pop("AUTORETOUCH_TOKEN", None)
        command = [sys.executable, "-m", "plugin_server.server.main", "--port", str(port), "--device", "cpu",
                   *(["--checkpoint", str(ckpt)] if ckpt else []), *args]
        if token:
            env["AUTORETOUCH_TOKEN"] = token
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = ServerProcess(proc, port, log_path, token)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and server.alive():
            try:
                status, _, _ = server.request("GET", "/v1/health", timeout=2)
                if status == 200:
                    return server
            except OSError:
                pass
            time.sleep(0.1)
        server.stop()
        if "address already in use" not in server.log().lower():
            raise AssertionError(f"the server did not start:\n{server.log()}")
    raise AssertionError("no free port found for the server")


def require_data() -> None:
    """Skip (with the reason) when the shared photos are not beside the project."""
    import pytest

    if not PORTRAITS.is_dir():
        pytest.skip(f"the shared test photos are absent ({PORTRAITS})")


def ffhq_crop(index: int, size: tuple[int, int], origin: tuple[int, int] = (400, 380)):
    """An (H, W, 3) uint8 crop of a real FFHQ portrait, around the face."""
    from plugin_server import imageio

    pixels = imageio.read(PORTRAITS / f"ffhq-{index:05d}.png").pixels
    (y, x), (h, w) = origin, size
    return pixels[y:y + h, x:x + w].copy()


def expected(ckpt: Path, pixels, strength: float = 1.0):
    """The in-process engine's answer, tiled as the test servers tile."""
    from plugin_server import engine

    return engine.retouch(pixels, checkpoint.load(ckpt), RetouchOptions(strength=strength, tile_size=TILE, device="cpu"))
