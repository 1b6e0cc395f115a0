"""Measure a model for the README's model card, on material it was not trained on.

    autoretouch-train model-card --checkpoint plugin_server/weights/starter.pt \\
        --heldout build/heal/heldout --held-out-photos ffhq-00009.png ... \\
        --pair ../shared/data/ffhqr-pair/00000-original.png ../shared/data/ffhqr-pair/00000-retouched.png \\
        --photos ../shared/data/portraits --crops docs/model-card/crops.json --out docs/model-card

Every retouch here is what a user gets: ``face_retouch.retouch`` on the whole photo in fp32 (each
face at the model's scale, only skin changed). The card has

- held-out heal pairs (``autoretouch-train heal`` on photos kept out of training): PSNR, SSIM and
  masked PSNR against the healed target, beside No edit;
- real before/after pairs (FFHQR and its teaser pairs): the same against the professional's
  retouch, for No edit, the heal procedure and the model, and how well each edit map agrees
  with the professional's over skin (correlation of the CIELAB L and a* changes);
- held-out portraits: the redness excess of the red spots the heal procedure finds, before and
  after (and what the procedure itself leaves), the skin's high-pass energy kept, the freckles'
  contrast kept, pixels changed off the skin (0 when eyes, hair, lips and background are
  untouched), and the time;
- the crops file's squares of skin (before | after | difference), with the change in each.

Which photos and squares are shown is data (``docs/model-card/crops.json``), not code. Writes
OUT/metrics.json and OUT/*.png; ``summary`` gives the printed tables.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from plugin_server import face_retouch, imageio
from plugin_server.checkpoint import Model
from plugin_server.errors import BadConfigError
from plugin_server.faces import Face, skin_mask
from plugin_server.wire import RetouchOptions

from .evaluate import evaluate
from .heal import HealParams, analyse, low_frequency, rgb_to_lab
from .heal_pairs import cut, face_crops, heal_crop, heal_photo
from .metrics import changed, psnr, ssim
from .pairs import list_pairs, to_float
from .report import format_table
from .windows import FilePairs

GAP = 8  # white pixels between the panels of a crop
DIFF_GAIN = 8  # the third panel shows |after - before| x 8
MEASURE_IOD = 256.0  # faces are measured at this scale, whatever the model's


@dataclass(frozen=True)
class Crop:
    photo: str  # file name, in the photos folder
    label: str  # what the crop shows, for people
    centre: tuple[int, int] | None  # (y, x) at full resolution; None: the middle of the photo's skin
    name: str  # the PNG written into the output folder


@dataclass(frozen=True)
class CropPlan:
    side: int  # full-resolution pixels per crop; the PNG shows them at 2x so pores are visible
    crops: tuple[Crop, ...]


def read_crops(path: str | os.PathLike) -> CropPlan:
    """The crops file (see docs/model-card/crops.json); a file that does not fit is a BadConfigError."""
    try:
        data = json.loads(Path(path).read_text())
        crops = tuple(
            Crop(c["photo"], c["label"], None if c["centre"] is None else (int(c["centre"][0]), int(c["centre"][1])), c["name"])
            for c in data["crops"]
        )
        plan = CropPlan(int(data["side"]), crops)
    except OSError as exc:
        raise BadConfigError(f"cannot read the crops file {path}: {exc}") from exc
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise BadConfigError(
            f"{path} is not a crops file: it needs 'side' and a list 'crops' of "
            f"{{'photo', 'label', 'centre': [y, x] or null, 'name'}} ({type(exc).__name__}: {exc})"
        ) from exc
    if plan.side < 1 or not plan.crops:
        raise BadConfigError(f"{path}: 'side' must be positive and 'crops' must not be empty")
    return plan


class Retoucher:
    """The model as the server runs it, remembering each photo's faces and result (some photos are
    both measured and cropped)."""

    def __init__(self, model: Model, device: torch.device, strength: float = 1.0) -> None:
        self.model, self.options = model, RetouchOptions(strength=strength, device=str(device), precision="fp32")
        self.done: dict[Path, tuple[np.ndarray, np.ndarray, float]] = {}

    def __call__(self, path: Path) -> tuple[np.ndarray, np.ndarray, float]:
        """(before, after, seconds) of the photo at ``path``, RGB uint8."""
        if path not in self.done:
            before = imageio.read(path).pixels[..., :3]
            start = time.perf_counter()
            after = face_retouch.retouch(before, self.model, self.options).pixels
            self.done[path] = (before, after, time.perf_counter() - start)
        return self.done[path]


def skin_of(photo: np.ndarray, faces: list[Face]) -> np.ndarray:
    """The union of the faces' skin masks over the whole photo, float32 (H, W)."""
    union = np.zeros(photo.shape[:2], np.float32)
    for face in faces:
        union = np.maximum(union, skin_mask(photo, face, (0, 0, photo.shape[1], photo.shape[0])))
    return union


# ---------------------------------------------------------------------------------------------
# Real pairs: the professional's retouch


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_float(image)).permute(2, 0, 1)  # (3, H, W)


def _agreement(before: np.ndarray, edited: np.ndarray, professional: np.ndarray, skin: np.ndarray) -> dict[str, float]:
    """Correlation over skin of this edit's CIELAB L and a* changes with the professional's."""
    lab = rgb_to_lab(to_float(before))
    ours, theirs = rgb_to_lab(to_float(edited)) - lab, rgb_to_lab(to_float(professional)) - lab
    where = skin > 0.5
    out = {}
    for name, channel in (("corr_L", 0), ("corr_a", 1)):
        a, b = ours[..., channel][where], theirs[..., channel][where]
        out[name] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    return out


def real_pair(before_path: Path, after_path: Path, retoucher: Retoucher) -> dict[str, Any]:
    """No edit, the heal procedure and the model against a professional's retouch."""
    from plugin_server.landmarks import find_faces

    before, model_out, _ = retoucher(before_path)
    professional = imageio.read(after_path).pixels[..., :3]
    faces = find_faces(before, min_iod=20.0)  # the teaser pairs' faces are 50 px between the eyes
    healed = heal_photo(before, faces)
    skin = skin_of(before, faces)
    target = _tensor(professional)
    mask = changed(_tensor(before), target)
    entry: dict[str, Any] = {"faces": len(faces)}
    for name, image in (("no_edit", before), ("heal", healed), ("model", model_out)):
        out = _tensor(image)
        entry[name] = {"psnr": psnr(out, target), "ssim": ssim(out, target), "masked_psnr": psnr(out, target, mask=mask),
                       **({} if name == "no_edit" else _agreement(before, image, professional, skin))}
    return entry


# ---------------------------------------------------------------------------------------------
# Held-out portraits: what was removed and what was kept


def _high_pass_energy(lightness: np.ndarray, sigma: float, where: np.ndarray) -> float:
    return float(((lightness - ndimage.gaussian_filter(lightness, sigma))[where] ** 2).mean())


def face_figures(before: np.ndarray, after: np.ndarray, face: Face, params: HealParams = HealParams()) -> dict[str, float]:
    """One face measured at MEASURE_IOD, the model's output against the photo's own baseline."""
    crop = face_crops(before, [face], MEASURE_IOD)[0]
    size = crop.pixels.shape[:2]
    rgb_in = crop.pixels.astype(np.float32) / 255
    skin = analyse(rgb_in, crop.face, crop.mask, params)
    outputs = {"model": cut(after, crop.box, size), "heal": heal_crop(crop, params)[0]}
    labs = {name: rgb_to_lab(pixels.astype(np.float32) / 255) for name, pixels in outputs.items()}
    sure = crop.mask > 0.5
    figures: dict[str, float] = {"iod": round(face.iod, 1), "red_spots": skin.found.red, "dark_spots": skin.found.dark,
                                 "freckles": skin.found.freckles}
    redness_in = float(np.maximum(skin.redness, 0)[skin.red_spots].mean()) if skin.red_spots.any() else float("nan")
    freckles_in = float(skin.darkness[skin.freckles].mean()) if skin.freckles.any() else float("nan")
    iod = crop.face.iod  # as `analyse` measured the input (near MEASURE_IOD, not exactly)
    sigma = params.texture * iod
    energy_in = _high_pass_energy(skin.lab[..., 0], sigma, sure)
    figures["redness_excess_before"] = redness_in
    for name, lab in labs.items():
        low = low_frequency(lab, iod, params)
        redness = np.maximum(low[..., 1] - skin.base[..., 1], 0)
        figures[f"redness_excess_{name}"] = float(redness[skin.red_spots].mean()) if skin.red_spots.any() else float("nan")
        figures[f"redness_removed_{name}"] = 1 - figures[f"redness_excess_{name}"] / redness_in
        figures[f"texture_kept_{name}"] = _high_pass_energy(lab[..., 0], sigma, sure) / energy_in
        darkness = skin.base[..., 0] - low[..., 0]
        figures[f"freckle_contrast_kept_{name}"] = (float(darkness[skin.freckles].mean()) / freckles_in
                                                   if skin.freckles.any() else float("nan"))
    return figures


def held_out_photo(path: Path, retoucher: Retoucher) -> dict[str, Any]:
    from plugin_server.landmarks import find_faces

    before, after, seconds = retoucher(path)
    faces = find_faces(before)
    off_skin = skin_of(before, faces) == 0
    moved = np.any(before != after, axis=2)
    return {"megapixels": round(before.shape[0] * before.shape[1] / 1e6, 1), "seconds": round(seconds, 2),
            "changed_off_skin": int((moved & off_skin).sum()), "changed": float(moved.mean()),
            "faces": [face_figures(before, after, face) for face in faces]}


# ---------------------------------------------------------------------------------------------
# Crops


def crop_origin(pixels: np.ndarray, centre: tuple[int, int] | None, side: int, skin: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the side x side square around ``centre`` (None: the middle of ``skin``),
    kept inside the photo."""
    if centre is None:
        ys, xs = np.nonzero(skin > 0.5)
        centre = (int(np.median(ys)), int(np.median(xs))) if len(ys) else (pixels.shape[0] // 2, pixels.shape[1] // 2)
    y, x, half = centre[0], centre[1], side // 2
    return min(max(y - half, 0), pixels.shape[0] - side), min(max(x - half, 0), pixels.shape[1] - side)


def save_crop(before: np.ndarray, after: np.ndarray, top: int, left: int, side: int, path: Path) -> dict[str, float]:
    """before | after | difference x8, each shown at 2x; returns the change in levels."""
    a, b = before[top:top + side, left:left + side], after[top:top + side, left:left + side]
    moved = np.abs(b.astype(np.int16) - a.astype(np.int16))
    diff = np.clip(moved * DIFF_GAIN, 0, 255).astype(np.uint8)
    gap = np.full((side, GAP, 3), 255, np.uint8)
    image = Image.fromarray(np.concatenate([a, gap, b, gap, diff], axis=1))
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path, optimize=True)
    return {"mean_change": float(moved.mean()), "max_change": int(moved.max())}


def crops(plan: CropPlan, photos: Path, out: Path, retoucher: Retoucher) -> dict[str, list[dict]]:
    from plugin_server.landmarks import find_faces

    shown: dict[str, list[dict]] = {}
    for photo in dict.fromkeys(c.photo for c in plan.crops):
        before, after, _ = retoucher(photos / photo)
        skin = skin_of(before, find_faces(before)) if any(c.centre is None for c in plan.crops if c.photo == photo) else None
        for crop in (c for c in plan.crops if c.photo == photo):
            top, left = crop_origin(before, crop.centre, plan.side, skin)
            change = save_crop(before, after, top, left, plan.side, out / crop.name)
            shown.setdefault(Path(photo).stem, []).append({"label": crop.label, "file": crop.name, "top": top, "left": left,
                                                           **change})
    return shown


def measure(
    model: Model, checkpoint: Path, heldout: list[Path], held_out_photos: list[str], pairs: list[tuple[Path, Path]],
    plan: CropPlan, photos: Path, out: Path, device: torch.device, strength: float = 1.0,
) -> dict[str, Any]:
    """Every figure of the model card, every retouch at ``strength``; writes OUT/metrics.json and the
    crops, returns the report."""
    retoucher = Retoucher(model, device, strength)
    out.mkdir(parents=True, exist_ok=True)
    meta = model.metadata
    engine = meta.get("data_engine") or {}
    report = {
        "model": {"file": checkpoint.name, "steps": meta.get("steps"), "trained_on": meta.get("trained_on"),
                  "scale": model.scale, "trained_photos": sorted(engine.get("photos", {}))},
        "strength": retoucher.options.strength,
        **{f"heldout_{d.name}": _scores(model, d, device, retoucher.options.strength) for d in heldout},
        "pairs": {Path(before).stem: real_pair(before, after, retoucher) for before, after in pairs},
        "held_out_photos": {Path(name).stem: held_out_photo(photos / name, retoucher) for name in held_out_photos},
        "crops": crops(plan, photos, out, retoucher),
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _scores(model: Model, folder: Path, device: torch.device, strength: float) -> dict[str, Any]:
    result = evaluate(model, FilePairs(list_pairs(folder, layout="studio")), device, strength=strength)
    return {"images": result.images, "no_edit": result.noedit, "model": result.model}


def summary(report: dict[str, Any]) -> str:
    """The tables of a report, as printed."""
    lines = [f"every retouch at strength {report['strength']:g}"]
    for key in (k for k in report if k.startswith("heldout_")):
        lines.append(f"{key} ({report[key]['images']} pairs, against the healed target)")
        lines.append(format_table([("No edit", report[key]["no_edit"]), ("Model", report[key]["model"])]))
    for name, entry in report["pairs"].items():
        lines.append(f"{name} against the professional retouch")
        lines.append(format_table([("No edit", entry["no_edit"]), ("Heal", entry["heal"]), ("Model", entry["model"])]))
    for name, entry in report["held_out_photos"].items():
        for face in entry["faces"]:
            lines.append(f"{name}: redness of {face['red_spots']} red spots removed: model {face['redness_removed_model']:.0%}"
                         f" (heal {face['redness_removed_heal']:.0%}); texture kept {face['texture_kept_model']:.2f};"
                         f" freckle contrast kept {face['freckle_contrast_kept_model']:.2f}")
        lines.append(f"{name}: {entry['changed_off_skin']} pixels changed off the skin; {entry['seconds']:.1f} s"
                     f" for {entry['megapixels']} MP")
    return "\n".join(lines)
