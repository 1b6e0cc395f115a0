"""The AutoRetouch generator: one definition for the engine and the trainer.

Following the AutoRetouch paper (WACV 2021): fully convolutional, one 2x downscale only
(deeper downscaling loses skin texture), a residual body at half resolution, learned
upsampling (conv + pixel shuffle) and an additive global skip, so ``G(x) = x + R(x)`` and
most pixels pass through unchanged.

    g = Generator()                      # default configuration
    y = g(x)                             # x: (N, 3, H, W) in [0, 1], any H, W >= 1
    r = g.residual(x)                    # the predicted edit alone

The generator describes itself to the engine, which hard-codes nothing about it:
``receptive_radius`` and ``stride`` (tile margins and alignment), ``precisions`` (what it is
accurate in) and ``activation_bytes_per_pixel`` (tile sizes from free memory). ``Model`` is a
generator with how it is served (the residual floor, the face scale, its metadata): what a
checkpoint holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_CHANNELS = 3


@dataclass(frozen=True)
class GeneratorConfig:
    """Width and depth of the generator; saved inside every checkpoint."""

    full_channels: int = 16  # features at full resolution (head and tail)
    body_channels: int = 32  # features at half resolution
    blocks: int = 6  # residual blocks at half resolution
    kernel_size: int = 3

    def __post_init__(self) -> None:
        for name in ("full_channels", "body_channels", "blocks", "kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        if self.kernel_size % 2 != 1 or self.kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        for name in ("full_channels", "body_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {self.blocks}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def parameter_count(self) -> int:
        """Weights and biases a generator of this config has, known before building it."""
        k2, cf, cb, c = self.kernel_size**2, self.full_channels, self.body_channels, IMAGE_CHANNELS
        def conv(cin: int, cout: int) -> int:
            return cin * cout * k2 + cout
        # head, down, the blocks' two convs each, up (to 4 cf for the pixel shuffle), tail
        return conv(c, cf) + conv(cf, cb) + 2 * self.blocks * conv(cb, cb) + conv(cb, 4 * cf) + conv(cf, c)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _act(x: torch.Tensor) -> torch.Tensor:
    # In place when no autograd graph needs the input: on CPU these memory-bound passes cost
    # as much as a third of inference time, and a fresh buffer each time makes it worse.
    return F.leaky_relu_(x, 0.2) if not torch.is_grad_enabled() else F.leaky_relu(x, 0.2)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, k)
        self.conv2 = _conv(channels, channels, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.conv2(_act(self.conv1(x)))
        return x.add_(update) if not torch.is_grad_enabled() else x + update


class Generator(nn.Module):
    """Fully convolutional retouching generator with a global additive skip.

    No normalisation layers: every output pixel depends only on its neighbourhood, never on
    tile statistics, which is what makes tiled inference exact.
    """

    # No normalisation and activations bounded by inputs in [0, 1] and small weights: nothing
    # comes near fp16's range, and bf16's coarser mantissa only touches the edit, not the skip.
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GeneratorConfig()
        k, cf, cb = config.kernel_size, config.full_channels, config.body_channels
        self.head = _conv(IMAGE_CHANNELS, cf, k)
        self.down = _conv(cf, cb, k, stride=2)
        self.body = nn.Sequential(*(ResidualBlock(cb, k) for _ in range(config.blocks)))
        self.up = _conv(cb, cf * 4, k)
        self.shuffle = nn.PixelShuffle(2)
        self.tail = _conv(cf, IMAGE_CHANNELS, k)
        # Start close to the identity: the skip carries the image and the edit grows from small.
        with torch.no_grad():
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()

    @property
    def stride(self) -> int:
        """Total downscale: window origins must sit on this grid for tiles to be exact."""
        total = 1
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                total *= conv.stride[0]
        return total

    @property
    def receptive_radius(self) -> int:
        """How far (in input pixels) an output pixel can see, in the worst direction."""
        h = self.config.kernel_size // 2
        # head at full res; down conv; 2 convs per block and the up conv at half res (x2);
        # the pixel shuffle's odd output phase reaches one more input pixel; tail at full res.
        return h + h + 2 * h * (2 * self.config.blocks + 1) + 1 + h

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted edit R(x), so that G(x) = x + R(x). x: (N, 3, H, W)."""
        height, width = x.shape[-2:]
        f = _act(self.head(x))  # (N, cf, H, W)
        f = _act(self.down(f))  # (N, cb, ceil(H/2), ceil(W/2))
        f = self.body(f)
        f = _act(self.shuffle(self.up(f)))  # (N, cf, 2*ceil(H/2), 2*ceil(W/2))
        return self.tail(f[..., :height, :width])  # (N, 3, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)

    def flops_per_pixel(self) -> float:
        """Multiply-adds x 2 per input pixel, for roofline figures."""
        c, k2 = self.config, self.config.kernel_size**2
        full = IMAGE_CHANNELS * c.full_channels + c.full_channels * IMAGE_CHANNELS
        half = (
            c.full_channels * c.body_channels
            + 2 * c.blocks * c.body_channels**2
            + c.body_channels * 4 * c.full_channels
        ) / 4
        return 2.0 * k2 * (full + half)

    def activation_bytes_per_pixel(self, dtype: torch.dtype) -> float:
        """Peak activation bytes per input pixel at inference, with headroom for workspaces."""
        c = self.config
        live = 3 + 2 * c.full_channels + (2 * c.body_channels) / 4 + c.full_channels + 3  # floats alive at once
        return 2.0 * live * max(torch.finfo(dtype).bits // 8, 4)


@dataclass(frozen=True)
class Model:
    """A generator and how it is served: what a checkpoint holds and the engine runs."""

    generator: Generator
    # Edits smaller than this (in [0, 1] units) are dropped at inference and larger ones reduced
    # by it (a soft threshold), so pixels the model barely touches come back exactly unchanged:
    # retouching is sparse. Training never applies it, so gradients flow from the first step.
    residual_floor: float = 0.0
    # Inter-ocular distance (px) of the faces it was trained on; None: trained at native scale.
    scale: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.residual_floor < 0.5:
            raise ValueError(f"residual_floor must be in [0, 0.5), got {self.residual_floor}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"the face scale must be a positive inter-ocular distance, got {self.scale}")
