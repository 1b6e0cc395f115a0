"""Issue 13's classes at the edges: nothing lost through links, one line instead of a traceback,
and requests that cannot hold a connection or sneak past the size limit."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugin_server import cli, imageio
from server_fixtures import ffhq_crop, make_checkpoint, require_data, start_server


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("edges") / "g.pt")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _autoretouch(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plugin_server", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _one_line(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_batch_never_writes_through_a_link_into_the_inputs(tmp_path, ckpt, capsys):
    require_data()
    shoot, out = tmp_path / "shoot", tmp_path / "out"
    (shoot / "day1").mkdir(parents=True)
    original = shoot / "day1" / "a.png"
    imageio.write(original, imageio.Picture(ffhq_crop(1, (64, 64)), "png"))
    out.mkdir()
    (out / "day1").symlink_to(shoot / "day1")  # OUT_DIR/day1 is IN_DIR/day1
    before = _digest(original)
    code = cli.main(["batch", str(shoot), str(out), "--checkpoint", str(ckpt), "--device", "cpu"])
    report = capsys.readouterr().err
    assert code == 1  # the photo failed, it was not counted as done or skipped
    assert "0 retouched, 0 already done, 1 failed" in report and "inside the input folder" in report
    assert _digest(original) == before
    assert sorted(p.name for p in (shoot / "day1").iterdir()) == ["a.png"]  # no temporary file left either


def test_retouch_refuses_an_output_that_links_to_its_input(tmp_path, ckpt):
    require_data()
    photo = tmp_path / "in.png"
    imageio.write(photo, imageio.Picture(ffhq_crop(2, (48, 48)), "png"))
    (tmp_path / "link.png").symlink_to(photo)
    before = _digest(photo)
    _one_line(_autoretouch("retouch", photo, tmp_path / "link.png", "--checkpoint", ckpt), 2, "which is an input")
    assert _digest(photo) == before


@contextlib.contextmanager
def _read_only_folder(path: Path):
    """A folder nobody may write to: a read-only mount as root (whom permissions do not stop), else chmod."""
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def test_retouch_output_problems_are_one_line_before_any_work(tmp_path, ckpt):
    require_data()
    photo = tmp_path / "in.png"
    imageio.write(photo, imageio.Picture(ffhq_crop(3, (48, 48)), "png"))
    _one_line(_autoretouch("retouch", photo, tmp_path, "--checkpoint", ckpt), 2, "is a folder")
    with _read_only_folder(tmp_path / "locked") as locked:
        _one_line(_autoretouch("retouch", photo, locked / "out.png", "--checkpoint", ckpt), 2, "cannot write")
    # EXIF a JPEG cannot hold: refused before the retouch, not after it ran.
    exif = Image.Exif()
    exif[270] = "x" * 70_000  # ImageDescription
    big = tmp_path / "big-exif.png"
    imageio.write(big, imageio.Picture(ffhq_crop(3, (48, 48)), "png", exif=exif.tobytes()))
    started = time.monotonic()
    _one_line(_autoretouch("retouch", big, tmp_path / "out.jpg", "--checkpoint", ckpt), 1, "EXIF", "PNG or TIFF")
    assert not (tmp_path / "out.jpg").exists()
    assert time.monotonic() - started < 60


@pytest.fixture(scope="module")
def quick_server(ckpt):
    server = start_server(ckpt, "--body-timeout", "1")
    yield server
    server.stop()


def test_a_stalled_body_is_given_up_and_the_server_stays_responsive(quick_server):
    with socket.create_connection(("127.0.0.1", quick_server.port), timeout=30) as stalled:
        stalled.sendall(b"POST /v1/retouch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                        b"Content-Length: 100000\r\n\r\n" + b"\x89PNG")
        assert quick_server.health()["status"] == "ok"  # others are served meanwhile
        started = time.monotonic()
        answer = stalled.recv(4096).decode("latin-1")
    assert time.monotonic() - started < 10
    assert answer.startswith("HTTP/1.1 400") and '"bad_request"' in answer and "stopped arriving" in answer


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(quick_server):
    status, _, answer = quick_server.raw(
        b"POST /v1/retouch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        b"Content-Length: 99999999999\r\nConnection: close\r\n\r\n")
    assert status == 413 and json.loads(answer)["error"]["code"] == "too_large"


@pytest.mark.parametrize("token", ["   ", "\t", "s\u00e9cret", "two words"])
def test_a_token_no_client_could_send_is_refused_at_start(ckpt, token):
    env = {**os.environ, "AUTORETOUCH_TOKEN": token}
    result = subprocess.run([sys.executable, "-m", "plugin_server.server.main", "--checkpoint", str(ckpt),
                             "--port", "1"], capture_output=True, text=True, timeout=60, env=env)
    _one_line(result, 2, "token")


def test_non_finite_float_pixels_pass_through_and_do_not_spread(quick_server):
    from plugin_server import wire
    from plugin_server.client import Client
    from plugin_server.server import protocol

    rng = np.random.default_rng(4)
    pixels = rng.random((64, 64, 3), dtype=np.float32)
    pixels[10, 10] = np.nan
    pixels[20, 30] = np.inf
    pixels[40, 5] = 3e38
    reply = Client(quick_server.url).retouch(protocol.message_for(pixels), wire.MSGPACK_TYPE,
                                             wire.RetouchOptions(faces=False))
    out = protocol.pixels_from(wire.decode_message(reply.body, 64 * 64))
    assert np.isnan(out[10, 10]).all() and np.isinf(out[20, 30]).all() and (out[40, 5] > 1e38).all()
    finite = np.isfinite(pixels).all(axis=2) & (pixels < 2).all(axis=2)
    assert np.isfinite(out[finite]).all() and np.abs(out[finite] - pixels[finite]).max() > 1e-3
