"""The wire formats of the retouch API: body types, query options and the msgpack pixel message.

Pure functions over bytes and arrays, shared by the server handlers and the client::

    kind = body_kind("image/png")                    # "png" | "jpeg" | "tiff" | "msgpack"
    options = parse_options({"strength": "0.8"})
    message = decode_message(body, max_pixels=200_000_000)   # Message(pixels, strength)
    body = encode_message(pixels)

The msgpack message is a map, so that an editor plug-in with no msgpack library can write it
by hand::

    {"width": int, "height": int, "channels": 1 | 3 | 4, "dtype": "u8" | "u16" | "f32",
     "data": bin (rows top to bottom, channels interleaved, little-endian),
     "strength": float (optional)}

Keys may be str or bin typed. Every malformed message is a BadImageError or BadOptionError
whose words say what is wrong; the size is checked before ``data`` is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import msgpack
import numpy as np

from ..engine import check_strength
from ..errors import BadImageError, BadOptionError, TooLargeError, UnsupportedFormatError

BodyKind = Literal["png", "jpeg", "tiff", "msgpack"]

MSGPACK_TYPE = "application/x-msgpack"
MEDIA_TYPES: dict[str, BodyKind] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/tiff": "tiff",
    "image/tif": "tiff",
    MSGPACK_TYPE: "msgpack",
    "application/msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
}
RESPONSE_TYPES: dict[BodyKind, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "msgpack": MSGPACK_TYPE,
}
DTYPES: dict[str, np.dtype] = {"u8": np.dtype("u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}
DTYPE_NAMES: dict[np.dtype, str] = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}
OPTIONS = ("strength",)
_REQUIRED = ("width", "height", "channels", "dtype", "data")


@dataclass(frozen=True)
class Options:
    strength: float | None = None  # None: the message's own, else 1.0


@dataclass(frozen=True)
class Message:
    pixels: np.ndarray  # (H, W, C), native-endian view of the message's data
    strength: float | None


def body_kind(content_type: str | None) -> BodyKind:
    """Which body a Content-Type announces; parameters such as charset are ignored."""
    if not content_type:
        raise UnsupportedFormatError(
            f"the request has no Content-Type; send one of {', '.join(sorted(set(RESPONSE_TYPES.values())))}"
        )
    media = content_type.split(";", 1)[0].strip().lower()
    kind = MEDIA_TYPES.get(media)
    if kind is None:
        raise UnsupportedFormatError(
            f"Content-Type {media!r} is not supported; send one of {', '.join(sorted(set(RESPONSE_TYPES.values())))}"
        )
    return kind


def parse_options(query: Mapping[str, str]) -> Options:
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise BadOptionError(f"unknown option(s) {', '.join(unknown)}; this server knows {', '.join(OPTIONS)}")
    text = query.get("strength")
    return Options(strength=None if text is None else check_strength(_number(text, "strength")))


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """TooLargeError for an image over the limit, before any pixel is decoded."""
    if width * height > max_pixels:
        raise TooLargeError(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} MP; this server takes at most "
            f"{max_pixels / 1e6:g} MP (see --max-pixels)"
        )


def decode_message(body: bytes, max_pixels: int) -> Message:
    """The pixels and strength of a msgpack message, validated field by field."""
    fields = _unpack_map(body)
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise BadImageError(f"the msgpack message lacks the field(s) {', '.join(missing)}")
    width, height = _dimension(fields, "width"), _dimension(fields, "height")
    channels = fields["channels"]
    if not _is_int(channels) or channels not in (1, 3, 4):
        raise BadImageError(f"channels must be 1, 3 or 4, got {channels!r}")
    dtype_name = fields["dtype"]
    if isinstance(dtype_name, bytes):
        dtype_name = dtype_name.decode("ascii", "replace")
    if dtype_name not in DTYPES:
        raise BadImageError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype_name!r}")
    check_pixels(width, height, max_pixels)  # before the data is looked at
    data = fields["data"]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadImageError(f"data must be msgpack bin (raw bytes), got {type(data).__name__}")
    dtype = DTYPES[dtype_name]
    expected = width * height * channels * dtype.itemsize
    if len(data) != expected:
        raise BadImageError(
            f"data holds {len(data)} bytes, but a {width}x{height} image with {channels} channel(s) "
            f"of {dtype_name} needs {expected}"
        )
    strength = fields.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise BadOptionError(f"strength must be a number, got {strength!r}")
        strength = check_strength(strength)
    pixels = np.frombuffer(data, dtype=dtype).reshape(height, width, channels)
    return Message(pixels.astype(dtype.newbyteorder("="), copy=False), strength)


def encode_message(pixels: np.ndarray, strength: float | None = None) -> bytes:
    """A msgpack message for ``pixels`` (H, W, C) uint8 | uint16 | float32."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or pixels.dtype not in DTYPE_NAMES:
        raise BadImageError(f"cannot send pixels of shape {pixels.shape} and type {pixels.dtype}")
    name = DTYPE_NAMES[pixels.dtype]
    wire = np.ascontiguousarray(pixels, dtype=DTYPES[name])
    message: dict[str, Any] = {
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "channels": int(pixels.shape[2]),
        "dtype": name,
        "data": memoryview(wire.reshape(-1).view(np.uint8)),
    }
    if strength is not None:
        message["strength"] = float(strength)
    return msgpack.packb(message, use_bin_type=True)


def _unpack_map(body: bytes) -> dict[str, Any]:
    try:
        # Small container limits: garbage cannot make the unpacker allocate big structures.
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=False, max_str_len=1 << 10, max_array_len=16,
            max_map_len=64, max_ext_len=0, max_bin_len=len(body),
        )
    except msgpack.ExtraData:
        raise BadImageError("the msgpack body has extra bytes after the message") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadImageError(f"the body is not a valid msgpack message ({exc or type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise BadImageError(f"the msgpack message must be a map, got {type(obj).__name__}")
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                raise BadImageError(f"the msgpack map has a key that is not text: {key[:20]!r}") from None
        if not isinstance(key, str):
            raise BadImageError(f"the msgpack map keys must be text, got {key!r}")
        fields[key] = value
    return fields


def _dimension(fields: dict[str, Any], name: str) -> int:
    value = fields[name]
    if not _is_int(value) or value < 1:
        raise BadImageError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadOptionError(f"{name} must be a number, got {text!r}") from None
