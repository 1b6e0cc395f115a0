"""The one HTTP client (CLI, batch and the GIMP plug-in) against the real server on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from plugin_server import errors, wire
from plugin_server.client import Client
from plugin_server.server import protocol
from server_fixtures import TILE, WHOLE, WHOLE_IMAGE, expected, free_port, make_checkpoint, start_server

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("client") / "g.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    server = start_server(ckpt, "--tile-size", str(TILE), "--queue-size", "1")
    yield server
    server.stop()


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_importing_the_client_loads_neither_torch_nor_numpy():
    """GIMP's Python has neither; the CLI's server path must not pay for torch either."""
    code = ("import sys, json, plugin_server.client, plugin_server.wire, plugin_server.errors; "
            "print(json.dumps(sorted(m for m in ('torch', 'numpy', 'aiohttp', 'PIL') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_retouch_and_run_job_give_the_in_process_pixels(server, ckpt):
    server.wait_idle()
    client = Client(server.url)
    pixels = _image(200, 1)
    body = protocol.message_for(pixels)
    want = expected(ckpt, pixels, 0.7)
    assert not np.array_equal(want, pixels)
    sync = client.retouch(body, wire.MSGPACK_TYPE, wire.RetouchOptions(strength=0.7, faces=False))
    np.testing.assert_array_equal(protocol.pixels_from(wire.decode_message(sync.body, 10**9)), want)
    progress, jobs = [], []
    result = client.run_job(body, wire.MSGPACK_TYPE, wire.RetouchOptions(strength=0.7, faces=False),
                            on_progress=progress.append, on_job=jobs.append)
    np.testing.assert_array_equal(protocol.pixels_from(wire.decode_message(result.body, 10**9)), want)
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(jobs) == 1
    with pytest.raises(errors.NotFoundError):  # the client deleted the finished job: memory freed now
        client.status(jobs[0])


def test_cancel_stops_the_job_on_the_server(server):
    server.wait_idle()
    client = Client(server.url)
    cancel = threading.Event()
    jobs: list[str] = []

    def on_progress(fraction: float) -> None:
        if fraction > 0:
            cancel.set()

    with pytest.raises(errors.CancelledError):
        client.run_job(protocol.message_for(_image(768, 2)), wire.MSGPACK_TYPE, WHOLE_IMAGE,
                       on_progress=on_progress, cancel=cancel, on_job=jobs.append)
    server.wait_idle()  # the engine stopped at its next tile
    status, body = server.json("GET", f"/v1/jobs/{jobs[0]}")
    # a running job is only cancelled by the client's DELETE; its record stays until it expires
    assert status == 404 or (body["state"] == "cancelled" and body["error"]["code"] == "cancelled"), body
    assert body.get("progress", 0) < 1.0 and server.health()["queue"]["cancelled"] >= 1


def test_not_ready_and_cancelled_results_are_typed(server):
    server.wait_idle()
    client = Client(server.url)
    job = client.submit(protocol.message_for(_image(768, 3)), wire.MSGPACK_TYPE, WHOLE_IMAGE)
    with pytest.raises(errors.NotReadyError):
        client.result(job)
    server.json("DELETE", f"/v1/jobs/{job}")
    deadline = time.monotonic() + 30
    while client.status(job)["state"] != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(errors.CancelledError):
        client.result(job)
    client.cancel(job)  # discards it
    client.cancel(job)  # already gone: fine


def test_a_busy_server_is_retried_until_it_has_room(server, ckpt):
    server.wait_idle()
    client = Client(server.url)
    running = client.submit(protocol.message_for(_image(768, 4)), wire.MSGPACK_TYPE, WHOLE_IMAGE)
    deadline = time.monotonic() + 30
    while client.status(running)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiting = client.submit(protocol.message_for(_image(64, 5)), wire.MSGPACK_TYPE, WHOLE_IMAGE)  # fills the queue of 1
    small = _image(96, 6)
    body = protocol.message_for(small)
    status, headers, _ = server.request("POST", f"{wire.RETOUCH}?{WHOLE}", body, {"Content-Type": wire.MSGPACK_TYPE})
    assert status == 503 and int(headers["retry-after"]) >= 1  # really busy now
    with pytest.raises(errors.BusyError):  # no time to wait: the busy error itself
        Client(server.url, busy_wait=0).retouch(body, wire.MSGPACK_TYPE, WHOLE_IMAGE)
    started = time.monotonic()
    answer = Client(server.url, busy_wait=120).retouch(body, wire.MSGPACK_TYPE, WHOLE_IMAGE)
    assert time.monotonic() - started >= 0.9  # it waited at least one Retry-After
    np.testing.assert_array_equal(protocol.pixels_from(wire.decode_message(answer.body, 10**9)), expected(ckpt, small))
    for job in (running, waiting):
        client.cancel(job)


class _Proxy:
    """A listening socket that counts the connections a proxy would get, and closes them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def test_loopback_is_never_reached_through_a_proxy(server, monkeypatch):
    proxy = _Proxy()
    try:
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        with pytest.raises(OSError):  # the variable is in force: a plain urllib call goes to the proxy
            urllib.request.build_opener().open(server.url + wire.HEALTH, timeout=5)
        assert proxy.connections >= 1
        before = proxy.connections
        assert Client(server.url).health()["status"] == "ok"
        assert Client(server.url.replace("127.0.0.1", "localhost")).available(timeout=5)
        assert proxy.connections == before
    finally:
        proxy.sock.close()


def test_a_server_that_is_not_running_is_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    client = Client(url)
    assert not client.available()
    with pytest.raises(errors.ServerUnavailableError) as info:
        client.health()
    assert url in str(info.value) and "autoretouch-server" in str(info.value)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("bad", ["ftp://host", "http://", "http://host:notaport"])
def test_bad_urls_are_refused(bad):
    with pytest.raises(errors.ServerUnavailableError):
        Client(bad)


def test_urls_are_normalised():
    assert Client("").url == wire.DEFAULT_URL
    assert Client(" localhost:9000/ ").url == "http://localhost:9000"
    assert Client("http://127.0.0.1:8377/").url == "http://127.0.0.1:8377"


def test_token_server(ckpt, tmp_path, monkeypatch):
    server = start_server(ckpt, log_dir=tmp_path, token=TOKEN)
    try:
        monkeypatch.delenv(wire.TOKEN_ENV, raising=False)
        with pytest.raises(errors.UnauthorizedError):
            Client(server.url).health()
        with pytest.raises(errors.UnauthorizedError):
            Client(server.url, token="wrong").health()
        assert Client(server.url, token=TOKEN).health()["status"] == "ok"
        monkeypatch.setenv(wire.TOKEN_ENV, TOKEN)  # the variable the plug-in and the CLI read
        assert Client(server.url).health()["status"] == "ok"
    finally:
        server.stop()


def test_errors_only_the_raw_edge_can_provoke_still_map_back(server):
    """Refusals the client never provokes itself (a foreign Host or Origin) map back too."""
    from plugin_server.client import typed_error

    for headers in ({"Host": "evil.example"}, {"Origin": "https://evil.example"}):
        status, _, body = server.request("GET", wire.HEALTH, headers=headers)
        error = typed_error(status, json.loads(body)["error"], server.url)
        assert type(error) is errors.ForbiddenError and status == errors.ForbiddenError.status
