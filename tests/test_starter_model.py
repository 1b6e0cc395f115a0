"""The bundled starter model: present, small, described, used by default, and safe away from skin."""

import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import PORTRAITS
from plugin_server import checkpoint, imageio
from plugin_server.engine import retouch

FFHQ = [PORTRAITS / f"ffhq-{i:05d}.png" for i in range(1, 10)]
CORNER = 0.12  # share of each side taken as a background corner of an aligned FFHQ photo
EYE_ROW, EYE_COLUMNS, EYE_SIZE = 0.47, (0.375, 0.625), (0.07, 0.14)  # shares of height and width


@pytest.fixture(scope="module")
def starter():
    assert checkpoint.BUNDLED.is_file(), f"the starter model is missing at {checkpoint.BUNDLED}: `make starter-model`"
    return checkpoint.load(checkpoint.resolve(None))


def test_bundled_model_is_small_and_says_where_it_came_from(starter):
    meta = starter.metadata
    assert checkpoint.BUNDLED.stat().st_size <= 20 * 1024 * 1024
    assert meta["steps"] > 0 and meta["train_command"] and meta["trained_on"]
    # Its training-time validation (before the floor): every figure a finite measurement, beside
    # the No-edit baseline, and better than No edit where the synthetic retouch changed pixels.
    metrics = meta["metrics"]
    assert metrics["images"] > 0 and f"--val-images {metrics['images']}" in meta["train_command"]
    for key in ("psnr", "ssim", "masked_psnr"):
        assert math.isfinite(metrics[key]) and math.isfinite(metrics[f"{key}_noedit"])
    assert metrics["masked_psnr"] > metrics["masked_psnr_noedit"]
    assert starter.residual_floor == 5 / 255 and "--residual-floor 5" in meta["export_command"]


def eye_boxes(height: int, width: int) -> list[tuple[slice, slice]]:
    """The eyes themselves (lids, lashes, white and iris) of an aligned FFHQ photo.

    FFHQ's alignment scales each face so that the eye centres sit a quarter of the width apart
    around the middle, at about 0.47 of the height; EYE_SIZE holds each eye on all nine photos.
    """
    (h, w), cy = EYE_SIZE, EYE_ROW
    return [
        (slice(round((cy - h / 2) * height), round((cy + h / 2) * height)),
         slice(round((cx - w / 2) * width), round((cx + w / 2) * width)))
        for cx in EYE_COLUMNS
    ]


def corners(height: int, width: int) -> list[tuple[slice, slice]]:
    h, w = round(CORNER * height), round(CORNER * width)
    return [(slice(0, h), slice(0, w)), (slice(0, h), slice(width - w, width))]


@pytest.mark.parametrize("path", FFHQ, ids=lambda p: p.stem)
def test_eyes_and_background_come_back_within_one_level(starter, path, portraits_dir):
    before = imageio.read(path).pixels
    after = retouch(before, starter)
    for rows, cols in eye_boxes(*before.shape[:2]) + corners(*before.shape[:2]):
        diff = np.abs(after[rows, cols].astype(int) - before[rows, cols])
        assert diff.max() <= 1, f"{path.name}: {diff.max()} levels changed at rows {rows}, cols {cols}"
    assert not np.array_equal(after, before)  # it does retouch the skin


def test_cli_retouches_with_no_checkpoint_option(tmp_path, portraits_dir, starter):
    out = tmp_path / "out.png"
    # --no-faces: the whole image, as the engine call below does; this test is about the default model.
    done = subprocess.run([sys.executable, "-m", "plugin_server", "retouch", "--no-faces", str(FFHQ[0]), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = retouch(imageio.read(FFHQ[0]).pixels, starter)
    assert np.abs(imageio.read(out).pixels.astype(int) - expected).max() <= 1


def test_server_starts_with_the_bundled_model(tmp_path):
    from server_fixtures import start_server

    server = start_server(None, log_dir=tmp_path)
    try:
        model = server.health()["model"]
        assert model["name"] == checkpoint.BUNDLED.name and model["trained_on"]
    finally:
        server.stop()
