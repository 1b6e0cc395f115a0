"""Measure a model for the README's model card, on material it was not trained on.

    python -m training.model_card --checkpoint plugin_server/weights/starter.pt \\
        --heldout build/starter/heldout/all build/starter/heldout/local --out docs/model-card

- held-out synthetic pairs (studio-layout folders made from photos kept out of training):
  PSNR, SSIM and masked PSNR beside the No-edit baseline;
- the real FFHQR before/after pair, the same;
- each Pexels portrait retouched whole: the share of pixels changed at all and by more than
  10 levels, and before/after crops of skin (a red pimple, a forehead spot, freckles) as PNG.

Writes OUT/metrics.json and OUT/*.png and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from plugin_server import checkpoint, engine, imageio

from .evaluate import evaluate
from .pairs import Listing, Pair, list_pairs
from .report import format_table
from .windows import FilePairs

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
# Skin worth showing, as (photo stem, label, centre y, centre x) at full resolution.
CROPS = [
    ("pexels-ike-louie-natividad-2709388", "red pimple among freckles", 2820, 2115),
    ("pexels-ike-louie-natividad-2709388", "freckles on the nose", 2950, 1620),
    ("pexels-aadil-2598024", "forehead spot", 1300, 2055),
    ("pexels-mateus-souza-3586798", "cheek", None, None),
    ("pexels-simon-robben-614810", "cheek and stubble", None, None),
]
CROP = 384  # full-resolution pixels shown per crop; doubled in the PNG so pores are visible


def scores(generator: torch.nn.Module, listing: Listing) -> dict[str, dict[str, float]]:
    result = evaluate(generator, FilePairs(listing), torch.device("cpu"))
    return {"images": result.images, "no_edit": result.noedit, "model": result.model}


def change_stats(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2)
    return {"changed": float((diff > 0).mean()), "changed_over_1": float((diff > 1).mean()),
            "changed_over_10": float((diff > 10).mean())}


def crop_centre(pixels: np.ndarray, y: int | None, x: int | None) -> tuple[int, int]:
    if y is None:
        from .synthetic import skin_mask

        small = pixels[::8, ::8]
        ys, xs = np.nonzero(skin_mask(small))
        y, x = (int(np.median(ys)) * 8, int(np.median(xs)) * 8) if len(ys) else (pixels.shape[0] // 2, pixels.shape[1] // 2)
    half = CROP // 2
    return min(max(y - half, 0), pixels.shape[0] - CROP), min(max(x - half, 0), pixels.shape[1] - CROP)


def save_crop(before: np.ndarray, after: np.ndarray, top: int, left: int, path: Path) -> None:
    """before | after | difference x8, each shown at 2x."""
    a, b = before[top:top + CROP, left:left + CROP], after[top:top + CROP, left:left + CROP]
    diff = np.clip(np.abs(b.astype(np.int16) - a.astype(np.int16)) * 8, 0, 255).astype(np.uint8)
    strip = np.concatenate([a, np.full((CROP, 8, 3), 255, np.uint8), b, np.full((CROP, 8, 3), 255, np.uint8), diff], axis=1)
    image = Image.fromarray(strip)
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path, optimize=True)


def portraits(generator: torch.nn.Module, out: Path) -> dict[str, dict]:
    stats: dict[str, dict] = {}
    for stem in dict.fromkeys(c[0] for c in CROPS):
        before = imageio.read(SHARED / "portraits" / f"{stem}.jpg").pixels
        after = engine.retouch(before, generator)
        stats[stem] = change_stats(before, after)
        stats[stem]["crops"] = []
        for _, label, y, x in (c for c in CROPS if c[0] == stem):
            top, left = crop_centre(before, y, x)
            name = f"{stem.split('-')[1]}-{label.replace(' ', '-')}.png"
            save_crop(before, after, top, left, out / name)
            stats[stem]["crops"].append({"label": label, "file": name, "top": top, "left": left})
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.model_card", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="exported model to measure")
    p.add_argument("--heldout", required=True, type=Path, nargs="+",
                   help="studio-layout folders of held-out synthetic pairs, each scored on its own (named by its folder)")
    p.add_argument("--out", required=True, type=Path, help="folder for metrics.json and the crops")
    args = p.parse_args(argv)
    generator, metadata = checkpoint.load(args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    pair_dir = SHARED / "ffhqr-pair"
    ffhqr = Listing("ffhqr", True, (Pair("00000", pair_dir / "00000-original.png", pair_dir / "00000-retouched.png"),))
    report = {
        "model": {"file": args.checkpoint.name, "steps": metadata.get("steps"), "trained_on": metadata.get("trained_on"),
                  "init": metadata.get("init")},
        **{f"heldout_{d.name}": scores(generator, list_pairs(d, layout="studio")) for d in args.heldout},
        "ffhqr_pair": scores(generator, ffhqr),
        "portraits": portraits(generator, args.out),
    }
    for key in [k for k in report if k.startswith("heldout_")] + ["ffhqr_pair"]:
        print(f"{key} ({report[key]['images']} images)")
        print(format_table([("No edit", report[key]["no_edit"]), ("Model", report[key]["model"])]))
    for stem, s in report["portraits"].items():
        print(f"{stem}: {s['changed']:.2%} of pixels changed, {s['changed_over_10']:.3%} by more than 10 levels")
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
