"""Reading and writing photos: bit depth, alpha, ICC and EXIF survive; damage is reported."""

import io

import numpy as np
import pytest
from PIL import Image

from plugin_server import imageio
from plugin_server.errors import BadImageError, UnsupportedFormatError


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


def test_peek_size_reads_headers_only(pexels):
    for fmt in ("png", "jpeg", "tiff"):
        data = imageio.encode(pexels.with_pixels(pexels.pixels).__class__(pexels.pixels, fmt))
        assert imageio.peek_size(data[:4096] if fmt != "tiff" else data) == (300, 240, fmt)
    bomb = bytearray(imageio.encode(imageio.Picture(pexels.pixels, "png")))
    bomb[16:24] = (100000).to_bytes(4, "big") * 2  # header claims 100000 x 100000
    assert imageio.peek_size(bytes(bomb[:64])) == (100000, 100000, "png")


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
