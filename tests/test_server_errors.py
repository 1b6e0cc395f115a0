"""The error table: 50+ malformed requests, each a quick 4xx JSON error; the server stays up and flat."""

from __future__ import annotations

import json
import math
import struct
import time
import zlib

import msgpack
import numpy as np
import pytest

from plugin_server import errors, imageio
from plugin_server.client import Client, typed_error
from server_fixtures import make_checkpoint, start_server
from test_reliability_formats import corpus as format_corpus

MP = "application/x-msgpack"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("errors") / "g.pt")
    server = start_server(ckpt, "--tile-size", "128", "--max-pixels", "1000000")
    yield server
    server.stop()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only claims a size: the decompression-bomb shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def _jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[:sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]


def _tiff_header(width: int, height: int) -> bytes:
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
            (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8 + 16) + b"\0" * 16 + ifd


def _message(**fields) -> bytes:
    base = {"width": 4, "height": 3, "channels": 3, "dtype": "u8", "data": bytes(36)}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...}, use_bin_type=True)


def corpus() -> list[tuple[str, str, bytes | None, dict[str, str], int, str]]:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    png = imageio.encode(imageio.Picture(pixels, "png"))
    jpeg = imageio.encode(imageio.Picture(pixels, "jpeg"))
    tiff = imageio.encode(imageio.Picture(pixels, "tiff"))
    cases: list[tuple[str, str, bytes | None, dict[str, str], int, str]] = []

    def post(body, content_type, status, code, path="/v1/retouch"):
        cases.append(("POST", path, body, {"Content-Type": content_type} if content_type else {}, status, code))

    for cut in (8, 20, 33, 60, len(png) // 2, len(png) * 3 // 4):  # truncated PNGs
        post(png[:cut], "image/png", 400, "bad_image")
    for cut in (3, 20, len(jpeg) // 3, len(jpeg) // 2):  # truncated JPEGs
        post(jpeg[:cut], "image/jpeg", 400, "bad_image")
    for cut in (4, 8, 100, len(tiff) // 2):  # truncated TIFFs
        post(tiff[:cut], "image/tiff", 400, "bad_image")
    post(_png_header(100_000, 100_000), "image/png", 413, "too_large")
    post(_png_header(20_000, 20_000), "image/png", 413, "too_large")
    post(_png_header(1001, 1000), "image/png", 413, "too_large")
    post(_png_header(0, 0), "image/png", 400, "bad_image")
    post(_png_header(2**31 - 1, 1), "image/png", 413, "too_large")
    post(_jpeg_claiming(jpeg, 60_000, 60_000), "image/jpeg", 413, "too_large")
    post(_tiff_header(100_000, 100_000), "image/tiff", 413, "too_large")
    post(_tiff_header(100_000, 100_000), "image/tiff", 413, "too_large", "/v1/jobs")
    post(png, "image/jpeg", 400, "bad_image")  # body and Content-Type disagree
    post(jpeg, "image/tiff", 400, "bad_image")
    post(b"GIF89a" + bytes(40), "image/png", 400, "bad_image")
    post(png, None, 415, "unsupported_type")
    post(png, "text/plain", 415, "unsupported_type")
    post(png, "image/gif", 415, "unsupported_type")
    post(png, "application/json", 415, "unsupported_type")
    post(png, "multipart/form-data; boundary=x", 415, "unsupported_type", "/v1/jobs")
    post(b"", "image/png", 400, "bad_image")
    post(b"", MP, 400, "bad_image")
    for strength in ("nan", "-1", "2.5", "abc", "inf", "", "-inf", "1e400"):
        post(png, "image/png", 400, "bad_option", f"/v1/retouch?strength={strength}")
    post(png, "image/png", 400, "bad_option", "/v1/retouch?strenght=1")
    for garbage in (b"\xc1", b"\x00", b"\x93\x01\x02\x03", b"\xa5hello", b"\xde\xff\xff", b"\x91" * 5000 + b"\x00",
                    b"\x85\xa5width", bytes(range(256)), b"\xc4\xff" + b"x" * 10):
        post(garbage, MP, 400, "bad_image")
    post(_message(width=...), MP, 400, "bad_image")
    post(_message(data=...), MP, 400, "bad_image")
    post(_message(width="4"), MP, 400, "bad_image")
    post(_message(width=0), MP, 400, "bad_image")
    post(_message(width=-4), MP, 400, "bad_image")
    post(_message(height=True), MP, 400, "bad_image")
    post(_message(width=2000, height=1000), MP, 413, "too_large")
    post(_message(width=2**40, height=2**40), MP, 413, "too_large")
    post(_message(channels=2), MP, 400, "bad_image")
    post(_message(channels=5), MP, 400, "bad_image")
    post(_message(dtype="u32"), MP, 400, "bad_image")
    post(_message(dtype="f64"), MP, 400, "bad_image")
    post(_message(data=bytes(35)), MP, 400, "bad_image")
    post(_message(data=bytes(37)), MP, 400, "bad_image")
    post(_message(data="x" * 36), MP, 400, "bad_image")
    post(_message(data=[0] * 12), MP, 400, "bad_image")
    # strength travels only in the query: a message that carries it (valid or not) is refused
    post(_message(strength=1.0), MP, 400, "bad_image")
    post(_message(strength=math.nan), MP, 400, "bad_image")
    post(_message(strength=-0.5), MP, 400, "bad_image")
    post(_message(strength="strong"), MP, 400, "bad_image")
    post(png, "image/png", 400, "bad_option", "/v1/retouch?strength=0.5&strength=0.7")  # given twice
    post(png, "image/png", 400, "bad_option", "/v1/jobs?tile_size=64")  # in-process settings do not travel
    post(_message() + b"\x00", MP, 400, "bad_image")
    post(_message()[:-5], MP, 400, "bad_image")
    post(msgpack.packb([1, 2, 3]), MP, 400, "bad_image")
    post(msgpack.packb({1: 2}), MP, 400, "bad_image")
    for _, body, content_type, status, code in format_corpus():  # bombs and unfaithful colour models
        post(body, content_type, status, code)
    cases += [
        ("GET", "/v1/jobs/does-not-exist", None, {}, 404, "not_found"),
        ("GET", "/v1/jobs/does-not-exist/result", None, {}, 404, "not_found"),
        ("DELETE", "/v1/jobs/does-not-exist", None, {}, 404, "not_found"),
        ("GET", "/v2/retouch", None, {}, 404, "not_found"),
        ("GET", "/v1/retouch", None, {}, 405, "method_not_allowed"),
        ("PUT", "/v1/jobs", b"x", {"Content-Type": "image/png"}, 405, "method_not_allowed"),
    ]
    return cases


def _run_corpus(server) -> None:
    for method, path, body, headers, status, code in corpus():
        started = time.monotonic()
        got, response_headers, answer = server.request(method, path, body, headers, timeout=10)
        elapsed = time.monotonic() - started
        assert got == status, (method, path, headers, (body or b"")[:40], answer[:300])
        assert response_headers["content-type"].startswith("application/json")
        error = json.loads(answer)["error"]
        assert error["code"] == code and len(error["message"]) > 10, error
        assert got == errors.status_by_code()[code], (code, got)  # the status the hierarchy documents
        assert elapsed < 3.0, (path, elapsed)


def test_every_error_the_server_sends_comes_back_to_the_client_as_its_class(server):
    """Through the real server -> client edge, each refusal is the class the server raised.

    (This replaces a count of the corpus, which passed whatever the server answered.)"""
    client = Client(server.url, busy_wait=0)
    seen = set()
    for method, path, body, headers, status, code in corpus():
        with pytest.raises(errors.AutoRetouchError) as info:
            client.request(method, path, body, headers.get("Content-Type"), timeout=10)
        assert type(info.value) is errors.by_code()[code], (path, code, info.value)
        assert type(info.value).status == status and len(str(info.value)) > 10
        seen.add(code)
    assert seen == {"bad_image", "too_large", "unsupported_type", "bad_option", "not_found", "method_not_allowed"}


def test_every_code_maps_back_to_its_class():
    url = "http://127.0.0.1:8377"
    for code, cls in errors.by_code().items():
        error = typed_error(cls.status, {"code": code, "message": f"the {code} message"}, url,
                            "2" if cls is errors.BusyError else None)
        assert type(error) is cls and str(error) == f"the {code} message", code
    assert errors.status_by_code()["busy"] == 503 and typed_error(503, {}, url, "3").retry_after == 3
    unknown = typed_error(418, {"code": "teapot", "message": "short and stout"}, url)
    assert type(unknown) is errors.ServerError and "teapot" in str(unknown) and url in str(unknown)


def test_missing_host_is_refused_by_our_rule(server):
    """Our 403 JSON, not aiohttp's own 400: with the Host rule deleted this gets 200.

    HTTP/1.0 needs no Host, so aiohttp's parser lets it through to our rule (HTTP/1.1 without
    Host never reaches a handler: aiohttp answers a plain-text 400 itself); an empty Host gets
    through on HTTP/1.1. Supersedes tests/test_server_security.py::test_missing_host_is_refused,
    which accepted 400 and so passed with the rule deleted."""
    for request in (b"GET /v1/health HTTP/1.0\r\n\r\n",
                    b"GET /v1/health HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n"):
        status, headers, answer = server.raw(request)
        assert status == 403, (request, status, answer[:200])
        assert headers["content-type"].startswith("application/json")
        assert json.loads(answer)["error"]["code"] == "forbidden"
    assert server.health()["status"] == "ok"


def test_every_malformed_request_gets_its_json_error(server):
    _run_corpus(server)
    assert server.alive() and server.health()["status"] == "ok"


def test_memory_stays_flat_under_bad_requests(server):
    _run_corpus(server)  # warm up allocator pools and caches
    before = server.rss_bytes()
    for _ in range(3):
        _run_corpus(server)
    growth = server.rss_bytes() - before
    assert growth < 30 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over 3 x {len(corpus())} bad requests"
    assert server.health()["queue"]["queued"] == 0


def test_body_over_the_size_limit_is_413(server):
    status, _, answer = server.request("POST", "/v1/retouch", bytes(40 << 20), {"Content-Type": MP}, timeout=30)
    assert status == 413 and json.loads(answer)["error"]["code"] == "too_large"
    assert server.alive()
