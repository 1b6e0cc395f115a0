"""Whole-image evaluation: PSNR, SSIM and masked PSNR of a model beside the No-edit baseline.

Used by the validation pass during training and by ``autoretouch-train evaluate``. The model
runs through ``plugin_server.engine.retouch``, so outputs are scored as the server returns them
(tiled, with the model's residual floor, and rounded to the data's bit depth); training validates
its raw generator as ``Model(generator)``, with no floor. Masked PSNR is over the pixels the
retoucher changed.

    result = evaluate(model, FilePairs(list_pairs(root, split="test")), device)   # a checkpoint.Model
    print(format_table([("No edit", result.noedit), ("AutoRetouch", result.model)]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from plugin_server import engine
from plugin_server.checkpoint import Model
from plugin_server.errors import BadImageError
from plugin_server.wire import RetouchOptions

from .metrics import changed, psnr, ssim
from .pairs import to_float
from .windows import PairSource


def retouch_image(model: Model, before: np.ndarray, device: torch.device, strength: float = 1.0) -> np.ndarray:
    """The one call site where evaluation runs the model: (H, W, 3) -> (H, W, 3), same dtype.

    Through the server's engine (tiled, exact, bounded memory) in fp32, so that the scores are
    those of what the server returns, rounding to the image's bit depth included.
    """
    return engine.retouch(before, model, RetouchOptions(strength=strength, device=str(device), precision="fp32"))


@dataclass
class Evaluation:
    images: int = 0
    skipped: list[str] = field(default_factory=list)
    model: dict[str, float] = field(default_factory=dict)
    noedit: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _scores(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    return {"psnr": psnr(out, target), "ssim": ssim(out, target), "masked_psnr": psnr(out, target, mask=mask)}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def evaluate(
    model: Model, source: PairSource, device: torch.device, limit: int = 0, keep_samples: int = 0, strength: float = 1.0,
) -> Evaluation:
    """Score the first ``limit`` pairs (all if 0) retouched at ``strength``; bad pairs are skipped and named."""
    model.generator.eval()
    result = Evaluation()
    model_scores, noedit_scores = [], []
    for index in range(len(source) if limit <= 0 else min(limit, len(source))):
        try:
            before_np, target_np = source.load(index)
        except BadImageError:
            result.skipped.append(source.name(index))
            continue

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(to_float(a)).permute(2, 0, 1).to(device)  # (3, H, W)

        before, target = tensor(before_np), tensor(target_np)
        out = tensor(retouch_image(model, before_np, device, strength))
        mask = changed(before, target)
        model_scores.append(_scores(out, target, mask))
        noedit_scores.append(_scores(before, target, mask))
        if len(result.samples) < keep_samples:
            result.samples.append((before.cpu(), out.cpu(), target.cpu()))
    result.images = len(model_scores)
    for scores, into in ((model_scores, result.model), (noedit_scores, result.noedit)):
        for key in ("psnr", "ssim", "masked_psnr"):
            into[key] = _mean([s[key] for s in scores])
    return result
