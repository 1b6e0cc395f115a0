"""The msgpack pixel message as numpy arrays: the server's side of ``plugin_server.wire``.

    pixels = pixels_from(wire.decode_message(body, max_pixels))   # (H, W, C) native-endian view
    body = message_for(pixels)

Pure functions; no torch, no aiohttp.
"""

from __future__ import annotations

import numpy as np

from .. import wire
from ..errors import BadImageError

DTYPES: dict[str, np.dtype] = {"u8": np.dtype("u1"), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}
DTYPE_NAMES: dict[np.dtype, str] = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}


def pixels_from(message: wire.Message) -> np.ndarray:
    """The message's pixels, (H, W, C), without a copy where the machine is little-endian."""
    dtype = DTYPES[message.dtype]
    pixels = np.frombuffer(message.data, dtype=dtype).reshape(message.height, message.width, message.channels)
    return pixels.astype(dtype.newbyteorder("="), copy=False)


def message_for(pixels: np.ndarray) -> bytes:
    """A msgpack message for ``pixels`` (H, W, C) uint8 | uint16 | float32."""
    if pixels.ndim != 3 or pixels.shape[2] not in wire.CHANNELS or pixels.dtype not in DTYPE_NAMES:
        raise BadImageError(f"cannot send pixels of shape {pixels.shape} and type {pixels.dtype}")
    name = DTYPE_NAMES[pixels.dtype]
    samples = np.ascontiguousarray(pixels, dtype=DTYPES[name])
    height, width, channels = pixels.shape
    return wire.encode_message(width, height, channels, name, memoryview(samples.reshape(-1).view(np.uint8)))
