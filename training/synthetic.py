"""Synthetic before/after pairs: clean real photos with blemishes put back onto their skin.

Real retouching pairs are scarce, so a starter model learns from pairs made here: *after* is a
clean photo, *before* is the same photo with spots, pimples, redness and uneven tone added on
its skin. Every blemish multiplies the photo's own pixels (melanin and blood absorb light), so
pores and freckles stay visible underneath instead of being painted over.

    before, after = make_pair(clean, np.random.default_rng(0))                 # any portrait
    before, after = make_pair(ffhq, rng, face_box=aligned_face_box(1024, 1024))  # FFHQ layout
    pairs = SyntheticPairs(paths, pairs_per_photo=8, seed=0, short_side=1024, aligned=False)
    before, after = pairs[5]                          # deterministic per (seed, index)

    autoretouch-train synthetic --out data/synthetic --photos a.jpg b.png --pairs-per-photo 4 --seed 0

The command (``write_pairs``) writes the "studio" layout the trainer reads: OUT/before/NAME.png
and OUT/after/NAME.png.
Sizes are set at the scale of an FFHQ face (1024x1024, aligned) and scaled to each photo's face.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from plugin_server.errors import BadImageError

# FFHQ's alignment puts the face in these fractions of the image; features are given as fractions
# of the face box (top, left, bottom, right), so a detector box in the same convention works too.
ALIGNED_FACE = (0.18, 0.20, 0.92, 0.80)
FEATURE_BOXES = (
    (0.25, 0.08, 0.50, 0.48),  # left eye and eyebrow
    (0.25, 0.52, 0.50, 0.92),  # right eye and eyebrow
    (0.63, 0.22, 0.88, 0.78),  # mouth, teeth included when smiling
)
REFERENCE_FACE_WIDTH = 0.60 * 1024  # face-box width of an aligned 1024x1024 FFHQ photo
REFERENCE_SKIN_SIDE = 330.0  # sqrt(skin pixels) of a typical aligned 1024x1024 FFHQ face (10% of it)


@dataclass(frozen=True)
class FaceBox:
    """A face in pixels, forehead top to chin and cheek to cheek (end-exclusive)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def width(self) -> int:
        return self.right - self.left

    def part(self, top: float, left: float, bottom: float, right: float) -> FaceBox:
        h, w = self.bottom - self.top, self.width
        return FaceBox(
            self.top + round(top * h), self.left + round(left * w),
            self.top + round(bottom * h), self.left + round(right * w),
        )


def aligned_face_box(height: int, width: int) -> FaceBox:
    """The face box of an FFHQ-aligned photo (faces centred, eyes at 0.47 of the height)."""
    t, l, b, r = ALIGNED_FACE
    return FaceBox(round(t * height), round(l * width), round(b * height), round(r * width))


@dataclass(frozen=True)
class BlemishConfig:
    """How many blemishes of each kind a pair gets (inclusive ranges) and how strong they are.

    The defaults give pairs like the one real FFHQR pair: a few to ~12% of pixels touched, a
    fraction of a percent changed by more than 10 levels, and no global colour shift.
    """

    spots: tuple[int, int] = (2, 16)
    pimples: tuple[int, int] = (0, 4)
    redness: tuple[int, int] = (0, 4)
    blotches: tuple[int, int] = (2, 8)
    strength: float = 1.0  # multiplies every blemish's log-amplitude


# ---------------------------------------------------------------------------------------------
# Skin mask


def _blur(mask: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a [0, 1] map through PIL (fast on 8-bit); returns float32 in [0, 1]."""
    if radius <= 0:
        return mask.astype(np.float32)
    img = Image.fromarray(np.clip(mask * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255


def _box_mean(mask: np.ndarray, radius: int) -> np.ndarray:
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.filter(ImageFilter.BoxBlur(radius)), dtype=np.float32) / 255


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    # A box mean of exactly 1 means no hole in the neighbourhood (PIL's MinFilter is ~50x slower).
    return _box_mean(mask, radius) >= 0.999 if radius > 0 else mask


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return _box_mean(mask, radius) > 0.001 if radius > 0 else mask


def _ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y, 128 + 0.564 * (b - y), 128 + 0.713 * (r - y)


def _box_slices(box: FaceBox, shape: tuple[int, ...]) -> tuple[slice, slice]:
    h, w = shape[:2]
    return slice(max(box.top, 0), min(box.bottom, h)), slice(max(box.left, 0), min(box.right, w))


def _face_ellipse(box: FaceBox, h: int, w: int) -> np.ndarray:
    """The ellipse inscribed in the face box: (H, W) bool; the box's corners are background or hair."""
    yy, xx = np.ogrid[:h, :w]
    cy, cx = (box.top + box.bottom) / 2, (box.left + box.right) / 2
    ry, rx = (box.bottom - box.top) / 2, box.width / 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _mask_scale(shape: tuple[int, ...], face_box: FaceBox | None) -> float:
    # Filter radii follow the face; without a box, assume a portrait whose face spans ~60% of the
    # short side, like FFHQ (an estimate only used for the mask's smoothing radii).
    if face_box is not None:
        return max(face_box.width / REFERENCE_FACE_WIDTH, 0.25)
    return max(min(shape[:2]) / 1024, 0.25)


def skin_mask(image: np.ndarray, face_box: FaceBox | None = None) -> np.ndarray:
    """Smooth, even-coloured skin where blemishes may go: (H, W) bool.

    Skin colour is learned from the photo itself (a robust ellipse in CbCr around the pixels
    passing a broad skin rule). Strong edges (eyes, brows, lips, teeth, hair lines, glasses),
    very dark or near-white pixels and, given a face box, everything outside its inscribed
    ellipse and its eye and mouth boxes are left out, with a margin so blemishes never touch
    them. Without a box, only the skin connected to the face (see _main_component) is kept.
    """
    h, w = image.shape[:2]
    s = _mask_scale(image.shape, face_box)
    y, cb, cr = _ycbcr(image)
    # A broad YCbCr skin rule, narrowed to the pixels near this photo's own skin colour: that
    # keeps lips, hair and skin-like backgrounds out better than any fixed rule could.
    rule = (cb > 70) & (cb < 130) & (cr > 133) & (cr < 183) & (y > 40) & (y < 240)
    region = np.ones((h, w), bool)
    if face_box is not None:
        region = _face_ellipse(face_box, h, w)
        for part in FEATURE_BOXES:
            region[_box_slices(face_box.part(*part), image.shape)] = False
    # Learn the skin colour where a face is: in the box, or else in the middle of a portrait.
    centre = _face_ellipse(FaceBox(round(0.1 * h), round(0.2 * w), round(0.75 * h), round(0.8 * w)), h, w)
    seed = rule & (region if face_box is not None else centre)
    if seed.sum() < 100:
        seed = rule & region
    if seed.sum() < 100:
        return np.zeros((h, w), bool)
    for _ in range(2):  # the second pass re-centres on the skin the first pass found
        mcb, mcr, my = (float(np.median(c[seed])) for c in (cb, cr, y))
        scb = max(1.4826 * float(np.median(np.abs(cb[seed] - mcb))), 2.0)
        scr = max(1.4826 * float(np.median(np.abs(cr[seed] - mcr))), 2.0)
        colour = ((cb - mcb) / scb) ** 2 + ((cr - mcr) / scr) ** 2 < 3.0**2
        if (colour & seed).sum() < 100:
            break
        seed = colour & seed
    seed = rule & region & colour
    tone = (y > 0.55 * my) & (y < 240)
    # Edges at the scale of features, not of pores: blur first, then the gradient magnitude,
    # in levels per pixel of a 1024 face (a smaller face has steeper edges per pixel).
    yb = _blur(y / 255, 1.5 * s) * 255
    gy, gx = np.gradient(yb)
    edges = _dilate(np.hypot(gx, gy) * s > 5.0, round(4 * s))
    mask = seed & tone & ~edges
    # Fill pore-sized holes and drop specks, then keep a margin from every boundary.
    mask = _erode(_blur(mask.astype(np.float32), 2 * s) > 0.5, round(3 * s)) & region
    return mask if face_box is not None else _main_component(mask)


def _main_component(mask: np.ndarray, side: int = 128) -> np.ndarray:
    """The part of mask connected to its densest skin, the face in a portrait: (H, W) bool.

    Without a face box, skin-coloured walls or wood elsewhere in the photo pass the colour
    tests; being cut off from the face is what tells them apart. Connectivity is traced on a
    side-pixel thumbnail, where freckles and pores no longer split the face into pieces.
    """
    h, w = mask.shape
    f = max(h, w) / side
    thumb = Image.fromarray(mask.astype(np.uint8) * 255).resize((max(round(w / f), 1), max(round(h / f), 1)), Image.BOX)
    small = np.asarray(thumb, dtype=np.float32) / 255 > 0.25
    if not small.any():
        return mask
    # Portraits put the face in the upper middle; the prior keeps a large patch of skin-coloured
    # floor or wall from outweighing a freckled face.
    sh, sw = small.shape
    yy, xx = np.ogrid[:sh, :sw]
    prior = np.exp(-0.5 * (((yy - 0.4 * sh) / (0.3 * sh)) ** 2 + ((xx - 0.5 * sw) / (0.3 * sw)) ** 2))
    density = _blur(small.astype(np.float32), 6) * small * prior
    small = _dilate(small, 1)  # bridges gaps that freckles and shadows leave in a face
    grown = np.zeros_like(small)
    grown.flat[int(np.argmax(density))] = True
    while True:  # flood fill from the densest point, 4-connected
        nxt = grown.copy()
        nxt[1:] |= grown[:-1]
        nxt[:-1] |= grown[1:]
        nxt[:, 1:] |= grown[:, :-1]
        nxt[:, :-1] |= grown[:, 1:]
        nxt &= small
        if np.array_equal(nxt, grown):
            break
        grown = nxt
    near = np.asarray(Image.fromarray(grown.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    return mask & _dilate(near, round(f))


def face_scale(mask: np.ndarray, face_box: FaceBox | None = None) -> float:
    """How much larger this face is than an aligned 1024x1024 FFHQ face (blemish sizes follow)."""
    if face_box is not None:
        return face_box.width / REFERENCE_FACE_WIDTH
    return max(float(np.sqrt(mask.sum())) / REFERENCE_SKIN_SIDE, 0.1)


# ---------------------------------------------------------------------------------------------
# Blemishes: each adds a soft log-gain footprint to an (H, W, 3) field


def _low_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] of shape (h, w): irregular outlines for patches."""
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255


def _stamp(
    field: np.ndarray,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    sigma: float,
    log_rgb: np.ndarray,
    power: float = 2.0,
    irregular: float = 0.0,
    aspect: float = 1.0,
) -> None:
    """Add log_rgb * profile around (cy, cx) to field, in place.

    profile = exp(-0.5 (r/sigma)^power) on a rotated ellipse: power 2 is a gaussian, larger
    powers give a soft-edged disc. irregular in [0, 1] breaks the outline with smooth noise.
    """
    h, w = field.shape[:2]
    reach = 3.0 * sigma * max(aspect, 1.0)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, h)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, w)
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    r = np.sqrt((u / aspect) ** 2 + v**2) / sigma  # (h', w')
    profile = np.exp(-0.5 * r**power)
    if irregular > 0:
        cells = max(3, min(8, int(reach / max(sigma, 1) * 2)))
        profile *= (1 - irregular) + 2 * irregular * _low_noise(rng, y1 - y0, x1 - x0, cells)
    profile[r > 3.0] = 0  # a clean cut-off keeps each blemish local
    field[y0:y1, x0:x1] += profile[..., None] * log_rgb


def _spot(field: np.ndarray, rng: np.random.Generator, cy: float, cx: float, s: float, k: float) -> None:
    # Brown spot / mole / scab: 2-12 px across on a 1024 face, melanin takes more blue than red.
    diameter = (2 + 10 * rng.random() ** 1.5) * s  # small spots are the common ones
    depth = (0.04 + 0.18 * rng.random() ** 1.3) * k  # faint spots outnumber dark moles
    tint = np.array([1.0, rng.uniform(1.4, 1.8), rng.uniform(1.9, 2.6)], np.float32)
    _stamp(field, rng, cy, cx, diameter / 2.5, -depth * tint, power=rng.uniform(2, 3.5), aspect=rng.uniform(1, 1.5))


def _pimple(field: np.ndarray, rng: np.random.Generator, cy: float, cx: float, s: float, k: float) -> None:
    # Inflamed pimple: a red halo, a stronger red core and sometimes a pale (pus) head.
    sigma = rng.uniform(3, 8) * s
    red = rng.uniform(0.06, 0.16) * k
    _stamp(field, rng, cy, cx, sigma * 2.2, np.array([0.01, -0.5, -0.35], np.float32) * red, irregular=0.4)
    _stamp(field, rng, cy, cx, sigma, np.array([0.0, -1.0, -0.7], np.float32) * red, aspect=rng.uniform(1, 1.4))
    if rng.random() < 0.4:
        head = rng.uniform(0.04, 0.12) * k
        _stamp(field, rng, cy, cx, sigma * 0.3, np.array([0.6, 1.0, 1.0], np.float32) * head, power=3)


def _redness(field: np.ndarray, rng: np.random.Generator, cy: float, cx: float, s: float, k: float) -> None:
    # Flushed patch (cheeks, around the nose): large, irregular, a few levels of green and blue lost.
    amount = rng.uniform(0.02, 0.06) * k
    tint = np.array([rng.uniform(-0.1, 0.15), -1.0, rng.uniform(-0.8, -0.5)], np.float32)
    _stamp(field, rng, cy, cx, rng.uniform(15, 45) * s, amount * tint, irregular=0.7, aspect=rng.uniform(1, 2))


def _blotch(field: np.ndarray, rng: np.random.Generator, cy: float, cx: float, s: float, k: float) -> None:
    # Uneven tone: a low-amplitude darker (or, less often, shinier) area with a slight warm cast.
    amount = rng.uniform(0.02, 0.06) * k * (1 if rng.random() < 0.75 else -0.6)
    tint = np.array([0.8, 1.0, rng.uniform(1.0, 1.3)], np.float32)
    _stamp(field, rng, cy, cx, rng.uniform(12, 45) * s, -amount * tint, irregular=0.6, aspect=rng.uniform(1, 1.8))


_KINDS = (("spots", _spot), ("pimples", _pimple), ("redness", _redness), ("blotches", _blotch))
KINDS = tuple(name for name, _ in _KINDS)  # local ones first, then the broad tone patches


def only_kinds(kinds: Sequence[str], config: BlemishConfig = BlemishConfig()) -> BlemishConfig:
    """``config`` with every blemish kind not in ``kinds`` switched off."""
    return replace(config, **{kind: (0, 0) for kind in KINDS if kind not in kinds})


def add_blemishes(
    clean: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    scale: float,
    config: BlemishConfig = BlemishConfig(),
) -> np.ndarray:
    """clean with blemishes on mask: (H, W, 3) uint8; pixels outside mask are left as they are.

    Blemish centres are drawn from the mask's interior and their footprints fade out before the
    mask's edge (a feathered mask), so no blemish is cut off with a visible seam.
    """
    # Wide enough that a large blotch meeting the mask's edge fades out instead of ending in a seam.
    feather = max(5.0 * scale, 1.0)
    weight = _blur(_erode(mask, round(feather)).astype(np.float32), feather) * mask  # (H, W)
    inner = np.flatnonzero(weight.ravel() > 0.9)
    if inner.size == 0:
        return clean.copy()
    field = np.zeros(clean.shape[:2] + (3,), np.float32)  # log-gain per channel
    w = clean.shape[1]
    for name, add in _KINDS:
        low, high = getattr(config, name)
        for _ in range(int(rng.integers(low, high + 1))):
            centre = int(inner[rng.integers(inner.size)])
            add(field, rng, centre // w + rng.uniform(-0.5, 0.5), centre % w + rng.uniform(-0.5, 0.5), scale, config.strength)
    gain = np.exp(field * weight[..., None])
    return np.clip(clean * gain + 0.5, 0, 255).astype(np.uint8)


def make_pair(
    clean: np.ndarray,
    rng: np.random.Generator,
    face_box: FaceBox | None = None,
    config: BlemishConfig = BlemishConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """(before, after) from one clean (H, W, 3) uint8 photo; after is clean itself (a copy)."""
    if clean.dtype != np.uint8 or clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 photo, got {clean.dtype} {clean.shape}")
    mask = skin_mask(clean, face_box)
    before = add_blemishes(clean, mask, rng, face_scale(mask, face_box), config)
    return before, clean.copy()


# ---------------------------------------------------------------------------------------------
# Photos in, pairs out


def load_photo(path: Path, short_side: int | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 photo, upright, optionally shrunk so its short side is short_side."""
    try:
        with Image.open(path) as img:
            if short_side is not None:
                img.draft("RGB", (short_side, short_side))  # JPEG: decode at a reduced size, fast
            img = ImageOps.exif_transpose(img).convert("RGB")
            return fit_short_side(np.asarray(img), short_side) if short_side else np.asarray(img)
    except OSError as exc:  # missing, unreadable or not an image (PIL's UnidentifiedImageError)
        raise BadImageError(f"cannot read the photo {path}: {exc}") from exc


def fit_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """image shrunk (never enlarged) so that its short side is short_side pixels."""
    h, w = image.shape[:2]
    f = short_side / min(h, w)
    if f >= 1:
        return image
    size = (max(round(w * f), 1), max(round(h * f), 1))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def crop_around_skin(image: np.ndarray, size: int) -> np.ndarray:
    """A size x size crop (or less, for small photos) centred on the photo's skin.

    Finds skin on a small thumbnail, so it is cheap even on 24 MP photos; the median of the skin
    pixels is a robust centre that a stray hand or a skin-coloured wall moves little.
    """
    h, w = image.shape[:2]
    thumb = fit_short_side(image, 512)
    mask = skin_mask(thumb)
    if mask.any():
        ys, xs = np.nonzero(mask)
        cy, cx = np.median(ys) * h / thumb.shape[0], np.median(xs) * w / thumb.shape[1]
    else:
        cy, cx = h / 2, w / 2
    ch, cw = min(size, h), min(size, w)
    top = int(np.clip(round(cy - ch / 2), 0, h - ch))
    left = int(np.clip(round(cx - cw / 2), 0, w - cw))
    return image[top : top + ch, left : left + cw]


def keep_crop(clean: np.ndarray, face_box: FaceBox, rng: np.random.Generator) -> np.ndarray:
    """An untouched square around an eye, the mouth or a top corner of the background.

    As a pair with itself it teaches "change nothing here" where a small model is most tempted
    to edit: lashes, brows, the red inner corner of an eye, lips, and colourful backgrounds.
    """
    h, w = clean.shape[:2]
    size = max(round(0.25 * face_box.width / (ALIGNED_FACE[3] - ALIGNED_FACE[1])), 8)
    choice = int(rng.integers(len(FEATURE_BOXES) + 1))
    if choice < len(FEATURE_BOXES):
        part = face_box.part(*FEATURE_BOXES[choice])
        cy, cx = (part.top + part.bottom) / 2, (part.left + part.right) / 2
    else:
        cy, cx = size / 2, size / 2 if rng.random() < 0.5 else w - size / 2
    cy, cx = cy + rng.uniform(-0.2, 0.2) * size, cx + rng.uniform(-0.2, 0.2) * size
    top = int(np.clip(round(cy - size / 2), 0, max(h - size, 0)))
    left = int(np.clip(round(cx - size / 2), 0, max(w - size, 0)))
    return clean[top : top + size, left : left + size].copy()


class SyntheticPairs:
    """pairs_per_photo (before, after) pairs per photo, indexable like a map-style Dataset.

    Pair i is photo i // pairs_per_photo with blemishes from the seed (seed, i), so any index
    gives the same pair in any order, in any worker. Photos given as paths are read on access
    (shrunk to short_side first when given, then cut to a crop x crop square around the skin);
    aligned=True uses the FFHQ face layout.
    """

    def __init__(
        self,
        photos: Sequence[np.ndarray | Path],
        pairs_per_photo: int,
        seed: int,
        short_side: int | None = None,
        aligned: bool = False,
        config: BlemishConfig = BlemishConfig(),
        crop: int | None = None,
    ) -> None:
        if pairs_per_photo < 1:
            raise ValueError("pairs_per_photo must be at least 1")
        self.photos = list(photos)
        self.pairs_per_photo = pairs_per_photo
        self.seed = seed
        self.short_side = short_side
        self.aligned = aligned
        self.config = config
        self.crop = crop

    def __len__(self) -> int:
        return len(self.photos) * self.pairs_per_photo

    def photo(self, index: int) -> np.ndarray:
        photo = self.photos[index // self.pairs_per_photo]
        if isinstance(photo, np.ndarray):
            photo = fit_short_side(photo, self.short_side) if self.short_side else photo
        else:
            photo = load_photo(Path(photo), self.short_side)
        return crop_around_skin(photo, self.crop) if self.crop else photo

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.pair(self.photo(index), index)

    def pair(self, clean: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` from its photo, already read with ``photo(index)``."""
        box = aligned_face_box(*clean.shape[:2]) if self.aligned else None
        return make_pair(clean, np.random.default_rng([self.seed, index]), box, self.config)

    def keep(self, clean: np.ndarray, index: int) -> np.ndarray:
        """Pair ``index``'s untouched feature crop of its photo (aligned faces only; see ``keep_crop``)."""
        if not self.aligned:
            raise ValueError("keep crops need aligned faces (--aligned): their eyes and mouth are where FFHQ puts them")
        return keep_crop(clean, aligned_face_box(*clean.shape[:2]), np.random.default_rng([self.seed, index, 1]))


def write_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_pairs(pairs: SyntheticPairs, names: Sequence[str], out: Path, keep: bool = False) -> list[str]:
    """Write every pair as out/before/NAME-K.png and out/after/NAME-K.png; returns the names.

    With keep, each pair also gets NAME-K-keep.png, the same untouched crop on both sides.
    """
    written = []
    for index in range(len(pairs)):
        stem = f"{names[index // pairs.pairs_per_photo]}-{index % pairs.pairs_per_photo:03d}"
        clean = pairs.photo(index)  # read once: large photos are slow to decode
        items = [(f"{stem}.png", *pairs.pair(clean, index))]
        if keep:
            crop = pairs.keep(clean, index)
            items.append((f"{stem}-keep.png", crop, crop))
        for name, before, after in items:
            write_png(before, out / "before" / name)
            write_png(after, out / "after" / name)
            written.append(name)
    return written
