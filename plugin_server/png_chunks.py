"""Pure PNG chunk maths: read the header and splice metadata chunks into an encoded PNG.

imagecodecs encodes 8- and 16-bit PNG pixels fast but writes no metadata, so the ICC profile
(iCCP) and EXIF (eXIf) chunks are inserted here, right after IHDR as the PNG spec requires.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, without decoding any pixel."""
    if len(data) < 24 or not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file, or its header is truncated")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def iccp_chunk(profile: bytes, name: bytes = b"ICC profile") -> bytes:
    return chunk(b"iCCP", name + b"\x00\x00" + zlib.compress(profile))


def insert_after_ihdr(png: bytes, chunks: list[bytes]) -> bytes:
    """Splice encoded chunks in after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    header_size(png)
    end = len(SIGNATURE) + 25
    return png[:end] + b"".join(chunks) + png[end:]
