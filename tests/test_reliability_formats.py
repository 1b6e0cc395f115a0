"""Issue 13 through the real server: headers that would cost gigabytes, colour models that would
be misread, pages that would be dropped and print resolution that would be lost."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from fractions import Fraction

import numpy as np
import pytest
import tifffile
from PIL import Image

from plugin_server import imageio
from server_fixtures import expected, make_checkpoint, start_server
from test_imageio import (
    GRADIENT, apng_bytes, exif_block, jpeg_with_density, mpo_bytes, pillow_bytes, raw_tiff, tiff_bytes,
)

MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("formats") / "g.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    server = start_server(ckpt, "--tile-size", "128", "--max-pixels", str(MAX_PIXELS))
    yield server
    server.stop()


def _post(server, body: bytes, content_type: str, query: str = "", path: str = "/v1/retouch"):
    return server.request("POST", path + query, body, {"Content-Type": content_type}, timeout=60)


def _ok(server, body: bytes, content_type: str, query: str = "") -> bytes:
    status, _, answer = _post(server, body, content_type, query)
    assert status == 200, answer[:300]
    return answer


def _invalid_png_depth() -> bytes:
    png = bytearray(imageio.encode(imageio.Picture(np.zeros((4, 4, 3), np.uint8), "png")))
    png[24] = 4  # RGB with 4-bit samples does not exist
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def corpus() -> list[tuple[str, bytes, str, int, str]]:
    """(what, body, Content-Type, status, code): each refused from its header alone."""
    zeros_f64 = np.zeros((1000, 1000, 4), np.float64)  # 1 MP, but 32 MB to decode
    return [
        ("1 MP with 2000 samples per pixel", raw_tiff(1000, 1000, samples=2000), "image/tiff", 415, "unsupported_type"),
        ("65536 px tiles around 16 px", raw_tiff(16, 16, extra_tags=((322, 4, 65536), (323, 4, 65536), (324, 4, 8),
                                                                     (325, 4, 64))), "image/tiff", 413, "too_large"),
        ("float64 RGBA at the limit", tiff_bytes(zeros_f64, photometric="rgb", extrasamples=["unassalpha"],
                                                 compression="zlib"), "image/tiff", 413, "too_large"),
        ("32-bit integer samples", raw_tiff(64, 64, bits=32), "image/tiff", 415, "unsupported_type"),
        ("1-bit samples", raw_tiff(64, 64, bits=1), "image/tiff", 415, "unsupported_type"),
        ("CMYK TIFF", tiff_bytes(np.zeros((8, 10, 4), np.uint8), photometric="separated"), "image/tiff", 415,
         "unsupported_type"),
        ("YCbCr TIFF", tiff_bytes(np.zeros((8, 10, 3), np.uint8), photometric="ycbcr"), "image/tiff", 415,
         "unsupported_type"),
        ("gray with two extra samples", tiff_bytes(np.zeros((8, 10, 3), np.uint8), photometric="minisblack",
                                                   planarconfig="contig"), "image/tiff", 415, "unsupported_type"),
        ("signed 16-bit", tiff_bytes(np.zeros((8, 10), np.int16)), "image/tiff", 415, "unsupported_type"),
        ("multi-page TIFF", tiff_bytes(np.zeros((3, 8, 10), np.uint8), photometric="minisblack"), "image/tiff", 415,
         "unsupported_type"),
        ("APNG", apng_bytes(), "image/png", 415, "unsupported_type"),
        ("multi-picture JPEG", mpo_bytes(), "image/jpeg", 415, "unsupported_type"),
        ("CMYK JPEG", pillow_bytes(Image.new("CMYK", (8, 8)), "JPEG"), "image/jpeg", 415, "unsupported_type"),
        ("PNG with an impossible depth", _invalid_png_depth(), "image/png", 400, "bad_image"),
    ]


def _run_corpus(server) -> None:
    for what, body, content_type, status, code in corpus():
        for path in ("/v1/retouch", "/v1/jobs"):
            started = time.monotonic()
            got, headers, answer = _post(server, body, content_type, path=path)
            assert (got, json.loads(answer)["error"]["code"]) == (status, code), (what, path, answer[:300])
            assert time.monotonic() - started < 3.0, (what, path)


def test_headers_that_would_misread_or_cost_gigabytes_are_refused_and_memory_stays_flat(server):
    _run_corpus(server)  # warm up allocator pools and caches
    before = server.rss_bytes()
    for _ in range(2):
        _run_corpus(server)
    growth = server.rss_bytes() - before
    assert growth < 30 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over refused headers"
    assert server.alive() and server.health()["queue"]["queued"] == 0


def test_refusals_say_what_to_do(server):
    messages = {what: json.loads(_post(server, body, ct)[2])["error"]["message"] for what, body, ct, _, _ in corpus()}
    assert "convert the image to RGB" in messages["CMYK TIFF"]
    assert "more than one page" in messages["multi-page TIFF"] and "own file" in messages["multi-page TIFF"]
    assert "animated (3 frames)" in messages["APNG"]
    assert "2000 samples per pixel" in messages["1 MP with 2000 samples per pixel"]


def test_miniswhite_is_retouched_as_the_gray_a_viewer_sees_and_sent_back_as_miniswhite(server, ckpt):
    stored = np.ascontiguousarray(255 - expected_input())
    # faces=false: the whole image is retouched, so the check does not hang on finding a face
    answer = _ok(server, tiff_bytes(stored, photometric="miniswhite"), "image/tiff", "?faces=false")
    with tifffile.TiffFile(io.BytesIO(answer)) as tif:
        assert tif.pages.first.photometric == tifffile.PHOTOMETRIC.MINISWHITE
        raw = tif.pages.first.asarray()
    want = expected(ckpt, expected_input()[..., None])[..., 0]
    assert not np.array_equal(want, expected_input())  # the model does edit this photo
    assert np.array_equal(255 - raw, want)


def expected_input() -> np.ndarray:
    """A 96 x 128 gray face-like gradient with spots for the edit generator to change."""
    y, x = np.mgrid[0:96, 0:128]
    gray = (90 + x + y // 2).astype(np.uint8)
    gray[40:44, 60:64] = 30
    return gray


@pytest.mark.parametrize("name", ["palette TIFF", "palette PNG", "2-bit gray PNG", "premultiplied TIFF",
                                  "16-bit palette colours"])
def test_at_strength_zero_every_colour_model_comes_back_as_sent(server, name):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    indices = GRADIENT % 4
    if name == "palette TIFF":
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, :4] = colours.T.astype(np.uint16) * 257
        body, ct, want = tiff_bytes(indices, photometric="palette", colormap=colormap), "image/tiff", colours[indices]
    elif name == "16-bit palette colours":
        colormap = np.random.default_rng(2).integers(0, 65536, (3, 256)).astype(np.uint16)
        body, ct, want = tiff_bytes(indices, photometric="palette", colormap=colormap), "image/tiff", colormap.T[indices]
    elif name == "palette PNG":
        image = Image.fromarray(indices).convert("P")
        image.putpalette(colours.reshape(-1).tolist())
        body, ct, want = pillow_bytes(image, "PNG"), "image/png", colours[indices]
    elif name == "2-bit gray PNG":
        body, ct, want = pillow_bytes(Image.fromarray(indices * 85), "PNG", bits=2), "image/png", (indices * 85)[..., None]
    else:
        pixels = np.dstack([indices * 40] * 3 + [indices * 60]).astype(np.uint8)
        body, ct, want = tiff_bytes(pixels, photometric="rgb", extrasamples=["assocalpha"]), "image/tiff", pixels
    back = imageio.decode(_ok(server, body, ct, "?strength=0"))
    assert back.pixels.dtype == want.dtype and np.array_equal(back.pixels, want)
    if name == "premultiplied TIFF":
        assert back.alpha == "premultiplied"


def test_gray_alpha_png_comes_back_as_rgba(server):
    la = np.dstack([GRADIENT, 255 - GRADIENT])
    back = imageio.decode(_ok(server, pillow_bytes(Image.fromarray(la, "LA"), "PNG"), "image/png", "?strength=0"))
    assert back.pixels.shape == (8, 10, 4) and np.array_equal(back.pixels, np.dstack([GRADIENT] * 3 + [255 - GRADIENT]))


@pytest.mark.parametrize("unit, density", [(1, (300, 300)), (2, (118, 118)), (1, (300, 600))])
def test_jpeg_print_resolution_comes_back(server, unit, density):
    answer = _ok(server, jpeg_with_density(unit, *density), "image/jpeg")
    with Image.open(io.BytesIO(answer)) as im:
        assert (im.info["jfif_unit"], im.info["jfif_density"]) == (unit, density)


def test_png_and_tiff_print_resolution_comes_back(server):
    pixels = np.dstack([expected_input()] * 3)
    resolution = imageio.Resolution(Fraction(300), Fraction(300), "inch")
    png = imageio.encode(imageio.Picture(pixels, "png", resolution=resolution))
    answer = _ok(server, png, "image/png")
    assert struct.unpack(">IIB", answer[answer.index(b"pHYs") + 4:][:9]) == (11811, 11811, 1)
    tiff = tiff_bytes(pixels, photometric="rgb", resolution=((7200, 100), (7200, 100)), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(io.BytesIO(_ok(server, tiff, "image/tiff"))) as tif:
        tags = tif.pages.first.tags
        assert tags["XResolution"].value == (72, 1) and tags["ResolutionUnit"].value == 3


def test_exif_orientation_is_kept_and_pixels_are_not_rotated(server):
    pixels = np.dstack([expected_input()] * 3)[:, :64]  # 96 x 64: a rotation would swap the sides
    answer = _ok(server, imageio.encode(imageio.Picture(pixels, "jpeg", exif=exif_block())), "image/jpeg")
    with Image.open(io.BytesIO(answer)) as im:
        assert im.size == (64, 96) and im.getexif()[0x0112] == 6
