"""Measure a model for the README's model card, on material it was not trained on.

    autoretouch-train model-card --checkpoint plugin_server/weights/starter.pt \\
        --heldout build/starter/heldout/all build/starter/heldout/local \\
        --pair ../shared/data/ffhqr-pair/00000-original.png ../shared/data/ffhqr-pair/00000-retouched.png \\
        --photos ../shared/data/portraits --crops docs/model-card/crops.json --out docs/model-card

- held-out synthetic pairs (studio-layout folders made from photos kept out of training):
  PSNR, SSIM and masked PSNR beside the No-edit baseline;
- a real before/after pair (FFHQR 00000), the same;
- each portrait named in the crops file, retouched whole: the share of pixels changed at all,
  by more than 1 and by more than 10 levels, and its before/after crops of skin as PNG.

Which photos and which squares of them are shown is data (``docs/model-card/crops.json``),
not code. Everything runs in fp32, as the server does on a CPU, so the figures are those of
what a user gets. Writes OUT/metrics.json and OUT/*.png; ``summary`` gives the printed tables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from plugin_server import imageio
from plugin_server.checkpoint import Model
from plugin_server.errors import BadConfigError

from .evaluate import evaluate, retouch_image
from .pairs import Listing, Pair, list_pairs
from .report import format_table
from .synthetic import skin_mask
from .windows import FilePairs

GAP = 8  # white pixels between the panels of a crop
DIFF_GAIN = 8  # the third panel shows |after - before| x 8


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


def scores(model: Model, listing: Listing, device: torch.device) -> dict[str, Any]:
    result = evaluate(model, FilePairs(listing), device)
    return {"images": result.images, "no_edit": result.noedit, "model": result.model}


def change_stats(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2)
    return {"changed": float((diff > 0).mean()), "changed_over_1": float((diff > 1).mean()),
            "changed_over_10": float((diff > 10).mean())}


def crop_origin(pixels: np.ndarray, centre: tuple[int, int] | None, side: int) -> tuple[int, int]:
    """Top-left corner of the side x side square around ``centre``, kept inside the photo."""
    if centre is None:
        small = pixels[::8, ::8]  # the skin mask of a 24 MP photo is slow; an eighth finds the middle
        ys, xs = np.nonzero(skin_mask(small))
        centre = (int(np.median(ys)) * 8, int(np.median(xs)) * 8) if len(ys) else (pixels.shape[0] // 2, pixels.shape[1] // 2)
    y, x, half = centre[0], centre[1], side // 2
    return min(max(y - half, 0), pixels.shape[0] - side), min(max(x - half, 0), pixels.shape[1] - side)


def save_crop(before: np.ndarray, after: np.ndarray, top: int, left: int, side: int, path: Path) -> None:
    """before | after | difference x8, each shown at 2x."""
    a, b = before[top:top + side, left:left + side], after[top:top + side, left:left + side]
    diff = np.clip(np.abs(b.astype(np.int16) - a.astype(np.int16)) * DIFF_GAIN, 0, 255).astype(np.uint8)
    gap = np.full((side, GAP, 3), 255, np.uint8)
    image = Image.fromarray(np.concatenate([a, gap, b, gap, diff], axis=1))
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path, optimize=True)


def portraits(model: Model, plan: CropPlan, photos: Path, out: Path, device: torch.device) -> dict[str, dict]:
    """Each photo of the plan retouched whole (once, however many crops it has): stats and crops."""
    stats: dict[str, dict] = {}
    for photo in dict.fromkeys(c.photo for c in plan.crops):
        before = imageio.read(photos / photo).pixels
        after = retouch_image(model, before, device)
        entry = stats[Path(photo).stem] = {**change_stats(before, after), "crops": []}
        for crop in (c for c in plan.crops if c.photo == photo):
            top, left = crop_origin(before, crop.centre, plan.side)
            save_crop(before, after, top, left, plan.side, out / crop.name)
            entry["crops"].append({"label": crop.label, "file": crop.name, "top": top, "left": left})
    return stats


def measure(
    model: Model, checkpoint: Path, heldout: list[Path], pair: tuple[Path, Path], plan: CropPlan, photos: Path,
    out: Path, device: torch.device,
) -> dict[str, Any]:
    """Every figure of the model card; writes OUT/metrics.json and the crops, returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    real = Listing("ffhqr", True, (Pair(pair[0].stem, pair[0], pair[1]),))
    meta = model.metadata
    report = {
        "model": {"file": checkpoint.name, "steps": meta.get("steps"), "trained_on": meta.get("trained_on"), "init": meta.get("init")},
        **{f"heldout_{d.name}": scores(model, list_pairs(d, layout="studio"), device) for d in heldout},
        "ffhqr_pair": scores(model, real, device),
        "portraits": portraits(model, plan, photos, out, device),
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def summary(report: dict[str, Any]) -> str:
    """The tables of a report, as printed."""
    lines = []
    for key in [k for k in report if k.startswith("heldout_")] + ["ffhqr_pair"]:
        lines.append(f"{key} ({report[key]['images']} images)")
        lines.append(format_table([("No edit", report[key]["no_edit"]), ("Model", report[key]["model"])]))
    for stem, s in report["portraits"].items():
        lines.append(f"{stem}: {s['changed']:.2%} of pixels changed, {s['changed_over_10']:.3%} by more than 10 levels")
    return "\n".join(lines)
