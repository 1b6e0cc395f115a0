"""Every body format round-trips through the real server, pixel-identical to the in-process engine."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from plugin_server import engine, imageio, wire
from plugin_server.server import protocol
from plugin_server.wire import RetouchOptions
from server_fixtures import PORTRAITS, TILE, WHOLE, ffhq_crop, make_checkpoint, require_data, start_server


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("formats") / "g.pt")


@pytest.fixture(scope="module")
def model(ckpt):
    from plugin_server import checkpoint

    return checkpoint.load(ckpt)


def in_process(pixels: np.ndarray, model, strength: float = 1.0) -> np.ndarray:
    """The engine here, tiled as the test server tiles."""
    return engine.retouch(pixels, model, RetouchOptions(strength=strength, tile_size=TILE, device="cpu"))


def decode(body: bytes) -> np.ndarray:
    return protocol.pixels_from(wire.decode_message(body, 10**9))


@pytest.fixture(scope="module")
def server(ckpt):
    server = start_server(ckpt, "--tile-size", str(TILE))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rgb8():
    require_data()
    return ffhq_crop(1, (96, 112))


def _variants(rgb8: np.ndarray) -> dict[str, np.ndarray]:
    h, w, _ = rgb8.shape
    alpha8 = np.linspace(0, 255, h * w).reshape(h, w, 1).astype(np.uint8)
    rgb16 = rgb8.astype(np.uint16) * 257 + np.arange(h * w * 3, dtype=np.uint16).reshape(h, w, 3) % 200
    gray8 = rgb8.mean(axis=2, keepdims=True).round().astype(np.uint8)
    return {
        "gray-u8": gray8,
        "rgb-u8": rgb8,
        "rgba-u8": np.concatenate([rgb8, alpha8], axis=2),
        "gray-u16": gray8.astype(np.uint16) * 257 + 3,
        "rgb-u16": rgb16,
        "rgba-u16": np.concatenate([rgb16, alpha8.astype(np.uint16) * 257], axis=2),
        "gray-f32": gray8.astype(np.float32) / 255,
        "rgb-f32": rgb8.astype(np.float32) / 255,
        "rgba-f32": np.concatenate([rgb8, alpha8], axis=2).astype(np.float32) / 255,
    }


def _post(server, body: bytes, content_type: str, query: str = "") -> bytes:
    query = f"?{WHOLE}&{query.lstrip('?')}" if query else f"?{WHOLE}"
    status, headers, answer = server.request("POST", f"/v1/retouch{query}", body, {"Content-Type": content_type})
    assert status == 200, answer[:300]
    assert headers["content-type"].startswith(content_type)
    return answer


@pytest.mark.parametrize("name", ["gray-u8", "rgb-u8", "rgba-u8", "gray-u16", "rgb-u16", "rgba-u16"])
def test_png_round_trip(server, model, rgb8, name):
    pixels = _variants(rgb8)[name]
    picture = imageio.Picture(pixels, "png", icc_profile=_icc())
    answer = imageio.decode(_post(server, imageio.encode(picture), "image/png"))
    want = in_process(pixels, model)
    assert answer.pixels.dtype == pixels.dtype and answer.pixels.shape == pixels.shape
    np.testing.assert_array_equal(answer.pixels, want)
    assert answer.icc_profile == picture.icc_profile
    assert not np.array_equal(answer.pixels, pixels)  # the test model does edit
    if pixels.shape[2] == 4:
        np.testing.assert_array_equal(answer.pixels[..., 3], pixels[..., 3])


@pytest.mark.parametrize("name", ["rgb-u8", "gray-u16", "rgb-u16", "rgba-u16", "rgb-f32", "gray-f32"])
def test_tiff_round_trip(server, model, rgb8, name):
    pixels = _variants(rgb8)[name]
    picture = imageio.Picture(pixels, "tiff", icc_profile=_icc())
    answer = imageio.decode(_post(server, imageio.encode(picture), "image/tiff"))
    want = in_process(pixels, model)
    assert answer.pixels.dtype == pixels.dtype and answer.pixels.shape == pixels.shape
    assert not np.array_equal(answer.pixels, pixels)  # the server really retouched
    np.testing.assert_array_equal(answer.pixels, want)
    assert answer.icc_profile == picture.icc_profile
    if pixels.shape[2] == 4:
        np.testing.assert_array_equal(answer.pixels[..., 3], pixels[..., 3])


@pytest.mark.parametrize("photo", ["pexels-aadil-2598024.jpg", "pexels-simon-robben-614810.jpg"])
def test_jpeg_keeps_icc_and_exif(server, model, photo):
    """A real Pexels photo (cropped to stay fast) with its own ICC profile and an EXIF block."""
    require_data()
    original = imageio.read(PORTRAITS / photo)
    assert original.icc_profile, "the Pexels photos carry an ICC profile"
    exif = Image.Exif()
    exif[0x010F] = "AutoRetouch test camera"  # Make
    exif[0x0112] = 1  # Orientation
    crop = original.with_pixels(original.pixels[1200:1400, 1500:1660].copy())
    crop = imageio.Picture(crop.pixels, "jpeg", crop.icc_profile, exif.tobytes())  # b"Exif\0\0" + TIFF data
    body = imageio.encode(crop)
    answer_bytes = _post(server, body, "image/jpeg", "?strength=0.7")
    sent = imageio.decode(body)
    want = imageio.encode(sent.with_pixels(in_process(sent.pixels, model, 0.7)))
    assert answer_bytes == want  # same decode, same engine, same encoder: byte-identical
    answer = imageio.decode(answer_bytes)
    assert answer.icc_profile == original.icc_profile
    assert answer.exif == sent.exif and Image.open(io.BytesIO(answer_bytes)).getexif()[0x010F] == "AutoRetouch test camera"


@pytest.mark.parametrize("name", ["gray-u8", "rgb-u8", "rgba-u8", "gray-u16", "rgb-u16", "rgba-u16",
                                  "gray-f32", "rgb-f32", "rgba-f32"])
def test_msgpack_round_trip(server, model, rgb8, name):
    pixels = _variants(rgb8)[name]
    answer = decode(_post(server, protocol.message_for(pixels), wire.MSGPACK_TYPE, "?strength=1.3"))
    want = in_process(pixels, model, 1.3)
    assert answer.dtype == pixels.dtype and answer.shape == pixels.shape
    assert not np.array_equal(answer, pixels)  # the server really retouched
    assert not np.array_equal(answer, in_process(pixels, model))  # ... with the strength of the query
    np.testing.assert_array_equal(answer, want)
    if pixels.shape[2] == 4:
        np.testing.assert_array_equal(answer[..., 3], pixels[..., 3])


def test_msgpack_hand_encoded_with_bin_keys(server, model, rgb8):
    """What a plug-in without a msgpack library writes: fixmap, bin8 keys, bin32 data."""
    pixels = np.ascontiguousarray(rgb8[:10, :12])
    data = pixels.tobytes()

    def key(text: str) -> bytes:
        return b"\xc4" + bytes([len(text)]) + text.encode()

    body = (b"\x85" + key("width") + b"\x0c" + key("height") + b"\x0a" + key("channels") + b"\x03"
            + key("dtype") + b"\xa2u8" + key("data") + b"\xc6" + len(data).to_bytes(4, "big") + data)
    answer = decode(_post(server, body, "application/x-msgpack"))
    assert not np.array_equal(answer, pixels)
    np.testing.assert_array_equal(answer, in_process(pixels, model))


def test_health_and_openapi(server):
    health = server.health()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["precision"] == "fp32"
    assert health["model"]["trained_on"] == "nothing (test weights)" and health["model"]["config"]["blocks"] == 6
    assert health["max_pixels"] == 200_000_000 and health["queue"]["capacity"] >= 1
    assert health["tile_size"] == TILE and health["model"]["stride"] == 2
    assert health["model"]["residual_floor"] == 0.0 and "fp32" in health["model"]["precisions"]
    status, doc = server.json("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/health", "/v1/retouch", "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/result"} <= set(doc["paths"])


def _icc() -> bytes | None:
    photo = PORTRAITS / "pexels-aadil-2598024.jpg"
    with Image.open(photo) as im:
        return im.info.get("icc_profile")
