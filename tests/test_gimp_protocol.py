"""The GIMP plug-in's pure parts, without GIMP: msgpack codec, formats, regions, messages,
the HTTP client against a real loopback server, and `autoretouch gimp install/uninstall`."""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "gimp_plugin" / "autoretouch"
sys.path.insert(0, str(PLUGIN_DIR))

import autoretouch_client as client  # noqa: E402
import autoretouch_protocol as protocol  # noqa: E402
from autoretouch_protocol import Region, RetouchError  # noqa: E402
from plugin_server import cli, gimp_install  # noqa: E402
from plugin_server.errors import AutoRetouchError  # noqa: E402


# --------------------------------------------------------------------------------------------
# msgpack codec

scalars = (st.none() | st.booleans()
           | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=300))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_packb_is_byte_identical_to_msgpack(value):
    packed = protocol.packb(value)
    assert packed == msgpack.packb(value, use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False, strict_map_key=False) == value


@settings(max_examples=300, deadline=None)
@given(values)
def test_unpackb_reads_msgpack_output(value):
    assert protocol.unpackb(msgpack.packb(value, use_bin_type=True)) == value


@pytest.mark.parametrize("n", [0, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 64 - 1,
                               -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1,
                               -(2 ** 63)])
def test_integer_boundaries(n):
    assert protocol.packb(n) == msgpack.packb(n)
    assert protocol.unpackb(msgpack.packb(n)) == n


@pytest.mark.parametrize("size", [0, 31, 32, 255, 256, 65535, 65536])
def test_str_and_bin_length_boundaries(size):
    for value in ("x" * size, b"\x01" * size, list(range(min(size, 70000)))[:size],
                  {str(i): i for i in range(min(size, 20))}):
        assert protocol.packb(value) == msgpack.packb(value, use_bin_type=True)
        assert protocol.unpackb(msgpack.packb(value, use_bin_type=True)) == value


def test_unpackb_reads_float32_and_rejects_garbage():
    assert protocol.unpackb(b"\xca" + struct.pack(">f", 0.5)) == 0.5
    for bad in (b"", b"\xc4\x05ab", b"\x81\xa1a", b"\xc1", b"\x01\x02", b"\xd9\x02\xff\xfe"):
        with pytest.raises(ValueError):
            protocol.unpackb(bad)


def test_packb_rejects_unknown_types():
    with pytest.raises(TypeError):
        protocol.packb({"x": object()})


# --------------------------------------------------------------------------------------------
# formats and request / reply


@pytest.mark.parametrize("precision,base,alpha,babl,dtype,send", [
    ("GIMP_PRECISION_U8_NON_LINEAR", "rgb", False, "R'G'B' u8", "u8", 3),
    ("GIMP_PRECISION_U8_NON_LINEAR", "rgb", True, "R'G'B'A u8", "u8", 4),
    ("GIMP_PRECISION_U8_LINEAR", "rgb", False, "R~G~B~ u8", "u8", 3),
    ("GIMP_PRECISION_U16_NON_LINEAR", "rgb", True, "R'G'B'A u16", "u16", 4),
    ("GIMP_PRECISION_U16_PERCEPTUAL", "gray", False, "Y~ u16", "u16", 1),
    ("GIMP_PRECISION_U32_LINEAR", "rgb", False, "R~G~B~ u16", "u16", 3),
    ("GIMP_PRECISION_HALF_NON_LINEAR", "rgb", False, "R'G'B' float", "f32", 3),
    ("GIMP_PRECISION_FLOAT_LINEAR", "rgb", True, "R~G~B~A float", "f32", 4),
    ("GIMP_PRECISION_DOUBLE_NON_LINEAR", "gray", True, "Y'A float", "f32", 1),
    ("u8-non-linear", "gray", True, "Y'A u8", "u8", 1),
])
def test_wire_format(precision, base, alpha, babl, dtype, send):
    fmt = protocol.wire_format(precision, base, alpha)
    assert (fmt.babl, fmt.dtype, fmt.send_channels) == (babl, dtype, send)
    assert fmt.keep_alpha == (base == "gray" and alpha)


def test_wire_format_rejects_indexed_and_unknown():
    with pytest.raises(RetouchError, match="Mode"):
        protocol.wire_format("GIMP_PRECISION_U8_NON_LINEAR", "indexed", False)
    with pytest.raises(RetouchError, match="precision"):
        protocol.wire_format("GIMP_PRECISION_U12_LINEAR", "rgb", False)


def test_request_is_what_the_server_expects():
    fmt = protocol.wire_format("GIMP_PRECISION_U16_NON_LINEAR", "rgb", False)
    pixels = struct.pack("=6H", 1, 2, 3, 65535, 256, 0)
    prepared = protocol.encode_request(pixels, 2, 1, fmt)
    message = msgpack.unpackb(prepared.body, raw=False)
    assert message == {"width": 2, "height": 1, "channels": 3, "dtype": "u16",
                       "data": struct.pack("<6H", 1, 2, 3, 65535, 256, 0)}
    assert prepared.kept_alpha is None


def test_gray_alpha_sends_gray_and_keeps_alpha():
    fmt = protocol.wire_format("GIMP_PRECISION_FLOAT_NON_LINEAR", "gray", True)
    pixels = struct.pack("=6f", 0.1, 1.0, 0.2, 0.5, 0.3, 0.0)
    prepared = protocol.encode_request(pixels, 3, 1, fmt)
    sent = msgpack.unpackb(prepared.body, raw=False)
    assert sent["channels"] == 1 and sent["data"] == struct.pack("<3f", 0.1, 0.2, 0.3)
    reply = msgpack.packb(dict(sent, data=struct.pack("<3f", 0.7, 0.8, 0.9)), use_bin_type=True)
    out = protocol.decode_reply(reply, 3, 1, fmt, prepared.kept_alpha)
    assert out == struct.pack("=6f", 0.7, 1.0, 0.8, 0.5, 0.9, 0.0)


def test_big_endian_hosts_swap_to_little_endian():
    native_big = struct.pack(">2H", 1, 258)
    assert protocol.to_little_endian(native_big, 2, byteorder="big") == struct.pack("<2H", 1, 258)
    assert protocol.to_little_endian(b"\x01\x02", 1, byteorder="big") == b"\x01\x02"
    assert protocol.from_little_endian(struct.pack("<f", 0.25), 4, "big") == struct.pack(">f", 0.25)


@pytest.mark.parametrize("channels,itemsize", [(2, 1), (4, 1), (2, 2), (4, 2), (2, 4), (4, 4)])
def test_split_and_merge_alpha_are_inverse(channels, itemsize):
    data = bytes(range(channels * itemsize * 5))
    colour, alpha = protocol.split_alpha(data, channels, itemsize)
    assert len(alpha) == 5 * itemsize
    assert protocol.merge_alpha(colour, alpha, channels - 1, itemsize) == data


def test_decode_reply_checks_shape_and_size():
    fmt = protocol.wire_format("GIMP_PRECISION_U8_NON_LINEAR", "rgb", False)
    good = {"width": 2, "height": 1, "channels": 3, "dtype": "u8", "data": bytes(6)}
    assert protocol.decode_reply(msgpack.packb(good, use_bin_type=True), 2, 1, fmt) == bytes(6)
    for bad in (dict(good, width=3), dict(good, dtype="u16"), dict(good, data=bytes(5))):
        with pytest.raises(RetouchError):
            protocol.decode_reply(msgpack.packb(bad, use_bin_type=True), 2, 1, fmt)
    with pytest.raises(RetouchError, match="cannot read"):
        protocol.decode_reply(b"\xc1", 2, 1, fmt)
    with pytest.raises(RetouchError, match="not an image"):
        protocol.decode_reply(msgpack.packb([1]), 2, 1, fmt)


# --------------------------------------------------------------------------------------------
# regions


def test_selection_region_examples():
    whole = protocol.selection_region((10, 20), (100, 50), None)
    assert whole == Region(0, 0, 100, 50)
    assert protocol.selection_region((10, 20), (100, 50), (0, 0, 30, 40)) == Region(0, 0, 20, 20)
    assert protocol.selection_region((10, 20), (100, 50), (50, 30, 500, 500)) == Region(40, 10, 60, 40)
    assert protocol.selection_region((10, 20), (100, 50), (0, 0, 10, 500)) is None   # touches the edge
    assert protocol.selection_region((-5, -5), (10, 10), (0, 0, 3, 3)) == Region(5, 5, 3, 3)
    assert protocol.selection_region((0, 0), (0, 10), None) is None


@given(st.integers(-50, 50), st.integers(-50, 50), st.integers(1, 40), st.integers(1, 40),
       st.integers(-60, 60), st.integers(-60, 60), st.integers(0, 60), st.integers(0, 60))
def test_selection_region_is_the_intersection(ox, oy, w, h, sx, sy, sw, sh):
    region = protocol.selection_region((ox, oy), (w, h), (sx, sy, sx + sw, sy + sh))
    inside = {(x, y) for x in range(w) for y in range(h)
              if sx <= x + ox < sx + sw and sy <= y + oy < sy + sh}
    if region is None:
        assert not inside
    else:
        assert inside == {(x, y) for x in range(region.x, region.x + region.width)
                          for y in range(region.y, region.y + region.height)}


# --------------------------------------------------------------------------------------------
# URLs and messages


def test_normalize_url():
    assert protocol.normalize_url("") == protocol.DEFAULT_URL
    assert protocol.normalize_url(" localhost:9000/ ") == "http://localhost:9000"
    assert protocol.normalize_url("http://127.0.0.1:8377/") == "http://127.0.0.1:8377"
    for bad in ("ftp://host", "http://", "http://host:notaport"):
        with pytest.raises(RetouchError):
            protocol.normalize_url(bad)
    assert (protocol.endpoint("http://h:1", "/v1/jobs", {"strength": "0.5"})
            == "http://h:1/v1/jobs?strength=0.5")


def test_messages_name_the_url_and_what_to_do():
    url = "http://127.0.0.1:8377"
    assert protocol.not_running_message(url) == (
        "The AutoRetouch server is not running at http://127.0.0.1:8377 — start it with "
        "`autoretouch-server`, or correct the server URL in the AutoRetouch dialog.")
    body = json.dumps({"error": {"code": "bad_image", "message": "image is 1x1"}}).encode()
    assert protocol.server_error_message(url, 400, body) == (
        f"The AutoRetouch server at {url} reported an error: image is 1x1.")
    busy = json.dumps({"error": {"code": "busy", "message": "queue is full"}}).encode()
    assert "try again in 3 s" in protocol.server_error_message(url, 503, busy, "3")
    big = json.dumps({"error": {"code": "too_large", "message": "too many pixels"}}).encode()
    assert "smaller area" in protocol.server_error_message(url, 413, big)
    assert "not an AutoRetouch server" in protocol.server_error_message(url, 404, b"<html>")
    assert "console" in protocol.server_error_message(url, 500, b"oops")
    assert "AUTORETOUCH_TOKEN" in protocol.server_error_message(url, 401, b"")
    assert "out of memory." in protocol.job_error_message(url, {"code": "oom", "message": "out of memory"})
    assert "timeout" not in protocol.timeout_message(url, 30) and "30 s" in protocol.timeout_message(url, 30)


# --------------------------------------------------------------------------------------------
# the HTTP client against a real loopback server


class FakeServer:
    """A scripted AutoRetouch API on 127.0.0.1 (the real server is tested in test_gimp_e2e)."""

    def __init__(self) -> None:
        self.requests: list = []
        self.states = [{"state": "queued", "progress": 0.0}, {"state": "running", "progress": 0.5},
                       {"state": "done", "progress": 1.0}]
        self.submit_status = 202
        self.submit_body = b'{"id": "job1"}'
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if status == 503:
                    self.send_header("Retry-After", "0.1")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append(("POST", self.path, body, dict(self.headers)))
                self._reply(owner.submit_status, owner.submit_body)

            def do_GET(self):
                owner.requests.append(("GET", self.path, None, dict(self.headers)))
                if self.path.endswith("/result"):
                    self._reply(200, b"RESULT", "application/x-msgpack")
                else:
                    state = owner.states.pop(0) if len(owner.states) > 1 else owner.states[0]
                    self._reply(200, json.dumps(state).encode())

            def do_DELETE(self):
                owner.requests.append(("DELETE", self.path, None, dict(self.headers)))
                self._reply(200, b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


def test_run_job_reports_progress_and_returns_the_result(fake, monkeypatch):
    monkeypatch.setenv("AUTORETOUCH_TOKEN", "s3cret")
    progress: list = []
    jobs: list = []
    result = client.run_job(client.Client(fake.url), b"BODY", 0.5, on_progress=progress.append,
                            on_job=jobs.append, poll_interval=0.01)
    assert result == b"RESULT" and jobs == ["job1"]
    assert progress == sorted(progress) and progress[-1] == 1.0 and 0.5 in progress
    method, path, body, headers = fake.requests[0]
    assert (method, path, body) == ("POST", "/v1/jobs?strength=0.5", b"BODY")
    assert headers["Content-Type"] == "application/x-msgpack"
    assert headers["Authorization"] == "Bearer s3cret"
    assert "Origin" not in headers
    assert not [r for r in fake.requests if r[0] == "DELETE"]


def test_failed_job_carries_the_server_message(fake):
    fake.states = [{"state": "failed", "progress": 0.3,
                    "error": {"code": "out_of_memory", "message": "out of memory on tile 3"}}]
    with pytest.raises(RetouchError, match="could not retouch the image: out of memory on tile 3"):
        client.run_job(client.Client(fake.url), b"", 1.0, poll_interval=0.01)


def test_cancel_deletes_the_job(fake):
    fake.states = [{"state": "running", "progress": 0.1}]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(protocol.CancelledByUser):
        client.run_job(client.Client(fake.url), b"", 1.0, cancel=cancel, poll_interval=0.01)
    assert ("DELETE", "/v1/jobs/job1") in [(r[0], r[1]) for r in fake.requests]


def test_http_errors_become_sentences(fake):
    fake.submit_status = 400
    fake.submit_body = json.dumps({"error": {"code": "bad_option",
                                             "message": "strength must be in 0..2"}}).encode()
    with pytest.raises(RetouchError, match="reported an error: strength must be in 0..2."):
        client.run_job(client.Client(fake.url), b"", 1.0)
    fake.submit_status = 503
    fake.submit_body = json.dumps({"error": {"code": "busy", "message": "queue full"}}).encode()
    with pytest.raises(RetouchError, match="busy"):
        client.Client(fake.url).submit(b"", 1.0)
    assert len([r for r in fake.requests if r[0] == "POST"]) == 1 + 1 + client.BUSY_RETRIES


def test_server_not_running():
    server = FakeServer()
    url = server.url
    server.close()
    with pytest.raises(RetouchError) as err:
        client.run_job(client.Client(url), b"", 1.0)
    assert str(err.value) == protocol.not_running_message(url)


def test_watchdog_cancels_the_job_when_the_plugin_dies(fake):
    watchdog = client.Watchdog(fake.url)
    watchdog.watch("job7")
    watchdog._proc.stdin.close()          # what the plug-in's death (SIGKILL by GIMP) looks like
    watchdog._proc.wait(timeout=30)
    assert ("DELETE", "/v1/jobs/job7") in [(r[0], r[1]) for r in fake.requests]


def test_watchdog_leaves_finished_jobs_alone(fake):
    watchdog = client.Watchdog(fake.url)
    watchdog.watch("job8")
    watchdog.close()
    assert not fake.requests


# --------------------------------------------------------------------------------------------
# autoretouch gimp install / uninstall


def _cli(argv):
    return cli.main(argv)


def test_install_layout_and_idempotence(tmp_path):
    target = gimp_install.install(tmp_path / "plug-ins")
    assert target == tmp_path / "plug-ins" / "autoretouch"
    names = {p.name for p in target.iterdir()}
    assert {"autoretouch.py", "autoretouch_protocol.py", "autoretouch_client.py"} <= names
    assert os.stat(target / "autoretouch.py").st_mode & stat.S_IXUSR
    assert not os.stat(target / "autoretouch_protocol.py").st_mode & stat.S_IXUSR
    (target / "stale.py").write_text("old")
    assert gimp_install.install(tmp_path / "plug-ins") == target
    assert not (target / "stale.py").exists()
    assert [p.name for p in (tmp_path / "plug-ins").iterdir()] == ["autoretouch"]   # no leftovers


def test_uninstall_removes_only_ours(tmp_path):
    plugins = tmp_path / "plug-ins"
    (plugins / "other").mkdir(parents=True)
    (plugins / "other" / "other.py").write_text("x")
    gimp_install.install(plugins)
    assert gimp_install.uninstall(plugins) == plugins / "autoretouch"
    assert not (plugins / "autoretouch").exists() and (plugins / "other" / "other.py").exists()
    gimp_install.uninstall(plugins)          # again: nothing to do, no error
    (plugins / "autoretouch").mkdir()
    (plugins / "autoretouch" / "autoretouch.py").write_text("someone else's")
    with pytest.raises(AutoRetouchError, match="not installed by autoretouch"):
        gimp_install.uninstall(plugins)
    with pytest.raises(AutoRetouchError, match="not installed by autoretouch"):
        gimp_install.install(plugins)
    assert (plugins / "autoretouch" / "autoretouch.py").read_text() == "someone else's"


def test_cli(tmp_path, capsys):
    assert _cli(["gimp", "install", "--dir", str(tmp_path)]) == 0
    assert "Installed the AutoRetouch plug-in in" in capsys.readouterr().out
    assert (tmp_path / "autoretouch" / "autoretouch.py").is_file()
    assert _cli(["gimp", "uninstall", "--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "autoretouch").exists()
    (tmp_path / "autoretouch").mkdir()
    assert _cli(["gimp", "install", "--dir", str(tmp_path)]) == 1
    assert "not installed by autoretouch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(["gimp", "--help"])
    assert "install" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _cli(["gimp"])                     # an action is required


def test_default_plugin_dirs():
    home = "/home/u"
    assert gimp_install.default_plugin_dirs("linux", {"HOME": home}) == [
        Path(home, ".config/GIMP/3.0/plug-ins"),
        Path(home, ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins")]
    assert gimp_install.default_plugin_dirs("darwin", {"HOME": home}) == [
        Path(home, "Library/Application Support/GIMP/3.0/plug-ins")]
    assert gimp_install.default_plugin_dirs("win32", {"APPDATA": "C:/Users/u/AppData/Roaming",
                                                      "USERPROFILE": "C:/Users/u"}) == [
        Path("C:/Users/u/AppData/Roaming/GIMP/3.0/plug-ins")]
    assert gimp_install.default_plugin_dirs("linux", {"HOME": home, "GIMP3_DIRECTORY": "/p"})[0] == \
        Path("/p/plug-ins")


def test_install_picks_an_existing_profile(tmp_path, monkeypatch):
    flatpak = tmp_path / ".var/app/org.gimp.GIMP/config/GIMP/3.0"
    flatpak.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("GIMP3_DIRECTORY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert gimp_install.install() == flatpak / "plug-ins" / "autoretouch"
    assert gimp_install.uninstall() == flatpak / "plug-ins" / "autoretouch"
    assert not (flatpak / "plug-ins" / "autoretouch").exists()


def test_plugin_sources_import_no_gimp_and_no_third_party():
    """The helpers must run on GIMP's own Python: standard library only (plus gi in the glue)."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"autoretouch_protocol", "autoretouch_client"}
    for path in PLUGIN_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                top = name.split(".")[0]
                ok = top in allowed or (path.name == "autoretouch.py" and top == "gi")
                assert ok, f"{path.name} imports {name}"
