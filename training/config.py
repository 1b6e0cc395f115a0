"""Training hyperparameters: one frozen dataclass, saved into every training checkpoint.

Defaults follow the AutoRetouch paper (WACV 2021); every field is a command-line flag of
``autoretouch-train train`` (see ``training/cli.py``). ``TrainConfig.from_dict`` rebuilds the
config from a checkpoint, so ``--resume`` can refuse a command line that would silently change
the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from plugin_server.model import GeneratorConfig

Layout = Literal["auto", "ffhqr", "studio", "csv"]
Focus = Literal["auto", "center", "edits"]
Precision = Literal["auto", "fp32", "bf16"]

# Fields that only change how a run is executed, not what it computes; --resume may change them.
# Paths may move between machines too.
RUN_ONLY_FIELDS = frozenset(
    {"data", "vgg_weights", "device", "epochs", "workers", "log_every", "stop_after_steps",
     "checkpoint_every", "val_every", "val_images", "init"}
)


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str = ""
    layout: Layout = "auto"
    val_fraction: float = 0.1  # studio/csv layouts only; FFHQR uses its published split
    test_fraction: float = 0.1
    window: int = 150  # side of the square training windows, in pixels
    focus: Focus = "auto"  # where windows are centred: "center" for aligned faces, "edits" elsewhere
    background_prob: float = 0.2  # share of windows drawn uniformly from the whole image
    mirror: bool = True
    rotate: bool = False  # random quarter turns of each window (for a few faces: spots have no up)
    colour_jitter: float = 0.05  # max relative brightness/contrast/saturation change
    # > 0: every pair is resampled so its largest face's IOD (eye centre to eye centre) is this
    # many px, and the exported model declares that scale; 0: photos as they are ("native").
    face_scale: float = 0.0
    # model
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    disc_channels: int = 64
    disc_layers: int = 3
    # losses: L = alpha * RaGAN + beta * Perceptual + gamma * MSE; a weight of 0 switches a term off
    alpha: float = 1e-3
    beta: float = 6e-3
    gamma: float = 0.5
    keep_weight: float = 1.0  # MSE weight of pixels the retoucher left alone; > 1 makes false edits cost more
    edit_weight: float = 1.0  # MSE weight of the colour error of pixels retouched by more than 2 levels; > 1: missed edits cost more
    ragan_window: int = 300  # predictions in the running average of the relativistic GAN
    perceptual_layer: str = "conv5_2"  # the 14th weight layer of VGG-19
    vgg_weights: str = "vgg19.pth"
    # optimisation
    init: str = ""  # start the generator from this checkpoint's weights (fine-tuning); "": random
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    batch_size: int = 75
    epochs: int = 500
    seed: int = 0
    precision: Precision = "auto"
    device: str = "auto"
    # bookkeeping
    workers: int = 4
    log_every: int = 10
    val_every: int = 5  # epochs (and after the last); 0: never
    val_images: int = 50  # whole validation images per validation pass (0: all)
    checkpoint_every: int = 0  # steps; 0 writes last.pt at the end of each epoch only
    stop_after_steps: int = 0  # stop (with a checkpoint) after this many steps in total; 0: never

    def __post_init__(self) -> None:
        if self.window < 8:
            raise ValueError(f"window must be >= 8 pixels, got {self.window}")
        if self.batch_size < 1 or self.epochs < 0:
            raise ValueError("batch_size must be >= 1 and epochs >= 0")
        if min(self.alpha, self.beta, self.gamma) < 0 or self.alpha + self.beta + self.gamma == 0:
            raise ValueError("loss weights must be >= 0 and at least one must be > 0")
        if not 0 <= self.background_prob <= 1:
            raise ValueError(f"background_prob must be in [0, 1], got {self.background_prob}")
        for name in ("keep_weight", "edit_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (self.face_scale >= 0 and math.isfinite(self.face_scale)):
            raise ValueError(f"face_scale must be 0 (native) or a positive IOD in pixels, got {self.face_scale}")
        if self.ragan_window < 1:
            raise ValueError(f"ragan_window must be >= 1, got {self.ragan_window}")

    @property
    def uses_gan(self) -> bool:
        return self.alpha > 0

    @property
    def uses_perceptual(self) -> bool:
        return self.beta > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["generator"] = GeneratorConfig(**values.get("generator", {}))
        return cls(**values)

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (other than run-only ones) whose values differ: what --resume refuses."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in RUN_ONLY_FIELDS and mine[k] != theirs[k]}

    def with_run_fields(self, other: TrainConfig) -> TrainConfig:
        """This config with ``other``'s run-only fields (e.g. more epochs when resuming)."""
        return replace(self, **{k: getattr(other, k) for k in RUN_ONLY_FIELDS})
