"""Pure logic of the AutoRetouch GIMP plug-in: no GIMP, no third-party imports.

The plug-in (``autoretouch.py``) runs on the Python that GIMP ships, so everything here uses the
standard library only.  It owns:

* a small msgpack codec (``packb`` / ``unpackb``) for the server's ``application/x-msgpack`` body;
* the choice of wire format for a GIMP precision (``wire_format``);
* the selection and region maths (``selection_region``);
* building the request and checking the reply (``encode_request`` / ``decode_reply``);
* the messages a user sees (``RetouchError`` and the ``*_message`` functions).

Use::

    fmt = wire_format("GIMP_PRECISION_U16_NON_LINEAR", "rgb", has_alpha=True)
    body = encode_request(pixels, width, height, fmt)
    ...
    pixels = decode_reply(reply_body, width, height, fmt)
"""

from __future__ import annotations

import json
import struct
import sys
import urllib.parse
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

DEFAULT_URL = "http://127.0.0.1:8377"
OUTPUT_MODES = ("new-layer", "new-layer-mask", "in-place")
START_HINT = "start it with `autoretouch-server`"

Dtype = Literal["u8", "u16", "f32"]


class RetouchError(Exception):
    """A failure with a message meant for the GIMP user; the plug-in shows ``str(err)``."""


class CancelledByUser(RetouchError):
    """The user (or the plug-in on the user's behalf) stopped the job."""


# --------------------------------------------------------------------------------------------
# msgpack: the subset the protocol needs (nil, bool, int, float, str, bin, array, map).
# Encoding picks the same smallest forms as msgpack.packb(obj, use_bin_type=True), so the
# bytes are identical to the reference library's.


def packb(obj: object) -> bytes:
    out: list[bytes] = []
    _pack(obj, out)
    return b"".join(out)


def _pack(obj: object, out: list[bytes]) -> None:
    if obj is None:
        out.append(b"\xc0")
    elif obj is True:
        out.append(b"\xc3")
    elif obj is False:
        out.append(b"\xc2")
    elif isinstance(obj, int):
        out.append(_pack_int(obj))
    elif isinstance(obj, float):
        out.append(b"\xcb" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        n = len(raw)
        if n < 32:
            out.append(bytes([0xA0 | n]))
        elif n < 0x100:
            out.append(b"\xd9" + struct.pack(">B", n))
        elif n < 0x10000:
            out.append(b"\xda" + struct.pack(">H", n))
        else:
            out.append(b"\xdb" + struct.pack(">I", n))
        out.append(raw)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj) if not isinstance(obj, bytes) else obj
        n = len(raw)
        if n < 0x100:
            out.append(b"\xc4" + struct.pack(">B", n))
        elif n < 0x10000:
            out.append(b"\xc5" + struct.pack(">H", n))
        else:
            out.append(b"\xc6" + struct.pack(">I", n))
        out.append(raw)
    elif isinstance(obj, (list, tuple)):
        n = len(obj)
        if n < 16:
            out.append(bytes([0x90 | n]))
        elif n < 0x10000:
            out.append(b"\xdc" + struct.pack(">H", n))
        else:
            out.append(b"\xdd" + struct.pack(">I", n))
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        n = len(obj)
        if n < 16:
            out.append(bytes([0x80 | n]))
        elif n < 0x10000:
            out.append(b"\xde" + struct.pack(">H", n))
        else:
            out.append(b"\xdf" + struct.pack(">I", n))
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    else:
        raise TypeError(f"cannot msgpack {type(obj).__name__}")


def _pack_int(n: int) -> bytes:
    if 0 <= n < 0x80:
        return bytes([n])
    if -32 <= n < 0:
        return struct.pack(">b", n)
    if n >= 0:
        for code, fmt, limit in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16),
                                 (0xCE, ">I", 1 << 32), (0xCF, ">Q", 1 << 64)):
            if n < limit:
                return bytes([code]) + struct.pack(fmt, n)
    else:
        for code, fmt, limit in ((0xD0, ">b", 1 << 7), (0xD1, ">h", 1 << 15),
                                 (0xD2, ">i", 1 << 31), (0xD3, ">q", 1 << 63)):
            if n >= -limit:
                return bytes([code]) + struct.pack(fmt, n)
    raise OverflowError(f"integer {n} does not fit in msgpack")


# code -> (struct format of the length or value, its size)
_FIXED = {0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
          0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
          0xCA: (">f", 4), 0xCB: (">d", 8)}
_LENGTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4,
            0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4}


def unpackb(data: bytes) -> object:
    """Decode one msgpack object that fills ``data``; raises ``ValueError`` on malformed input."""
    view = memoryview(data)
    try:
        obj, end = _unpack(view, 0)
    except (IndexError, struct.error, UnicodeDecodeError) as err:
        raise ValueError(f"malformed msgpack: {err}") from None
    if end != len(view):
        raise ValueError(f"malformed msgpack: {len(view) - end} trailing bytes")
    return obj


def _unpack(view: memoryview, pos: int) -> Tuple[object, int]:
    code = view[pos]
    pos += 1
    if code < 0x80:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if 0xA0 <= code <= 0xBF:
        return _take_str(view, pos, code & 0x1F)
    if 0x90 <= code <= 0x9F:
        return _take_array(view, pos, code & 0x0F)
    if 0x80 <= code <= 0x8F:
        return _take_map(view, pos, code & 0x0F)
    if code == 0xC0:
        return None, pos
    if code == 0xC2:
        return False, pos
    if code == 0xC3:
        return True, pos
    if code in _FIXED:
        fmt, size = _FIXED[code]
        _need(view, pos + size)
        return struct.unpack_from(fmt, view, pos)[0], pos + size
    if code in _LENGTHS:
        size = _LENGTHS[code]
        _need(view, pos + size)
        n = int.from_bytes(view[pos:pos + size], "big")
        pos += size
        if code in (0xC4, 0xC5, 0xC6):
            _need(view, pos + n)
            return view[pos:pos + n].tobytes(), pos + n
        if code in (0xD9, 0xDA, 0xDB):
            return _take_str(view, pos, n)
        if code in (0xDC, 0xDD):
            return _take_array(view, pos, n)
        return _take_map(view, pos, n)
    raise ValueError(f"malformed msgpack: unsupported type byte 0x{code:02x}")


def _need(view: memoryview, end: int) -> None:
    if end > len(view):
        raise ValueError("malformed msgpack: truncated")


def _take_str(view: memoryview, pos: int, n: int) -> Tuple[str, int]:
    _need(view, pos + n)
    return str(view[pos:pos + n], "utf-8"), pos + n


def _take_array(view: memoryview, pos: int, n: int) -> Tuple[list, int]:
    items = []
    for _ in range(n):
        item, pos = _unpack(view, pos)
        items.append(item)
    return items, pos


def _take_map(view: memoryview, pos: int, n: int) -> Tuple[dict, int]:
    result = {}
    for _ in range(n):
        key, pos = _unpack(view, pos)
        value, pos = _unpack(view, pos)
        result[key] = value
    return result, pos


# --------------------------------------------------------------------------------------------
# Wire formats: which babl format the plug-in reads and writes, and what it sends.

_TYPE_BY_COMPONENT = {
    # GIMP component type -> (babl type, protocol dtype, bytes per sample)
    "u8": ("u8", "u8", 1),
    "u16": ("u16", "u16", 2),
    "u32": ("u16", "u16", 2),      # the protocol has no u32; 16 bits is far above what the model resolves
    "half": ("float", "f32", 4),
    "float": ("float", "f32", 4),
    "double": ("float", "f32", 4),
}
_TRC_MARK = {"non-linear": "'", "perceptual": "~", "linear": "~"}


@dataclass(frozen=True)
class WireFormat:
    """How one layer's pixels travel: the babl format read from GIMP and what goes on the wire."""

    babl: str            # babl format name the plug-in reads and writes, e.g. "R'G'B'A u16"
    dtype: Dtype         # protocol dtype of every sample
    itemsize: int        # bytes per sample
    channels: int        # channels in the babl format (1 to 4)
    keep_alpha: bool     # gray+alpha: send Y only and keep A in the plug-in

    @property
    def send_channels(self) -> int:
        return self.channels - 1 if self.keep_alpha else self.channels


def parse_precision(name: str) -> Tuple[str, str]:
    """``"GIMP_PRECISION_U16_NON_LINEAR"`` (or ``"u16-non-linear"``) -> ``("u16", "non-linear")``."""
    key = name.strip().lower().replace("_", "-")
    if key.startswith("gimp-precision-"):
        key = key[len("gimp-precision-"):]
    component, _, trc = key.partition("-")
    if component not in _TYPE_BY_COMPONENT or trc not in _TRC_MARK:
        raise RetouchError(f"AutoRetouch does not know the image precision {name!r}.")
    return component, trc


def wire_format(precision: str, base: Literal["rgb", "gray"], has_alpha: bool) -> WireFormat:
    """The babl format for a layer of ``precision``, ``base`` type and alpha.

    Non-linear images are read with their own TRC ("'"), so an 8-bit or 16-bit image round-trips
    bit-exactly.  Linear and perceptual images are read with the sRGB TRC ("~"): the model works
    on perceptual values, never linear light.
    """
    component, trc = parse_precision(precision)
    babl_type, dtype, itemsize = _TYPE_BY_COMPONENT[component]
    mark = _TRC_MARK[trc]
    if base == "rgb":
        model = f"R{mark}G{mark}B{mark}" + ("A" if has_alpha else "")
        channels = 4 if has_alpha else 3
    elif base == "gray":
        model = f"Y{mark}" + ("A" if has_alpha else "")
        channels = 2 if has_alpha else 1
    else:
        raise RetouchError("AutoRetouch works on RGB and grayscale layers; convert indexed images "
                           "with Image ▸ Mode ▸ RGB first.")
    return WireFormat(f"{model} {babl_type}", dtype, itemsize, channels,
                      keep_alpha=(base == "gray" and has_alpha))


# --------------------------------------------------------------------------------------------
# Regions


@dataclass(frozen=True)
class Region:
    """A rectangle in the layer's own coordinates (origin at the layer's top-left corner)."""

    x: int
    y: int
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def selection_region(layer_offset: Tuple[int, int], layer_size: Tuple[int, int],
                     selection: Optional[Tuple[int, int, int, int]]) -> Optional[Region]:
    """The part of a layer to retouch: the whole layer, or the selection's bounds on it.

    ``selection`` is ``(x1, y1, x2, y2)`` in image coordinates (x2, y2 exclusive), or ``None``
    when nothing is selected.  Returns ``None`` when the selection misses the layer.
    """
    ox, oy = layer_offset
    w, h = layer_size
    if w <= 0 or h <= 0:
        return None
    if selection is None:
        return Region(0, 0, w, h)
    x1, y1, x2, y2 = selection
    left, top = max(x1 - ox, 0), max(y1 - oy, 0)
    right, bottom = min(x2 - ox, w), min(y2 - oy, h)
    if right <= left or bottom <= top:
        return None
    return Region(left, top, right - left, bottom - top)


# --------------------------------------------------------------------------------------------
# Sample layout helpers (native <-> little-endian, alpha split for gray+alpha)

_ARRAY_CODE = {1: "B", 2: "H", 4: "f"}


def _swap(data: bytes, itemsize: int) -> bytes:
    import array

    arr = array.array("f" if itemsize == 4 else "H")
    arr.frombytes(data)
    arr.byteswap()
    return arr.tobytes()


def to_little_endian(data: bytes, itemsize: int, byteorder: str = sys.byteorder) -> bytes:
    """Babl hands out native-endian samples; the protocol is little-endian."""
    if itemsize == 1 or byteorder == "little":
        return data
    return _swap(data, itemsize)


from_little_endian = to_little_endian  # a byte swap is its own inverse


def split_alpha(data: bytes, channels: int, itemsize: int) -> Tuple[bytes, bytes]:
    """Interleaved samples with alpha last -> (colour samples, alpha samples)."""
    view = memoryview(data).cast(_ARRAY_CODE[itemsize])
    if channels == 2:
        return view[0::2].tobytes(), view[1::2].tobytes()
    alpha = view[channels - 1::channels].tobytes()
    colour = bytearray(len(data) - len(alpha))
    out = memoryview(colour).cast(_ARRAY_CODE[itemsize])
    for c in range(channels - 1):
        out[c::channels - 1] = view[c::channels]
    return bytes(colour), alpha


def merge_alpha(colour: bytes, alpha: bytes, colour_channels: int, itemsize: int) -> bytes:
    """The inverse of ``split_alpha``."""
    channels = colour_channels + 1
    result = bytearray(len(colour) + len(alpha))
    out = memoryview(result).cast(_ARRAY_CODE[itemsize])
    src = memoryview(colour).cast(_ARRAY_CODE[itemsize])
    for c in range(colour_channels):
        out[c::channels] = src[c::colour_channels]
    out[colour_channels::channels] = memoryview(alpha).cast(_ARRAY_CODE[itemsize])
    return bytes(result)


# --------------------------------------------------------------------------------------------
# Request and reply


@dataclass(frozen=True)
class Prepared:
    """A request body plus what the plug-in keeps locally to rebuild the layer's pixels."""

    body: bytes
    kept_alpha: Optional[bytes]


def encode_request(pixels: bytes, width: int, height: int, fmt: WireFormat) -> Prepared:
    """Pixels as babl hands them out (native endian, ``fmt.channels`` interleaved) -> request."""
    expected = width * height * fmt.channels * fmt.itemsize
    if len(pixels) != expected:
        raise ValueError(f"expected {expected} bytes of pixels, got {len(pixels)}")
    kept = None
    if fmt.keep_alpha:
        pixels, kept = split_alpha(pixels, fmt.channels, fmt.itemsize)
    message = {
        "width": width,
        "height": height,
        "channels": fmt.send_channels,
        "dtype": fmt.dtype,
        "data": to_little_endian(pixels, fmt.itemsize),
    }
    return Prepared(packb(message), kept)


def decode_reply(body: bytes, width: int, height: int, fmt: WireFormat,
                 kept_alpha: Optional[bytes] = None) -> bytes:
    """The server's msgpack reply -> pixels in ``fmt.babl`` layout, ready for GIMP."""
    try:
        message = unpackb(body)
    except ValueError as err:
        raise RetouchError(f"The AutoRetouch server sent a reply the plug-in cannot read ({err}). "
                           "Check that the plug-in and the server are the same version.") from None
    if not isinstance(message, dict):
        raise RetouchError("The AutoRetouch server sent a reply that is not an image.")
    want = {"width": width, "height": height, "channels": fmt.send_channels, "dtype": fmt.dtype}
    got = {key: message.get(key) for key in want}
    if got != want:
        raise RetouchError(f"The AutoRetouch server sent back a different image ({got}) than it "
                           f"was sent ({want}). Check that the plug-in and the server are the "
                           "same version.")
    data = message.get("data")
    size = width * height * fmt.send_channels * fmt.itemsize
    if not isinstance(data, bytes) or len(data) != size:
        raise RetouchError("The AutoRetouch server sent back a truncated image.")
    data = from_little_endian(data, fmt.itemsize)
    if fmt.keep_alpha:
        if kept_alpha is None:
            raise ValueError("the alpha kept at request time is needed for a gray+alpha layer")
        data = merge_alpha(data, kept_alpha, fmt.send_channels, fmt.itemsize)
    return data


# --------------------------------------------------------------------------------------------
# URLs and messages


def normalize_url(url: str) -> str:
    """Check a server URL a user typed and return it without a trailing slash."""
    text = (url or "").strip() or DEFAULT_URL
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RetouchError(f"The server URL {url!r} is not an http:// address; "
                           f"the default is {DEFAULT_URL}.")
    try:
        parts.port
    except ValueError:
        raise RetouchError(f"The server URL {url!r} has an invalid port.") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def endpoint(base_url: str, path: str, query: Optional[dict] = None) -> str:
    url = normalize_url(base_url) + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return url


def not_running_message(base_url: str) -> str:
    return (f"The AutoRetouch server is not running at {base_url} — {START_HINT}, "
            "or correct the server URL in the AutoRetouch dialog.")


def timeout_message(base_url: str, seconds: float) -> str:
    return (f"The AutoRetouch server at {base_url} did not answer within {seconds:g} s. "
            "It may be overloaded or stuck; restart it with `autoretouch-server` and try again.")


def server_error_message(base_url: str, status: int, body: bytes,
                         retry_after: Optional[str] = None) -> str:
    """Turn an HTTP error reply into a sentence, using the server's JSON error when it sent one."""
    code, detail = _json_error(body)
    if code is None and status == 404:
        return (f"The server at {base_url} is not an AutoRetouch server (HTTP 404). "
                f"Check the server URL; the default is {DEFAULT_URL}.")
    if status == 401 or code == "unauthorized":
        what = detail or "the server needs a token"
        return (f"The AutoRetouch server at {base_url} refused the request: {what}. "
                "Set AUTORETOUCH_TOKEN to the server's token before starting GIMP.")
    if detail is None:
        detail = f"HTTP {status}"
    text = f"The AutoRetouch server at {base_url} reported an error: {_sentence(detail)}"
    if code == "busy" or status == 503:
        wait = f" in {retry_after} s" if retry_after else " later"
        text += f" It is busy; try again{wait}."
    elif code == "too_large" or status == 413:
        text += " Select a smaller area, or scale the image down."
    elif status >= 500:
        text += " See the server's console output for details."
    return text


def job_error_message(base_url: str, error: object) -> str:
    """The message for a job the server marked as failed (``{"code", "message"}``)."""
    detail = None
    if isinstance(error, dict):
        detail = error.get("message") or error.get("code")
    return (f"The AutoRetouch server at {base_url} could not retouch the image: "
            f"{_sentence(str(detail or 'unknown error'))} See the server's console output for details.")


def _json_error(body: bytes) -> Tuple[Optional[str], Optional[str]]:
    try:
        payload = json.loads(body.decode("utf-8"))
        error = payload["error"]
        return (str(error.get("code")) if error.get("code") else None,
                str(error.get("message")) if error.get("message") else None)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None, None


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
