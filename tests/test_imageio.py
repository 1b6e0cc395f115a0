"""Reading and writing photos: bit depth, alpha, ICC and EXIF survive; damage is reported."""

import dataclasses
import io
import struct
import tracemalloc
import zlib
from fractions import Fraction

import numpy as np
import pytest
import tifffile
from PIL import Image

from plugin_server import imageio, png_chunks
from plugin_server.errors import BadImageError, TooLargeError, UnsupportedFormatError


def exif_block() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "AutoRetouch Test Camera"  # Make
    exif[0x0112] = 6  # Orientation: rotated, which a viewer must keep honouring
    camera = exif.get_ifd(0x8769)
    camera[0x9003] = "2026:11:24 09:30:00"  # DateTimeOriginal
    camera[0x8827] = 200  # ISO
    return exif.tobytes()


@pytest.fixture(scope="module")
def pexels(portraits_dir):
    """A real studio photo (with its ICC profile), cropped to keep the tests quick."""
    picture = imageio.read(portraits_dir / "pexels-ike-louie-natividad-2709388.jpg")
    assert picture.icc_profile and picture.format == "jpeg"
    return picture.with_pixels(picture.pixels[2000:2240, 1500:1800].copy())


VARIANTS = {
    "u8-rgb": lambda p: p,
    "u8-gray": lambda p: p[..., :1],
    "u8-rgba": lambda p: np.dstack([p, np.linspace(0, 255, p.shape[1], dtype=np.uint8)[None, :].repeat(p.shape[0], 0)]),
    "u16-rgb": lambda p: p.astype(np.uint16) * 257 + 3,
    "u16-gray": lambda p: p[..., :1].astype(np.uint16) * 257,
    "u16-rgba": lambda p: np.dstack([p.astype(np.uint16) * 257, np.full(p.shape[:2], 40000, np.uint16)]),
    "f32-rgb": lambda p: p.astype(np.float32) / 255,
    "f32-rgba": lambda p: np.dstack([p, p[..., :1]]).astype(np.float32) / 255,
}
WRITABLE = [
    (fmt, name) for fmt in ("png", "jpeg", "tiff") for name in VARIANTS
    if not (fmt == "png" and name.startswith("f32"))
    and not (fmt == "jpeg" and (not name.startswith("u8") or name.endswith("rgba")))
]


@pytest.mark.parametrize("fmt, variant", WRITABLE)
def test_round_trip_keeps_pixels_depth_alpha_icc_exif(tmp_path, pexels, fmt, variant):
    pixels = VARIANTS[variant](pexels.pixels)
    source = imageio.Picture(pixels, fmt, pexels.icc_profile, exif_block())
    path = tmp_path / f"photo.{ {'jpeg': 'jpg', 'png': 'png', 'tiff': 'tif'}[fmt] }"
    imageio.write(path, source)
    back = imageio.read(path)
    assert back.pixels.shape == pixels.shape and back.pixels.dtype == pixels.dtype
    if fmt == "jpeg":
        assert np.abs(back.pixels.astype(int) - pixels).mean() < 1.5  # lossy, quality 95
    else:
        assert np.array_equal(back.pixels, pixels)
    assert back.icc_profile == pexels.icc_profile
    assert back.exif == source.exif
    assert imageio.decode(imageio.encode(back)).pixels.shape == pixels.shape


def test_gray_alpha_png_is_widened_to_rgba(tmp_path):
    la = Image.fromarray(np.dstack([np.arange(12, dtype=np.uint8).reshape(3, 4)] * 2), "LA")
    buf = io.BytesIO()
    la.save(buf, "PNG")
    pixels = imageio.decode(buf.getvalue()).pixels
    assert pixels.shape == (3, 4, 4) and np.array_equal(pixels[..., 0], pixels[..., 2])


def test_peek_reads_headers_only(pexels):
    for fmt in ("png", "jpeg", "tiff"):
        data = imageio.encode(pexels.with_pixels(pexels.pixels).__class__(pexels.pixels, fmt))
        header = imageio.peek(data[:4096] if fmt != "tiff" else data)
        assert (header.width, header.height, header.format) == (300, 240, fmt)
    bomb = bytearray(imageio.encode(imageio.Picture(pexels.pixels, "png")))
    bomb[16:24] = (100000).to_bytes(4, "big") * 2  # header claims 100000 x 100000
    header = imageio.peek(bytes(bomb[:64]))
    assert (header.width, header.height, header.format) == (100000, 100000, "png")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff"])
def test_truncated_files_are_bad_images(pexels, fmt):
    data = imageio.encode(imageio.Picture(pexels.pixels, fmt))
    with pytest.raises(BadImageError, match="damaged or truncated"):
        imageio.decode(data[: len(data) // 2])


def test_unknown_data_and_suffixes_are_refused(tmp_path, pexels):
    with pytest.raises(UnsupportedFormatError, match="not a PNG, JPEG or TIFF"):
        imageio.decode(b"GIF89a" + b"\0" * 100)
    with pytest.raises(UnsupportedFormatError, match=".webp"):
        imageio.write(tmp_path / "x.webp", pexels)
    with pytest.raises(UnsupportedFormatError, match="JPEG holds 8-bit"):
        imageio.write(tmp_path / "x.jpg", pexels.with_pixels(pexels.pixels.astype(np.uint16)))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BadImageError, match="cannot read"):
        imageio.read(tmp_path / "missing.png")


def test_tiff_exif_is_a_real_exif_ifd_for_other_readers(tmp_path, pexels):
    import tifffile

    imageio.write(tmp_path / "x.tif", imageio.Picture(pexels.pixels.astype(np.uint16), "tiff", None, exif_block()))
    with tifffile.TiffFile(tmp_path / "x.tif") as tif:
        tags = tif.pages.first.tags
        assert tags["Make"].value == "AutoRetouch Test Camera" and tags["Orientation"].value == 6
        assert tags["ExifTag"].value["ISOSpeedRatings"] == 200
        assert np.array_equal(tif.pages.first.asarray(), pexels.pixels.astype(np.uint16))


# --- Files that lie or that would be misread: built here, as an attacker or an odd tool would ---

def tiff_bytes(pixels: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, pixels, metadata=None, **options)
    return buf.getvalue()


def raw_tiff(width: int, height: int, samples: int = 1, bits: int = 8, data: bytes = bytes(64),
             extra_tags: tuple[tuple[int, int, int], ...] = ()) -> bytes:
    """A little-endian TIFF whose header says anything: the shape of a memory bomb."""
    tags = sorted([(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 0),
                   (277, 3, samples), (278, 4, height), (279, 4, len(data)), *extra_tags])
    ifd_size = 2 + 12 * len(tags) + 4
    data_at = 8 + ifd_size
    tags = [(t, k, data_at if t == 273 else v) for t, k, v in tags]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


def pillow_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def apng_bytes() -> bytes:
    frames = [Image.fromarray(np.full((8, 10, 3), 60 * i, np.uint8)) for i in range(3)]
    return pillow_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:])


def mpo_bytes() -> bytes:
    frames = [Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)) for i in range(2)]
    return pillow_bytes(frames[0], "MPO", save_all=True, append_images=frames[1:])


def jpeg_with_density(unit: int, x: int, y: int, pixels: np.ndarray | None = None) -> bytes:
    """A JPEG whose JFIF header has exactly this density (Pillow writes whole dpi only)."""
    pixels = np.full((16, 24, 3), 128, np.uint8) if pixels is None else pixels
    jpeg = bytearray(pillow_bytes(Image.fromarray(pixels), "JPEG"))
    assert jpeg[6:11] == b"JFIF\x00"
    jpeg[13:18] = struct.pack(">BHH", unit, x, y)
    return bytes(jpeg)


GRADIENT = np.arange(8 * 10, dtype=np.uint8).reshape(8, 10) * 3


def test_memory_bomb_samples_per_pixel_is_refused_before_decoding():
    # The case: 1 MP that declares 2000 samples per pixel (4 GB decoded) in a tiny file.
    bomb = raw_tiff(1000, 1000, samples=2000)
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedFormatError, match="2000 samples per pixel"):
            imageio.decode(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"


@pytest.mark.parametrize("bits, sample_format", [(1, 1), (4, 1), (32, 1), (16, 2), (8, 3), (64, 1)])
def test_unsupported_sample_depths_are_refused_from_the_header(bits, sample_format):
    with pytest.raises(UnsupportedFormatError, match=f"{bits}-bit"):
        imageio.decode(raw_tiff(64, 64, bits=bits, extra_tags=((339, 3, sample_format),)))


def test_tiles_larger_than_the_budget_are_too_large():
    # 16 x 16 pixels in one declared 65536 x 65536 tile: 4 GB to decode that tile.
    bomb = raw_tiff(16, 16, extra_tags=((322, 4, 65536), (323, 4, 65536), (324, 4, 8), (325, 4, 64)))
    header = imageio.peek(bomb)
    assert header.decoded_bytes == 65536 * 65536
    with pytest.raises(TooLargeError, match="would take 4.3 GB"):
        imageio.check_header(header, 1_000_000)


def test_decoded_bytes_not_only_pixels_are_bounded():
    small = np.zeros((10, 10, 4), np.float64)
    header = imageio.peek(tiff_bytes(small, photometric="rgb", extrasamples=["unassalpha"]))
    assert (header.samples, header.bits, header.decoded_bytes) == (4, 64, 10 * 10 * 4 * 8)
    with pytest.raises(TooLargeError, match="would take"):
        imageio.check_header(header, 100)  # 100 px allow 1600 bytes; the float64 decode needs 3200
    imageio.check_header(imageio.peek(tiff_bytes(small.astype(np.float32), photometric="rgb",
                                                 extrasamples=["unassalpha"])), 100)


def test_pixel_limit_is_applied_by_decode_and_read(tmp_path):
    data = tiff_bytes(np.zeros((40, 50), np.uint8))
    with pytest.raises(TooLargeError, match="40 = 0.0 MP"):
        imageio.decode(data, max_pixels=1999)
    assert imageio.decode(data, max_pixels=2000).pixels.shape == (40, 50, 1)
    (tmp_path / "x.tif").write_bytes(data)
    with pytest.raises(TooLargeError, match="x.tif"):
        imageio.read(tmp_path / "x.tif", max_pixels=1999)


def test_invalid_png_depth_is_a_bad_header():
    png = bytearray(imageio.encode(imageio.Picture(np.zeros((4, 4, 3), np.uint8), "png")))
    png[24] = 4  # RGB with 4-bit samples does not exist
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    with pytest.raises(BadImageError, match="not valid PNG"):
        imageio.decode(bytes(png))


@pytest.mark.parametrize("build, words", [
    (lambda: tiff_bytes(np.zeros((3, 8, 10), np.uint8), photometric="minisblack"), "more than one page"),
    (apng_bytes, "animated"),
    (mpo_bytes, "2 pictures"),
])
def test_other_pages_and_frames_are_refused_not_dropped(build, words, tmp_path):
    data = build()
    with pytest.raises(UnsupportedFormatError, match=words):
        imageio.decode(data)
    (tmp_path / "many").write_bytes(data)
    with pytest.raises(UnsupportedFormatError, match=words):
        imageio.read(tmp_path / "many")


@pytest.mark.parametrize("build, words", [
    (lambda: tiff_bytes(np.full((8, 10, 4), 0, np.uint8), photometric="separated"), "CMYK TIFF"),
    (lambda: tiff_bytes(np.zeros((8, 10, 3), np.uint8), photometric="ycbcr"), "YCbCr TIFF"),
    (lambda: tiff_bytes(np.zeros((8, 10, 3), np.uint8), photometric="minisblack", planarconfig="contig"),
     "3 samples per pixel as gray"),
    (lambda: tiff_bytes(np.zeros((8, 10, 5), np.uint8), photometric="rgb", extrasamples=["unassalpha"] * 2),
     "5 samples per pixel"),
    (lambda: tiff_bytes(np.zeros((8, 10), np.float32), photometric="miniswhite"), "32-bit float"),
    (lambda: tiff_bytes(np.zeros((8, 10), np.int16)), "16-bit signed integer"),
    (lambda: pillow_bytes(Image.new("CMYK", (8, 8)), "JPEG"), "CMYK JPEG"),
])
def test_colour_models_that_would_be_misread_are_refused(build, words):
    with pytest.raises(UnsupportedFormatError, match=words):
        imageio.decode(build())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_miniswhite_is_read_as_gray_and_written_back_as_miniswhite(dtype):
    stored = GRADIENT.astype(dtype) * (257 if dtype == np.uint16 else 1)
    picture = imageio.decode(tiff_bytes(stored, photometric="miniswhite"))
    assert picture.white_is_zero and np.array_equal(picture.pixels[..., 0], np.iinfo(dtype).max - stored)
    with tifffile.TiffFile(io.BytesIO(imageio.encode(picture))) as tif:
        assert tif.pages.first.photometric == tifffile.PHOTOMETRIC.MINISWHITE
        assert np.array_equal(tif.pages.first.asarray(), stored)


def test_palette_tiff_becomes_the_rgb_of_its_colour_map():
    rng = np.random.default_rng(1)
    colours8 = rng.integers(0, 256, (3, 256)).astype(np.uint16) * 257
    picture = imageio.decode(tiff_bytes(GRADIENT, photometric="palette", colormap=colours8))
    assert picture.pixels.dtype == np.uint8 and np.array_equal(picture.pixels, (colours8 // 257).T[GRADIENT])
    colours16 = rng.integers(0, 65536, (3, 256)).astype(np.uint16)
    picture = imageio.decode(tiff_bytes(GRADIENT, photometric="palette", colormap=colours16))
    assert picture.pixels.dtype == np.uint16 and np.array_equal(picture.pixels, colours16.T[GRADIENT])


def test_jpeg_compressed_ycbcr_tiff_is_decoded_to_rgb(pexels):
    rgb = pexels.pixels[:64, :64].copy()
    pixels = imageio.decode(tiff_bytes(rgb, photometric="rgb", compression="jpeg")).pixels  # stored as YCbCr
    assert np.abs(pixels.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("kind, alpha", [("assocalpha", "premultiplied"), ("unspecified", "extra"),
                                         ("unassalpha", "straight")])
def test_tiff_fourth_channel_keeps_its_meaning(kind, alpha):
    pixels = np.dstack([GRADIENT] * 3 + [GRADIENT // 2])
    picture = imageio.decode(tiff_bytes(pixels, photometric="rgb", extrasamples=[kind]))
    assert picture.alpha == alpha and np.array_equal(picture.pixels, pixels)
    with tifffile.TiffFile(io.BytesIO(imageio.encode(picture))) as tif:
        assert tif.pages.first.extrasamples[0].name.lower() == kind
    if alpha != "straight":
        with pytest.raises(UnsupportedFormatError, match="PNG cannot hold"):
            imageio.encode(dataclasses.replace(picture, format="png"))


def test_png_palette_transparency_and_low_bit_gray_are_expanded_exactly():
    palette = Image.fromarray(GRADIENT % 4).convert("P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    want = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)[GRADIENT % 4]
    assert np.array_equal(imageio.decode(pillow_bytes(palette, "PNG")).pixels, want)
    with_alpha = imageio.decode(pillow_bytes(palette, "PNG", transparency=1)).pixels
    assert np.array_equal(with_alpha[..., :3], want) and np.array_equal(with_alpha[..., 3], np.where(GRADIENT % 4 == 1, 0, 255))
    two_bit = imageio.decode(pillow_bytes(Image.fromarray((GRADIENT % 4) * 85), "PNG", bits=2)).pixels
    assert two_bit.dtype == np.uint8 and np.array_equal(two_bit[..., 0], (GRADIENT % 4) * 85)
    gray_trns = imageio.decode(pillow_bytes(Image.fromarray(GRADIENT), "PNG", transparency=0)).pixels
    assert gray_trns.shape == (8, 10, 4) and gray_trns[0, 0, 3] == 0 and gray_trns[0, 1, 3] == 255


@pytest.mark.parametrize("unit, x, y, want", [
    (1, 300, 300, imageio.Resolution(Fraction(300), Fraction(300), "inch")),
    (2, 118, 118, imageio.Resolution(Fraction(118), Fraction(118), "cm")),
    (1, 300, 600, imageio.Resolution(Fraction(300), Fraction(600), "inch")),
    (0, 1, 1, None),  # square pixels of no stated size: nothing to keep
])
def test_jpeg_density_survives_a_round_trip_exactly(unit, x, y, want):
    picture = imageio.decode(jpeg_with_density(unit, x, y))
    assert picture.resolution == want
    answer = imageio.encode(picture)
    assert (answer[13], *struct.unpack(">HH", answer[14:18])) == (unit, x, y)


def test_resolution_survives_every_format_and_the_cli_path(tmp_path):
    source = imageio.decode(jpeg_with_density(1, 300, 300))
    for name in ("a.png", "a.tif", "b.jpg"):
        imageio.write(tmp_path / name, source)
        back = imageio.read(tmp_path / name)
        assert back.resolution.x * (Fraction(254, 100) if back.resolution.unit == "cm" else 1) == pytest.approx(300, abs=0.01)
    png = png_chunks.read_header(io.BytesIO((tmp_path / "a.png").read_bytes()))
    assert png.phys == (11811, 11811, 1)  # 300 dpi in pixels per metre
    with Image.open(tmp_path / "a.tif") as im:
        assert im.info["dpi"] == (300, 300)
    with Image.open(tmp_path / "b.jpg") as im:
        assert im.info["dpi"] == (300, 300)
    cm = imageio.Picture(np.zeros((4, 4, 3), np.uint8), "tiff", resolution=imageio.Resolution(Fraction(11811, 100), Fraction(11811, 100), "cm"))
    assert imageio.decode(imageio.encode(cm)).resolution == cm.resolution
    assert imageio.decode(imageio.encode(dataclasses.replace(cm, format="png"))).resolution == cm.resolution


def test_exif_only_resolution_is_read():
    exif = Image.Exif()
    exif[0x011A], exif[0x011B], exif[0x0128] = 240.0, 240.0, 2
    data = pillow_bytes(Image.new("RGB", (8, 8)), "JPEG", exif=exif.tobytes())  # JFIF says 1:1, no unit
    assert imageio.decode(data).resolution == imageio.Resolution(Fraction(240), Fraction(240), "inch")


def test_exif_orientation_is_kept_and_pixels_are_not_rotated():
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :8] = 255  # a white left edge, which a rotation would move
    sent = imageio.encode(imageio.Picture(pixels, "jpeg", exif=exif_block()))  # Orientation 6: rotate 90° to view
    back = imageio.decode(imageio.encode(imageio.decode(sent)))
    assert back.pixels.shape == (16, 32, 3) and back.pixels[:, :6].min() > 240 and back.pixels[:, 10:].max() < 15
    with Image.open(io.BytesIO(imageio.encode(back))) as im:
        assert im.getexif()[0x0112] == 6


def test_a_damaged_next_page_pointer_is_not_a_second_page():
    data = bytearray(tiff_bytes(GRADIENT))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        ifd = tif.pages.first.offset
    pointer = ifd + 2 + 12 * struct.unpack("<H", data[ifd:ifd + 2])[0]
    for junk in (ifd, 3):  # back to the first IFD; into the file header
        data[pointer:pointer + 4] = struct.pack("<I", junk)
        assert np.array_equal(imageio.decode(bytes(data)).pixels[..., 0], GRADIENT)


def png_from_rows(width: int, height: int, colour_type: int, bit_depth: int, raw: bytes, interlaced: bool = False) -> bytes:
    """A PNG around an already-filtered row stream, as any encoder (or attacker) could write it."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, int(interlaced))
    return (png_chunks.SIGNATURE + png_chunks.chunk(b"IHDR", ihdr) + png_chunks.chunk(b"IDAT", zlib.compress(raw))
            + png_chunks.chunk(b"IEND", b""))


def adam7_rows(pixels: np.ndarray) -> bytes:
    """Filter-0 rows of each Adam7 pass of 8-bit pixels (Pillow cannot write interlaced PNGs)."""
    rows = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = pixels[y0::dy, x0::dx]
        rows += b"".join(b"\x00" + row.tobytes() for row in sub) if sub.size else b""
    return rows


@pytest.mark.parametrize("shape", [(13, 11, 3), (1, 1, 3), (5, 3, 3), (9, 17, 1)])
def test_interlaced_png_decodes(shape):
    pixels = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    png = png_from_rows(shape[1], shape[0], 2 if shape[2] == 3 else 0, 8, adam7_rows(pixels), interlaced=True)
    assert np.array_equal(imageio.decode(png).pixels, pixels)


def test_damaged_png_pixel_streams_are_bad_images():
    raw = b"".join(b"\x00" + bytes(range(30)) for _ in range(10))  # 10 rows of 10 RGB pixels
    assert imageio.decode(png_from_rows(10, 10, 2, 8, raw)).pixels.shape == (10, 10, 3)
    bad_filter = raw[:31 * 5] + b"\x07" + raw[31 * 5 + 1:]
    for png, words in [(png_from_rows(10, 10, 2, 8, bad_filter), "filter type"),
                       (png_from_rows(10, 10, 2, 8, raw[:-31]), "incomplete"),
                       (png_from_rows(10, 10, 2, 8, raw + b"\x00" * 31), "more pixel data"),
                       (png_from_rows(10, 10, 2, 8, raw)[:-20], "truncated")]:
        with pytest.raises(BadImageError, match=words):
            imageio.decode(png)
    crc = bytearray(png_from_rows(10, 10, 2, 8, raw))
    crc[60] ^= 0xFF  # inside the IDAT payload
    with pytest.raises(BadImageError, match="CRC"):
        imageio.decode(bytes(crc))


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def test_damaged_pngs_do_not_leak_memory():
    # libpng, through imagecodecs, leaked the rows it had decoded on every failing PNG: 1.4 MB
    # for a half 1 MP photo, so a few thousand damaged requests took gigabytes.
    pixels = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    png = imageio.encode(imageio.Picture(pixels, "png"))
    half, flipped = png[: len(png) // 2], bytearray(png)
    flipped[len(png) // 2] ^= 0xFF
    for body in (half, bytes(flipped)):
        with pytest.raises(BadImageError):
            imageio.decode(body)
    before = _rss_mb()
    for _ in range(20):
        for body in (half, bytes(flipped)):
            with pytest.raises(BadImageError):
                imageio.decode(body)
    assert _rss_mb() - before < 15, f"RSS grew {_rss_mb() - before:.0f} MB over 40 damaged PNGs"
