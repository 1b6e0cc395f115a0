"""Where a training run is (``RunState``), its checkpoints, and export to the server's format.

A training checkpoint is a ``torch.save`` of plain containers and tensors, read back with
``weights_only=True``; ``RunState.to_payload`` writes it and ``RunState.from_payload`` reads it::

    {"format": "autoretouch-training", "version": 1, "config": {...TrainConfig...},
     "generator": ..., "discriminator": ... | None, "opt_g": ..., "opt_d": ... | None,
     "ragan": {"real": ..., "fake": ...} | None, "rng": [per-rank python/numpy/torch states],
     "epoch": e, "batch": batches done in epoch e, "step": total steps, "best": best PSNR,
     "metrics": {...latest validation...}, "skipped": bad files skipped, "command": "..."}

Weights are always taken from the unwrapped modules (no DDP ``module.`` prefix). Files are
written with ``plugin_server.checkpoint.atomic_torch_save`` (temporary name, fsync, rename).

    save_training(run_dir / "last.pt", state)
    state = RunState.from_payload(load_training(run_dir / "last.pt"))
    export(run_dir / "best.pt", Path("model.pt"))        # -> the server's checkpoint format
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugin_server import checkpoint as server_checkpoint
from plugin_server.checkpoint import Model
from plugin_server.errors import CheckpointError
from plugin_server.model import Generator

from .config import TrainConfig

FORMAT = "autoretouch-training"
VERSION = 1
# The models' parts of the payload, as written by ``step.Models.state_dict``.
WEIGHT_KEYS = ("generator", "discriminator", "opt_g", "opt_d", "ragan")


@dataclass
class RunState:
    """Everything about a run beside its hyperparameters' effects: the training checkpoint.

    Mutable on purpose: the loop advances ``epoch``, ``batch`` and ``step`` in place, and
    ``rng`` and ``weights`` are filled from every rank and from the models just before a save.
    """

    config: TrainConfig
    command: str = ""  # the command line of the invocation that wrote the checkpoint
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done inside ``epoch``
    step: int = 0  # optimisation steps in total
    best: float = -math.inf  # best validation PSNR so far
    metrics: dict[str, float] = field(default_factory=dict)  # the latest validation
    skipped: int = 0  # bad pairs skipped in completed epochs
    rng: list[dict[str, Any]] = field(default_factory=list)  # every rank's RNG states, rank order
    weights: dict[str, Any] = field(default_factory=dict)  # models and optimisers, ``WEIGHT_KEYS``

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, **self.weights, "config": self.config.to_dict(),
            "rng": self.rng, "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "best": self.best, "metrics": self.metrics, "skipped": self.skipped, "command": self.command,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RunState:
        return cls(
            config=TrainConfig.from_dict(payload["config"]), command=payload.get("command", ""),
            epoch=payload["epoch"], batch=payload["batch"], step=payload["step"], best=payload["best"],
            metrics=payload.get("metrics") or {}, skipped=payload["skipped"], rng=payload["rng"],
            weights={k: payload[k] for k in WEIGHT_KEYS},
        )

    def generator(self) -> Generator:
        generator = Generator(self.config.generator)
        generator.load_state_dict(self.weights["generator"])
        return generator.eval()

    def metadata(self) -> dict[str, Any]:
        """What a served model says about the run it came from."""
        return {
            "trained_on": self.config.data, "epochs": self.epoch, "steps": self.step, "train_command": self.command,
            "scale": self.config.face_scale or "native",  # IOD in px the faces were trained at
        }

    @property
    def scale(self) -> float | None:
        """The served model's scale: the IOD it was trained at, None for native (``Model.scale``)."""
        return self.config.face_scale or None


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


def save_training(path: Path, state: RunState) -> None:
    server_checkpoint.atomic_torch_save(state.to_payload(), Path(path))


def load_training(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload (``RunState.from_payload`` makes it a value); CheckpointError if it is none."""
    return server_checkpoint.read_tagged(path, FORMAT, VERSION, kind="training checkpoint")


def load_any_generator(path: str | os.PathLike) -> Model:
    """The model in a training checkpoint (no residual floor: training never applies one) or an exported one."""
    try:
        state = RunState.from_payload(load_training(path))
    except CheckpointError:
        return server_checkpoint.load(path)
    return Model(state.generator(), scale=state.scale, metadata=state.metadata())


def export(
    train_checkpoint: str | os.PathLike, out: str | os.PathLike, command: str | None = None,
    residual_floor: float | None = None,
) -> Path:
    """Write a training checkpoint's generator in the server's format, with where it came from.

    ``residual_floor`` (in [0, 1] units) sets the served model's inference-time edit floor; the
    weights are the same, training never applies it. The model's scale is the run's
    ``face_scale`` (native for runs without one, and for checkpoints older than it).
    """
    state = RunState.from_payload(load_training(train_checkpoint))
    metadata = {
        **state.metadata(),
        "layout": state.config.layout,
        "metrics": state.metrics,
        "export_command": command or "",
        "train_config": state.config.to_dict(),
        "source_checkpoint": str(Path(train_checkpoint).resolve()),
    }
    if state.config.init:
        # What a fine-tuned run started from, so an exported model records its whole recipe.
        source = load_any_generator(state.config.init).metadata
        keys = ("trained_on", "epochs", "steps", "train_command")
        metadata["init"] = {"checkpoint": state.config.init, **{k: source.get(k) for k in keys}}
    from .heal_pairs import REPORT_FILE  # only exports need it; it imports the face code

    made_by = Path(state.config.data) / REPORT_FILE
    if made_by.is_file():  # pairs from `autoretouch-train heal`: the procedure's parameters and photos
        metadata["data_engine"] = json.loads(made_by.read_text())
    model = Model(state.generator(), residual_floor=residual_floor or 0.0, scale=state.scale, metadata=metadata)
    server_checkpoint.save(out, model)
    return Path(out)
