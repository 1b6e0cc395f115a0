"""Pure PNG chunk maths: read the header chunks and splice metadata chunks into an encoded PNG.

imagecodecs encodes 8- and 16-bit PNG pixels fast but writes no metadata, so the ICC profile
(iCCP), EXIF (eXIf) and resolution (pHYs) chunks are inserted here, right after IHDR, where
the PNG spec allows them. ``read_header`` walks the chunks before the first IDAT without
reading pixel data, so a caller can judge a file before decoding it; ``check_pixel_stream``
proves that libpng will decode the rest.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
PHYS_PER_METRE = 1  # pHYs unit specifier: 1 = pixels per metre, 0 = aspect ratio only
# Legitimate files have a few dozen chunks before their pixels (text, colour, time);
# walking millions of tiny ones would only cost time.
MAX_CHUNKS_BEFORE_PIXELS = 4096
MAX_CHUNKS = 1_000_000  # a 200 MP PNG in 8 KB IDAT chunks has about 30 000
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel as stored, by colour type
# Adam7 passes: (x0, y0, dx, dy)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    bit_depth: int
    colour_type: int  # 0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA
    interlaced: bool  # Adam7
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
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    transparency, frames, phys = False, 0, None
    for _ in range(MAX_CHUNKS_BEFORE_PIXELS):
        kind, payload = _read_chunk(fp, keep=(b"acTL", b"pHYs"))
        if kind in (b"IDAT", b"IEND"):
            return Header(width, height, bit_depth, colour_type, interlace == 1, transparency, frames, phys)
        if kind == b"tRNS":
            transparency = True
        elif kind == b"acTL" and len(payload) == 8:
            frames = max(struct.unpack(">I", payload[:4])[0], 1)
        elif kind == b"pHYs" and len(payload) == 9:
            phys = struct.unpack(">IIB", payload)
    raise ValueError(f"the PNG has more than {MAX_CHUNKS_BEFORE_PIXELS} chunks before its pixels")


def check_pixel_stream(png: bytes, header: Header) -> None:
    """ValueError unless every chunk is whole with a right CRC, and the IDAT stream inflates to
    exactly the rows IHDR declares, each with a valid filter byte.

    libpng (through imagecodecs) leaks the rows it decoded when it fails part-way, so a
    truncated or damaged PNG must never reach it. This inflates the stream once more, in 1 MB
    pieces, keeping nothing but the filter bytes' check."""
    passes = _row_passes(header)  # [(start offset, rows, bytes per row + filter byte)]
    total = sum(rows * stride for _, rows, stride in passes)
    inflater, inflated, pos, view = zlib.decompressobj(), 0, len(SIGNATURE), memoryview(png)
    for _ in range(MAX_CHUNKS):
        if pos + 12 > len(png):
            raise ValueError("the PNG is truncated: it ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", png, pos)
        end = pos + 12 + length
        if end > len(png):
            raise ValueError(f"the PNG is truncated inside its {kind.decode('latin-1')} chunk")
        if zlib.crc32(view[pos + 4:end - 4]) != struct.unpack_from(">I", png, end - 4)[0]:
            raise ValueError(f"the PNG's {kind.decode('latin-1')} chunk is damaged (its CRC does not match)")
        if kind == b"IEND":
            break
        data = view[pos + 8:end - 4] if kind == b"IDAT" else b""
        while data:
            piece = inflater.decompress(data, 1 << 20)
            _check_filters(piece, inflated, passes)
            inflated += len(piece)
            if inflated > total or inflater.unused_data:
                raise ValueError("the PNG holds more pixel data than its header declares")
            data = inflater.unconsumed_tail
        pos = end
    else:
        raise ValueError(f"the PNG has more than {MAX_CHUNKS} chunks")
    if not inflater.eof or inflated != total:
        raise ValueError(f"the PNG's pixel data is incomplete ({inflated} of {total} bytes)")


def _row_passes(header: Header) -> list[tuple[int, int, int]]:
    bits = header.bit_depth * _CHANNELS[header.colour_type]
    sizes = ([(-(-(header.width - x0) // dx), -(-(header.height - y0) // dy)) for x0, y0, dx, dy in _ADAM7]
             if header.interlaced else [(header.width, header.height)])
    passes, start = [], 0
    for width, height in sizes:
        if width > 0 and height > 0:  # empty passes have no rows, not even filter bytes
            stride = 1 + -(-width * bits // 8)
            passes.append((start, height, stride))
            start += height * stride
    return passes


def _check_filters(piece: bytes, offset: int, passes: list[tuple[int, int, int]]) -> None:
    """The filter bytes (0..4) of every row that starts inside ``piece`` (at ``offset``)."""
    data = np.frombuffer(piece, np.uint8)
    for start, rows, stride in passes:
        first = max(0, -(-(offset - start) // stride))
        last = min(rows, -(-(offset + len(piece) - start) // stride))
        if first < last and (data[start + stride * np.arange(first, last) - offset] > 4).any():
            raise ValueError("the PNG's pixel data is damaged (a row has an unknown filter type)")


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
