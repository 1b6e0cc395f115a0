"""Reading and writing photos with their bit depth, alpha, colour model, ICC profile, EXIF and
print resolution.

    picture = imageio.read("in.tif")          # Picture(pixels (H, W, C), format, icc_profile, exif, ...)
    imageio.write("out.tif", picture.with_pixels(new_pixels))

    header = imageio.peek(body)               # Header: size, colour model, samples, bits, frames
    imageio.check_header(header, max_pixels)  # TooLargeError / UnsupportedFormatError, nothing decoded
    picture = imageio.decode(body, max_pixels)   # does both itself first

Pixels are always (H, W, C) with C in 1, 3, 4 and dtype uint8, uint16 or float32. Colour
models the engine cannot take are converted only where the conversion is exact, and refused
otherwise (docs/api.md, "Formats"): palette images become RGB(A), low-bit PNG gray becomes
8-bit, gray+alpha is widened to RGBA, TIFF MINISWHITE is read as ordinary gray and written back
as MINISWHITE; CMYK, YCbCr (other than JPEG-compressed TIFF), Lab and the like are refused,
and so are multi-page TIFFs, animated PNGs and multi-picture JPEGs, whose other images would be
lost. PNG pixels go through imagecodecs (Pillow cannot hold 16-bit RGB), JPEG through Pillow
and TIFF through tifffile.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Literal

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from . import png_chunks, tiff_exif
from .errors import BadImageError, TooLargeError, UnsupportedFormatError, WriteError
from .wire import DEFAULT_MAX_PIXELS  # the server's default limit, also for files read here

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff"}
SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
JPEG_QUALITY = 95  # high enough that re-encoding a retouched photo is visually lossless
JPEG_MAX_EXIF = 65533  # one APP1 segment: its 16-bit length counts itself
# Decoding may allocate at most what a float32 RGBA picture at the pixel limit takes: the
# largest picture the engine accepts. Header fields other than the size (samples, bits,
# tiles) must not buy more memory than that.
DECODE_BYTES_PER_PIXEL = 4 * 4
_TIFF_ICC_TAG = 34675
_EXIF_PREFIX = b"Exif\x00\x00"
_EXIF_RESOLUTION_TAGS = (0x011A, 0x011B, 0x0128)  # XResolution, YResolution, ResolutionUnit
MAX_DENSITY = 65535  # pixels per unit: JFIF's ceiling, far past any print resolution
_JFIF_APP0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01"  # marker, length 16, identifier, version 1.1

AlphaKind = Literal["straight", "premultiplied", "extra"]  # "extra": a 4th channel that is not alpha
_EXTRASAMPLE_KINDS: dict[int, AlphaKind] = {0: "extra", 1: "premultiplied", 2: "straight"}
_TIFF_EXTRASAMPLES = {"extra": "unspecified", "premultiplied": "assocalpha", "straight": "unassalpha"}


@dataclass(frozen=True)
class Resolution:
    """Pixels per ``unit`` across (x) and down (y); unit None: only the pixel aspect is known."""

    x: Fraction
    y: Fraction
    unit: Literal["inch", "cm"] | None


@dataclass(frozen=True)
class Picture:
    pixels: np.ndarray  # (H, W, C) uint8 | uint16 | float32, C in 1, 3, 4
    format: str  # "png" | "jpeg" | "tiff"
    icc_profile: bytes | None = None
    exif: bytes | None = None  # Pillow's form: b"Exif\0\0" + TIFF-structured data
    resolution: Resolution | None = None
    alpha: AlphaKind = "straight"  # what a 4th channel means
    white_is_zero: bool = False  # gray read from a MINISWHITE TIFF, written back as such

    def with_pixels(self, pixels: np.ndarray) -> Picture:
        return dataclasses.replace(self, pixels=pixels)


@dataclass(frozen=True)
class Header:
    """What a file's header says, read without decoding any pixel."""

    format: str
    width: int
    height: int
    colour: str  # the stored colour model: "gray", "rgb", "palette", "gray+alpha", "rgba", "CMYK", ...
    samples: int  # samples per pixel as stored
    bits: int  # bits per sample as stored
    frames: int  # TIFF pages (2: "more than one"), APNG frames, JPEG pictures (MPO)
    decoded_bytes: int  # the memory the decoder allocates for the pixels
    resolution: Resolution | None
    unsupported: str | None  # why this file cannot be read faithfully, if it cannot


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


def peek(data: bytes | Path) -> Header:
    """The header of encoded bytes or of a file (of which only the header is read).
    UnsupportedFormatError when it is no PNG, JPEG or TIFF; BadImageError when it is damaged."""
    if isinstance(data, Path):
        with open(data, "rb") as f:
            fmt = sniff_format(f.read(16))
    else:
        fmt = sniff_format(data[:16])
    try:
        header = _PEEKERS[fmt](data)
    except Exception as exc:  # parsers raise many types for a damaged header
        raise BadImageError(f"the {fmt.upper()} header cannot be read ({exc})") from exc
    if header.width < 1 or header.height < 1:
        raise BadImageError(f"the image claims a size of {header.width}x{header.height} pixels")
    return header


def check_header(header: Header, max_pixels: int) -> None:
    """Refuse, before decoding, an image over ``max_pixels`` or whose decode would take more
    memory than such an image (TooLargeError), and one that would not be read faithfully:
    other pages or frames, a colour model, sample count or depth AutoRetouch does not take
    (UnsupportedFormatError)."""
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise TooLargeError(
            f"the image is {header.width}x{header.height} = {pixels / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:g} MP"
        )
    if header.frames > 1:
        raise UnsupportedFormatError(_FRAMES_MESSAGES[header.format](header.frames))
    if header.unsupported:
        raise UnsupportedFormatError(header.unsupported)
    budget = max_pixels * DECODE_BYTES_PER_PIXEL
    if header.decoded_bytes > budget:
        raise TooLargeError(
            f"decoding this {header.format.upper()} ({header.samples} samples of {header.bits} bits per pixel, "
            f"as its header lays them out) would take {header.decoded_bytes / 1e9:.1f} GB, more than the "
            f"{budget / 1e9:.1f} GB allowed for images of up to {max_pixels / 1e6:g} MP; save it as a plain gray, "
            "RGB or RGBA image"
        )


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    header = peek(data)
    check_header(header, max_pixels)
    return _decode_checked(header, data)


def read(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """The picture in ``path``, refused like ``decode`` before any pixel is decoded."""
    path = Path(path)
    try:
        header = peek(path)
        check_header(header, max_pixels)
        # tifffile memory-maps a path: no second copy of a 100 MP file
        return _decode_checked(header, path if header.format == "tiff" else path.read_bytes())
    except OSError as exc:
        raise BadImageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (BadImageError, UnsupportedFormatError, TooLargeError) as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def check_writable(fmt: str, pixels: np.ndarray, alpha: AlphaKind = "straight", exif: bytes | None = None) -> None:
    """Refuse early, before any work, pixels (and metadata) that ``fmt`` cannot hold."""
    _check_pixels(pixels)
    if fmt == "jpeg" and exif and len(exif) > JPEG_MAX_EXIF:
        raise UnsupportedFormatError(
            f"the photo's EXIF is {len(exif)} bytes; a JPEG holds at most {JPEG_MAX_EXIF}: write it as PNG or TIFF"
        )
    if fmt == "png" and pixels.dtype == np.float32:
        raise UnsupportedFormatError("PNG holds 8- or 16-bit pixels only; write float images as TIFF")
    if fmt == "jpeg" and pixels.dtype != np.uint8:
        raise UnsupportedFormatError("JPEG holds 8-bit pixels only; write 16-bit or float images as PNG or TIFF")
    if fmt == "jpeg" and pixels.shape[-1] == 4:
        raise UnsupportedFormatError("JPEG has no alpha channel; write images with alpha as PNG or TIFF")
    if fmt == "png" and pixels.shape[-1] == 4 and alpha != "straight":
        raise UnsupportedFormatError(
            f"the image's fourth channel is {'premultiplied alpha' if alpha == 'premultiplied' else 'not alpha'}, "
            "which PNG cannot hold; write it as TIFF"
        )


def encode(picture: Picture) -> bytes:
    check_writable(picture.format, picture.pixels, picture.alpha, picture.exif)
    if picture.format == "png":
        return _encode_png(picture)
    if picture.format == "jpeg":
        return _encode_jpeg(picture)
    if picture.format == "tiff":
        buf = io.BytesIO()
        _write_tiff(buf, picture)
        return buf.getvalue()
    raise UnsupportedFormatError(f"cannot write format {picture.format!r}")


def write(path: str | os.PathLike, picture: Picture) -> None:
    """Write atomically in ``path``'s format: a failure never leaves a partial file behind."""
    path = Path(path)
    picture = dataclasses.replace(picture, format=format_for_path(path))
    check_writable(picture.format, picture.pixels, picture.alpha, picture.exif)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}; choose a folder you can write to") from None
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
    except OSError as exc:  # disk full, folder gone, ...: nothing partial is left
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _decode_checked(header: Header, source: bytes | Path) -> Picture:
    try:
        picture = _DECODERS[header.format](source, header)
    except (BadImageError, UnsupportedFormatError):
        raise
    except Exception as exc:  # decoders raise many types for corrupt input
        raise BadImageError(f"the {header.format.upper()} image is damaged or truncated ({exc})") from exc
    if picture.pixels.shape[:2] != (header.height, header.width):
        raise BadImageError(
            f"the {header.format.upper()} header says {header.width}x{header.height} pixels, but its data "
            f"holds {picture.pixels.shape[1]}x{picture.pixels.shape[0]}"
        )
    return picture


@contextmanager
def _binary(source: bytes | Path) -> Iterator[BinaryIO]:
    if isinstance(source, Path):
        with open(source, "rb") as f:
            yield f
    else:
        yield io.BytesIO(source)


def _pillow_open(data: bytes | Path) -> Image.Image:
    # Our callers enforce their own pixel limit (check_header); Pillow's global guard would
    # refuse legitimate 200 MP studio files.
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


def _resolution(x: Fraction, y: Fraction, unit: Literal["inch", "cm"] | None) -> Resolution | None:
    """None where there is nothing to keep: no density, or square pixels of no stated size;
    and none of a damaged header's absurd densities, which no format could write back."""
    if not (0 < x < MAX_DENSITY and 0 < y < MAX_DENSITY) or (unit is None and x == y):
        return None
    return Resolution(x, y, unit)


# --- PNG -------------------------------------------------------------------------------------

# Samples per pixel after libpng's expansion (palette to RGB, tRNS to alpha), by colour type.
_PNG_COLOURS = {0: ("gray", 1), 2: ("rgb", 3), 3: ("palette", 3), 4: ("gray+alpha", 2), 6: ("rgba", 4)}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _peek_png(source: bytes | Path) -> Header:
    with _binary(source) as fp:
        ihdr = png_chunks.read_header(fp)
    if ihdr.bit_depth not in _PNG_DEPTHS.get(ihdr.colour_type, ()):
        raise ValueError(f"colour type {ihdr.colour_type} with {ihdr.bit_depth}-bit samples is not valid PNG")
    colour, samples = _PNG_COLOURS[ihdr.colour_type]
    decoded = samples + (ihdr.transparency and samples in (1, 3))
    resolution = None
    if ihdr.phys:
        x, y, unit = ihdr.phys
        per_metre = unit == png_chunks.PHYS_PER_METRE
        resolution = _resolution(Fraction(x, 100 if per_metre else 1), Fraction(y, 100 if per_metre else 1),
                                 "cm" if per_metre else None)
    return Header("png", ihdr.width, ihdr.height, colour, samples, ihdr.bit_depth, ihdr.animation_frames,
                  ihdr.width * ihdr.height * decoded * (2 if ihdr.bit_depth == 16 else 1), resolution, None)


def _decode_png(data: bytes, header: Header) -> Picture:
    with _pillow_open(data) as im:  # metadata only; pixels come from libpng below
        icc, exif = im.info.get("icc_profile"), im.info.get("exif")
    png_chunks.check_pixel_stream(data, png_chunks.read_header(io.BytesIO(data)))
    # libpng expands palettes to RGB, tRNS to alpha and 1/2/4-bit gray to 8 bits, exactly
    return Picture(_as_hwc(imagecodecs.png_decode(data)), "png", icc or None, _exif_bytes(exif), header.resolution)


def _encode_png(picture: Picture) -> bytes:
    pixels = picture.pixels
    png = imagecodecs.png_encode(np.ascontiguousarray(pixels[..., 0]) if pixels.shape[-1] == 1 else pixels, level=3)
    chunks = []
    if picture.icc_profile:
        chunks.append(png_chunks.iccp_chunk(picture.icc_profile))
    if picture.exif:
        chunks.append(png_chunks.chunk(b"eXIf", picture.exif.removeprefix(_EXIF_PREFIX)))
    if picture.resolution:
        chunks.append(png_chunks.phys_chunk(*_phys(picture.resolution)))
    return png_chunks.insert_after_ihdr(png, chunks) if chunks else png


def _phys(resolution: Resolution) -> tuple[int, int, int]:
    if resolution.unit is None:
        aspect = (resolution.x / resolution.y).limit_denominator(2**31 - 1)
        return aspect.numerator, aspect.denominator, 0
    per_metre = 100 if resolution.unit == "cm" else Fraction(10000, 254)
    return round(resolution.x * per_metre), round(resolution.y * per_metre), png_chunks.PHYS_PER_METRE


# --- JPEG ------------------------------------------------------------------------------------

def _peek_jpeg(source: bytes | Path) -> Header:
    with _pillow_open(source) as im:  # lazy: parses markers up to SOF only
        width, height = im.size
        mode, frames, info = im.mode, getattr(im, "n_frames", 1), dict(im.info)
    samples = Image.getmodebands(mode)
    colour = {"L": "gray", "RGB": "rgb"}.get(mode, mode)
    unsupported = None if colour in ("gray", "rgb") else (
        f"{mode} JPEG images are not supported; convert the photo to RGB first")
    return Header("jpeg", width, height, colour, samples, 8, frames, width * height * samples,
                  _jpeg_resolution(info), unsupported)


def _jpeg_resolution(info: dict) -> Resolution | None:
    """JFIF density, else EXIF's (which many cameras write instead)."""
    unit, density = info.get("jfif_unit"), info.get("jfif_density")
    if unit in (0, 1, 2) and density:
        found = _resolution(Fraction(density[0]), Fraction(density[1]), {0: None, 1: "inch", 2: "cm"}[unit])
        if found:
            return found
    if not info.get("exif"):
        return None
    exif = Image.Exif()
    exif.load(info["exif"])
    x, y, unit = (exif.get(tag) for tag in _EXIF_RESOLUTION_TAGS)
    if x is None or y is None or unit not in (None, 1, 2, 3):
        return None
    try:
        return _resolution(Fraction(x), Fraction(y), {1: None, 2: "inch", 3: "cm"}[unit or 2])
    except (ValueError, ZeroDivisionError, TypeError):  # a damaged rational is no resolution
        return None


def _decode_jpeg(data: bytes, header: Header) -> Picture:
    with _pillow_open(data) as im:
        im.load()
        return Picture(_as_hwc(np.asarray(im)), "jpeg", im.info.get("icc_profile") or None,
                       _exif_bytes(im.info.get("exif")), header.resolution)


def _encode_jpeg(picture: Picture) -> bytes:
    pixels = picture.pixels
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    extra = {"icc_profile": picture.icc_profile} if picture.icc_profile else {}
    if picture.exif:
        extra["exif"] = picture.exif
    image.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0, **extra)
    jpeg = buf.getvalue()
    return _with_jfif_density(jpeg, picture.resolution) if picture.resolution else jpeg


def _with_jfif_density(jpeg: bytes, resolution: Resolution) -> bytes:
    """Set the JFIF density fields exactly (Pillow writes whole dpi only)."""
    if resolution.unit is None:
        aspect = (resolution.x / resolution.y).limit_denominator(65535)
        unit, x, y = 0, aspect.numerator, aspect.denominator
    elif resolution.unit == "cm" and resolution.x.denominator == resolution.y.denominator == 1:
        unit, x, y = 2, int(resolution.x), int(resolution.y)
    else:
        scale = Fraction(254, 100) if resolution.unit == "cm" else 1
        unit, x, y = 1, round(resolution.x * scale), round(resolution.y * scale)
    density = struct.pack(">BHH", unit, min(max(x, 1), 65535), min(max(y, 1), 65535))
    if jpeg[2:11] == _JFIF_APP0[:9]:  # libjpeg's APP0 right after SOI: units at offset 13
        return jpeg[:13] + density + jpeg[18:]
    return jpeg[:2] + _JFIF_APP0 + density + b"\x00\x00" + jpeg[2:]


# --- TIFF ------------------------------------------------------------------------------------

_P = tifffile.PHOTOMETRIC
_TIFF_COLOURS = {_P.MINISBLACK: "gray", _P.MINISWHITE: "MINISWHITE gray", _P.RGB: "rgb",
                 _P.PALETTE: "palette"}
_TIFF_REFUSED = {_P.SEPARATED: "CMYK", _P.YCBCR: "YCbCr", _P.CIELAB: "CIE L*a*b*", _P.ICCLAB: "ICC L*a*b*",
                 _P.ITULAB: "ITU L*a*b*", _P.CFA: "raw colour-filter-array", _P.LOGL: "LogL", _P.LOGLUV: "LogLuv",
                 _P.MASK: "transparency-mask"}
_SAMPLE_TYPES = {1: "uint", 2: "int", 3: "float"}
_TIFF_DEPTHS = {"uint": (8, 16), "float": (16, 32, 64)}


def _peek_tiff(source: bytes | Path) -> Header:
    with tifffile.TiffFile(source if isinstance(source, Path) else io.BytesIO(source)) as tif:
        page = tif.pages.first
        pages = 2 if _has_second_page(tif.pages) else 1
        photometric = page.photometric
        if photometric == _P.YCBCR and page.compression == tifffile.COMPRESSION.JPEG:
            photometric = _P.RGB  # libjpeg decodes JPEG-compressed YCbCr to RGB
        width, height, depth, samples = page.imagewidth, page.imagelength, page.imagedepth, page.samplesperpixel
        bits, sample_type = page.bitspersample, _SAMPLE_TYPES.get(int(page.sampleformat), "other")
        if page.is_tiled:  # tiles are decoded whole, margins included
            area = (math.ceil(width / page.tilewidth) * page.tilewidth
                    * math.ceil(height / page.tilelength) * page.tilelength)
        else:
            area = width * height
        colour = _TIFF_COLOURS.get(photometric) or _TIFF_REFUSED.get(photometric, getattr(photometric, "name", str(photometric)))
        header = Header("tiff", width, height, colour, samples, bits, pages,
                        area * max(depth, 1) * samples * math.ceil(bits / 8), _tiff_resolution(page.tags), None)
        return dataclasses.replace(header, unsupported=_tiff_problem(header, photometric, sample_type, depth,
                                                                     page.colormap is not None))


def _has_second_page(pages: tifffile.TiffPages) -> bool:
    """A second IFD that tifffile can read; a next-IFD pointer to garbage or back to the first
    IFD (seen in damaged files, and ignored by tifffile when it reads them) is no page."""
    try:
        return pages.is_multipage and pages.get(1).offset != pages.first.offset
    except Exception:  # tifffile raises several types for an unreadable IFD
        return False


def _tiff_problem(header: Header, photometric: int, sample_type: str, depth: int, has_colormap: bool) -> str | None:
    """Why tifffile's raw samples of this page would not be the image a viewer shows, if so."""
    if photometric not in _TIFF_COLOURS:
        if photometric == _P.SEPARATED:
            return ("CMYK TIFFs are not supported: converting them needs their press profile, so convert the "
                    "image to RGB in your editor and send that")
        return f"{header.colour} TIFFs are not supported; save the image as gray or RGB"
    if depth > 1:
        return f"the TIFF is a volume of {depth} slices; only flat images are supported"
    extra = header.samples - (3 if photometric == _P.RGB else 1)
    if extra < 0 or extra > 1 or (extra and photometric == _P.PALETTE):
        return (f"the TIFF has {header.samples} samples per pixel as {header.colour}; gray or RGB with at most "
                "one alpha channel, or a palette without one, are supported")
    if header.bits not in _TIFF_DEPTHS.get(sample_type, ()) or (sample_type == "float" and photometric in (
            _P.PALETTE, _P.MINISWHITE)):
        kind = {"uint": "integer", "int": "signed integer", "float": "float"}.get(sample_type, "untyped")
        return (f"{header.bits}-bit {kind} samples in a {header.colour} TIFF are not supported; save the "
                "image as 8-bit, 16-bit or 32-bit float gray or RGB")
    if photometric == _P.PALETTE and not has_colormap:
        return "the palette TIFF has no colour map; save the image as RGB"
    return None


def _tiff_resolution(tags: tifffile.TiffTags) -> Resolution | None:
    x, y = tags.valueof(282), tags.valueof(283)  # XResolution, YResolution: (numerator, denominator)
    unit = {1: None, 2: "inch", 3: "cm"}.get(tags.valueof(296, default=2), "inch")
    if not x or not y or not x[1] or not y[1]:
        return None
    return _resolution(Fraction(*x), Fraction(*y), unit)


def _decode_tiff(source: bytes | Path, header: Header) -> Picture:
    with tifffile.TiffFile(source if isinstance(source, Path) else io.BytesIO(source)) as tif:
        page = tif.pages.first
        pixels = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and pixels.ndim == 3:
            pixels = np.moveaxis(pixels, 0, -1)
        photometric, colormap, extrasamples = page.photometric, page.colormap, page.extrasamples
        icc_tag = page.tags.get(_TIFF_ICC_TAG)
        icc = bytes(icc_tag.value) if icc_tag is not None else None
        exif = tiff_exif.read(tif.filehandle)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if photometric == _P.PALETTE:
        pixels = _expand_palette(pixels[..., 0], colormap)
    elif photometric == _P.MINISWHITE:
        pixels = np.concatenate([np.iinfo(pixels.dtype).max - pixels[..., :1], pixels[..., 1:]], axis=-1)
    if pixels.dtype in (np.float16, np.float64):
        pixels = pixels.astype(np.float32)
    alpha = _EXTRASAMPLE_KINDS.get(int(extrasamples[0]), "extra") if extrasamples else "straight"
    pixels = _as_hwc(pixels)
    return Picture(pixels, "tiff", icc, exif, header.resolution, alpha,
                   photometric == _P.MINISWHITE and pixels.shape[-1] == 1)


def _expand_palette(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """(H, W) indices → (H, W, 3) RGB; 8-bit when every colour is an 8-bit one (v·257)."""
    colours = np.ascontiguousarray(colormap.T)  # (entries, 3) uint16
    if not (colours % 257).any():
        colours = (colours // 257).astype(np.uint8)
    return colours[indices]


def _write_tiff(target: BinaryIO, picture: Picture) -> None:
    """Write to a seekable, readable ``target``; EXIF's sub-IFD is appended afterwards."""
    pixels = picture.pixels
    channels = pixels.shape[-1]
    data = pixels[..., 0] if channels == 1 else pixels
    inverted = picture.white_is_zero and channels == 1 and pixels.dtype != np.float32
    if inverted:
        data = np.iinfo(data.dtype).max - data
    extratags = [(_TIFF_ICC_TAG, 7, len(picture.icc_profile), picture.icc_profile, True)] if picture.icc_profile else []
    extratags += tiff_exif.extratags(picture.exif) if picture.exif else []
    tifffile.imwrite(
        target,
        data,
        photometric="rgb" if channels >= 3 else "miniswhite" if inverted else "minisblack",
        extrasamples=(_TIFF_EXTRASAMPLES[picture.alpha],) if channels == 4 else None,
        extratags=extratags,
        metadata=None,
        **_tiff_resolution_args(picture.resolution),
    )
    if any(tag[0] == tiff_exif.PLACEHOLDER for tag in extratags):
        target.seek(0)
        with tifffile.TiffFile(target) as tif:
            pointer, byteorder = tif.pages.first.tags[tiff_exif.PLACEHOLDER].valueoffset, tif.byteorder
        tiff_exif.append_sub_ifd(target, picture.exif, pointer, byteorder)


def _tiff_resolution_args(resolution: Resolution | None) -> dict:
    if resolution is None:
        return {}
    rationals = tuple(_rational32(v) for v in (resolution.x, resolution.y))
    return {"resolution": rationals, "resolutionunit": {None: "NONE", "inch": "INCH", "cm": "CENTIMETER"}[resolution.unit]}


def _rational32(value: Fraction) -> tuple[int, int]:
    value = value.limit_denominator(2**16)  # TIFF RATIONAL: two unsigned 32-bit integers
    return value.numerator, value.denominator


def _exif_bytes(exif) -> bytes | None:
    if not exif:
        return None
    exif = bytes(exif)
    return exif if exif.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + exif


_PEEKERS: dict[str, Callable[[bytes | Path], Header]] = {"png": _peek_png, "jpeg": _peek_jpeg, "tiff": _peek_tiff}
_DECODERS: dict[str, Callable[[bytes | Path, Header], Picture]] = {
    "png": _decode_png, "jpeg": _decode_jpeg, "tiff": _decode_tiff}
_FRAMES_MESSAGES: dict[str, Callable[[int], str]] = {
    "tiff": lambda n: "the TIFF holds more than one page and only its first would come back; save each page "
                      "as its own file",
    "png": lambda n: f"the PNG is animated ({n} frames) and only its first frame would come back; export the "
                     "frame to retouch as a still PNG",
    "jpeg": lambda n: f"the JPEG holds {n} pictures (a multi-picture file, e.g. with a depth or HDR gain map) and "
                      "only the first would come back; save it as a plain JPEG",
}
