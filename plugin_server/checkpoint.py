"""The AutoRetouch checkpoint format: one file other tools can rely on.

A checkpoint is a ``torch.save`` file holding only plain containers and tensors::

    {"format": "autoretouch-generator", "version": 1,
     "config": {...GeneratorConfig fields...},
     "state_dict": {...Generator weights...},
     "metadata": {...JSON-like: trained_on, steps, metrics, date, command...}}

It is read with ``torch.load(weights_only=True)``, so loading never executes code from the
file. This module is the only place that does torch file I/O for generators.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .model import Generator, GeneratorConfig

FORMAT = "autoretouch-generator"
VERSION = 1
BUNDLED = Path(__file__).parent / "weights" / "starter.pt"


def resolve(path: str | os.PathLike | None) -> Path:
    """The checkpoint to use: ``path`` if given, else the model shipped with the package."""
    if path is not None:
        return Path(path)
    if BUNDLED.is_file():
        return BUNDLED
    raise CheckpointError(
        "no model given and no bundled model is installed: pass --checkpoint PATH "
        "(a file written by `autoretouch-train export`)"
    )


def save(path: str | os.PathLike, generator: Generator, metadata: dict[str, Any] | None = None) -> None:
    """Write ``generator`` to ``path`` atomically: a crash never leaves a half-written file."""
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.update(metadata or {})
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": generator.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()},
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


def load(path: str | os.PathLike) -> tuple[Generator, dict[str, Any]]:
    """Read a checkpoint; every problem is a CheckpointError naming the file and the cause."""
    payload = read_tagged(path, FORMAT, VERSION)
    try:
        config = GeneratorConfig(**payload["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid generator config: {exc}") from exc
    generator = Generator(config)
    try:
        generator.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: the weights do not match its generator config: {_first_line(exc)}"
        ) from exc
    generator.eval()
    return generator, dict(payload.get("metadata") or {})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
