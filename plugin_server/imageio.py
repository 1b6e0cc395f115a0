"""Reading and writing photos with their bit depth, alpha, ICC profile and EXIF.

    picture = imageio.read("in.tif")          # Picture(pixels (H, W, C), format, icc_profile, exif)
    imageio.write("out.tif", picture.with_pixels(new_pixels))

Pixels are always (H, W, C) with C in 1, 3, 4 and dtype uint8, uint16 or float32; gray+alpha
is widened to RGBA on read because the engine and protocol take 1, 3 or 4 channels.
PNG pixels go through imagecodecs (Pillow cannot hold 16-bit RGB), JPEG through Pillow and
TIFF through tifffile. ``peek_size`` reads only headers, so callers can refuse decompression
bombs before any pixel is decoded.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from . import png_chunks, tiff_exif
from .errors import BadImageError, UnsupportedFormatError

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff"}
SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
JPEG_QUALITY = 95  # high enough that re-encoding a retouched photo is visually lossless
_TIFF_ICC_TAG = 34675
_EXIF_PREFIX = b"Exif\x00\x00"


@dataclass(frozen=True)
class Picture:
    pixels: np.ndarray  # (H, W, C) uint8 | uint16 | float32, C in 1, 3, 4
    format: str  # "png" | "jpeg" | "tiff"
    icc_profile: bytes | None = None
    exif: bytes | None = None  # Pillow's form: b"Exif\0\0" + TIFF-structured data

    def with_pixels(self, pixels: np.ndarray) -> Picture:
        return dataclasses.replace(self, pixels=pixels)


def sniff_format(data: bytes) -> str:
    if data.startswith(png_chunks.SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    raise UnsupportedFormatError("the data is not a PNG, JPEG or TIFF image")


def format_for_path(path: str | os.PathLike) -> str:
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UnsupportedFormatError(
            f"{path}: unknown image type '{Path(path).suffix}'; use .png, .jpg/.jpeg or .tif/.tiff"
        )
    return fmt


def peek_size(data: bytes | Path) -> tuple[int, int, str]:
    """(width, height, format) from the header alone, of encoded bytes or of a file
    (of which only the header is read)."""
    if isinstance(data, Path):
        with open(data, "rb") as f:
            head = f.read(32)
        source: Path | io.BytesIO = data
    else:
        head, source = data, io.BytesIO(data)
    fmt = sniff_format(head)
    try:
        if fmt == "png":
            width, height = png_chunks.header_size(head)
        elif fmt == "jpeg":
            with _pillow_open(data) as im:  # lazy: parses markers up to SOF only
                width, height = im.size
        else:
            with tifffile.TiffFile(source) as tif:
                page = tif.pages.first
                width, height = page.imagewidth, page.imagelength
    except Exception as exc:  # parsers raise many types for a damaged header
        raise BadImageError(f"the {fmt.upper()} header cannot be read ({exc})") from exc
    if width < 1 or height < 1:
        raise BadImageError(f"the image claims a size of {width}x{height} pixels")
    return width, height, fmt


def decode(data: bytes) -> Picture:
    fmt = sniff_format(data)
    try:
        if fmt == "png":
            return _decode_png(data)
        if fmt == "jpeg":
            return _decode_jpeg(data)
        return _decode_tiff(io.BytesIO(data))
    except (BadImageError, UnsupportedFormatError):
        raise
    except Exception as exc:  # decoders raise many types for corrupt input
        raise BadImageError(f"the {fmt.upper()} image is damaged or truncated ({exc})") from exc


def check_writable(fmt: str, pixels: np.ndarray) -> None:
    """Refuse early, before any work, pixels that ``fmt`` cannot hold."""
    _check_pixels(pixels)
    if fmt == "png" and pixels.dtype == np.float32:
        raise UnsupportedFormatError("PNG holds 8- or 16-bit pixels only; write float images as TIFF")
    if fmt == "jpeg" and pixels.dtype != np.uint8:
        raise UnsupportedFormatError("JPEG holds 8-bit pixels only; write 16-bit or float images as PNG or TIFF")
    if fmt == "jpeg" and pixels.shape[-1] == 4:
        raise UnsupportedFormatError("JPEG has no alpha channel; write images with alpha as PNG or TIFF")


def encode(picture: Picture) -> bytes:
    check_writable(picture.format, picture.pixels)
    if picture.format == "png":
        return _encode_png(picture)
    if picture.format == "jpeg":
        return _encode_jpeg(picture)
    if picture.format == "tiff":
        buf = io.BytesIO()
        _write_tiff(buf, picture)
        return buf.getvalue()
    raise UnsupportedFormatError(f"cannot write format {picture.format!r}")


def read(path: str | os.PathLike) -> Picture:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise BadImageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if sniff_format(head) == "tiff":  # tifffile memory-maps; no second copy of a 100 MP file
            return _decode_tiff(path)
        return decode(path.read_bytes())
    except UnsupportedFormatError as exc:
        raise UnsupportedFormatError(f"{path}: {exc}") from exc
    except BadImageError as exc:
        raise BadImageError(f"{path}: {exc}") from exc
    except Exception as exc:  # tifffile raises many types for corrupt input
        raise BadImageError(f"{path}: the TIFF image is damaged or truncated ({exc})") from exc


def write(path: str | os.PathLike, picture: Picture) -> None:
    """Write atomically in ``path``'s format: a failure never leaves a partial file behind."""
    path = Path(path)
    picture = dataclasses.replace(picture, format=format_for_path(path))
    check_writable(picture.format, picture.pixels)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "w+b") as f:
            if picture.format == "tiff":
                _write_tiff(f, picture)  # streams: no encoded copy in memory
            else:
                f.write(encode(picture))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pillow_open(data: bytes | Path) -> Image.Image:
    # Our callers enforce their own pixel limit (peek_size + max_pixels); Pillow's global
    # guard would refuse legitimate 200 MP studio files.
    Image.MAX_IMAGE_PIXELS = None
    return Image.open(data if isinstance(data, Path) else io.BytesIO(data))


def _as_hwc(pixels: np.ndarray) -> np.ndarray:
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.shape[-1] == 2:  # gray + alpha → RGBA
        gray, alpha = pixels[..., :1], pixels[..., 1:]
        pixels = np.concatenate([gray, gray, gray, alpha], axis=-1)
    return np.ascontiguousarray(pixels)


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4):
        raise BadImageError(f"pixels must be (H, W, 1|3|4), got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        raise BadImageError(f"pixels must be uint8, uint16 or float32, got {pixels.dtype}")


def _decode_png(data: bytes) -> Picture:
    with _pillow_open(data) as im:  # metadata only; pixels come from libpng below
        icc, exif = im.info.get("icc_profile"), im.info.get("exif")
    return Picture(_as_hwc(imagecodecs.png_decode(data)), "png", icc or None, _exif_bytes(exif))


def _encode_png(picture: Picture) -> bytes:
    pixels = picture.pixels
    png = imagecodecs.png_encode(np.ascontiguousarray(pixels[..., 0]) if pixels.shape[-1] == 1 else pixels, level=3)
    chunks = []
    if picture.icc_profile:
        chunks.append(png_chunks.iccp_chunk(picture.icc_profile))
    if picture.exif:
        chunks.append(png_chunks.chunk(b"eXIf", picture.exif.removeprefix(_EXIF_PREFIX)))
    return png_chunks.insert_after_ihdr(png, chunks) if chunks else png


def _decode_jpeg(data: bytes) -> Picture:
    with _pillow_open(data) as im:
        if im.mode not in ("L", "RGB"):
            raise BadImageError(
                f"{im.mode} JPEG images are not supported; convert the photo to RGB first"
            )
        im.load()
        return Picture(
            _as_hwc(np.asarray(im)), "jpeg", im.info.get("icc_profile") or None,
            _exif_bytes(im.info.get("exif")),
        )


def _encode_jpeg(picture: Picture) -> bytes:
    pixels = picture.pixels
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    extra = {"icc_profile": picture.icc_profile} if picture.icc_profile else {}
    if picture.exif:
        extra["exif"] = picture.exif
    image.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0, **extra)
    return buf.getvalue()


def _decode_tiff(source: io.BytesIO | Path) -> Picture:
    with tifffile.TiffFile(source) as tif:
        page = tif.pages.first
        pixels = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and pixels.ndim == 3:
            pixels = np.moveaxis(pixels, 0, -1)
        icc_tag = page.tags.get(_TIFF_ICC_TAG)
        icc = bytes(icc_tag.value) if icc_tag is not None else None
        exif = tiff_exif.read(tif.filehandle)
    if pixels.ndim not in (2, 3):
        raise BadImageError(f"the TIFF holds a {pixels.ndim}-dimensional array; only single images are supported")
    if pixels.dtype in (np.float16, np.float64):
        pixels = pixels.astype(np.float32)
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        raise BadImageError(
            f"TIFF pixels of type {pixels.dtype} are not supported; save the image as 8-bit, 16-bit or float"
        )
    pixels = _as_hwc(pixels)
    if pixels.shape[-1] not in (1, 3, 4):
        raise BadImageError(f"the TIFF has {pixels.shape[-1]} channels; only gray, RGB and RGBA are supported")
    return Picture(pixels, "tiff", icc, exif)


def _write_tiff(target: BinaryIO, picture: Picture) -> None:
    """Write to a seekable, readable ``target``; EXIF's sub-IFD is appended afterwards."""
    pixels = picture.pixels
    channels = pixels.shape[-1]
    extratags = [(_TIFF_ICC_TAG, 7, len(picture.icc_profile), picture.icc_profile, True)] if picture.icc_profile else []
    extratags += tiff_exif.extratags(picture.exif) if picture.exif else []
    tifffile.imwrite(
        target,
        pixels[..., 0] if channels == 1 else pixels,
        photometric="minisblack" if channels == 1 else "rgb",
        extrasamples=("unassalpha",) if channels == 4 else None,
        extratags=extratags,
        metadata=None,
    )
    if any(tag[0] == tiff_exif.PLACEHOLDER for tag in extratags):
        target.seek(0)
        with tifffile.TiffFile(target) as tif:
            pointer, byteorder = tif.pages.first.tags[tiff_exif.PLACEHOLDER].valueoffset, tif.byteorder
        tiff_exif.append_sub_ifd(target, picture.exif, pointer, byteorder)


def _exif_bytes(exif) -> bytes | None:
    if not exif:
        return None
    exif = bytes(exif)
    return exif if exif.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + exif
