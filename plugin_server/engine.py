"""Exact tiled inference of the generator over a photo of any size, on CPU or GPU.

    model = checkpoint.load("model.pt")                    # or Model(Generator())
    out = retouch(pixels, model)                           # (H, W, C) uint8/uint16/float32
    out = retouch(pixels, model, RetouchOptions(strength=0.5), progress=print, cancel=stop.is_set)

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

from .devices import DTYPES, resolve_device, resolve_precision
from .errors import BadImageError, CancelledError, OutOfMemoryError
from .model import Generator, Model
from .tiling import Region, TilePlan, round_up
from .wire import RetouchOptions

# The value of white of each pixel type the engine takes.
SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
# Largest core side tried when the caller gives none: larger cores waste less on margins,
# and on GPU batches of them fill the device.
_MAX_AUTO_CORE = {"cpu": 2048, "cuda": 2048}
_MAX_BATCH = 16
_MEMORY_FRACTION = 0.5


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise BadImageError(f"the image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise BadImageError(f"the image must be H x W x C with C = 1, 3 or 4, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise BadImageError(f"the image is empty ({image.shape[1]}x{image.shape[0]} pixels)")
    if image.dtype not in SCALE:
        raise BadImageError(f"the image must be uint8, uint16 or float32, got {image.dtype}")


def precision_for(model: Model, device: torch.device, precision: str | None) -> str:
    return resolve_precision(precision, device, model.generator.precisions)


def retouch(
    image: np.ndarray,
    model: Model,
    options: RetouchOptions = RetouchOptions(),
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Retouch ``image``: output = input + strength * (G(input) - input), same shape and dtype.

    ``options.tile_size``: core side in pixels; None picks one from free memory, 0 runs the
    whole image untiled. On CUDA out-of-memory the tile is halved and the work carries on.
    ``cancel()`` is polled between tiles; when it returns true, CancelledError is raised.
    Non-finite float pixels come back as they were; the network sees them, and values outside
    [0, 1], clipped into range, so they cannot spread into their neighbours.
    """
    check_image(image)
    dev = resolve_device(options.device)
    dtype = DTYPES[precision_for(model, dev, options.precision)]
    height, width = image.shape[:2]
    if options.strength == 0.0:
        if progress:
            progress(1.0)
        return image.copy()
    generator = model_on(model.generator, dev)
    if options.tile_size == 0:
        core, batch = None, 1
    elif options.tile_size is None:
        core, batch = auto_tile(generator, dev, dtype, height, width)
    else:
        core = options.tile_size
        batch = _auto_batch(generator, dev, dtype, core) if dev.type == "cuda" else 1
    plan = TilePlan.create(height, width, core, generator.receptive_radius, generator.stride)
    out = image.copy()  # alpha (and anything untouched) is already in place
    run = _Run(image, out, generator, model.residual_floor, dev, dtype, options.strength, progress, cancel)
    run.process(plan, batch)
    return out


class _Run:
    """One retouch call: gathers windows, runs the model, writes cores into ``out``."""

    def __init__(self, image, out, model, floor, device, dtype, strength, progress, cancel) -> None:
        self.image, self.out, self.model, self.floor = image, out, model, floor
        self.device, self.dtype, self.strength = device, dtype, strength
        self.progress, self.cancel = progress, cancel
        self.scale = SCALE[image.dtype]
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
                        f"not enough {self.device} memory even for the smallest tile; free memory or run on the CPU"
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
        seen = x
        if self.scale == 1.0:  # float images may hold NaN, Inf or values far outside [0, 1]
            seen = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            residual = self.model.residual(seen)
        residual = residual.float()
        if self.floor:
            residual = torch.sign(residual) * (residual.abs() - self.floor).clamp_(min=0.0)
        # The global skip in fp32: x + s * R(x), whatever precision the body ran in.
        y = (x + self.strength * residual).permute(0, 2, 3, 1)  # (B, h, w, 3)
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
    per_px = model.activation_bytes_per_pixel(dtype)
    largest = _MAX_AUTO_CORE[device.type]
    while largest > 64 and _window_side(model, largest) ** 2 * per_px > budget:
        largest //= 2
    # Split each side evenly: a 1414-pixel side makes two 708 cores, not 1024 + 390.
    core = max(-(-side // -(-side // largest)) for side in (height, width))
    return core, _auto_batch(model, device, dtype, core) if device.type == "cuda" else 1


def _auto_batch(model: Generator, device: torch.device, dtype: torch.dtype, core: int) -> int:
    per_window = _window_side(model, core) ** 2 * model.activation_bytes_per_pixel(dtype)
    return int(max(1, min(_MAX_BATCH, free_memory(device) * _MEMORY_FRACTION // per_window)))
