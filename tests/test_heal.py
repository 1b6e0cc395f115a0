"""The heal procedure that makes training targets, on made skin with known blemishes and on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from plugin_server import landmarks
from plugin_server.faces import LEFT_EYE, RIGHT_EYE, face_from_landmarks
from training.cli import main
from training.heal import HealParams, analyse, heal, lab_to_rgb, rgb_to_lab
from training.heal_pairs import face_crops

IOD = 256.0
SIDE = 400
NO_EYES = HealParams(under_eye=0.0)  # made skin has no eyes to lift shadows under


def _face(size: int = SIDE):
    """A face whose eye centres are IOD apart; the rest of its landmarks sit outside the skin."""
    points = np.full((468, 2), -50.0, np.float32)
    points[list(RIGHT_EYE)] = ((size - IOD) / 2, -40)
    points[list(LEFT_EYE)] = ((size + IOD) / 2, -40)
    return face_from_landmarks(points, 1.0, (size, size))


def _skin(seed: int = 0) -> np.ndarray:
    """Even skin-coloured sRGB with fine pore-like noise (1-2 px), float in [0, 1]."""
    rng = np.random.default_rng(seed)
    pores = ndimage.gaussian_filter(rng.normal(0, 1, (SIDE, SIDE)), 0.7)
    lab = np.zeros((SIDE, SIDE, 3))
    lab[..., 0], lab[..., 1], lab[..., 2] = 68 + 3 * pores / pores.std(), 14, 18
    return lab_to_rgb(lab).astype(np.float32)


def _bump(cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    return np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / sigma**2)


def _with(rgb: np.ndarray, d_l: np.ndarray, d_a: np.ndarray, d_b: np.ndarray | float = 0.0) -> np.ndarray:
    lab = rgb_to_lab(rgb)
    lab[..., 0] += d_l
    lab[..., 1] += d_a
    lab[..., 2] += d_b
    return lab_to_rgb(lab).astype(np.float32)


def _high_pass_energy(rgb: np.ndarray, where: np.ndarray) -> float:
    lightness = rgb_to_lab(rgb)[..., 0]
    return float(((lightness - ndimage.gaussian_filter(lightness, 2.0))[where] ** 2).mean())


MASK = np.ones((SIDE, SIDE), np.float32)


def test_cielab_matches_the_published_values_and_inverts() -> None:
    # sRGB primaries in CIELAB (D65), as tabulated by colour-science references.
    expected = {(1, 1, 1): (100.0, 0.0, 0.0), (1, 0, 0): (53.24, 80.09, 67.20), (0, 1, 0): (87.73, -86.18, 83.18),
                (0, 0, 1): (32.30, 79.19, -107.86)}
    for rgb, lab in expected.items():
        assert np.allclose(rgb_to_lab(np.array(rgb, float)), lab, atol=0.02)
    colours = np.random.default_rng(0).random((1000, 3))
    assert np.abs(lab_to_rgb(rgb_to_lab(colours)) - colours).max() < 1e-9


def test_a_red_pimple_is_healed_to_the_skin_around_it_and_its_texture_stays() -> None:
    clean = _skin()
    bump = _bump(200, 200, 6.0)
    pimple = _with(clean, -4 * bump, 14 * bump, 3 * bump)
    healed = heal(pimple, _face(), MASK, NO_EYES)
    spot = bump > 0.3
    before = np.abs(rgb_to_lab(pimple) - rgb_to_lab(clean))[spot].mean()
    after = np.abs(rgb_to_lab(healed) - rgb_to_lab(clean))[spot].mean()
    assert after < 0.25 * before, f"the pimple kept {after / before:.0%} of its difference from clean skin"
    around = _bump(200, 200, 40.0) > 0.05
    assert _high_pass_energy(healed, around) > 0.9 * _high_pass_energy(pimple, around)


def test_an_isolated_dark_spot_is_healed_but_a_mole_and_a_freckle_field_are_left() -> None:
    clean = _skin(1)
    spot, mole = _bump(120, 120, 2.5), _bump(300, 300, 9.0)
    yy, xx = np.mgrid[0:5, 0:5]
    freckles = sum(_bump(60 + 14 * y, 250 + 14 * x, 2.5) for y, x in zip(yy.ravel(), xx.ravel()))
    image = _with(clean, -9 * spot - 25 * mole - 9 * freckles, 0.0, 4 * (spot + mole + freckles))
    healed = heal(image, _face(), MASK, NO_EYES)
    darkness = lambda rgb, where: (rgb_to_lab(clean)[..., 0] - rgb_to_lab(rgb)[..., 0])[where].mean()  # noqa: E731
    assert darkness(healed, spot > 0.5) < 0.3 * darkness(image, spot > 0.5)
    assert darkness(healed, mole > 0.5) > 0.9 * darkness(image, mole > 0.5)
    assert darkness(healed, freckles > 0.5) > 0.85 * darkness(image, freckles > 0.5)
    found = analyse(image, _face(), MASK, NO_EYES).found
    assert found.moles == 1 and found.freckles >= 25


def test_even_skin_under_uneven_light_is_not_graded() -> None:
    clean = _skin(2)
    light = np.linspace(-8, 8, SIDE)[None, :] * np.ones((SIDE, 1))  # a soft key light across the face
    lit = _with(clean, light, 0.0)
    healed = heal(lit, _face(), MASK, NO_EYES)
    change = rgb_to_lab(healed) - rgb_to_lab(lit)
    # A grade moves everything by levels; here the mean moves by under 0.6 of one 8-bit level.
    assert np.abs(change[20:-20, 20:-20]).mean() < 0.25
    assert abs(change[..., 0].mean()) < 0.25


def test_nothing_off_the_mask_changes() -> None:
    bump = _bump(200, 200, 6.0)
    pimple = _with(_skin(3), -4 * bump, 14 * bump)
    mask = np.zeros((SIDE, SIDE), np.float32)
    mask[:, :190] = 1.0  # the pimple's left edge is on the skin
    healed = heal(pimple, _face(), mask, NO_EYES)
    assert np.array_equal(healed[:, 190:], pimple[:, 190:])
    assert not np.array_equal(healed[:, :190], pimple[:, :190])


@pytest.fixture(scope="module")
def ffhq(portraits_dir: Path) -> np.ndarray:
    with Image.open(portraits_dir / "ffhq-00005.png") as image:
        return np.asarray(image.convert("RGB"))


def test_face_crops_are_at_the_face_scale_and_heal_only_their_skin(ffhq: np.ndarray) -> None:
    faces = landmarks.find_faces(ffhq)
    assert faces and abs(faces[0].iod - IOD) > 20  # this face is not already at the scale
    crop = face_crops(ffhq, faces[:1], IOD)[0]
    again = landmarks.find_faces(crop.pixels)
    assert abs(again[0].iod - IOD) < 0.03 * IOD and abs(crop.face.iod - IOD) < 0.03 * IOD
    assert np.abs(again[0].landmarks - crop.face.landmarks).mean() < 0.03 * IOD
    rgb = crop.pixels.astype(np.float32) / 255
    healed = heal(rgb, crop.face, crop.mask)
    changed = np.abs(healed - rgb).max(axis=2) > 0
    assert changed.any() and not (changed & (crop.mask == 0)).any()


def test_the_heal_command_writes_pairs_and_what_it_found(tmp_path: Path, portraits_dir: Path, capsys) -> None:
    photos = [portraits_dir / "ffhq-00005.png", portraits_dir / "styleavatar-retouching-input-2.png"]
    assert main(["heal", "--out", str(tmp_path), "--synthetic", "1", "--seed", "3", "--kinds", "pimples",
                 "--photos", *map(str, photos)]) == 0
    assert "wrote 4 pairs of 2 faces" in capsys.readouterr().out
    report = json.loads((tmp_path / "heal.json").read_text())
    assert report["face_scale"] == IOD and report["params"] == HealParams().to_dict()
    assert report["synthetic_kinds"]["spots"] == [0, 0] and report["synthetic_kinds"]["pimples"] != [0, 0]
    assert report["command"].startswith("autoretouch-train heal --out")
    for stem in ("ffhq-00005-f0", "styleavatar-retouching-input-2-f0"):
        real = np.asarray(Image.open(tmp_path / "before" / f"{stem}.png")).astype(int)
        made = np.asarray(Image.open(tmp_path / "before" / f"{stem}-s01.png")).astype(int)
        target = np.asarray(Image.open(tmp_path / "after" / f"{stem}.png")).astype(int)
        assert np.array_equal(target, np.asarray(Image.open(tmp_path / "after" / f"{stem}-s01.png")))
        assert real.shape == made.shape == target.shape
        assert (real != target).any() and (real != made).any()
    assert report["photos"]["ffhq-00005.png"][0]["found"]["red"] + report["photos"]["ffhq-00005.png"][0]["found"]["dark"] > 0


def test_the_heal_command_refuses_what_it_cannot_do(tmp_path: Path, portraits_dir: Path, capsys) -> None:
    photo = str(portraits_dir / "ffhq-00005.png")
    assert main(["heal", "--out", str(tmp_path), "--synthetic", "-1", "--photos", photo]) == 2
    assert "--synthetic must be 0 or more" in capsys.readouterr().err
    assert main(["heal", "--out", str(tmp_path), "--face-scale", "0", "--photos", photo]) == 2
    assert main(["heal", "--out", str(tmp_path), "--photos", photo, photo]) == 2
    assert "distinct file names" in capsys.readouterr().err
    assert not (tmp_path / "before").exists()



def test_a_photo_without_a_face_gives_no_pairs_and_says_so(tmp_path: Path, capsys) -> None:
    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((300, 400, 3), 180, np.uint8)).save(wall)
    out = tmp_path / "pairs"
    assert main(["heal", "--out", str(out), "--photos", str(wall)]) == 0
    assert "wall.png: no face found, no pairs" in capsys.readouterr().out
    assert json.loads((out / "heal.json").read_text())["photos"] == {"wall.png": []}
    assert not (out / "before").exists()
