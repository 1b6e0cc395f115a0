"""The AutoRetouch checkpoint format: one file other tools can rely on.

A checkpoint is a ``torch.save`` file holding only plain containers and tensors::

    {"format": "autoretouch-generator", "version": 1,
     "config": {...GeneratorConfig fields...},
     "inference": {"residual_floor": float, "scale": float | "native"},
     "state_dict": {...Generator weights...},
     "metadata": {...JSON-like: trained_on, steps, metrics, date, command...}}

It is read with ``torch.load(weights_only=True)``, so loading never executes code from the
file, and the config is checked against the weights actually present before anything is
built, so a forged config cannot make loading allocate gigabytes. Files written before
"inference" existed (the floor inside "config", no scale) load as native-scale models.
This module is the only place that does torch file I/O for generators.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .model import Generator, GeneratorConfig, Model

FORMAT = "autoretouch-generator"
VERSION = 1
BUNDLED = Path(__file__).parent / "weights" / "starter.pt"
NATIVE = "native"
# Far above any network this project trains (the default has 135 k): a config past it is forged.
MAX_PARAMETERS = 50_000_000


def resolve(path: str | os.PathLike | None) -> Path:
    """The checkpoint to use: ``path`` if given, else the model shipped with the package."""
    if path is not None:
        return Path(path)
    if BUNDLED.is_file():
        return BUNDLED
    raise CheckpointError(
        "no model was given and no bundled model is installed: name a checkpoint file "
        "(written by `autoretouch-train export`)"
    )


def save(path: str | os.PathLike, model: Model) -> None:
    """Write ``model`` to ``path`` atomically: a crash never leaves a half-written file."""
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.update(model.metadata)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.generator.config.to_dict(),
        "inference": {"residual_floor": model.residual_floor, "scale": NATIVE if model.scale is None else model.scale},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.generator.state_dict().items()},
        "metadata": meta,
    }
    atomic_torch_save(payload, Path(path))


def atomic_torch_save(payload: Any, path: Path) -> None:
    """torch.save through a temporary file in the same folder, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tagged(path: str | os.PathLike, fmt: str, version: int, kind: str = "checkpoint") -> dict[str, Any]:
    """A payload safely loaded (no code runs) whose format tag and version are checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} {path} does not exist (or is not a file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(
            f"{path} is not an AutoRetouch {kind} (it could not be read safely: {_first_line(exc)})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path} is not an AutoRetouch {kind} (no '{fmt}' format tag)")
    if payload.get("version") != version:
        raise CheckpointError(
            f"{path} is {kind} format version {payload.get('version')!r}; this AutoRetouch reads "
            f"version {version}. Upgrade AutoRetouch or re-export it."
        )
    return payload


def load(path: str | os.PathLike) -> Model:
    """Read a checkpoint; every problem is a CheckpointError naming the file and the cause."""
    payload = read_tagged(path, FORMAT, VERSION)
    config_fields = dict(payload.get("config") or {})
    inference = dict(payload.get("inference") or {"residual_floor": config_fields.pop("residual_floor", 0.0)})
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no generator weights")
    config = config_from(path, config_fields, state)
    generator = Generator(config)
    try:
        generator.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: the weights do not match its generator config: {_first_line(exc)}"
        ) from exc
    generator.eval()
    scale = inference.get("scale", NATIVE)
    try:
        return Model(
            generator, residual_floor=_number(inference.get("residual_floor", 0.0)),
            scale=None if scale == NATIVE else _number(scale), metadata=dict(payload.get("metadata") or {}),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has invalid inference settings {inference!r}: {exc}") from exc


def config_from(path: str | os.PathLike, fields: dict[str, Any], state: dict[str, torch.Tensor]) -> GeneratorConfig:
    """The generator config, checked against the weights present before a single layer is built."""
    try:
        config = GeneratorConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid generator config: {exc}") from exc
    expected, present = config.parameter_count(), sum(t.numel() for t in state.values())
    if expected > MAX_PARAMETERS or expected != present:
        raise CheckpointError(
            f"{path}: its generator config describes {expected} weights but the file holds {present}; "
            "the file is damaged or was not written by AutoRetouch"
        )
    return config


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
