"""The AutoRetouch loss: L = alpha * RaGAN + beta * Perceptual + gamma * MSE.

The relativistic average GAN compares a real patch with the *average* fake prediction and a
fake patch with the average real one. The paper estimates those averages over the last 300
predictions instead of the current batch, which is steadier with small batches; a prediction
here is one window's mean patch logit. ``RunningMean`` keeps exactly that window and is saved
in checkpoints so a resumed run continues with the same estimate.

    fake_avg, real_avg = RunningMean(300), RunningMean(300)
    real_avg.push(d_real.mean((1, 2, 3))); fake_avg.push(d_fake.mean((1, 2, 3)))
    d_loss = ragan_d_loss(d_real, d_fake, real_avg.mean, fake_avg.mean)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .windows import EDIT_LEVEL


class RunningMean:
    """Mean of the last ``size`` values pushed (a ring buffer on the CPU, in float64)."""

    def __init__(self, size: int = 300) -> None:
        self.size = size
        self.buffer = torch.zeros(size, dtype=torch.float64)
        self.count = 0  # values pushed so far (saturates the buffer at ``size``)
        self.pos = 0  # where the next value goes

    def push(self, values: torch.Tensor) -> None:
        values = values.detach().flatten().to("cpu", torch.float64)[-self.size :]
        index = (self.pos + torch.arange(len(values))) % self.size
        self.buffer[index] = values
        self.pos = int((self.pos + len(values)) % self.size)
        self.count = min(self.count + len(values), self.size)

    @property
    def mean(self) -> float:
        return float(self.buffer[: self.count].mean()) if self.count else 0.0

    def last(self) -> torch.Tensor:
        """The kept values, oldest first."""
        if self.count < self.size:
            return self.buffer[: self.count].clone()
        return torch.cat([self.buffer[self.pos :], self.buffer[: self.pos]])

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "buffer": self.buffer.clone(), "count": self.count, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size, self.count, self.pos = int(state["size"]), int(state["count"]), int(state["pos"])
        self.buffer = state["buffer"].to(torch.float64).clone()


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), target))


def ragan_d_loss(real: torch.Tensor, fake: torch.Tensor, real_mean: float, fake_mean: float) -> torch.Tensor:
    """Discriminator: real patches should look more real than the average fake, and vice versa."""
    return (_bce(real - fake_mean, 1.0) + _bce(fake - real_mean, 0.0)) / 2


def ragan_g_loss(real: torch.Tensor, fake: torch.Tensor, real_mean: float, fake_mean: float) -> torch.Tensor:
    """Generator: the same game with the labels swapped. With running (detached) averages only
    the fake term carries gradient to the generator; the real term keeps the value comparable."""
    return (_bce(real - fake_mean, 0.0) + _bce(fake - real_mean, 1.0)) / 2


def weighted_mse(
    output: torch.Tensor, before: torch.Tensor, target: torch.Tensor, keep_weight: float = 1.0, edit_weight: float = 1.0,
) -> torch.Tensor:
    """MSE in which pixels the retoucher left exactly as they were weigh ``keep_weight``, and the
    colour part of the error of pixels the retoucher moved by more than ``EDIT_LEVEL`` weighs
    ``edit_weight``. At 1 and 1 it is the paper's plain MSE.

    A retoucher would rather leave a blemish than touch an eyelash: ``keep_weight`` > 1 makes an
    edit where none was wanted cost more than a missed one. Edits are sparse, and under plain MSE
    a small model unsure where they are learns a fraction of each; ``edit_weight`` > 1 makes a
    missed one cost more. Only its colour: healing spots and redness is mostly a colour change,
    while freckles and texture live in lightness, and weighting the whole error taught the model to
    lighten freckles. The error splits into its grey part (the RGB mean) and the rest, orthogonal,
    so the two parts add up to the plain squared error.
    """
    err = output.float() - target.float()  # (N, C, H, W)
    if keep_weight == 1 and edit_weight == 1:
        return (err**2).mean()
    moved = (before.float() - target.float()).abs().amax(dim=1, keepdim=True)  # (N, 1, H, W)
    grey = err.mean(dim=1, keepdim=True)
    grey_sq, colour_sq = err.shape[1] * grey**2, ((err - grey) ** 2).sum(dim=1, keepdim=True)
    kept = torch.where(moved == 0, keep_weight, 1.0)
    colour_weight = torch.where(moved > EDIT_LEVEL, edit_weight, kept)
    return ((kept * grey_sq + colour_weight * colour_sq) / err.shape[1]).mean()


def perceptual_loss(features: torch.nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between VGG features of the output and of the target (the target needs no graph)."""
    with torch.no_grad():
        target_features = features(target)
    return F.mse_loss(features(output).float(), target_features.float())
