"""Training checkpoints (everything ``--resume`` needs) and export to the server's format.

A training checkpoint is a ``torch.save`` of plain containers and tensors, read back with
``weights_only=True``::

    {"format": "autoretouch-training", "version": 1, "config": {...TrainConfig...},
     "generator": ..., "discriminator": ... | None, "opt_g": ..., "opt_d": ... | None,
     "ragan": {"real": ..., "fake": ...} | None, "rng": [per-rank python/numpy/torch states],
     "epoch": e, "batch": batches done in epoch e, "step": total steps, "best": best PSNR,
     "metrics": {...latest validation...}, "skipped": bad files skipped, "command": "..."}

Weights are always taken from the unwrapped modules (no DDP ``module.`` prefix). Files are
written with ``plugin_server.checkpoint.atomic_torch_save`` (temporary name, fsync, rename).

    save_training(run_dir / "last.pt", payload)
    payload = load_training(run_dir / "last.pt")
    export(run_dir / "best.pt", Path("model.pt"))        # -> the server's checkpoint format
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugin_server import checkpoint as server_checkpoint
from plugin_server.errors import CheckpointError
from plugin_server.model import Generator

from .config import TrainConfig

FORMAT = "autoretouch-training"
VERSION = 1


def capture_rng() -> dict[str, Any]:
    """This process's global RNG states, as weights-only-loadable containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training(path: Path, payload: dict[str, Any]) -> None:
    server_checkpoint.atomic_torch_save({"format": FORMAT, "version": VERSION, **payload}, Path(path))


def load_training(path: str | os.PathLike) -> dict[str, Any]:
    return server_checkpoint.read_tagged(path, FORMAT, VERSION, kind="training checkpoint")


def generator_from_training(payload: dict[str, Any]) -> Generator:
    generator = Generator(TrainConfig.from_dict(payload["config"]).generator)
    generator.load_state_dict(payload["generator"])
    return generator.eval()


def load_any_generator(path: str | os.PathLike) -> tuple[Generator, dict[str, Any]]:
    """A generator from either a training checkpoint or an exported (server) checkpoint."""
    path = Path(path)
    try:
        payload = load_training(path)
    except CheckpointError:
        return server_checkpoint.load(path)
    return generator_from_training(payload), {
        "trained_on": payload["config"]["data"], "epochs": payload["epoch"], "steps": payload["step"],
        "train_command": payload.get("command", ""),
    }


def _lineage(path: str) -> dict[str, Any]:
    """What a fine-tuned run started from, so an exported model records its whole recipe."""
    _, meta = load_any_generator(path)
    return {"checkpoint": path, **{k: meta.get(k) for k in ("trained_on", "epochs", "steps", "train_command")}}


def export(
    train_checkpoint: str | os.PathLike, out: str | os.PathLike, command: str | None = None,
    residual_floor: float | None = None,
) -> Path:
    """Write a training checkpoint's generator in the server's format, with where it came from.

    ``residual_floor`` (in [0, 1] units) sets the served model's inference-time edit floor; the
    weights are the same, training never applies it.
    """
    payload = load_training(train_checkpoint)
    config = TrainConfig.from_dict(payload["config"])
    metadata = {
        "trained_on": config.data,
        "layout": config.layout,
        "epochs": payload["epoch"],
        "steps": payload["step"],
        "metrics": payload.get("metrics") or {},
        "train_command": payload.get("command", ""),
        "export_command": command or "",
        "train_config": config.to_dict(),
        "source_checkpoint": str(Path(train_checkpoint).resolve()),
    }
    if config.init:
        metadata["init"] = _lineage(config.init)
    generator = generator_from_training(payload)
    if residual_floor is not None:
        floored = Generator(dataclasses.replace(generator.config, residual_floor=residual_floor))
        floored.load_state_dict(generator.state_dict())
        generator = floored
    server_checkpoint.save(out, generator, metadata)
    return Path(out)
