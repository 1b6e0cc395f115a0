"""What a run tells its user: a progress line, a JSONL log, image grids and a loss plot.

Only rank 0 reports. The progress line rewrites itself on a terminal and prints one line per
update otherwise (logs, CI). matplotlib is imported only when a plot is drawn.

    log = JsonlLog(run_dir / "log.jsonl"); log.write({"kind": "train", "step": 10, ...})
    progress = Progress(total_steps=7460); progress.update(step, epoch, losses, samples_per_s)
    save_grid(run_dir / "grid-0005.png", [(before, after, target), ...])
    plot_losses(run_dir / "log.jsonl", run_dir / "loss.png")
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image

GRID_CROP = 256  # pixels of each panel: a central crop at full resolution shows skin detail
EDIT_GAIN = 4.0  # the difference panel shows 0.5 + 4 * (after - before)


class JsonlLog:
    """Append-only log, one JSON object per line, flushed so a crash loses nothing written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class Progress:
    def __init__(self, total_steps: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream = total_steps, stream
        self.tty = stream.isatty()

    def update(self, step: int, epoch: int, losses: dict[str, float], samples_per_s: float, skipped: int) -> None:
        width = 20
        done = int(width * step / max(self.total, 1))
        parts = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
        line = (
            f"[{'#' * done}{'.' * (width - done)}] step {step}/{self.total} epoch {epoch} "
            f"{parts} {samples_per_s:.1f} samples/s" + (f" skipped {skipped}" if skipped else "")
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()


def _panel(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> central GRID_CROP x GRID_CROP uint8 (H, W, 3)."""
    h, w = image.shape[-2:]
    y, x = max(0, (h - GRID_CROP) // 2), max(0, (w - GRID_CROP) // 2)
    crop = image[:, y : y + GRID_CROP, x : x + GRID_CROP].clamp(0, 1)
    return (crop.permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(path: Path, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """One row per image: before | model output | target | 0.5 + 4 (output - before)."""
    lines = []
    for before, after, target in rows:
        edit = 0.5 + EDIT_GAIN * (after - before)
        panels = [_panel(t) for t in (before, after, target, edit)]
        height = min(p.shape[0] for p in panels)
        lines.append(np.concatenate([p[:height] for p in panels], axis=1))
    width = min(line.shape[1] for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([line[:, :width] for line in lines], axis=0)).save(path)


def plot_losses(log_path: Path, out: Path) -> None:
    """Training losses per step and validation PSNR beside the No-edit baseline."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    records = JsonlLog(log_path).read()
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in train for k in r.get("losses", {})}):
        points = [(r["step"], r["losses"][key]) for r in train if key in r["losses"]]
        ax_loss.plot(*zip(*points), label=key)
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    if train:
        ax_loss.legend()
    if val:
        steps = [r["step"] for r in val]
        ax_val.plot(steps, [r["psnr"] for r in val], marker="o", label="model")
        ax_val.plot(steps, [r["psnr_noedit"] for r in val], linestyle="--", label="no edit")
        ax_val.legend()
    ax_val.set(xlabel="step", ylabel="PSNR (dB)", title="validation")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """The paper-style table: one row per method, PSNR, SSIM and masked PSNR columns."""

    def cell(v: float, digits: int) -> str:
        return "n/a" if v is None or math.isnan(v) else f"{v:.{digits}f}"

    lines = [f"{'':<10} {'PSNR (dB)':>10} {'SSIM':>8} {'masked PSNR (dB)':>17}"]
    for name, m in rows:
        lines.append(f"{name:<10} {cell(m['psnr'], 2):>10} {cell(m['ssim'], 4):>8} {cell(m['masked_psnr'], 2):>17}")
    return "\n".join(lines)
