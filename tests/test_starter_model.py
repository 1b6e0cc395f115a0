"""The bundled starter model: present, small, described, used by default; it heals held-out skin
and changes nothing else."""

import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import PORTRAITS
from plugin_server import checkpoint, face_retouch, imageio, landmarks
from plugin_server.wire import RetouchOptions
from training.heal import HealParams
from training.model_card import face_figures, skin_of

FFHQ = [PORTRAITS / f"ffhq-{i:05d}.png" for i in range(1, 10)]
TRAINED_ON = {f"ffhq-{i:05d}.png" for i in range(1, 9)} | {
    "pexels-aadil-2598024.jpg", "pexels-mateus-souza-3586798.jpg", "pexels-simon-robben-614810.jpg",
    "styleavatar-retouching-input-3.png"}
HELD_OUT = [PORTRAITS / "ffhq-00009.png", PORTRAITS / "styleavatar-retouching-input-2.png",
            PORTRAITS / "pexels-ike-louie-natividad-2709388.jpg"]
CORNER = 0.12  # share of each side taken as a background corner of an aligned FFHQ photo
EYE_SIZE = (0.08, 0.25)  # IODs: height and width of an eye opening


@pytest.fixture(scope="module")
def starter():
    assert checkpoint.BUNDLED.is_file(), f"the starter model is missing at {checkpoint.BUNDLED}: `make starter-model`"
    return checkpoint.load(checkpoint.resolve(None))


def _retouch(model, path):
    before = imageio.read(path).pixels
    return before, face_retouch.retouch(before, model, RetouchOptions(device="cpu", precision="fp32")).pixels


def test_bundled_model_is_small_and_says_where_it_came_from(starter):
    meta = starter.metadata
    assert checkpoint.BUNDLED.stat().st_size <= 20 * 1024 * 1024
    assert starter.scale == 256.0 and "--face-scale 256" in meta["train_command"]
    assert meta["steps"] > 0 and meta["trained_on"]
    assert starter.residual_floor == 0.0 and "--residual-floor 0" in meta["export_command"]
    engine = meta["data_engine"]
    assert engine["command"].startswith("autoretouch-train heal") and engine["face_scale"] == 256.0
    assert engine["params"] == HealParams().to_dict(), "the bundled model was made with other heal settings"
    assert set(engine["photos"]) == TRAINED_ON and not {p.name for p in HELD_OUT} & set(engine["photos"])
    metrics = meta["metrics"]
    for key in ("psnr", "ssim", "masked_psnr"):
        assert math.isfinite(metrics[key]) and math.isfinite(metrics[f"{key}_noedit"])


def eye_boxes(face) -> list[tuple[slice, slice]]:
    """The eye openings (iris, white, lid margins) around the detected eye centres: EYE_SIZE IODs,
    short of the skin under the eye, which the model lifts on purpose."""
    (h, w) = EYE_SIZE[0] * face.iod / 2, EYE_SIZE[1] * face.iod / 2
    return [(slice(round(y - h), round(y + h)), slice(round(x - w), round(x + w)))
            for x, y in (face.left_eye, face.right_eye)]


def corners(height: int, width: int) -> list[tuple[slice, slice]]:
    h, w = round(CORNER * height), round(CORNER * width)
    return [(slice(0, h), slice(0, w)), (slice(0, h), slice(width - w, width))]


@pytest.mark.parametrize("path", FFHQ, ids=lambda p: p.stem)
def test_eyes_background_and_all_but_skin_come_back_bit_identical(starter, path, portraits_dir):
    before, after = _retouch(starter, path)
    faces = landmarks.find_faces(before)
    for rows, cols in eye_boxes(faces[0]) + corners(*before.shape[:2]):
        assert np.array_equal(after[rows, cols], before[rows, cols]), f"{path.name}: rows {rows}, cols {cols} changed"
    moved = np.any(after != before, axis=2)
    assert moved.any(), "it does retouch the skin"
    assert not (moved & (skin_of(before, faces) == 0)).any()


def test_held_out_red_spots_lose_redness_and_skin_keeps_its_texture_and_freckles(starter, portraits_dir):
    # The model card's figures (README): 43 % of the redness of StyleAvatar 2's red spots goes and
    # 32 % on the Ike portrait (the heal procedure removes 79 % and 81 %; the goal was 50 %),
    # whose freckles keep 90 % of their contrast (92 % before stage 3 weighted the edits' colour).
    # The bounds here catch a model that does nothing, flattens the skin or lightens freckles.
    for name, removed in (("styleavatar-retouching-input-2.png", 0.3), ("pexels-ike-louie-natividad-2709388.jpg", 0.25)):
        before, after = _retouch(starter, PORTRAITS / name)
        figures = face_figures(before, after, landmarks.find_faces(before)[0])
        assert figures["red_spots"] >= 5
        assert removed <= figures["redness_removed_model"] < figures["redness_removed_heal"], figures
        assert figures["texture_kept_model"] >= 0.9, figures
    assert figures["freckles"] > 50 and figures["freckle_contrast_kept_model"] >= 0.85, figures


def test_cli_retouches_with_no_checkpoint_option(tmp_path, portraits_dir, starter):
    out = tmp_path / "out.png"
    done = subprocess.run([sys.executable, "-m", "plugin_server", "retouch", "--device", "cpu", str(FFHQ[0]), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, expected = _retouch(starter, FFHQ[0])
    assert np.abs(imageio.read(out).pixels.astype(int) - expected).max() <= 1


def test_server_starts_with_the_bundled_model(tmp_path):
    from server_fixtures import start_server

    server = start_server(None, log_dir=tmp_path)
    try:
        model = server.health()["model"]
        assert model["name"] == checkpoint.BUNDLED.name and model["trained_on"]
    finally:
        server.stop()
