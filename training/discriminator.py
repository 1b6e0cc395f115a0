"""The fully convolutional patch discriminator of the relativistic GAN term.

Each output logit judges one patch (about 70 px across with 3 stride-2 layers), so the
discriminator looks at skin texture rather than at the whole face and works on any window
size. No normalisation layers: real and fake windows go through it in one batch, and batch
statistics would let it compare them with each other instead of judging each patch.

    d = PatchDiscriminator(channels=64, layers=3)
    logits = d(x)          # x: (N, 3, H, W) -> (N, 1, ~H/8, ~W/8)
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if channels < 1 or layers < 1:
            raise ValueError("discriminator channels and layers must be >= 1")
        modules: list[nn.Module] = []
        cin, cout = 3, channels
        for _ in range(layers):  # each halves the resolution and (up to 8x) doubles the width
            modules += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin, cout = cout, min(cout * 2, channels * 8)
        modules += [nn.Conv2d(cin, cin, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(cin, 1, 3, padding=1)]
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
