"""The GIMP plug-in's pure parts, without GIMP: msgpack codec, formats, regions, messages,
the HTTP client against a real loopback server, and `autoretouch gimp install/uninstall`."""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import stat
import struct
import sys
import tempfile
import time
import typing
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from plugin_server import cli, gimp_install
from plugin_server import wire as server_wire
from plugin_server.errors import AutoRetouchError
from plugin_server.server import protocol as server_protocol
from plugin_server.server.openapi import openapi_document
from server_fixtures import TILE, expected, free_port, make_checkpoint, start_server

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "gimp_plugin" / "autoretouch"
# The plug-in as GIMP sees it: the folder `autoretouch gimp install` makes, with the server
# package's errors, wire and client copied beside the plug-in's own modules.
_INSTALL_ROOT = Path(tempfile.mkdtemp(prefix="autoretouch-plugin-"))
atexit.register(shutil.rmtree, _INSTALL_ROOT, True)
PLUGIN_DIR = gimp_install.install(dir=_INSTALL_ROOT)
sys.path.insert(0, str(PLUGIN_DIR))

protocol = importlib.import_module("autoretouch_protocol")
wire = importlib.import_module("autoretouch_wire")
client = importlib.import_module("autoretouch_client")
perrors = importlib.import_module("autoretouch_errors")
watchdog_module = importlib.import_module("autoretouch_watchdog")
Region = protocol.Region


# --------------------------------------------------------------------------------------------
# the wire codec (the one both ends run) against the msgpack library

DTYPE_SIZE = {"u8": 1, "u16": 2, "f32": 4}
message_fields = st.builds(
    lambda w, h, c, d, seed: {"width": w, "height": h, "channels": c, "dtype": d,
                              "data": np.random.default_rng(seed).bytes(w * h * c * DTYPE_SIZE[d])},
    st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 4]), st.sampled_from(list(DTYPE_SIZE)),
    st.integers(0, 2**32 - 1),
)


def _encode(fields: dict) -> bytes:
    return wire.encode_message(fields["width"], fields["height"], fields["channels"], fields["dtype"], fields["data"])


def _fields(message) -> dict:
    return {"width": message.width, "height": message.height, "channels": message.channels,
            "dtype": message.dtype, "data": bytes(message.data)}


@settings(max_examples=200, deadline=None)
@given(message_fields)
def test_encode_message_is_what_msgpack_reads(fields):
    body = _encode(fields)
    assert msgpack.unpackb(body, raw=False) == fields
    assert body == msgpack.packb(fields, use_bin_type=True)  # byte-identical, even


@settings(max_examples=200, deadline=None)
@given(message_fields, st.booleans())
def test_decode_message_reads_what_msgpack_writes(fields, bin_keys):
    packed = {k.encode() if bin_keys else k: v for k, v in fields.items()}  # bin or str keys
    assert _fields(wire.decode_message(msgpack.packb(packed, use_bin_type=True), 10**9)) == fields
    # and the server's copy of the module reads it the same way
    assert _fields(server_wire.decode_message(msgpack.packb(packed, use_bin_type=True), 10**9)) == fields


@pytest.mark.parametrize("width", [1, 127, 128, 255, 256, 65535, 65536, 70000])
def test_integer_and_bin_size_boundaries(width):
    fields = {"width": width, "height": 1, "channels": 1, "dtype": "u8", "data": bytes(width)}
    assert _encode(fields) == msgpack.packb(fields, use_bin_type=True)
    assert _fields(wire.decode_message(msgpack.packb(fields, use_bin_type=True), 10**9)) == fields


def test_decode_message_reads_other_integer_and_map_encodings():
    """What other msgpack writers may choose: int64 for small numbers, a map16, a bin32, str8 keys."""
    data = bytes(6)
    body = (b"\xde\x00\x05" + b"\xd9\x05width" + b"\xd3" + struct.pack(">q", 2)
            + b"\xa6height" + b"\xcd\x00\x01" + b"\xa8channels" + b"\xcf" + struct.pack(">Q", 3)
            + b"\xa5dtype" + b"\xc4\x02u8" + b"\xa4data" + b"\xc6" + struct.pack(">I", 6) + data)
    assert _fields(wire.decode_message(body, 10**9)) == {"width": 2, "height": 1, "channels": 3, "dtype": "u8", "data": data}


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa1a", b"\xd9\x02\xff\xfe",
                                  msgpack.packb([1]), msgpack.packb({1: 2}), msgpack.packb({"width": [1]})])
def test_decode_message_refuses_garbage(body):
    with pytest.raises(perrors.BadImageError):
        wire.decode_message(body, 10**9)


def test_the_message_carries_no_strength():
    fields = {"width": 1, "height": 1, "channels": 1, "dtype": "u8", "data": b"\x00", "strength": 0.5}
    with pytest.raises(perrors.BadImageError, match="query"):
        wire.decode_message(msgpack.packb(fields, use_bin_type=True), 10**9)
    options = wire.RetouchOptions(strength=0.5, faces=False)
    assert options.to_query()["strength"] == "0.5"
    assert wire.RetouchOptions.from_query(options.to_query().items()) == options  # the one way it travels


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
    with pytest.raises(perrors.BadImageError, match="Mode"):
        protocol.wire_format("GIMP_PRECISION_U8_NON_LINEAR", "indexed", False)
    with pytest.raises(perrors.BadImageError, match="precision"):
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
        with pytest.raises(perrors.ServerError):
            protocol.decode_reply(msgpack.packb(bad, use_bin_type=True), 2, 1, fmt)
    with pytest.raises(perrors.ServerError, match="cannot read"):
        protocol.decode_reply(b"\xc1", 2, 1, fmt)
    with pytest.raises(perrors.ServerError, match="cannot read"):
        protocol.decode_reply(msgpack.packb([1]), 2, 1, fmt)


# --------------------------------------------------------------------------------------------
# the plug-in's encoder into the server's decoder, and the server's reply into the plug-in

PRECISIONS = {"u8": ("GIMP_PRECISION_U8_NON_LINEAR", np.uint8),
              "u16": ("GIMP_PRECISION_U16_NON_LINEAR", np.uint16),
              "f32": ("GIMP_PRECISION_FLOAT_NON_LINEAR", np.float32)}
LAYOUTS = {"gray": ("gray", False, 1), "gray-alpha": ("gray", True, 2), "rgb": ("rgb", False, 3),
           "rgba": ("rgb", True, 4)}


def _layer(dtype, channels: int, height: int = 5, width: int = 7) -> np.ndarray:
    """What babl hands the plug-in: native-endian interleaved samples of every value range."""
    rng = np.random.default_rng(channels)
    if dtype == np.float32:
        return rng.random((height, width, channels), dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max + 1, (height, width, channels), dtype=dtype)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("depth", list(PRECISIONS))
def test_plugin_request_decodes_on_the_server_and_the_reply_decodes_in_the_plugin(depth, layout):
    precision, dtype = PRECISIONS[depth]
    base, alpha, channels = LAYOUTS[layout]
    layer = _layer(dtype, channels)
    height, width, _ = layer.shape
    fmt = protocol.wire_format(precision, base, alpha)
    prepared = protocol.encode_request(layer.tobytes(), width, height, fmt)
    sent = server_protocol.pixels_from(server_wire.decode_message(prepared.body, 10**9))  # the server's decoder
    colour = layer[..., :1] if layout == "gray-alpha" else layer  # gray+alpha sends Y, keeps A
    assert sent.dtype == dtype and sent.shape == colour.shape
    np.testing.assert_array_equal(sent, colour)
    # the server's answer: other pixels of the same shape (its alpha passes through, as the engine's)
    answer = (sent[..., ::-1] if sent.shape[2] >= 3 else sent[::-1]).copy()
    if answer.shape[2] == 4:
        answer[..., 3] = sent[..., 3]
    rebuilt = protocol.decode_reply(server_protocol.message_for(answer), width, height, fmt, prepared.kept_alpha)
    want = np.concatenate([answer, layer[..., 1:]], axis=2) if layout == "gray-alpha" else answer
    assert rebuilt == np.ascontiguousarray(want).tobytes()


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
# what a GIMP user reads


def test_user_messages_say_what_to_do_here():
    url = "http://127.0.0.1:8377"
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(perrors.ServerUnavailableError) as info:
        client.Client(down).health()
    text = protocol.user_message(info.value, down)
    assert "not running" in text and down in text and "autoretouch-server" in text
    assert text.endswith("correct the server URL in the AutoRetouch dialog.") and text[0].isupper()
    assert "AUTORETOUCH_TOKEN" in protocol.user_message(perrors.UnauthorizedError("this server needs a token"), url)
    assert "smaller area" in protocol.user_message(perrors.TooLargeError("the image is 300 MP"), url)
    oom = protocol.user_message(perrors.OutOfMemoryError("not enough cuda memory"), url)
    assert "could not retouch the image: Not enough cuda memory." in oom and "console" in oom and url in oom
    assert protocol.user_message(perrors.CancelledError("the retouch was cancelled"), url) == "AutoRetouch was cancelled."
    assert protocol.user_message(perrors.BadOptionError("strength must be a number from 0 to 2"), url) == \
        "Strength must be a number from 0 to 2."
    assert "console" not in protocol.user_message(perrors.ServerError("the server sent garbage"), url)
    assert "Please report this" in protocol.user_message(KeyError("x"), url)


def test_choose_layer_takes_one_layer_or_says_what_to_do():
    assert protocol.choose_layer(["layer"], "in-place") == 0
    assert protocol.choose_layer(["layer-mask"], "in-place") == 0      # the caller retouches its layer
    assert protocol.choose_layer(["text-layer"], "new-layer") == 0     # a raster copy above it
    with pytest.raises(perrors.BadImageError) as info:
        protocol.choose_layer(["text-layer"], "in-place")
    assert "text layer" in str(info.value) and "New layer" in str(info.value)
    for several in (["layer", "layer"], ["layer", "text-layer", "layer"], []):
        with pytest.raises(perrors.BadImageError) as info:
            protocol.choose_layer(several, "new-layer")
        assert str(info.value) == "AutoRetouch works on one layer at a time: select one layer."
    with pytest.raises(perrors.BadImageError, match="not on channels"):
        protocol.choose_layer(["channel"], "new-layer")
    with pytest.raises(perrors.BadImageError, match="layer group"):
        protocol.choose_layer(["group"], "new-layer")


def test_repeat_runs_the_confirmed_settings_or_a_new_layer():
    last = protocol.Settings(0.7, "in-place", "http://127.0.0.1:9")   # GIMP's values from an older run
    confirmed = protocol.Settings(0.45, "new-layer-mask", "http://127.0.0.1:8377")
    assert protocol.repeat_settings(protocol.confirmed_settings(confirmed), last) == confirmed
    fallback = protocol.Settings(0.7, "new-layer", "http://127.0.0.1:9")
    for stored in (None, b"", b"not json", b'{"strength": 1}', b'{"strength": 9, "output-mode": "in-place", '
                   b'"server-url": "x"}', b'{"strength": 1, "output-mode": "sideways", "server-url": "x"}'):
        assert protocol.repeat_settings(stored, last) == fallback, stored


def test_phase_text_follows_the_server():
    assert protocol.phase_text({"phase": "queued"}) == "AutoRetouch: waiting for the server…"
    assert protocol.phase_text({"phase": "finding-faces"}) == "AutoRetouch: finding faces…"
    assert protocol.phase_text({"phase": "retouching", "face": 2, "faces": 3}) == "AutoRetouch: retouching face 2 of 3…"
    assert protocol.phase_text({"phase": "retouching"}) == "AutoRetouch: retouching…"
    assert protocol.phase_text({"state": "running"}) == "AutoRetouch: working on the server…"   # an older server
    texts = {protocol.phase_text({"phase": phase}) for phase in server_wire.JOB_PHASES}
    assert len(texts) == len(server_wire.JOB_PHASES) and not any("working on" in t for t in texts)


def test_changed_fraction_counts_pixels_not_samples():
    before = bytes(range(12)) * 100                      # 400 RGB u8 pixels
    after = bytearray(before)
    after[0] ^= 1                                        # pixel 0: one sample
    after[4] ^= 1                                        # pixel 1: two samples
    after[5] ^= 0x80
    assert protocol.changed_fraction(before, bytes(after), 3) == 2 / 400
    assert protocol.changed_fraction(before, before, 3) == 0.0
    within = bytes([0, 255]) + bytes(398)                # a u8 mask: only pixel 1 counts
    assert protocol.changed_fraction(before, bytes(after), 3, within, 1) == 1 / 400
    wide = np.zeros((10, 10, 4), "<f4")                  # RGBA float: 16 bytes a pixel
    moved = wide.copy()
    moved[3, 3, 2] = 0.5
    assert protocol.changed_fraction(wide.tobytes(), moved.tobytes(), 16) == 1 / 100
    mask16 = np.zeros(100, "<u2")
    mask16[33] = 256                                     # a u16 mask whose low byte is 0 still counts
    assert protocol.changed_fraction(wide.tobytes(), moved.tobytes(), 16, mask16.tobytes(), 2) == 1 / 100


def test_summary_says_which_mode_ran_and_what_changed():
    assert protocol.summary("new-layer", 1, 0.1234, 2.46) == \
        "AutoRetouch (New layer): 1 face, 12.3% of the layer's pixels changed, 2.5 s."
    assert protocol.summary("in-place", 3, 0.5, 10.0, repeat=True) == \
        "AutoRetouch (In place, repeated): 3 faces, 50.0% of the layer's pixels changed, 10.0 s."
    assert set(protocol.MODE_LABELS) == set(protocol.OUTPUT_MODES)


# --------------------------------------------------------------------------------------------
# the installed plug-in's client and watchdog against the real server


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("plugin") / "g.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    server = start_server(ckpt, "--tile-size", str(TILE))
    yield server
    server.stop()


def _body(size: int, seed: int = 0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    fmt = protocol.wire_format("GIMP_PRECISION_U8_NON_LINEAR", "rgb", False)
    return pixels, fmt, protocol.encode_request(pixels.tobytes(), size, size, fmt)


def _wait(server, job: str, states: tuple, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.json("GET", f"/v1/jobs/{job}")
        if status == 404 or body["state"] in states:
            return body if status == 200 else {"state": "gone"}
        time.sleep(0.05)
    raise AssertionError(f"job {job} never reached {states}")


def test_plugin_run_job_gives_the_servers_pixels(server, ckpt, monkeypatch):
    monkeypatch.delenv(wire.TOKEN_ENV, raising=False)
    pixels, fmt, prepared = _body(160, 1)
    progress, jobs, statuses = [], [], []
    reply = client.Client(server.url).run_job(prepared.body, wire.MSGPACK_TYPE, wire.RetouchOptions(strength=0.5, faces=False),
                                             on_progress=progress.append, on_job=jobs.append,
                                             on_status=statuses.append)
    assert statuses[-1]["phase"] == "finished" and all(s["phase"] in wire.JOB_PHASES for s in statuses)
    out = np.frombuffer(protocol.decode_reply(reply.body, 160, 160, fmt), np.uint8).reshape(pixels.shape)
    np.testing.assert_array_equal(out, expected(ckpt, pixels, 0.5))
    assert not np.array_equal(out, pixels)
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(jobs) == 1


def test_plugin_gets_the_servers_typed_errors(server):
    """The plug-in's own copy of the classes: one `except` per kind in the plug-in, no string matching."""
    c = client.Client(server.url)
    with pytest.raises(perrors.BadImageError):
        c.retouch(b"\xc1", wire.MSGPACK_TYPE, wire.RetouchOptions(faces=False))
    with pytest.raises(perrors.NotFoundError):
        c.status("no-such-job")
    with pytest.raises(perrors.BadOptionError):
        wire.RetouchOptions(strength=3)


def test_plugin_and_server_agree_on_job_states(server):
    """Every state the real server reports through a job's life is one the plug-in knows, and both
    sides list the same states as the server's OpenAPI document.

    "failed" cannot be provoked on a healthy CPU server without injecting a fault into it, so it is
    covered by the lists agreeing, not by a live job."""
    states = tuple(openapi_document("test", 1)["components"]["schemas"]["JobStatus"]["properties"]["state"]["enum"])
    assert wire.JOB_STATES == server_wire.JOB_STATES == states == typing.get_args(server_wire.JobState)
    phases = openapi_document("test", 1)["components"]["schemas"]["JobStatus"]["properties"]["phase"]["enum"]
    assert wire.JOB_PHASES == tuple(phases) == typing.get_args(server_wire.JobPhase)
    assert set(wire.ACTIVE) | set(wire.ENDED) == set(wire.JOB_STATES) and not set(wire.ACTIVE) & set(wire.ENDED)
    c = client.Client(server.url)
    seen = []
    _, _, first = _body(512, 2)
    _, _, second = _body(64, 3)
    running = c.submit(first.body, wire.MSGPACK_TYPE, wire.RetouchOptions(faces=False))
    waiting = c.submit(second.body, wire.MSGPACK_TYPE, wire.RetouchOptions(faces=False))
    seen.append(c.status(waiting)["state"])  # queued behind the first
    deadline = time.monotonic() + 60
    while (state := c.status(running)["state"]) not in wire.ENDED:
        seen.append(state)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    seen.append(state)
    cancelled = c.submit(first.body, wire.MSGPACK_TYPE, wire.RetouchOptions(faces=False))
    server.json("DELETE", f"/v1/jobs/{cancelled}")
    _wait(server, cancelled, wire.ENDED)
    seen.append(c.status(cancelled)["state"])
    assert {"queued", "running", "done", "cancelled"} <= set(seen) and set(seen) <= set(wire.JOB_STATES), seen
    for job in (running, waiting, cancelled):
        c.cancel(job)


def test_watchdog_cancels_the_job_when_the_plugin_dies(server):
    _, _, prepared = _body(1024, 4)
    job = client.Client(server.url).submit(prepared.body, wire.MSGPACK_TYPE, wire.RetouchOptions(faces=False))
    watchdog = watchdog_module.Watchdog(server.url)
    watchdog.watch(job)
    watchdog._proc.stdin.close()          # what the plug-in's death (SIGKILL by GIMP) looks like
    watchdog._proc.wait(timeout=30)
    assert _wait(server, job, ("cancelled", "done", "failed"), timeout=30)["state"] == "cancelled"
    server.json("DELETE", f"/v1/jobs/{job}")


def test_watchdog_leaves_finished_jobs_alone(server):
    _, _, prepared = _body(64, 5)
    job = client.Client(server.url).submit(prepared.body, wire.MSGPACK_TYPE, wire.RetouchOptions(faces=False))
    watchdog = watchdog_module.Watchdog(server.url)
    watchdog.watch(job)
    watchdog.close()
    assert _wait(server, job, ("done", "cancelled", "failed"))["state"] == "done"
    server.json("DELETE", f"/v1/jobs/{job}")


# --------------------------------------------------------------------------------------------
# autoretouch gimp install / uninstall


def _cli(argv):
    return cli.main(argv)


def test_install_layout_and_idempotence(tmp_path):
    target = gimp_install.install(tmp_path / "plug-ins")
    assert target == tmp_path / "plug-ins" / "autoretouch"
    names = {p.name for p in target.iterdir()}
    assert names == {"autoretouch.py", "autoretouch_protocol.py", "autoretouch_watchdog.py", "autoretouch_errors.py",
                     "autoretouch_wire.py", "autoretouch_client.py", gimp_install.MARKER, "help"}
    # the page GIMP's Help button opens, and the map from the procedure's help id to it
    help_map = (target / "help" / "en" / "gimp-help.xml").read_text()
    assert 'id="plug-in-autoretouch" ref="index.html"' in help_map
    assert "Strength" in (target / "help" / "en" / "index.html").read_text()
    shared = Path(gimp_install.__file__).parent
    for source, name in gimp_install.SHARED_MODULES.items():  # GIMP runs the very code the server runs
        assert (target / name).read_bytes() == (shared / source).read_bytes()
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

    assert {p.name for p in PLUGIN_SOURCE.glob("*.py")} <= {p.name for p in PLUGIN_DIR.glob("*.py")}
    allowed = set(sys.stdlib_module_names) | {p.stem for p in PLUGIN_DIR.glob("*.py")}
    for path in PLUGIN_DIR.glob("*.py"):  # the installed folder: the plug-in and the shared modules
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:  # `from .errors import` inside the package;
                continue                                          # beside the plug-in it falls back to autoretouch_errors
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                top = name.split(".")[0]
                ok = top in allowed or (path.name == "autoretouch.py" and top == "gi")
                assert ok, f"{path.name} imports {name}"
