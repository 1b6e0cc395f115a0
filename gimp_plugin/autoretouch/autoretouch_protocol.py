"""Pure logic of the AutoRetouch GIMP plug-in: no GIMP, no third-party imports.

The plug-in (``autoretouch.py``) runs on the Python that GIMP ships, so everything here uses the
standard library and the project's own contract modules, which ``autoretouch gimp install``
copies beside it (``autoretouch_wire``, ``autoretouch_errors``, ``autoretouch_client``). It owns:

* the choice of wire format for a GIMP precision (``wire_format``);
* the selection and region maths (``selection_region``);
* building the request and checking the reply (``encode_request`` / ``decode_reply``);
* which layer a run works on, given GIMP's selected drawables (``choose_layer``);
* the settings a Repeat runs with (``confirmed_settings``, ``repeat_settings``);
* what the user reads: the progress text for a job's phase (``phase_text``), the summary after
  a run (``summary``, ``changed_fraction``) and the sentence for any error (``user_message``).

Use::

    fmt = wire_format("GIMP_PRECISION_U16_NON_LINEAR", "rgb", has_alpha=True)
    prepared = encode_request(pixels, width, height, fmt)
    ...
    pixels = decode_reply(reply_body, width, height, fmt, prepared.kept_alpha)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple

import autoretouch_wire as wire
from autoretouch_errors import (
    AutoRetouchError, BadImageError, CancelledError, ServerError, ServerUnavailableError, TooLargeError,
    UnauthorizedError,
)

OutputMode = Literal["new-layer", "new-layer-mask", "in-place", "new-layer-skin-mask"]
# Each output mode and the words the dialog and the status bar use for it.
MODE_LABELS: Dict[str, str] = {
    "new-layer": "New layer",
    "new-layer-mask": "New layer with mask",
    "in-place": "In place",
    "new-layer-skin-mask": "New layer with skin mask",
}
OUTPUT_MODES = tuple(MODE_LABELS)
NO_FACE_MESSAGE = "No face found: nothing was changed."
ONE_LAYER_MESSAGE = "AutoRetouch works on one layer at a time: select one layer."
TEXT_IN_PLACE_MESSAGE = ("AutoRetouch would turn this text layer into pixels: choose a New layer output "
                         "(the text layer stays editable), or Layer ▸ Discard Text Information first.")


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
# Which layer, and with which settings

DrawableKind = Literal["layer", "text-layer", "group", "layer-mask", "channel"]


def choose_layer(kinds: Sequence[DrawableKind], mode: str) -> int:
    """The index of the drawable to retouch among GIMP's selected ones, or a BadImageError.

    A layer mask stands for its layer (the caller retouches the layer it belongs to): after a
    "New layer with mask" run the mask is active, and the next run must not fail on it.
    """
    if len(kinds) != 1:
        raise BadImageError(ONE_LAYER_MESSAGE)
    kind = kinds[0]
    if kind == "channel":
        raise BadImageError("AutoRetouch works on layers, not on channels: select a layer in the Layers dialog.")
    if kind == "group":
        raise BadImageError("AutoRetouch cannot work on a layer group: select one of its layers.")
    # In place would rasterise a text layer silently (its text no longer editable); a new
    # layer above it is a raster copy and leaves the text alone, so only in place is refused.
    if kind == "text-layer" and mode == "in-place":
        raise BadImageError(TEXT_IN_PLACE_MESSAGE)
    return 0


@dataclass(frozen=True)
class Settings:
    """What the dialog asks for."""

    strength: float
    mode: str
    url: str


def confirmed_settings(settings: Settings) -> bytes:
    """The settings the user confirmed with OK, stored before the run starts (see repeat_settings)."""
    return json.dumps({"strength": settings.strength, "output-mode": settings.mode,
                       "server-url": settings.url}).encode()


def repeat_settings(stored: Optional[bytes], last: Settings) -> Settings:
    """What Filters ▸ Repeat runs with: the settings last confirmed in the dialog.

    GIMP keeps a procedure's last values only after a run that succeeded, so after a cancelled
    run its "last values" are an older run's, perhaps in place.  Without readable confirmed
    settings a repeat falls back to a new layer, which never changes the user's pixels.
    """
    try:
        value = json.loads(stored.decode()) if stored else None
        confirmed = Settings(float(value["strength"]), str(value["output-mode"]), str(value["server-url"]))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return replace(last, mode="new-layer")
    if confirmed.mode not in MODE_LABELS or not 0.0 <= confirmed.strength <= wire.MAX_STRENGTH:
        return replace(last, mode="new-layer")
    return confirmed


# --------------------------------------------------------------------------------------------
# What the user reads


def phase_text(status: Mapping[str, Any]) -> str:
    """The progress bar's text for a polled job status: what the server is doing now."""
    phase, face, faces = status.get("phase"), status.get("face"), status.get("faces")
    if phase == "retouching" and isinstance(face, int) and isinstance(faces, int):
        return f"AutoRetouch: retouching face {face} of {faces}…"
    return "AutoRetouch: " + _PHASE_WORDS.get(str(phase), "working on the server") + "…"


_PHASE_WORDS = {
    "queued": "waiting for the server",
    "finding-faces": "finding faces",
    "retouching": "retouching",
    "encoding": "the server is sending the result",
    "finished": "receiving the result",
}
SENDING_TEXT = "AutoRetouch: sending the layer to the server…"

_NONZERO = bytes([0] + [1] * 255)


def _flags(data: bytes, item: int) -> int:
    """One byte per ``item`` bytes of ``data``, 1 where any of them is nonzero, as one big int.

    Big-int and bytes operations run in C: a 24 MP layer takes well under a second in GIMP's
    Python, which has no numpy."""
    ones = data.translate(_NONZERO)
    flags = 0
    for k in range(item):
        flags |= int.from_bytes(ones[k::item], "little")
    return flags


def changed_fraction(before: bytes, after: bytes, pixel_bytes: int,
                     within: Optional[bytes] = None, within_itemsize: int = 1) -> float:
    """The share of pixels whose samples differ, counting only where ``within`` (a mask) is nonzero."""
    if len(before) != len(after):
        raise ValueError("before and after hold different numbers of bytes")
    pixels = len(before) // pixel_bytes
    if pixels == 0:
        return 0.0
    diff = (int.from_bytes(before, "little") ^ int.from_bytes(after, "little")).to_bytes(len(before), "little")
    changed = _flags(diff, pixel_bytes)
    if within is not None:
        changed &= _flags(within, within_itemsize)
    return bin(changed).count("1") / pixels


def summary(mode: str, faces: int, changed: float, seconds: float, repeat: bool = False) -> str:
    """The status-bar line after a run: which mode ran, faces, how much changed, how long it took."""
    how = MODE_LABELS.get(mode, mode) + (", repeated" if repeat else "")
    found = f"{faces} face" + ("" if faces == 1 else "s")
    return f"AutoRetouch ({how}): {found}, {changed:.1%} of the layer's pixels changed, {seconds:.1f} s."


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
