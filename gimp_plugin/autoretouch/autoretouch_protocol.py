"""Pure logic of the AutoRetouch GIMP plug-in: no GIMP, no third-party imports.

The plug-in (``autoretouch.py``) runs on the Python that GIMP ships, so everything here uses the
standard library and the project's own contract modules, which ``autoretouch gimp install``
copies beside it (``autoretouch_wire``, ``autoretouch_errors``, ``autoretouch_client``). It owns:

* the choice of wire format for a GIMP precision (``wire_format``);
* the selection and region maths (``selection_region``);
* building the request and checking the reply (``encode_request`` / ``decode_reply``);
* the sentence a GIMP user sees for any error (``user_message``).

Use::

    fmt = wire_format("GIMP_PRECISION_U16_NON_LINEAR", "rgb", has_alpha=True)
    prepared = encode_request(pixels, width, height, fmt)
    ...
    pixels = decode_reply(reply_body, width, height, fmt, prepared.kept_alpha)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import autoretouch_wire as wire
from autoretouch_errors import (
    AutoRetouchError, BadImageError, CancelledError, ServerError, ServerUnavailableError, TooLargeError,
    UnauthorizedError,
)

OUTPUT_MODES = ("new-layer", "new-layer-mask", "in-place", "new-layer-skin-mask")
NO_FACE_MESSAGE = "No face found: nothing was changed."


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
    dtype: wire.Dtype    # protocol dtype of every sample
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
        raise BadImageError(f"AutoRetouch does not know the image precision {name!r}")
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
        raise BadImageError("AutoRetouch works on RGB and grayscale layers; convert indexed images "
                            "with Image ▸ Mode ▸ RGB first")
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
    body = wire.encode_message(width, height, fmt.send_channels, fmt.dtype, to_little_endian(pixels, fmt.itemsize))
    return Prepared(body, kept)


def decode_reply(body: bytes, width: int, height: int, fmt: WireFormat,
                 kept_alpha: Optional[bytes] = None) -> bytes:
    """The server's msgpack reply -> pixels in ``fmt.babl`` layout, ready for GIMP."""
    try:
        message = wire.decode_message(body, max_pixels=width * height)
    except AutoRetouchError as err:
        raise ServerError(f"the server sent a reply the plug-in cannot read ({err}); "
                          "are the plug-in and the server the same version?") from None
    want = (width, height, fmt.send_channels, fmt.dtype)
    got = (message.width, message.height, message.channels, message.dtype)
    if got != want:
        raise ServerError(f"the server sent back a different image ({got}) than it was sent ({want}); "
                          "are the plug-in and the server the same version?")
    data = from_little_endian(bytes(message.data), fmt.itemsize)
    if fmt.keep_alpha:
        if kept_alpha is None:
            raise ValueError("the alpha kept at request time is needed for a gray+alpha layer")
        data = merge_alpha(data, kept_alpha, fmt.send_channels, fmt.itemsize)
    return data


def decode_mask(body: bytes, width: int, height: int, fmt: WireFormat) -> bytes:
    """The server's skin mask (one channel of ``fmt.dtype``) -> samples for ``mask_babl(fmt)``."""
    try:
        message = wire.decode_message(body, max_pixels=width * height)
    except AutoRetouchError as err:
        raise ServerError(f"the server sent a skin mask the plug-in cannot read ({err})") from None
    if (message.width, message.height, message.channels, message.dtype) != (width, height, 1, fmt.dtype):
        raise ServerError("the server sent a skin mask of another size or type than the image; "
                          "are the plug-in and the server the same version?")
    return from_little_endian(bytes(message.data), fmt.itemsize)


def mask_babl(fmt: WireFormat) -> str:
    """A layer mask's babl format for the mask samples: linear, as masks are coverage, not colour."""
    return "Y " + fmt.babl.rsplit(" ", 1)[1]


# --------------------------------------------------------------------------------------------
# What the user reads


def user_message(err: BaseException, url: str) -> str:
    """The one sentence GIMP shows for ``err``: the error's own words and what to do here."""
    if not isinstance(err, AutoRetouchError):
        return f"AutoRetouch failed unexpectedly: {err!r}. Please report this."
    text = _sentence(str(err))
    text = text[0].upper() + text[1:]
    if isinstance(err, CancelledError):
        return "AutoRetouch was cancelled."
    if isinstance(err, ServerUnavailableError):
        return f"{text} Or correct the server URL in the AutoRetouch dialog."
    if isinstance(err, UnauthorizedError):
        return f"{text} Set {wire.TOKEN_ENV} to the server's token before starting GIMP."
    if isinstance(err, TooLargeError):
        return f"{text} Select a smaller area, or scale the image down."
    if err.status >= 500 and not isinstance(err, ServerError):
        return f"The AutoRetouch server at {url} could not retouch the image: {text} See the server's console for details."
    return text


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
