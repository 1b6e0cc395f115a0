"""Exact tiled inference of the generator over a photo of any size, on CPU or GPU.

    out = retouch(pixels, generator)                       # (H, W, C) uint8/uint16/float32
    out = retouch(pixels, generator, strength=0.5, progress=print, cancel=stop_event.is_set)

The output equals a whole-image run (tiles carry margins >= the receptive radius, see
``tiling``) while memory stays bounded: each core is written straight into the output array,
with no blending and no full-size float buffer. Gray images run as gray (replicated to RGB,
averaged back); alpha passes through untouched.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Callable

import numpy as np
import torch

from .errors import BadImageError, BadOptionError, CancelledError, OutOfMemoryError
from .model import Generator
from .tiling import Region, TilePlan, round_up

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_STRENGTH = 2.0
_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
# Largest core side tried when the caller gives none: larger cores waste less on margins,
# and on GPU batches of them fill the device.
_MAX_AUTO_CORE = {"cpu": 2048, "cuda": 2048}
_MAX_BATCH = 16
_MEMORY_FRACTION = 0.5


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or "auto": the first CUDA device if there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BadOptionError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise BadOptionError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadOptionError(f"device {device!r} was asked for, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadOptionError(f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def default_precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def resolve_precision(precision: str | None, device: torch.device) -> str:
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise BadOptionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def check_strength(strength: float) -> float:
    try:
        value = float(strength)
    except (TypeError, ValueError) as exc:
        raise BadOptionError(f"strength must be a number between 0 and {MAX_STRENGTH:g}, got {strength!r}") from exc
    if not 0.0 <= value <= MAX_STRENGTH:  # also false for NaN
        raise BadOptionError(f"strength must be between 0 and {MAX_STRENGTH:g}, got {strength!r}")
    return value


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise BadImageError(f"the image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise BadImageError(f"the image must be H x W x C with C = 1, 3 or 4, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise BadImageError(f"the image is empty ({image.shape[1]}x{image.shape[0]} pixels)")
    if image.dtype not in _SCALE:
        raise BadImageError(f"the image must be uint8, uint16 or float32, got {image.dtype}")


def retouch(
    image: np.ndarray,
    generator: Generator,
    strength: float = 1.0,
    tile_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Retouch ``image``: output = input + strength * (G(input) - input), same shape and dtype.

    ``tile_size``: core side in pixels; None picks one from free memory, 0 runs the whole image
    untiled. On CUDA out-of-memory the tile is halved and the work carries on.
    ``cancel()`` is polled between tiles; when it returns true, CancelledError is raised.
    """
    check_image(image)
    strength = check_strength(strength)
    dev = resolve_device(device)
    dtype = PRECISIONS[resolve_precision(precision, dev)]
    if tile_size is not None and (not isinstance(tile_size, int) or tile_size < 0):
        raise BadOptionError(f"tile size must be a positive number of pixels or 0 (whole image), got {tile_size!r}")
    height, width = image.shape[:2]
    if strength == 0.0:
        if progress:
            progress(1.0)
        return image.copy()
    model = model_on(generator, dev)
    if tile_size == 0:
        core, batch = None, 1
    elif tile_size is None:
        core, batch = auto_tile(model, dev, dtype, height, width)
    else:
        core, batch = tile_size, _auto_batch(model, dev, dtype, tile_size) if dev.type == "cuda" else 1
    plan = TilePlan.create(height, width, core, model.receptive_radius, model.stride)
    out = image.copy()  # alpha (and anything untouched) is already in place
    _Run(image, out, model, dev, dtype, strength, progress, cancel).process(plan, batch)
    return out


class _Run:
    """One retouch call: gathers windows, runs the model, writes cores into ``out``."""

    def __init__(self, image, out, model, device, dtype, strength, progress, cancel) -> None:
        self.image, self.out, self.model = image, out, model
        self.device, self.dtype, self.strength = device, dtype, strength
        self.progress, self.cancel = progress, cancel
        self.scale = _SCALE[image.dtype]
        self.total = image.shape[0] * image.shape[1]
        self.done = 0

    def process(self, plan: TilePlan, batch: int) -> None:
        pending = deque(plan.regions())
        while pending:
            if self.cancel is not None and self.cancel():
                raise CancelledError("the retouch was cancelled")
            cores = [pending.popleft() for _ in range(min(batch, len(pending)))]
            try:
                self._run_batch(plan, cores)
            except torch.cuda.OutOfMemoryError:
                if plan.core <= plan.stride:
                    raise OutOfMemoryError(
                        f"not enough {self.device} memory even for the smallest tile; free memory or use --device cpu"
                    ) from None
                # Redo the failed cores and everything after them with half the tile: cores
                # are only written after a whole batch succeeds, so nothing stale is kept.
                torch.cuda.empty_cache()
                plan = plan.with_core(plan.core // 2)
                pending = deque(r for old in [*cores, *pending] for r in plan.regions(old))
                batch = 1
                continue
            self.done += sum(c.pixels for c in cores)
            if self.progress is not None:
                self.progress(self.done / self.total)

    def _run_batch(self, plan: TilePlan, cores: list[Region]) -> None:
        windows = [plan.window_for(c) for c in cores]
        stack = np.stack([self._window_rgb(w) for w in windows])  # (B, h, w, 3) float32
        x = torch.from_numpy(stack).to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, h, w), channels_last
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            residual = self.model.residual(x)
        # The global skip in fp32: x + s * R(x), whatever precision the body ran in.
        y = (x + self.strength * residual.float()).permute(0, 2, 3, 1)  # (B, h, w, 3)
        if self.image.shape[2] == 1:
            y = y.mean(dim=3, keepdim=True)
        if self.scale != 1.0:
            y = (y * self.scale).round_().clamp_(0, self.scale)
        y = y.cpu().numpy()
        channels = min(self.image.shape[2], 3)
        for core, window, result in zip(cores, windows, y):
            self.out[core.y0:core.y1, core.x0:core.x1, :channels] = result[
                core.y0 - window.y0:core.y1 - window.y0, core.x0 - window.x0:core.x1 - window.x0
            ]

    def _window_rgb(self, window: Region) -> np.ndarray:
        pixels = self.image[window.y0:window.y1, window.x0:window.x1]
        rgb = pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels, 3, axis=2)
        return rgb.astype(np.float32) * np.float32(1.0 / self.scale) if self.scale != 1.0 else rgb.astype(np.float32)


def model_on(generator: Generator, device: torch.device) -> Generator:
    """The generator on ``device``; a copy when it lives elsewhere, so the caller's is untouched.

    Long-lived callers (the server) place their models once with this; retouch() calls it too.
    """
    param = next(generator.parameters())
    if param.device == device or (device.type == "cuda" and param.device.type == "cuda" and device.index is None):
        return generator
    return copy.deepcopy(generator).to(device=device, memory_format=torch.channels_last)


def _window_side(model: Generator, core: int) -> int:
    return core + 2 * round_up(model.receptive_radius, model.stride)


def _bytes_per_window_pixel(model: Generator, dtype: torch.dtype) -> float:
    """Peak activation bytes per window pixel, with headroom for workspaces."""
    c = model.config
    live = 3 + 2 * c.full_channels + (2 * c.body_channels) / 4 + c.full_channels + 3  # floats alive at once
    return 2.0 * live * max(torch.finfo(dtype).bits // 8, 4)


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 2 << 30  # unknown OS: assume a modest 2 GiB


def auto_tile(model: Generator, device: torch.device, dtype: torch.dtype, height: int, width: int) -> tuple[int, int]:
    """(core side, batch) that fit in half the free memory."""
    budget = free_memory(device) * _MEMORY_FRACTION
    per_px = _bytes_per_window_pixel(model, dtype)
    largest = _MAX_AUTO_CORE[device.type]
    while largest > 64 and _window_side(model, largest) ** 2 * per_px > budget:
        largest //= 2
    # Split each side evenly: a 1414-pixel side makes two 708 cores, not 1024 + 390.
    core = max(-(-side // -(-side // largest)) for side in (height, width))
    return core, _auto_batch(model, device, dtype, core) if device.type == "cuda" else 1


def _auto_batch(model: Generator, device: torch.device, dtype: torch.dtype, core: int) -> int:
    per_window = _window_side(model, core) ** 2 * _bytes_per_window_pixel(model, dtype)
    return int(max(1, min(_MAX_BATCH, free_memory(device) * _MEMORY_FRACTION // per_window)))
