"""The jobs API life-cycle on the real server: progress, phases, cancel, expiry, disconnect, full queue."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from conftest import make_edit_model
from plugin_server import face_retouch, imageio, wire
from plugin_server.server import protocol
from server_fixtures import PORTRAITS, TILE, WHOLE, make_checkpoint, start_server

MSGPACK = {"Content-Type": wire.MSGPACK_TYPE}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("jobs") / "g.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    server = start_server(ckpt, "--tile-size", str(TILE), "--queue-size", "2", "--result-ttl", "4",
                          "--idle-timeout", "2")
    yield server
    server.stop()


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _submit(server, pixels: np.ndarray) -> str:
    status, body = server.json("POST", f"/v1/jobs?{WHOLE}", body=protocol.message_for(pixels), headers=MSGPACK)
    assert status == 202, body
    assert body["state"] == "queued"
    return body["id"]


def _wait(server, job: str, states: tuple[str, ...], timeout: float = 30.0) -> tuple[dict, list[float]]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.json("GET", f"/v1/jobs/{job}")
        assert status == 200, body
        seen.append(body["progress"])
        if body["state"] in states:
            return body, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job} never reached {states}: {body}")


def test_life_cycle_with_progress(server):
    pixels = _image(512)
    _, _, sync = server.request("POST", f"/v1/retouch?{WHOLE}", protocol.message_for(pixels), MSGPACK)
    job = _submit(server, pixels)
    status, body = server.json("GET", f"/v1/jobs/{job}/result")
    assert status == 409 and body["error"]["code"] == "not_ready"
    final, progress = _wait(server, job, ("done",))
    assert final["progress"] == 1.0
    assert progress == sorted(progress) and any(0 < p < 1 for p in progress), progress
    status, headers, result = server.request("GET", f"/v1/jobs/{job}/result")
    assert status == 200 and headers["content-type"] == wire.MSGPACK_TYPE
    assert protocol.pixels_from(wire.decode_message(result, 10**9)).tobytes() == \
        protocol.pixels_from(wire.decode_message(sync, 10**9)).tobytes()
    assert protocol.pixels_from(wire.decode_message(result, 10**9)).tobytes() != pixels.tobytes()
    status, body = server.json("DELETE", f"/v1/jobs/{job}")
    assert status == 200 and body["deleted"] is True
    assert server.json("GET", f"/v1/jobs/{job}")[0] == 404
    assert server.json("GET", f"/v1/jobs/{job}/result")[0] == 404


def _phases(server, job: str, timeout: float = 60.0) -> list[tuple]:
    """Every distinct (phase, face, faces) the job's status shows, polled as fast as the server answers."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.json("GET", f"/v1/jobs/{job}")
        assert status == 200, body
        now = (body["phase"], body.get("face"), body.get("faces") if body.get("face") else None)
        if not seen or seen[-1] != now:
            seen.append(now)
        if body["state"] in wire.ENDED:
            assert body["state"] == "done", body
            return seen
    raise AssertionError(f"job {job} never ended: {seen}")


def test_a_small_portrait_reports_its_phases_in_order(server):
    """Each phase is shown in wire.JOB_PHASES order while a one-face job runs, and it ends finished."""
    server.wait_idle()
    pixels = imageio.read(PORTRAITS / "ffhq-00001.png").pixels
    status, body = server.json("POST", "/v1/jobs", body=protocol.message_for(pixels), headers=MSGPACK)
    assert status == 202 and body["phase"] == "queued", body
    seen = _phases(server, body["id"])
    order = [wire.JOB_PHASES.index(phase) for phase, _, _ in seen]
    assert order == sorted(order), seen
    assert ("retouching", 1, 1) in seen, seen  # the one face, said while it is retouched
    assert seen[-1] == ("finished", None, None), seen


def test_phases_come_from_the_work_in_order():
    """The engine side, where polling cannot miss one: faces found, then each face in turn."""
    pixels = imageio.read(PORTRAITS / "ffhq-00001.png").pixels
    two = np.concatenate([pixels, pixels], axis=1)  # the same face twice, side by side
    calls: list[tuple] = []
    face_retouch.retouch(two, make_edit_model(), wire.RetouchOptions(), phase=lambda *call: calls.append(call))
    assert calls == [("finding-faces", 0, 0), ("retouching", 1, 2), ("retouching", 2, 2)]
    calls.clear()
    face_retouch.retouch(pixels[:64, :64], make_edit_model(), wire.RetouchOptions(faces=False),
                         phase=lambda *call: calls.append(call))
    assert calls == [("retouching", 0, 0)]


def test_delete_cancels_within_a_tile(server):
    server.wait_idle()
    before = server.health()["queue"]["cancelled"]
    job = _submit(server, _image(1536, 1))
    _wait(server, job, ("running",))
    time.sleep(0.3)
    started = time.monotonic()
    status, body = server.json("DELETE", f"/v1/jobs/{job}")
    assert status == 202 and body["cancel_requested"] is True
    final, _ = _wait(server, job, ("cancelled", "done", "failed"))
    assert final["state"] == "cancelled" and final["error"]["code"] == "cancelled"
    assert final["progress"] < 0.9
    assert time.monotonic() - started < 2.0
    assert server.health()["queue"]["cancelled"] == before + 1
    status, body = server.json("GET", f"/v1/jobs/{job}/result")
    assert status == 409 and body["error"]["code"] == "cancelled"


def test_unpolled_job_is_cancelled_and_finished_jobs_expire(server):
    server.wait_idle()
    job = _submit(server, _image(4096, 2))  # 16 MP: several times the 2 s idle timeout, even on a fast CPU
    time.sleep(3.5)  # nobody polls
    status, body = server.json("GET", f"/v1/jobs/{job}")
    assert status == 200 and body["state"] == "cancelled", body
    assert "nobody asked" in body["error"]["message"]
    small = _submit(server, _image(64, 3))
    _wait(server, small, ("done",))
    time.sleep(5.0)  # past the 4 s result TTL
    assert server.json("GET", f"/v1/jobs/{small}")[0] == 404
    assert server.json("GET", f"/v1/jobs/{job}")[0] == 404
    assert server.health()["queue"]["kept_jobs"] == 0


def test_full_queue_answers_503_with_retry_after(server):
    server.wait_idle()
    jobs = [_submit(server, _image(1536, 4))]
    _wait(server, jobs[0], ("running",))
    jobs += [_submit(server, _image(256, 5)), _submit(server, _image(256, 6))]  # the queue holds 2
    status, headers, body = server.request("POST", "/v1/jobs", protocol.message_for(_image(64)), MSGPACK)
    assert status == 503 and json.loads(body)["error"]["code"] == "busy"
    assert int(headers["retry-after"]) >= 1
    status, headers, _ = server.request("POST", "/v1/retouch", protocol.message_for(_image(64)), MSGPACK)
    assert status == 503 and "retry-after" in headers
    for job in jobs:
        assert server.json("DELETE", f"/v1/jobs/{job}")[0] in (200, 202)
    server.wait_idle()


def test_disconnect_cancels_a_synchronous_request(server):
    server.wait_idle()
    before = server.health()["queue"]["cancelled"]
    body = protocol.message_for(_image(2048, 7))
    sock = socket.create_connection(("127.0.0.1", server.port))
    # The whole image, tile by tile: a job long enough to be seen running (with faces on, noise has
    # no face and the job can end between two polls).
    sock.sendall(f"POST /v1/retouch?{WHOLE} HTTP/1.1\r\n".encode()
                 + b"Host: 127.0.0.1\r\nContent-Type: application/x-msgpack\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 20
    while server.health()["queue"]["running"] == 0:
        assert time.monotonic() < deadline, "the synchronous job never started"
        time.sleep(0.05)
    sock.close()  # the editor gave up
    started = time.monotonic()
    while server.health()["queue"]["cancelled"] == before:
        assert time.monotonic() - started < 3, "the work went on after the client left"
        time.sleep(0.05)
    queue = server.health()["queue"]
    assert queue["running"] == 0
