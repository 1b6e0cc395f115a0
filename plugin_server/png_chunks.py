"""Pure PNG chunk maths: read the header chunks and splice metadata chunks into an encoded PNG.

imagecodecs encodes 8- and 16-bit PNG pixels fast but writes no metadata, so the ICC profile
(iCCP), EXIF (eXIf) and resolution (pHYs) chunks are inserted here, right after IHDR, where
the PNG spec allows them. ``read_header`` walks the chunks before the first IDAT without
reading pixel data, so a caller can judge a file before decoding it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

SIGNATURE = b"\x89PNG\r\n\x1a\n"
PHYS_PER_METRE = 1  # pHYs unit specifier: 1 = pixels per metre, 0 = aspect ratio only
# Legitimate files have a few dozen chunks before their pixels (text, colour, time);
# walking millions of tiny ones would only cost time.
MAX_CHUNKS_BEFORE_PIXELS = 4096


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    bit_depth: int
    colour_type: int  # 0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA
    transparency: bool  # a tRNS chunk: libpng turns it into an alpha channel
    animation_frames: int  # from acTL (APNG); 0 for a still PNG
    phys: tuple[int, int, int] | None  # (x, y, unit specifier) of pHYs


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, without decoding any pixel."""
    if len(data) < 24 or not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file, or its header is truncated")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def read_header(fp: BinaryIO) -> Header:
    """IHDR and the chunks up to the first IDAT of the PNG at the start of ``fp``.

    acTL, tRNS and pHYs must precede IDAT by the PNG and APNG specs, so nothing after it
    is read; ValueError when the file is not a PNG or ends before its pixels."""
    if fp.read(len(SIGNATURE)) != SIGNATURE:
        raise ValueError("not a PNG file")
    kind, ihdr = _read_chunk(fp, keep=(b"IHDR",))
    if kind != b"IHDR" or len(ihdr) != 13:
        raise ValueError("the PNG does not start with a valid IHDR chunk")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", ihdr[:10])
    transparency, frames, phys = False, 0, None
    for _ in range(MAX_CHUNKS_BEFORE_PIXELS):
        kind, payload = _read_chunk(fp, keep=(b"acTL", b"pHYs"))
        if kind in (b"IDAT", b"IEND"):
            return Header(width, height, bit_depth, colour_type, transparency, frames, phys)
        if kind == b"tRNS":
            transparency = True
        elif kind == b"acTL" and len(payload) == 8:
            frames = max(struct.unpack(">I", payload[:4])[0], 1)
        elif kind == b"pHYs" and len(payload) == 9:
            phys = struct.unpack(">IIB", payload)
    raise ValueError(f"the PNG has more than {MAX_CHUNKS_BEFORE_PIXELS} chunks before its pixels")


def _read_chunk(fp: BinaryIO, keep: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """(type, payload) of the next chunk; the payload of other types than ``keep`` is skipped
    unread (b"")."""
    head = fp.read(8)
    if len(head) < 8:
        raise ValueError("the PNG ends before its pixel data")
    length, kind = struct.unpack(">I4s", head)
    if kind in keep:
        payload = fp.read(length)
        if len(payload) < length:
            raise ValueError(f"the PNG's {kind.decode('latin-1')} chunk is truncated")
        fp.seek(4, 1)  # CRC: libpng checks it when decoding
        return kind, payload
    fp.seek(length + 4, 1)
    return kind, b""


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def iccp_chunk(profile: bytes, name: bytes = b"ICC profile") -> bytes:
    return chunk(b"iCCP", name + b"\x00\x00" + zlib.compress(profile))


def phys_chunk(x: int, y: int, unit: int) -> bytes:
    return chunk(b"pHYs", struct.pack(">IIB", x, y, unit))


def insert_after_ihdr(png: bytes, chunks: list[bytes]) -> bytes:
    """Splice encoded chunks in after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    header_size(png)
    end = len(SIGNATURE) + 25
    return png[:end] + b"".join(chunks) + png[end:]
