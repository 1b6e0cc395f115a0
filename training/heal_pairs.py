"""Training pairs from real portraits: each face at the model's scale, healed as the target.

    autoretouch-train heal --out data/heal --photos portraits/*.jpg --face-scale 256 --synthetic 7

For every face in every photo: a crop around its skin (with ``MARGIN`` IODs of context) resampled
so its inter-ocular distance (IOD) is ``face_scale`` with the engine's own resampler, then

- OUT/before/NAME-fK.png: the real face, and OUT/after/NAME-fK.png: the same healed
  (``training/heal.py``) — real blemishes in, healed skin out;
- OUT/before/NAME-fK-sNN.png: the real face with synthetic blemishes (``training/synthetic.py``)
  multiplied into its skin, against the same healed target: more examples of what to remove.

OUT/heal.json records the procedure's parameters, the scale and what was found on every face, so
a model's metadata can say exactly what it learnt from. Look at OUT/after to preview the targets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from plugin_server.face_retouch import resize
from plugin_server.faces import Face, face_from_landmarks, skin_mask

from .heal import Found, HealParams, heal
from .synthetic import KINDS, BlemishConfig, add_blemishes, load_photo, write_png

MARGIN = 0.35  # IODs of context around each face's skin box, beyond the training window's reach
FFHQ_IOD = 260.0  # px: the face size training/synthetic.py's blemish sizes are set for
REPORT_FILE = "heal.json"


@dataclass(frozen=True)
class FaceCrop:
    pixels: np.ndarray  # (h, w, 3) uint8 at the face scale
    face: Face  # landmarks in the crop's pixels
    mask: np.ndarray  # float32 (h, w): the face's skin
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 it was cut from, in the photo's pixels


def face_crops(photo: np.ndarray, faces: Sequence[Face], face_scale: float) -> list[FaceCrop]:
    """Every face of ``photo`` (H, W, 3) uint8 cut out and resampled to an IOD of ``face_scale``."""
    crops = []
    height, width = photo.shape[:2]
    for face in faces:
        margin = MARGIN * face.iod
        x0, y0, x1, y1 = face.box
        box = (int(max(x0 - margin, 0)), int(max(y0 - margin, 0)), int(min(x1 + margin, width)), int(min(y1 + margin, height)))
        factor = face_scale / face.iod
        size = (max(1, round((box[3] - box[1]) * factor)), max(1, round((box[2] - box[0]) * factor)))
        pixels = cut(photo, box, size)
        # Pixel centres map as the resampler maps them (align_corners=False).
        scale = np.float32([size[1] / (box[2] - box[0]), size[0] / (box[3] - box[1])])
        landmarks = (face.landmarks - np.float32(box[:2]) + 0.5) * scale - 0.5
        local = face_from_landmarks(landmarks, face.score, size)
        crops.append(FaceCrop(pixels, local, skin_mask(pixels, local, (0, 0, size[1], size[0])), box))
    return crops


def cut(photo: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """``box`` of ``photo`` (uint8) resampled to ``size`` (h, w) with the engine's resampler, uint8:
    also how a retouched photo is cut like its original, to measure both at the face scale."""
    x0, y0, x1, y1 = box
    native = photo[y0:y1, x0:x1, :3].astype(np.float32) / 255
    return _to_levels(resize(native, size))


def heal_photo(photo: np.ndarray, faces: Sequence[Face], params: HealParams = HealParams()) -> np.ndarray:
    """``photo`` (H, W, 3) uint8 with every face healed at its own resolution, uint8."""
    rgb = photo[..., :3].astype(np.float32) / 255
    for face in faces:
        rgb = heal(rgb, face, skin_mask(photo, face, (0, 0, photo.shape[1], photo.shape[0])), params)
    return _to_levels(rgb)


def _to_levels(rgb: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8, as the pairs are stored."""
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def heal_crop(crop: FaceCrop, params: HealParams) -> tuple[np.ndarray, Found]:
    """The crop healed, uint8, and what the procedure found on it."""
    healed, found = heal(crop.pixels.astype(np.float32) / 255, crop.face, crop.mask, params, report=True)
    return _to_levels(healed), found


def with_blemishes(crop: FaceCrop, rng: np.random.Generator, face_scale: float,
                   config: BlemishConfig = BlemishConfig()) -> np.ndarray:
    """The real crop with synthetic blemishes multiplied into its skin (uint8)."""
    return add_blemishes(crop.pixels, crop.mask > 0.5, rng, face_scale / FFHQ_IOD, config)


def write_heal_pairs(photos: Sequence[Path], out: Path, face_scale: float, synthetic: int, seed: int,
                     params: HealParams = HealParams(), config: BlemishConfig = BlemishConfig(),
                     command: str = "") -> dict:
    """Write the pairs of every photo (see the module's docstring); returns what heal.json holds."""
    from plugin_server.landmarks import find_faces  # the face models: only this command needs them

    out.mkdir(parents=True, exist_ok=True)  # heal.json is written even when no photo has a face
    report: dict = {"version": 1, "command": command, "face_scale": face_scale, "synthetic_per_face": synthetic, "seed": seed,
                    "synthetic_kinds": {kind: list(getattr(config, kind)) for kind in KINDS},
                    "params": params.to_dict(), "photos": {}}
    for number, path in enumerate(photos):
        photo = load_photo(path)
        faces = find_faces(photo)
        report["photos"][path.name] = []
        for k, crop in enumerate(face_crops(photo, faces, face_scale)):
            target, found = heal_crop(crop, params)
            stem = f"{path.stem}-f{k}"
            items = [(stem, crop.pixels)]
            rng = np.random.default_rng([seed, number, k])
            items += [(f"{stem}-s{i:02d}", with_blemishes(crop, rng, face_scale, config)) for i in range(1, synthetic + 1)]
            for name, before in items:
                write_png(before, out / "before" / f"{name}.png")
                write_png(target, out / "after" / f"{name}.png")
            report["photos"][path.name].append({"iod": round(faces[k].iod, 2), "found": asdict(found),
                                                "pairs": len(items)})
    temporary = out / (REPORT_FILE + ".tmp")
    temporary.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(temporary, out / REPORT_FILE)
    return report
