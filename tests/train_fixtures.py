"""Helpers for the training tests: tiny real data sets, random VGG-19 weights, tiny configs.

Data sets are built in temporary folders from ../shared/data (symlinks and synthetic retouches
made here); nothing is copied into the repository. Run as a script under torchrun, this module
is also the DDP worker of test_train_ddp.py::

    python -m torch.distributed.run --nproc_per_node 2 --standalone tests/train_fixtures.py CONFIG.json RUN_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from plugin_server.model import GeneratorConfig
from training.config import TrainConfig
from training.vgg import layer_table

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "ffhqr-pair").is_dir(), reason=f"real test photos not found at {SHARED_DATA}"
)
# FFHQ portraits -> FFHQR ids: four more training pairs, one validation and one test pair.
PORTRAIT_IDS = {1: "00001", 2: "00002", 3: "00003", 4: "00004", 5: "56000", 6: "63000"}


def synthetic_retouch(image: Image.Image) -> Image.Image:
    """A stand-in retouch: the central face region softened, the rest untouched."""
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    soft = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(3))).astype(np.float32)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    weight = np.exp(-(((yy - 0.55 * h) / (0.2 * h)) ** 2 + ((xx - 0.5 * w) / (0.18 * w)) ** 2))[..., None]
    return Image.fromarray(np.clip(rgb + 0.6 * weight * (soft - rgb) + 0.5, 0, 255).astype(np.uint8))


def build_ffhqr(root: Path) -> Path:
    """A tiny FFHQR layout: the real FFHQR pair as 00000 plus synthetic pairs from FFHQ portraits."""
    originals, retouched = root / "images1024x1024", root / "retouched"
    originals.mkdir(parents=True)
    retouched.mkdir()
    (originals / "00000.png").symlink_to(SHARED_DATA / "ffhqr-pair" / "00000-original.png")
    (retouched / "00000.png").symlink_to(SHARED_DATA / "ffhqr-pair" / "00000-retouched.png")
    for number, name in PORTRAIT_IDS.items():
        source = SHARED_DATA / "portraits" / f"ffhq-{number:05d}.png"
        (originals / f"{name}.png").symlink_to(source)
        with Image.open(source) as im:
            synthetic_retouch(im).save(retouched / f"{name}.png", compress_level=1)
    return root


def write_random_vgg19(path: Path, seed: int = 0) -> Path:
    """Random weights in torchvision's vgg19 state-dict layout (features only; classifier unused)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (index, (cout, cin)) in layer_table().items():
        if name.startswith("conv"):
            state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
            state[f"features.{index}.bias"] = torch.zeros(cout)
    torch.save(state, path)
    return path


def tiny_config(data: Path, vgg: Path | None, **overrides) -> TrainConfig:
    """Small enough to take a few steps in about a second on two shared cores."""
    config = TrainConfig(
        data=str(data),
        window=32,
        batch_size=2,
        epochs=1,
        generator=GeneratorConfig(full_channels=4, body_channels=8, blocks=1),
        disc_channels=8,
        disc_layers=2,
        vgg_weights=str(vgg) if vgg else "missing-vgg19.pth",
        workers=0,
        log_every=1,
        val_every=0,  # validation (whole 1024x1024 images) only where a test wants it
        val_images=1,
    )
    return replace(config, **overrides)


@pytest.fixture
def ffhqr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny FFHQR layout, built once per session (shared by every module that imports it)."""
    if not (SHARED_DATA / "ffhqr-pair").is_dir():
        pytest.skip(f"real test photos not found at {SHARED_DATA}")
    root = tmp_path_factory.getbasetemp() / "ffhqr"
    return root if root.exists() else build_ffhqr(root)


@pytest.fixture
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "vgg19-random.pth"
    return path if path.exists() else write_random_vgg19(path)


def _ddp_worker(config_json: str, run_dir: str, out_dir: str) -> None:
    from training.train import train

    config = TrainConfig.from_dict(json.loads(Path(config_json).read_text()))
    result = train(config, Path(run_dir))
    rank = os.environ["RANK"]
    torch.save({k: v.detach().cpu() for k, v in result.generator.state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    _ddp_worker(*sys.argv[1:4])
