"""Face-aware retouching: every face at the model's own scale, and nothing but skin touched.

    result = retouch(pixels, model, RetouchOptions())      # Result(pixels, faces, mask)
    result.faces                                           # faces found (0: the image is unchanged)

For each face: a crop around its skin with a margin of at least the receptive field at working
scale, resampled so its inter-ocular distance (IOD) equals the model's declared scale (models
trained without face normalisation, ``scale=None``, run at native scale), exact tiled inference
there, the residual resampled back to native size, multiplied by the face's skin mask and the
strength, and added. Faces smaller than the model's scale are upsampled to it, like larger ones
are downsampled: the model only ever sees faces at the scale it learnt. Overlapping faces
combine by their masks. Every pixel outside the skin masks comes back bit-identical, and memory
stays bounded by the largest face crop (plus the faces' union box for the combined edit).

With ``options.faces`` off the whole image goes through ``engine.retouch`` as it is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import engine
from .devices import resolve_device
from .faces import Face, skin_mask
from .model import Model
from .wire import JobPhase, RetouchOptions

FaceFinder = Callable[[np.ndarray, float], list[Face]]
# phase(name, face, faces): what the work is doing now, for a job's status (wire.JOB_PHASES);
# ``face`` (1-based) of ``faces`` while retouching face by face, else 0 and 0.
PhaseReport = Callable[[JobPhase, int, int], None]
_ANALYSIS_SHARE = 0.1  # of the progress bar, for finding faces and their masks


@dataclass(frozen=True)
class Result:
    pixels: np.ndarray  # the retouched image, the input's shape and dtype
    faces: int | None  # faces retouched; None when face finding was off
    # float32 (H, W) in [0, 1], when asked for: where the edit applies. Then ``pixels`` holds the
    # edit unmasked over each face's crop, so that an editor compositing pixels through the mask
    # gets the retouch, and can paint the mask to keep or extend it.
    mask: np.ndarray | None = None

    def mask_pixels(self, dtype: np.dtype) -> np.ndarray:
        """The skin mask as a one-channel image of ``dtype`` (uint8, uint16 or float32)."""
        if self.mask is None:
            raise ValueError("this result was made without a mask")
        scale = engine.SCALE[np.dtype(dtype)]
        values = self.mask if scale == 1.0 else np.round(self.mask * scale)
        return values.astype(dtype)[..., None]


def retouch(
    image: np.ndarray, model: Model, options: RetouchOptions = RetouchOptions(),
    progress: Callable[[float], None] | None = None, cancel: Callable[[], bool] | None = None,
    find: FaceFinder | None = None, phase: PhaseReport | None = None,
) -> Result:
    """Retouch ``image``'s faces (or, with faces off, the whole image); see the module docstring.

    ``find(image, min_iod)`` finds the faces; by default the landmark model does.
    """
    engine.check_image(image)
    tell = phase or (lambda name, face, faces: None)
    if not options.faces:
        tell("retouching", 0, 0)
        return Result(engine.retouch(image, model, options, progress, cancel), None)
    # Refuse an impossible device or precision now, not only once a face is found.
    engine.precision_for(model, resolve_device(options.device), options.precision)
    if find is None:
        from .landmarks import find_faces as find
    tell("finding-faces", 0, 0)
    faces = find(image, options.min_iod)
    report = progress or (lambda fraction: None)
    report(_ANALYSIS_SHARE)
    if not faces or options.strength == 0.0:
        report(1.0)
        mask = np.zeros(image.shape[:2], np.float32) if options.mask else None
        return Result(image.copy(), len(faces), mask)
    box = _union([_crop_box(face, model, image.shape) for face in faces])
    x0, y0, x1, y1 = box
    edit = np.zeros((y1 - y0, x1 - x0, 3), np.float32)  # sum of weight * residual, [0, 1] units
    weight = np.zeros((y1 - y0, x1 - x0), np.float32)  # sum of the weights: skin masks, or crops with mask on
    skin = np.zeros((y1 - y0, x1 - x0), np.float32) if options.mask else None
    inner = dataclasses.replace(options, strength=1.0)
    for index, face in enumerate(faces):
        tell("retouching", index + 1, len(faces))
        start = _ANALYSIS_SHARE + (1 - _ANALYSIS_SHARE) * index / len(faces)
        share = (1 - _ANALYSIS_SHARE) / len(faces)
        crop = _crop_box(face, model, image.shape)
        residual = face_residual(image, face, crop, model, inner, lambda f: report(start + share * f), cancel)
        mask = skin_mask(image, face, crop)
        cx0, cy0, cx1, cy1 = crop
        window = np.s_[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        if skin is None:
            edit[window] += mask[..., None] * residual
            weight[window] += mask
        else:
            edit[window] += residual
            weight[window] += 1.0
            skin[window] += mask
    out = _apply(image, box, edit, weight, options.strength)
    report(1.0)
    if skin is None:
        return Result(out, len(faces))
    full_mask = np.zeros(image.shape[:2], np.float32)
    full_mask[y0:y1, x0:x1] = np.minimum(skin, 1.0)
    return Result(out, len(faces), full_mask)


def working_scale(model: Model, face: Face) -> float:
    """Native pixels -> working pixels: what makes this face's IOD the model's scale."""
    return 1.0 if model.scale is None else model.scale / face.iod


def _crop_box(face: Face, model: Model, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The face's skin box grown by the receptive field at working scale (plus the resampling
    kernels' reach), so the residual over the skin is what a whole-image run at that scale gives."""
    radius = model.generator.receptive_radius + 4
    margin = math.ceil(radius / working_scale(model, face))
    x0, y0, x1, y1 = face.box
    height, width = shape[:2]
    return max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin, width), min(y1 + margin, height)


def face_residual(
    image: np.ndarray, face: Face, crop: tuple[int, int, int, int], model: Model, options: RetouchOptions,
    progress: Callable[[float], None], cancel: Callable[[], bool] | None,
) -> np.ndarray:
    """The model's edit G(x) - x over ``crop``, computed at working scale: float32 (h, w, 3)."""
    x0, y0, x1, y1 = crop
    pixels = image[y0:y1, x0:x1]
    rgb = pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    native = rgb.astype(np.float32) * np.float32(1.0 / engine.SCALE[image.dtype])
    if image.dtype == np.float32:  # NaN, Inf and far-off values: what the network sees, never spread
        native = np.clip(np.nan_to_num(native, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    scale = working_scale(model, face)
    size = (max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale)))
    work = resize(native, size) if scale != 1.0 else native
    out = engine.retouch(np.ascontiguousarray(work), model, options, progress, cancel)
    residual = out - work
    return resize(residual, native.shape[:2]) if scale != 1.0 else residual


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float32 to ``size``, bicubic with antialiasing when shrinking.

    The one resampler between native and working scale: the trainer resamples its pairs with it
    too (``training/face_scale.py``), so a model sees faces at training as it does here.
    """
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]  # (1, 3, h, w)
    shrink = size[0] < pixels.shape[0] or size[1] < pixels.shape[1]
    y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink)
    return y[0].permute(1, 2, 0).contiguous().numpy()


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _apply(image: np.ndarray, box: tuple[int, int, int, int], edit: np.ndarray, weight: np.ndarray,
           strength: float) -> np.ndarray:
    """``image`` with the combined edit added where some mask is positive, and only there."""
    out = image.copy()
    x0, y0, x1, y1 = box
    channels = min(image.shape[2], 3)
    region = out[y0:y1, x0:x1, :channels]
    # One face: its mask times its residual; overlapping faces: their mask-weighted mean.
    delta = edit * (strength / np.maximum(weight, 1.0))[..., None]  # (h, w, 3)
    if channels == 1:
        delta = delta.mean(axis=2, keepdims=True)
    scale = engine.SCALE[image.dtype]
    values = region.astype(np.float32)
    values += delta * scale if scale != 1.0 else delta
    if scale != 1.0:
        np.clip(np.round(values, out=values), 0, scale, out=values)
    np.copyto(region, values.astype(image.dtype), where=(weight > 0)[..., None])  # masked-off pixels untouched
    return out
