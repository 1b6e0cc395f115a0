"""The wire contract of the retouch API: one module for the server, the client and the GIMP plug-in.

Standard library only, so GIMP's Python can run it (``autoretouch gimp install`` copies it
beside the plug-in as ``autoretouch_wire.py``). It owns what both ends must agree on:

- where the server is (``DEFAULT_URL``) and the token variable (``TOKEN_ENV``);
- the routes, body media types, job states and job phases;
- the request options, one frozen value (``RetouchOptions``) validated once; only the fields
  in ``TRAVELLING`` go over the wire (as query parameters, the one way they travel), the
  others say how this process would run the engine;
- the msgpack pixel message, encoded and decoded here (``encode_message``, ``decode_message``)::

    {"width": int, "height": int, "channels": 1 | 3 | 4, "dtype": "u8" | "u16" | "f32",
     "data": bin (rows top to bottom, channels interleaved, little-endian)}

Error codes and their HTTP status live with the error classes (``errors.status_by_code``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields
from typing import Any, Iterable, Literal, Mapping

try:
    from .errors import BadImageError, BadOptionError, TooLargeError, UnsupportedFormatError
except ImportError:  # copied beside the GIMP plug-in, outside the package
    from autoretouch_errors import BadImageError, BadOptionError, TooLargeError, UnsupportedFormatError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8377
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
TOKEN_ENV = "AUTORETOUCH_TOKEN"
DEFAULT_MAX_PIXELS = 200_000_000

HEALTH, OPENAPI, RETOUCH, JOBS = "/v1/health", "/v1/openapi.json", "/v1/retouch", "/v1/jobs"

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
    "png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff", "msgpack": MSGPACK_TYPE,
}

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "cancelled")
ACTIVE: tuple[JobState, ...] = ("queued", "running")
ENDED: tuple[JobState, ...] = ("done", "failed", "cancelled")
# What a job is doing, finer than its state, so an editor's progress text moves even when the
# image fits one tile: waiting; finding the faces; retouching (with "face" and "faces" while
# face by face); encoding the result; finished (done, failed or cancelled). The body is decoded
# before the job exists, so a bad image is refused by POST itself and never becomes a job.
JobPhase = Literal["queued", "finding-faces", "retouching", "encoding", "finished"]
JOB_PHASES: tuple[JobPhase, ...] = ("queued", "finding-faces", "retouching", "encoding", "finished")

Dtype = Literal["u8", "u16", "f32"]
ITEMSIZE: dict[str, int] = {"u8": 1, "u16": 2, "f32": 4}
CHANNELS = (1, 3, 4)
MESSAGE_FIELDS = ("width", "height", "channels", "dtype", "data")

MAX_STRENGTH = 2.0
PRECISIONS = ("fp32", "bf16", "fp16")
# Faces with fewer pixels between the eye centres have too few for landmarks or blemishes to matter.
DEFAULT_MIN_IOD = 40.0
FACES_HEADER = "X-AutoRetouch-Faces"  # on every retouch result: faces found, or "off"


def max_body_bytes(max_pixels: int) -> int:
    """Largest request body worth reading: an uncompressed float RGBA image of max_pixels, plus metadata."""
    return max_pixels * 4 * 4 + (16 << 20)


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """TooLargeError for an image over the limit, before any pixel is decoded."""
    if width * height > max_pixels:
        raise TooLargeError(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} MP; this server takes at most "
            f"{max_pixels / 1e6:g} MP: send a smaller image or part of it"
        )


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class RetouchOptions:
    """How to retouch one image, validated on construction.

    ``strength`` and the face options travel with a request; ``tile_size``, ``device`` and
    ``precision`` say how this process runs the engine (a server has its own, set when it starts).
    """

    strength: float = 1.0  # 0 = unchanged, 1 = as trained, up to 2
    faces: bool = True  # retouch each face's skin at the model's scale; off: the whole image as it is
    min_iod: float = DEFAULT_MIN_IOD  # px between the eye centres; smaller faces are left alone
    mask: bool = False  # also make the skin mask the edit was applied through (jobs API: /mask)
    tile_size: int | None = None  # core side in px; None: from free memory; 0: whole image
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    precision: str | None = None  # None: the model's default for the device

    def __post_init__(self) -> None:
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= MAX_STRENGTH:
            raise BadOptionError(f"strength must be a number from 0 to {MAX_STRENGTH:g}, got {strength!r}")
        object.__setattr__(self, "strength", float(strength))
        for name in ("faces", "mask"):
            if not isinstance(getattr(self, name), bool):
                raise BadOptionError(f"{name} must be true or false, got {getattr(self, name)!r}")
        iod = self.min_iod
        if isinstance(iod, bool) or not isinstance(iod, (int, float)) or not 0 <= iod < math.inf:
            raise BadOptionError(f"the smallest face (min_iod, pixels between the eyes) must be a number >= 0, got {iod!r}")
        object.__setattr__(self, "min_iod", float(iod))
        tile = self.tile_size
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 0):
            raise BadOptionError(f"the tile size must be a whole number of pixels, or 0 for the whole image; got {tile!r}")
        if not _is_device_name(self.device):
            raise BadOptionError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise BadOptionError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")

    def local_settings(self) -> list[str]:
        """Names of the in-process settings that differ from their defaults (a server would ignore them)."""
        default = RetouchOptions()
        return [f.name.replace("_", " ") for f in fields(self)
                if f.name not in TRAVELLING and getattr(self, f.name) != getattr(default, f.name)]

    def to_query(self) -> dict[str, str]:
        """The travelling options as query parameters."""
        return {"strength": repr(self.strength), "faces": _flag(self.faces), "min_iod": repr(self.min_iod),
                "mask": _flag(self.mask)}

    @classmethod
    def from_query(cls, pairs: Iterable[tuple[str, str]]) -> RetouchOptions:
        """Options from query parameters; unknown or repeated names are refused, not guessed."""
        seen: dict[str, str] = {}
        for name, value in pairs:
            if name not in TRAVELLING:
                raise BadOptionError(f"unknown option {name!r}; this server knows {', '.join(TRAVELLING)}")
            if name in seen:
                raise BadOptionError(f"the option {name!r} is given more than once; give it once")
            seen[name] = value
        values: dict[str, Any] = {}
        for name in ("strength", "min_iod"):
            if name in seen:
                values[name] = _number(seen[name], name)
        for name in ("faces", "mask"):
            if name in seen:
                values[name] = _boolean(seen[name], name)
        return cls(**values)


TRAVELLING = ("strength", "faces", "min_iod", "mask")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _boolean(text: str, name: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise BadOptionError(f"{name} must be true or false, got {text!r}")


def _is_device_name(name: object) -> bool:
    if not isinstance(name, str):
        return False
    kind, _, index = name.partition(":")
    return name in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit())


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadOptionError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise BadOptionError(f"{name} must be a finite number, got {text!r}")
    return value


def body_kind(content_type: str | None) -> BodyKind:
    """Which body a Content-Type announces; parameters such as charset are ignored."""
    accepted = ", ".join(sorted(set(RESPONSE_TYPES.values())))
    if not content_type:
        raise UnsupportedFormatError(f"the request has no Content-Type; send one of {accepted}")
    media = content_type.split(";", 1)[0].strip().lower()
    kind = MEDIA_TYPES.get(media)
    if kind is None:
        raise UnsupportedFormatError(f"Content-Type {media!r} is not supported; send one of {accepted}")
    return kind


# --------------------------------------------------------------------------------------------
# The pixel message


@dataclass(frozen=True)
class Message:
    width: int
    height: int
    channels: int
    dtype: Dtype
    data: memoryview  # little-endian samples, exactly width * height * channels * itemsize bytes


def encode_message(width: int, height: int, channels: int, dtype: str, data: bytes | memoryview) -> bytes:
    """The msgpack map of one image; ``data`` is little-endian, rows top to bottom."""
    if channels not in CHANNELS or dtype not in ITEMSIZE:
        raise BadImageError(f"cannot send {channels} channel(s) of {dtype}")
    if len(data) != width * height * channels * ITEMSIZE[dtype]:
        raise BadImageError(f"{len(data)} bytes of data do not make a {width}x{height} image of {channels} x {dtype}")
    out = [b"\x85"]  # a map of five entries
    for key, value in (("width", width), ("height", height), ("channels", channels), ("dtype", dtype)):
        out += [_str(key), _uint(value) if isinstance(value, int) else _str(value)]
    out += [_str("data"), _bin_header(len(data)), data]
    return b"".join(out)


def decode_message(body: bytes | memoryview, max_pixels: int) -> Message:
    """The image of a msgpack message, validated field by field; the size before the data."""
    fields_ = _read_flat_map(memoryview(body))
    missing = [k for k in MESSAGE_FIELDS if k not in fields_]
    if missing:
        raise BadImageError(f"the msgpack message lacks the field(s) {', '.join(missing)}")
    extra = sorted(set(fields_) - set(MESSAGE_FIELDS))
    if extra:
        raise BadImageError(
            f"the msgpack message has unknown field(s) {', '.join(extra)}; options such as strength "
            "go in the query string (?strength=0.8)"
        )
    width, height = _dimension(fields_, "width"), _dimension(fields_, "height")
    channels = fields_["channels"]
    if not _is_int(channels) or channels not in CHANNELS:
        raise BadImageError(f"channels must be 1, 3 or 4, got {channels!r}")
    dtype = fields_["dtype"]
    if isinstance(dtype, (bytes, memoryview)):
        dtype = bytes(dtype).decode("ascii", "replace")
    if dtype not in ITEMSIZE:
        raise BadImageError(f"dtype must be one of {', '.join(ITEMSIZE)}, got {dtype!r}")
    check_pixels(width, height, max_pixels)
    data = fields_["data"]
    if not isinstance(data, memoryview):
        raise BadImageError(f"data must be msgpack bin (raw bytes), got {type(data).__name__}")
    expected = width * height * channels * ITEMSIZE[dtype]
    if len(data) != expected:
        raise BadImageError(
            f"data holds {len(data)} bytes, but a {width}x{height} image with {channels} channel(s) "
            f"of {dtype} needs {expected}"
        )
    return Message(width, height, channels, dtype, data)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    return b"\xd9" + bytes([len(raw)]) + raw


def _uint(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    for code, fmt, limit in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16), (0xCE, ">I", 1 << 32)):
        if n < limit:
            return bytes([code]) + struct.pack(fmt, n)
    return b"\xcf" + struct.pack(">Q", n)


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + struct.pack(">B", n)
    if n < 0x10000:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


# A flat map of scalars, strings and bins is all a message may hold: no nesting, so no input can
# make the decoder recurse or build large structures; bins are views, never copies.
_UINTS = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
          0xCA: ">f", 0xCB: ">d"}
_SIZED = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}
_MAX_ENTRIES = 16


def _read_flat_map(view: memoryview) -> dict[str, Any]:
    if not len(view):
        raise BadImageError("the msgpack body is empty")
    code = view[0]
    if 0x80 <= code <= 0x8F:
        count, pos = code & 0x0F, 1
    elif code == 0xDE:
        count, pos = _unpack(view, 1, ">H"), 3
    else:
        raise BadImageError("the body is not a msgpack map; send the pixel message documented in the API")
    if count > _MAX_ENTRIES:
        raise BadImageError(f"the msgpack message has {count} fields; it needs only {len(MESSAGE_FIELDS)}")
    result: dict[str, Any] = {}
    for _ in range(count):
        key, pos = _read_scalar(view, pos)
        if isinstance(key, memoryview):
            try:
                key = bytes(key).decode("utf-8")
            except UnicodeDecodeError:
                raise BadImageError("the msgpack map has a key that is not text") from None
        if not isinstance(key, str):
            raise BadImageError(f"the msgpack map keys must be text, got {key!r}")
        result[key], pos = _read_scalar(view, pos)
    if pos != len(view):
        raise BadImageError("the msgpack body has extra bytes after the message")
    return result


def _read_scalar(view: memoryview, pos: int) -> tuple[Any, int]:
    code = _byte(view, pos)
    pos += 1
    if code < 0x80:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if 0xA0 <= code <= 0xBF:
        return _text(view, pos, code & 0x1F)
    if code in (0xC0, 0xC2, 0xC3):
        return {0xC0: None, 0xC2: False, 0xC3: True}[code], pos
    if code in _UINTS:
        fmt = _UINTS[code]
        return _unpack(view, pos, fmt), pos + struct.calcsize(fmt)
    if code in _SIZED:
        fmt = _SIZED[code]
        n, pos = _unpack(view, pos, fmt), pos + struct.calcsize(fmt)
        if code >= 0xD9:
            return _text(view, pos, n)
        if pos + n > len(view):
            raise BadImageError("the msgpack message is truncated")
        return view[pos:pos + n], pos + n
    raise BadImageError(f"the msgpack message holds a value of type 0x{code:02x}; it takes only numbers, text and bin")


def _byte(view: memoryview, pos: int) -> int:
    if pos >= len(view):
        raise BadImageError("the msgpack message is truncated")
    return view[pos]


def _unpack(view: memoryview, pos: int, fmt: str) -> Any:
    try:
        return struct.unpack_from(fmt, view, pos)[0]
    except struct.error:
        raise BadImageError("the msgpack message is truncated") from None


def _text(view: memoryview, pos: int, n: int) -> tuple[str, int]:
    if pos + n > len(view):
        raise BadImageError("the msgpack message is truncated")
    try:
        return str(view[pos:pos + n], "utf-8"), pos + n
    except UnicodeDecodeError:
        raise BadImageError("the msgpack message holds text that is not UTF-8") from None


def _dimension(values: Mapping[str, Any], name: str) -> int:
    value = values[name]
    if not _is_int(value) or value < 1:
        raise BadImageError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
