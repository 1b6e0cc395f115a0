"""The models of a run and one optimisation step over a batch of windows.

Kept apart from the loop in ``train.py`` so the benchmark times exactly the step that training
runs. The generator step comes first, then the discriminator step (as in ESRGAN).

    models = build_models(config, device, vgg)
    losses = train_step(models, before, after)      # (N, 3, w, w) each, on ``device``
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plugin_server.model import Generator

from .config import TrainConfig
from .discriminator import PatchDiscriminator
from .losses import RunningMean, perceptual_loss, ragan_d_loss, ragan_g_loss, weighted_mse
from .vgg import VggFeatures


@dataclass
class Models:
    config: TrainConfig
    device: torch.device
    autocast: torch.dtype | None  # bf16 autocast, or None for plain fp32
    raw_generator: Generator  # what checkpoints save (never the DDP wrapper)
    generator: nn.Module  # the module the step calls: raw_generator or its DDP wrapper
    opt_g: torch.optim.Adam
    vgg: VggFeatures | None = None
    raw_discriminator: PatchDiscriminator | None = None
    discriminator: nn.Module | None = None
    opt_d: torch.optim.Adam | None = None
    real_avg: RunningMean | None = None
    fake_avg: RunningMean | None = None

    def state_dict(self) -> dict[str, Any]:
        gan = self.raw_discriminator is not None
        return {
            "generator": self.raw_generator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "discriminator": self.raw_discriminator.state_dict() if gan else None,
            "opt_d": self.opt_d.state_dict() if gan else None,
            "ragan": {"real": self.real_avg.state_dict(), "fake": self.fake_avg.state_dict()} if gan else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw_generator.load_state_dict(state["generator"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.raw_discriminator is not None:
            self.raw_discriminator.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.real_avg.load_state_dict(state["ragan"]["real"])
            self.fake_avg.load_state_dict(state["ragan"]["fake"])


def build_models(config: TrainConfig, device: torch.device, vgg: VggFeatures | None, autocast: torch.dtype | None) -> Models:
    """Fresh models and optimisers; the caller seeds torch first and wraps them in DDP after."""
    generator = Generator(config.generator).to(device)
    models = Models(
        config=config,
        device=device,
        autocast=autocast,
        raw_generator=generator,
        generator=generator,
        opt_g=torch.optim.Adam(generator.parameters(), lr=config.lr_g),
        vgg=vgg.to(device) if vgg is not None else None,
    )
    if config.uses_gan:
        d = PatchDiscriminator(config.disc_channels, config.disc_layers).to(device)
        models.raw_discriminator = models.discriminator = d
        models.opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d)
        models.real_avg, models.fake_avg = RunningMean(config.ragan_window), RunningMean(config.ragan_window)
    return models


def train_step(
    m: Models,
    before: torch.Tensor,
    after: torch.Tensor,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One generator and one discriminator update; returns detached loss tensors.

    ``gather`` (under DDP) concatenates a tensor over ranks, so every rank pushes the same
    predictions into the RaGAN averages and they stay one estimate for the whole run.
    """
    c = m.config
    autocast = torch.autocast(m.device.type, dtype=m.autocast) if m.autocast else nullcontext()
    m.generator.train()
    losses: dict[str, torch.Tensor] = {}
    with autocast:
        fake = m.generator(before)  # (N, 3, w, w)
        total = fake.new_zeros((), dtype=torch.float32)
        if c.gamma > 0:
            losses["mse"] = weighted_mse(fake, before, after, c.keep_weight, c.edit_weight)
            total = total + c.gamma * losses["mse"]
        if c.beta > 0:
            losses["perceptual"] = perceptual_loss(m.vgg, fake, after)
            total = total + c.beta * losses["perceptual"]
        if c.alpha > 0:
            # The unwrapped discriminator, frozen: the generator step must not touch D's
            # gradients, and a DDP-wrapped D would wait for gradients that never come.
            m.raw_discriminator.requires_grad_(False)
            with torch.no_grad():
                d_real = m.raw_discriminator(after)
            d_fake = m.raw_discriminator(fake)
            m.raw_discriminator.requires_grad_(True)
            losses["ragan_g"] = ragan_g_loss(d_real, d_fake, m.real_avg.mean, m.fake_avg.mean)
            total = total + c.alpha * losses["ragan_g"]
    m.opt_g.zero_grad(set_to_none=True)
    total.backward()
    m.opt_g.step()
    losses["loss_g"] = total

    if c.alpha > 0:
        with autocast:
            # Real and fake in one forward: DDP expects one forward per backward.
            logits = m.discriminator(torch.cat([after, fake.detach()]))
            d_real, d_fake = logits.float().split(len(after))
        real, fake_pred = d_real.detach().mean(dim=(1, 2, 3)), d_fake.detach().mean(dim=(1, 2, 3))
        m.real_avg.push(gather(real) if gather else real)
        m.fake_avg.push(gather(fake_pred) if gather else fake_pred)
        loss_d = ragan_d_loss(d_real, d_fake, m.real_avg.mean, m.fake_avg.mean)
        m.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        m.opt_d.step()
        losses["loss_d"] = loss_d
    return {k: v.detach() for k, v in losses.items()}
