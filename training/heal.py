"""The heal procedure: what a retoucher's spot healing and redness reduction do, as a filter.

It makes training targets from real, unretouched portraits (``autoretouch-train heal``), so a
model learns to *remove* real blemishes rather than keep them. The product stays the generator;
this is a tool for making data, and a baseline the model card compares the model with.

    healed = heal(rgb, face, mask)                 # rgb (H, W, 3) float in [0, 1]; face from landmarks
    healed, found = heal(rgb, face, mask, report=True)   # with what it healed and left

Inside the skin mask only, in CIELAB, every quantity measured in inter-ocular distances (IOD), so
it does the same at any resolution:

1. Split each channel into a low-frequency part (Gaussian, ``texture`` IOD) and the fine detail
   above it (pores, stubble, fine hairs), which is never changed.
2. A robust local baseline of the skin: the mask-weighted Gaussian mean (``baseline`` IOD) of the
   low-frequency part, measured twice more without the pixels that stand out from it either way,
   so a pimple does not pull its own baseline up and the baseline is not biased.
3. Spots: connected areas with excess redness (a* above the baseline by ``red`` units: blood) or
   darkness (L below it by ``dark``: melanin, scabs). Red ones are healed whatever their size
   (pimples, flushed patches). Dark ones without redness are left when they are moles (larger than
   ``mole`` IOD across) or freckles (``freckle_count`` or more dark spots within ``freckle_radius``
   IOD: an even field of small melanin spots).
4. Healing: the low-frequency part of each healed spot moves toward the baseline by ``amount``
   (only in the direction of the excess: redness down, darkness up), feathered at its edge.
5. Tone evening: everywhere else on the skin except moles and freckles, ``even`` of the same
   excess (at most a threshold's worth) is removed: darker and redder patches fade a little.
6. Under-eye shadows, a band below each lower lid, are lifted by ``under_eye`` of their deficit
   against the same side's cheek.

Nothing else changes: no global grade, lips, eyes, brows and everything off the mask untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from plugin_server.faces import Face

# The subject's lower lids, outer corner to inner, and the cheek landmark on the same side.
_LOWER_LIDS = ((33, 7, 163, 144, 145, 153, 154, 155, 133), (263, 249, 390, 373, 374, 380, 381, 382, 362))
_CHEEKS = (50, 280)
_LIPS_CENTRE = (13, 14)


@dataclass(frozen=True)
class HealParams:
    """The procedure's settings; lengths in IODs, colour in CIELAB units. Saved in every model's metadata."""

    texture: float = 0.005  # detail finer than this (sigma) is kept as it is: about 1.3 px at an IOD of 256
    baseline: float = 0.06  # sigma of the local skin baseline; the generator's reach at 256 is 0.12 IOD
    red: float = 2.0  # a* excess where a spot starts
    dark: float = 3.0  # L deficit where a spot starts
    min_area: float = 0.0003  # IOD^2 (a disc of 0.02 IOD, 5 px at 256): smaller is texture (pores)
    mole: float = 0.05  # dark spots without redness wider than this are moles, left alone
    freckle_radius: float = 0.25
    freckle_count: int = 5  # dark spots within freckle_radius that make a freckle field
    redness_ratio: float = 1.0  # a red area is a red spot when its a* excess is at least its L deficit (folds and shading are darker than red)
    amount: float = 0.9  # of a healed spot's excess removed
    even: float = 0.3  # of the excess removed elsewhere on the skin (tone evening)
    grow: float = 0.012  # healed spots are grown by this first: a spot's halo is below the thresholds
    feather: float = 0.008  # sigma of the soft edge around healed spots
    under_eye: float = 0.3  # of the under-eye shadow's deficit removed
    under_eye_depth: float = 0.22  # how far below the lower lid the band reaches

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Found:
    """What the procedure found on one face: counts of spots healed and left, by reason."""

    red: int
    dark: int
    moles: int
    freckles: int


# ---------------------------------------------------------------------------------------------
# CIELAB (sRGB, D65)

_M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
               [0.0193339, 0.1191920, 0.9503041]], np.float64)
_WHITE = _M.sum(1)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> CIELAB (L in 0-100), float64."""
    c = np.asarray(rgb, np.float64)
    linear = np.where(c <= 0.04045, c / 12.92, ((np.clip(c, 0.04045, None) + 0.055) / 1.055) ** 2.4)
    t = (linear @ _M.T) / _WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB -> (..., 3) sRGB in [0, 1] (not clipped), float64."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    t = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE
    linear = t @ np.linalg.inv(_M).T
    return np.where(linear <= 0.0031308, 12.92 * linear,
                    1.055 * np.clip(linear, 0.0031308, None) ** (1 / 2.4) - 0.055)


# ---------------------------------------------------------------------------------------------
# The procedure


@dataclass(frozen=True)
class Skin:
    """What the procedure measures on a face (all (H, W) over the array it was given)."""

    lab: np.ndarray  # (H, W, 3) CIELAB of the image
    low: np.ndarray  # (H, W, 3) its part below the texture scale
    base: np.ndarray  # (H, W, 3) the robust local skin baseline
    red_spots: np.ndarray  # bool: spots healed for their redness
    dark_spots: np.ndarray  # bool: dark spots healed
    left: np.ndarray  # bool: moles and freckles, left alone
    freckles: np.ndarray  # bool: the freckles among them
    found: Found

    @property
    def redness(self) -> np.ndarray:
        """a* above the baseline, in CIELAB units."""
        return self.low[..., 1] - self.base[..., 1]

    @property
    def darkness(self) -> np.ndarray:
        """L below the baseline."""
        return self.base[..., 0] - self.low[..., 0]


def heal(rgb: np.ndarray, face: Face, mask: np.ndarray, params: HealParams = HealParams(),
         report: bool = False) -> np.ndarray | tuple[np.ndarray, Found]:
    """``rgb`` (H, W, 3) in [0, 1] healed on ``mask`` (H, W) in [0, 1] (this face's skin, e.g.
    ``faces.skin_mask(image, face, (0, 0, W, H))``): float32, equal to ``rgb`` wherever mask is 0."""
    rgb = np.asarray(rgb, np.float32)
    out = rgb.copy()
    found = Found(0, 0, 0, 0)
    rows, cols = np.nonzero(mask > 0)
    if rows.size:
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        pad = int(np.ceil(3 * params.baseline * face.iod)) + 2  # what the baseline reads beyond the skin
        y0, x0 = max(y0 - pad, 0), max(x0 - pad, 0)
        y1, x1 = min(y1 + pad, rgb.shape[0]), min(x1 + pad, rgb.shape[1])
        local = Face(face.landmarks - np.float32([x0, y0]), face.box, face.left_eye - [x0, y0],
                     face.right_eye - [x0, y0], face.iod, face.score)
        region = np.asarray(mask[y0:y1, x0:x1], np.float32)
        healed, found = _heal_region(rgb[y0:y1, x0:x1], local, region, params)
        out[y0:y1, x0:x1] = healed
    return (out, found) if report else out


def analyse(rgb: np.ndarray, face: Face, mask: np.ndarray, params: HealParams = HealParams()) -> Skin:
    """The baseline, the spots and what is left alone on ``rgb`` (H, W, 3) in [0, 1], skin ``mask``."""
    p = params
    lab = rgb_to_lab(rgb)
    low = low_frequency(lab, face.iod, p)
    sure = mask > 0.5
    base = _masked_mean(low, sure, p.baseline * face.iod)
    for _ in range(2):  # re-measured without what stands out: a pimple must not raise its own baseline
        red, dark = low[..., 1] - base[..., 1], base[..., 0] - low[..., 0]
        # Both ways: leaving out only the dark and red side would bias the baseline and grade the skin.
        base = _masked_mean(low, sure & (np.abs(red) < p.red / 2) & (np.abs(dark) < p.dark / 2), p.baseline * face.iod)
    red, dark = low[..., 1] - base[..., 1], base[..., 0] - low[..., 0]
    return _classify(lab, low, base, red, dark, mask, face.iod, p)


def low_frequency(lab: np.ndarray, iod: float, params: HealParams = HealParams()) -> np.ndarray:
    """``lab``'s part below the texture scale: what the procedure measures and moves."""
    return ndimage.gaussian_filter(lab, (params.texture * iod,) * 2 + (0,))


def _heal_region(rgb: np.ndarray, face: Face, mask: np.ndarray, p: HealParams) -> tuple[np.ndarray, Found]:
    skin = analyse(rgb, face, mask, p)
    red, dark = skin.redness, skin.darkness
    feather = lambda spots: np.clip(ndimage.gaussian_filter(spots.astype(np.float64), p.feather * face.iod) * 2, 0, 1)  # noqa: E731
    spots = feather(ndimage.distance_transform_edt(~(skin.red_spots | skin.dark_spots)) <= p.grow * face.iod)
    even = p.even * (1 - spots) * (1 - feather(skin.left))
    # Evening moves at most a threshold's worth: shading at the skin's edge is not a blemish.
    excess = np.stack([np.maximum(dark, 0), np.maximum(red, 0), skin.low[..., 2] - skin.base[..., 2]], -1)
    capped = np.clip(excess, -np.array([p.dark, p.red, p.red]), np.array([p.dark, p.red, p.red]))
    delta = -(p.amount * spots[..., None] * excess + even[..., None] * capped)
    delta[..., 0] *= -1  # L goes up, a* and b* toward the baseline
    delta[..., 0] += _under_eye_lift(skin.low[..., 0], face, mask > 0.5, p)
    delta *= mask[..., None]
    out = lab_to_rgb(skin.lab + delta)
    return np.where(mask[..., None] > 0, out, rgb).astype(np.float32), skin.found


def _masked_mean(values: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean of ``values`` (H, W, C) over ``where`` only (normalised convolution)."""
    weight = ndimage.gaussian_filter(where.astype(np.float64), sigma)
    total = ndimage.gaussian_filter(values * where[..., None], (sigma, sigma, 0))
    return total / np.maximum(weight, 1e-6)[..., None]


def _classify(lab: np.ndarray, low: np.ndarray, base: np.ndarray, red: np.ndarray, dark: np.ndarray, mask: np.ndarray,
              iod: float, p: HealParams) -> Skin:
    """The spots that stand out from the baseline, sorted into healed and left alone.

    Red areas are found first, on their own, so dark pores beside a pimple do not make it a
    dark spot; a red area darker than it is red (a brown mole's rim) joins the dark ones."""
    on_skin = mask > 0.25
    labels, count = ndimage.label((red > p.red) & on_skin)
    index = np.arange(1, count + 1)
    area = ndimage.sum(labels > 0, labels, index)
    redness = ndimage.mean(np.maximum(red, 0), labels, index)
    darkness = ndimage.mean(np.maximum(dark, 0), labels, index)
    is_red = (area >= p.min_area * iod * iod) & (redness >= p.redness_ratio * darkness)
    red_spots = np.concatenate([[False], is_red])[labels]
    labels, count = ndimage.label(((dark > p.dark) | (labels > 0)) & on_skin & ~red_spots)
    index = np.arange(1, count + 1)
    area = ndimage.sum(labels > 0, labels, index)
    centres = np.array(ndimage.center_of_mass(labels > 0, labels, index)).reshape(-1, 2)
    big_enough = area >= p.min_area * iod * iod
    is_mole = big_enough & (2 * np.sqrt(area / np.pi) > p.mole * iod)
    small = big_enough & ~is_mole
    freckle = np.zeros(count, bool)
    if small.any():
        points = centres[small]
        near = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1)) <= p.freckle_radius * iod
        freckle[np.flatnonzero(small)] = near.sum(1) - 1 >= p.freckle_count

    def where(kind: np.ndarray) -> np.ndarray:
        return np.concatenate([[False], kind])[labels]

    found = Found(int(is_red.sum()), int((small & ~freckle).sum()), int(is_mole.sum()), int(freckle.sum()))
    return Skin(lab, low, base, red_spots, where(small & ~freckle), where(is_mole | freckle), where(freckle), found)


def _under_eye_lift(lightness: np.ndarray, face: Face, sure: np.ndarray, p: HealParams) -> np.ndarray:
    """L to add under each eye: ``under_eye`` of the band's deficit against that side's cheek."""
    if p.under_eye <= 0:
        return np.zeros_like(lightness)
    h, w = lightness.shape
    across = face.left_eye - face.right_eye
    down = np.array([-across[1], across[0]], np.float64) / max(np.hypot(*across), 1e-6)
    if (face.landmarks[list(_LIPS_CENTRE)].mean(0) - (face.left_eye + face.right_eye) / 2) @ down < 0:
        down = -down
    lift = np.zeros_like(lightness)
    yy, xx = np.mgrid[0:h, 0:w]
    for lid, cheek in zip(_LOWER_LIDS, _CHEEKS):
        rim = face.landmarks[list(lid)].astype(np.float64)
        band = np.concatenate([rim + down * 0.04 * face.iod, (rim + down * p.under_eye_depth * face.iod)[::-1]])
        canvas = Image.new("F", (w, h), 0.0)
        ImageDraw.Draw(canvas).polygon([tuple(q) for q in band.tolist()], fill=1.0)
        region = ndimage.gaussian_filter(np.asarray(canvas, np.float64), 0.05 * face.iod)
        cx, cy = face.landmarks[cheek]
        disk = ((xx - cx) ** 2 + (yy - cy) ** 2 <= (0.07 * face.iod) ** 2) & sure
        if disk.sum() < 8:
            continue
        reference = float(np.median(lightness[disk]))
        lift += p.under_eye * np.maximum(reference - lightness, 0) * region
    return lift
