"""Shared fixtures: the real photos in ../shared/data and generators with visible edits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plugin_server.model import Generator, GeneratorConfig, Model

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
PORTRAITS = SHARED_DATA / "portraits"


def make_edit_generator(seed: int = 0, config: GeneratorConfig | None = None) -> Generator:
    """A seeded generator whose edits are large enough to see (the default init is near identity)."""
    torch.manual_seed(seed)
    generator = Generator(config)
    with torch.no_grad():
        generator.tail.weight.mul_(30)
    return generator.eval()


def make_edit_model(seed: int = 0, config: GeneratorConfig | None = None, **served) -> Model:
    """``make_edit_generator`` as the engine runs it (``served``: residual_floor, scale, metadata)."""
    return Model(make_edit_generator(seed, config), **served)


@pytest.fixture(scope="session")
def edit_generator() -> Generator:
    return make_edit_generator()


@pytest.fixture(scope="session")
def edit_model(edit_generator: Generator) -> Model:
    return Model(edit_generator)


@pytest.fixture(scope="session")
def portraits_dir() -> Path:
    if not PORTRAITS.is_dir():
        pytest.skip(f"real photos not found at {PORTRAITS} (the shared data folder beside the checkout)")
    return PORTRAITS


@pytest.fixture(scope="session")
def portrait_crop(portraits_dir: Path) -> np.ndarray:
    """A 256x192 crop of a real FFHQ face, uint8 RGB."""
    from plugin_server import imageio

    return imageio.read(portraits_dir / "ffhq-00001.png").pixels[400:656, 400:592].copy()


def pytest_terminal_summary(terminalreporter) -> None:
    """One line, on a developer's machine, when the real-GIMP tests could not run."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if "GIMP chroot unavailable" in str(report.longrepr)]
    if skipped:
        reason = str(skipped[0].longrepr[-1]).split("unavailable: ", 1)[-1]
        terminalreporter.write_line(
            f"note: the {len(skipped)} real-GIMP tests were skipped ({reason}); they run as root with "
            "debootstrap installed (apt-get install debootstrap), and CI requires them (AUTORETOUCH_REQUIRE_GIMP=1)"
        )
