"""Face geometry and skin masks from 468 face-mesh landmarks: pure numpy, no model, no I/O.

    from plugin_server.landmarks import find_faces
    from plugin_server.faces import skin_mask
    for face in find_faces(pixels):
        x0, y0, x1, y1 = face.box
        mask = skin_mask(pixels, face, face.box)   # float32 (y1 - y0, x1 - x0) in [0, 1]

Landmark indices are MediaPipe's face-mesh topology; "left" and "right" are the subject's (the
subject's right eye is on the image's left in an unmirrored photo). ``docs/faces.md`` lists which
indices make which region. The mask is built at a working scale where the inter-ocular distance
(IOD) is at most ``WORK_IOD`` pixels, so its cost does not grow with the photo, and resampled to
the region's native pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from plugin_server.errors import BadImageError

WORK_IOD = 160.0  # px; the mask is computed with the IOD at most this

# Closed loops of MediaPipe face-mesh indices, each in drawing order.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
# The eye opening's lower rim, then the upper lid up to its crease (the mesh's second upper ring).
RIGHT_EYE_AND_LID = (33, 7, 163, 144, 145, 153, 154, 155, 133, 243, 190, 56, 28, 27, 29, 30, 247, 130)
LEFT_EYE_AND_LID = (263, 249, 390, 373, 374, 380, 381, 382, 362, 463, 414, 286, 258, 257, 259, 260, 467, 359)
RIGHT_BROW = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)
LEFT_BROW = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
# The nostril openings seen from the front: the alar rim's lower edge around each hole.
RIGHT_NOSTRIL = (98, 64, 240, 75, 79, 166, 60, 99)
LEFT_NOSTRIL = (327, 294, 460, 305, 309, 392, 290, 328)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
# Sure skin for the colour model: the cheeks and the nose's side walls, which hair, beards and
# glasses rarely cover (not the skin just under the eyes, often seen through a lens).
SURE_SKIN = (50, 280, 101, 330, 205, 425, 36, 266, 129, 358)

FOREHEAD_LIFT = 0.35  # the mesh stops mid-forehead: its upper oval is raised this much of its height above the brows
EYE_MARGIN = 0.035  # IODs added around the eyes and lids (lashes)
BROW_MARGIN = 0.03
LIP_MARGIN = 0.02
FEATHER = 0.06  # IODs over which the mask rises from 0 to 1 inside its edge
SKIN_RADIUS = 0.07  # IODs around each sure-skin landmark
CHROMA_FLOORS = (0.08, 0.1)  # std floors of the chroma Gaussian, for the shade on a face's far side
CHROMA_SIGMAS = (3.0, 5.0)  # Mahalanobis distance where chroma stops being sure skin, and where it is not skin
DARKER = (0.9, 1.4)  # log luminance below the sure skin's where a pixel stops being skin (2.5x), and is not (4x)
BLOB_AREA = 0.02  # IOD^2: unlike-skin patches smaller than this are blemishes or freckles, kept as skin


@dataclass(frozen=True, eq=False)
class Face:
    """One face: 468 landmarks (x, y) in image pixels and what follows from them."""

    landmarks: np.ndarray  # (468, 2) float32
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 around the skin mask's extent, clipped to the image
    left_eye: np.ndarray  # (2,) the subject's left eye centre
    right_eye: np.ndarray  # (2,)
    iod: float  # inter-ocular distance, px
    score: float  # the detector's confidence


def face_from_landmarks(landmarks: np.ndarray, score: float, shape: tuple[int, int]) -> Face:
    """A Face from (468, 2) landmarks in an image of ``shape`` (height, width)."""
    landmarks = np.array(landmarks, np.float32)[:, :2]
    left_eye = landmarks[list(LEFT_EYE)].mean(0)
    right_eye = landmarks[list(RIGHT_EYE)].mean(0)
    for array in (landmarks, left_eye, right_eye):
        array.setflags(write=False)  # a frozen value: its arrays cannot change under it either
    iod = float(np.hypot(*(left_eye - right_eye)))
    outline = face_outline(landmarks)
    height, width = shape
    x0, y0 = np.floor(outline.min(0)).astype(int)
    x1, y1 = np.ceil(outline.max(0)).astype(int) + 1
    box = (int(max(x0, 0)), int(max(y0, 0)), int(min(x1, width)), int(min(y1, height)))
    return Face(landmarks, box, left_eye, right_eye, iod, float(score))


def face_outline(landmarks: np.ndarray) -> np.ndarray:
    """The mask's outer polygon (36, 2): the mesh's face oval with its upper part raised to take the
    whole forehead (the colour model then removes any hair it reaches)."""
    oval = landmarks[list(FACE_OVAL)].astype(np.float64)
    eyes = (landmarks[list(LEFT_EYE)].mean(0) + landmarks[list(RIGHT_EYE)].mean(0)) / 2
    brows = landmarks[list(RIGHT_BROW + LEFT_BROW)].mean(0)
    up = brows - eyes
    up /= max(np.hypot(*up), 1e-6)
    height = (brows - oval) @ up  # < 0 above the brows
    lift = np.clip(-height, 0, None) * FOREHEAD_LIFT
    return (oval + lift[:, None] * up).astype(np.float32)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 for the models and masks: gray replicated, alpha dropped, float as [0, 1]."""
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise BadImageError(f"expected an (H, W, C) image with C in 1, 3, 4, got shape {image.shape}")
    pixels = image[:, :, :3] if image.shape[2] >= 3 else image[:, :, :1]
    if pixels.dtype == np.uint8:
        rgb8 = pixels
    elif pixels.dtype == np.uint16:
        rgb8 = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif pixels.dtype == np.float32:
        rgb8 = (np.clip(np.nan_to_num(pixels), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise BadImageError(f"pixels must be uint8, uint16 or float32, got {image.dtype}")
    if rgb8.shape[2] == 1:
        rgb8 = np.repeat(rgb8, 3, axis=2)
    return np.ascontiguousarray(rgb8)


def region_mask(face: Face, region: tuple[int, int, int, int], scale: float = 1.0) -> np.ndarray:
    """The geometric skin area, bool (h, w) over ``region`` sampled every 1/scale pixels: the
    outline minus eyes with lids, brows, lips and nostrils (each grown by its margin)."""
    x0, y0, x1, y1 = region
    w, h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    to_work = lambda points: [tuple(p) for p in ((points - [x0, y0]) * scale).tolist()]  # noqa: E731
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(to_work(face_outline(face.landmarks)), fill=1)
    inside = np.asarray(canvas, bool).copy()
    for loop, margin in ((RIGHT_EYE_AND_LID, EYE_MARGIN), (LEFT_EYE_AND_LID, EYE_MARGIN), (RIGHT_BROW, BROW_MARGIN),
                         (LEFT_BROW, BROW_MARGIN), (LIPS, LIP_MARGIN), (RIGHT_NOSTRIL, 0.0), (LEFT_NOSTRIL, 0.0)):
        hole = Image.new("1", (w, h), 0)
        ImageDraw.Draw(hole).polygon(to_work(face.landmarks[list(loop)]), fill=1)
        hole_mask = np.asarray(hole, bool)
        radius = margin * face.iod * scale
        rows, cols = np.nonzero(hole_mask)
        if radius >= 0.5 and rows.size:
            # Grow the hole by its margin; only its own neighbourhood can be within reach.
            pad = int(np.ceil(radius)) + 1
            top, bottom = max(rows.min() - pad, 0), min(rows.max() + pad + 1, h)
            left, right = max(cols.min() - pad, 0), min(cols.max() + pad + 1, w)
            near = hole_mask[top:bottom, left:right]
            hole_mask = hole_mask.copy()
            hole_mask[top:bottom, left:right] = ndimage.distance_transform_edt(~near) <= radius
        inside &= ~hole_mask
    return inside


def skin_colour_mask(rgb: np.ndarray, sure: np.ndarray, iod: float) -> np.ndarray:
    """Where ``rgb`` (h, w, 3) uint8 has this face's skin colour, float32 in [0, 1].

    Two terms, fitted to the ``sure`` pixels. Chroma (red-green and yellow-blue relative to
    luminance) is a Gaussian with generous floors: shade makes skin a little more saturated.
    Luminance only excludes what is far darker than the sure skin (hair, beards, frames, nostrils
    in shadow): shade on a cheek darkens it under 2x, dark hair over fair skin 3x or more.
    Unlike-skin patches smaller than BLOB_AREA are kept as skin: spots, pimples and freckles are
    what the retouch is for."""
    colour = _opponent(rgb.reshape(-1, 3))
    samples = colour[sure.ravel()]
    if len(samples) < 16:
        return np.ones(rgb.shape[:2], np.float32)
    d2 = np.zeros(len(samples))
    for _ in range(2):  # the second fit drops the 5 % least skin-like samples (freckles, stray hair)
        samples = samples[d2 <= np.quantile(d2, 0.95)] if d2.any() else samples
        mean = samples.mean(0)
        cov = np.cov(samples[:, 1:], rowvar=False) + np.diag(CHROMA_FLOORS) ** 2
        inv = np.linalg.inv(cov)
        d2 = np.einsum("ij,jk,ik->i", samples[:, 1:] - mean[1:], inv, samples[:, 1:] - mean[1:])
    centred = colour[:, 1:] - mean[1:]
    distance = np.sqrt(np.einsum("ij,jk,ik->i", centred, inv, centred))
    near, far = CHROMA_SIGMAS
    chroma = np.clip((far - distance) / (far - near), 0.0, 1.0)
    near, far = DARKER
    darker = mean[0] - colour[:, 0]
    luminance = np.clip((far - darker) / (far - near), 0.0, 1.0)
    likeness = (chroma * luminance).reshape(rgb.shape[:2])
    unlike = likeness < 0.5
    labels, count = ndimage.label(unlike)
    if count:
        sizes = ndimage.sum(unlike, labels, index=np.arange(1, count + 1))
        small = np.concatenate([[False], sizes < BLOB_AREA * iod * iod])
        likeness[small[labels]] = 1.0
    return likeness.astype(np.float32)


def _opponent(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N, 3) float32: log luminance, (R - G) / L, ((R + G) / 2 - B) / L."""
    rgb = pixels.astype(np.float32) + 4.0  # keeps black away from log(0) and division by 0
    luminance = rgb.mean(1)
    red_green = (rgb[:, 0] - rgb[:, 1]) / luminance
    yellow_blue = ((rgb[:, 0] + rgb[:, 1]) / 2 - rgb[:, 2]) / luminance
    return np.stack([np.log(luminance), red_green, yellow_blue], 1)


def skin_mask(image: np.ndarray, face: Face, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The face's skin in ``region`` (x0, y0, x1, y1; default ``face.box``; it may reach past the
    image): float32 (h, w) in [0, 1], exactly 0 off the skin, rising to 1 over FEATHER IODs inside
    its edge. The mask is always made over the whole ``face.box`` and then cut, so any two regions
    agree where they overlap."""
    x0, y0, x1, y1 = face.box if region is None else region
    out = np.zeros((y1 - y0, x1 - x0), np.float32)
    bx0, by0, bx1, by1 = face.box
    ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
    if ix1 <= ix0 or iy1 <= iy0:
        return out
    mask = _face_mask(image, face)
    out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = mask[iy0 - by0 : iy1 - by0, ix0 - bx0 : ix1 - bx0]
    return out


def _face_mask(image: np.ndarray, face: Face) -> np.ndarray:
    """The skin mask over ``face.box``, made at the working scale and resampled to native pixels."""
    bx0, by0, bx1, by1 = face.box
    scale = min(1.0, WORK_IOD / max(face.iod, 1e-6))
    crop = Image.fromarray(to_rgb8(image[by0:by1, bx0:bx1]))
    w, h = max(1, round((bx1 - bx0) * scale)), max(1, round((by1 - by0) * scale))
    rgb = np.asarray(crop.resize((w, h), Image.Resampling.BOX)) if scale < 1.0 else np.asarray(crop)
    geometry = region_mask(face, face.box, scale)
    sure = _disks(face, face.box, scale, (h, w)) & geometry
    colour = skin_colour_mask(rgb, sure, face.iod * scale)
    skin = geometry & (colour > 0.0)
    # Feather inward: 0 on the edge, 1 at FEATHER IODs in, so nothing spills off the skin.
    ramp = np.clip(ndimage.distance_transform_edt(skin) / (FEATHER * face.iod * scale), 0.0, 1.0)
    work = (ramp * ramp * (3.0 - 2.0 * ramp) * colour).astype(np.float32)
    if scale < 1.0:
        work = np.asarray(Image.fromarray(work, "F").resize((bx1 - bx0, by1 - by0), Image.Resampling.BILINEAR))
    return np.clip(work, 0.0, 1.0)


def _disks(face: Face, region: tuple[int, int, int, int], scale: float, shape: tuple[int, int]) -> np.ndarray:
    """Disks of SKIN_RADIUS IODs around the sure-skin landmarks, bool ``shape`` over ``region``."""
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    radius = SKIN_RADIUS * face.iod * scale
    for x, y in ((face.landmarks[list(SURE_SKIN)] - region[:2]) * scale).tolist():
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=1)
    return np.asarray(canvas, bool)
