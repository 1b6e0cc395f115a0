"""EXIF in TIFF files, which tifffile reads but cannot write.

In a TIFF, EXIF is split: descriptive tags (Make, Model, DateTime, ...) sit in the image's own
IFD0, and the camera tags in a sub-IFD that tag 34665 points to. On read both are gathered into
Pillow's EXIF block (``b"Exif\\0\\0"`` + TIFF structure, the form JPEG and PNG carry). On write,
the IFD0 tags go to tifffile as extra tags with a placeholder pointer tag; the sub-IFD is then
appended to the file and the placeholder patched into tag 34665, so pixels are never rewritten.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from PIL import Image, TiffImagePlugin

EXIF_IFD = 0x8769
# tifffile refuses to write tag 34665, so a LONG under the next free code stands in for it and
# is renamed in place: no tag lies between them, so the IFD stays sorted.
PLACEHOLDER = EXIF_IFD + 1
# IFD0 tags that describe the photo (not the pixel layout, which tifffile writes itself).
DESCRIPTIVE = {270: "s", 271: "s", 272: "s", 274: "H", 306: "s", 315: "s", 33432: "s"}


def read(fp: BinaryIO) -> bytes | None:
    """The EXIF of the TIFF in ``fp`` (positioned anywhere), or None if it has none."""
    fp.seek(0)
    header = fp.read(8)
    if header[:4] not in (b"II*\x00", b"MM\x00*"):
        return None  # BigTIFF: Pillow's IFD reader handles classic TIFF only
    ifd0 = TiffImagePlugin.ImageFileDirectory_v2(header)
    fp.seek(ifd0.next)
    ifd0.load(fp)
    exif = Image.Exif()
    for tag in DESCRIPTIVE:
        if tag in ifd0:
            exif[tag] = ifd0[tag]
    if EXIF_IFD in ifd0:
        sub = TiffImagePlugin.ImageFileDirectory_v2(header)
        fp.seek(ifd0[EXIF_IFD])
        sub.load(fp)
        exif.get_ifd(EXIF_IFD).update(dict(sub))
    return exif.tobytes() if len(exif) or exif.get_ifd(EXIF_IFD) else None


def extratags(exif_block: bytes) -> list[tuple]:
    """tifffile ``extratags`` for the IFD0 part, plus a zero pointer to patch later."""
    exif = Image.Exif()
    exif.load(exif_block)
    tags = [(tag, DESCRIPTIVE[tag], 0 if DESCRIPTIVE[tag] == "s" else 1, exif[tag], True)
            for tag in DESCRIPTIVE if tag in exif]
    if exif.get_ifd(EXIF_IFD):
        tags.append((PLACEHOLDER, "I", 1, 0, True))
    return tags


def append_sub_ifd(fp: BinaryIO, exif_block: bytes, value_offset: int, byteorder: str) -> None:
    """Append the EXIF sub-IFD to the classic TIFF in ``fp``; turn the placeholder entry whose
    value sits at ``value_offset`` into tag 34665 pointing to it."""
    exif = Image.Exif()
    exif.load(exif_block)
    prefix = b"II" if byteorder == "<" else b"MM"
    sub = TiffImagePlugin.ImageFileDirectory_v2(prefix=prefix)
    for tag, value in exif.get_ifd(EXIF_IFD).items():
        sub[tag] = value
    fp.seek(0, 2)
    end = fp.tell()
    start = end + end % 2  # IFDs begin on a word boundary
    fp.write(b"\x00" * (start - end) + sub.tobytes(start))
    fp.seek(value_offset - 8)  # entry: code (2), type (2), count (4), value (4)
    fp.write(struct.pack(byteorder + "H", EXIF_IFD))
    fp.seek(value_offset)
    fp.write(struct.pack(byteorder + "I", start))
