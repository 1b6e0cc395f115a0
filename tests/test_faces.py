"""Faces and skin masks: the pure geometry on synthetic landmarks, then the models on real photos.

References are reasoned from anatomy and from MediaPipe's published mesh topology, not taken from
the code under test: a cheek lies midway between an eye centre and the mouth corner on its side,
the forehead a third of an IOD above the brows, the chin between the lower lip and the jaw's
lowest point; eye, brow and lip polygons are rasterised here with scikit-image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.draw import polygon as fill_polygon

from plugin_server import imageio
from plugin_server.errors import BadImageError
from plugin_server.faces import (
    FACE_OVAL,
    LEFT_BROW,
    LEFT_EYE,
    LEFT_EYE_AND_LID,
    LEFT_NOSTRIL,
    LIPS,
    RIGHT_BROW,
    RIGHT_EYE,
    RIGHT_EYE_AND_LID,
    RIGHT_NOSTRIL,
    face_from_landmarks,
    face_outline,
    region_mask,
    skin_colour_mask,
    skin_mask,
    to_rgb8,
)
from plugin_server.landmarks import find_faces

FFHQ = [f"ffhq-0000{i}.png" for i in range(1, 10)]
PEXELS = [
    "pexels-aadil-2598024.jpg",
    "pexels-ike-louie-natividad-2709388.jpg",
    "pexels-mateus-souza-3586798.jpg",
    "pexels-simon-robben-614810.jpg",
]


# ---- pure geometry on synthetic landmarks -------------------------------------------------------


def ring(centre: tuple[float, float], rx: float, ry: float, count: int) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([centre[0] + rx * np.cos(angles), centre[1] + ry * np.sin(angles)], 1)


def synthetic_landmarks() -> np.ndarray:
    """A cartoon face in a 400x400 image: oval centred (200, 220), eyes at (160, 180) and (240, 180)
    (the subject's right eye on the image's left), brows 30 px above, lips at y = 290."""
    points = np.full((468, 2), (200.0, 230.0))
    points[list(FACE_OVAL)] = ring((200, 220), 120, 160, len(FACE_OVAL))
    points[list(RIGHT_EYE)] = ring((160, 180), 18, 8, len(RIGHT_EYE))
    points[list(LEFT_EYE)] = ring((240, 180), 18, 8, len(LEFT_EYE))
    points[list(RIGHT_BROW)] = ring((160, 150), 25, 5, len(RIGHT_BROW))
    points[list(LEFT_BROW)] = ring((240, 150), 25, 5, len(LEFT_BROW))
    points[list(LIPS)] = ring((200, 290), 35, 12, len(LIPS))
    # The lid rings arch from the inner eye corner over to the outer one, 14 px above the eye.
    for loop, inner, outer in ((RIGHT_EYE_AND_LID, 178, 142), (LEFT_EYE_AND_LID, 222, 258)):
        lid = loop[9:]
        t = np.linspace(0, np.pi, len(lid))
        points[list(lid)] = np.stack([inner + (outer - inner) * t / np.pi, 180 - 14 * np.sin(t)], 1)
    points[list(RIGHT_NOSTRIL)] = ring((190, 255), 5, 3, len(RIGHT_NOSTRIL))
    points[list(LEFT_NOSTRIL)] = ring((210, 255), 5, 3, len(LEFT_NOSTRIL))
    return points.astype(np.float32)


def test_eye_centres_and_iod_from_the_eye_rings():
    face = face_from_landmarks(synthetic_landmarks(), 0.9, (400, 400))
    np.testing.assert_allclose(face.right_eye, (160, 180), atol=1e-3)
    np.testing.assert_allclose(face.left_eye, (240, 180), atol=1e-3)
    assert face.iod == pytest.approx(80.0, abs=1e-3)
    assert face.score == pytest.approx(0.9)
    assert not face.landmarks.flags.writeable and not face.left_eye.flags.writeable


def test_iod_is_rotation_invariant():
    points = synthetic_landmarks()
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    turned = (points - 200) @ rotation.T + 200
    assert face_from_landmarks(turned, 1.0, (400, 400)).iod == pytest.approx(80.0, abs=1e-3)


def test_box_holds_the_raised_forehead_and_is_clipped_to_the_image():
    face = face_from_landmarks(synthetic_landmarks(), 1.0, (400, 400))
    # The oval's top (y = 60) is 90 px above the brows (y = 150): raised by 0.35 * 90 to y = 28.5.
    outline = face_outline(face.landmarks)
    assert outline[:, 1].min() == pytest.approx(60 - 0.35 * 90, abs=0.5)
    assert face.box[1] == 28
    # The oval's bottom (y = 380) is below the brows: not moved.
    assert outline[:, 1].max() == pytest.approx(380, abs=0.5)
    small = face_from_landmarks(synthetic_landmarks(), 1.0, (300, 250))
    assert small.box[2] <= 250 and small.box[3] <= 300 and min(small.box) >= 0


def test_region_mask_takes_cheeks_and_leaves_eyes_brows_lips():
    face = face_from_landmarks(synthetic_landmarks(), 1.0, (400, 400))
    inside = region_mask(face, (0, 0, 400, 400))
    for x, y in [(140, 240), (260, 240), (200, 100), (200, 340)]:  # cheeks, forehead, chin
        assert inside[y, x]
    # eyes, lids, brows, lips, nostrils, background
    for x, y in [(160, 180), (240, 180), (160, 170), (160, 150), (240, 150), (200, 290), (190, 255), (20, 20)]:
        assert not inside[y, x], (x, y)
    # Margins: the eye hole reaches EYE_MARGIN * IOD = 2.8 px past the ring, so 1 px below it is out.
    assert not inside[189, 160]


def test_region_mask_follows_the_region_and_scale():
    face = face_from_landmarks(synthetic_landmarks(), 1.0, (400, 400))
    whole = region_mask(face, (0, 0, 400, 400))
    part = region_mask(face, (50, 20, 350, 400))  # holds the whole outline: a pure shift
    np.testing.assert_array_equal(part, whole[20:400, 50:350])
    half = region_mask(face, (0, 0, 400, 400), scale=0.5)
    assert half.shape == (200, 200)
    assert abs(half.mean() - whole.mean()) < 0.02


def test_colour_model_drops_hair_keeps_small_spots():
    rng = np.random.default_rng(0)
    skin = np.array([205, 160, 135], np.float32)
    rgb = np.clip(skin + rng.normal(0, 4, (200, 200, 3)), 0, 255)
    rgb[:, 140:] = (40, 30, 25)  # a mass of dark hair
    rgb[100:104, 60:64] = (180, 80, 70)  # a red pimple, 16 px
    rgb[50:56, 30:36] = (120, 80, 60)  # a freckle
    sure = np.zeros((200, 200), bool)
    sure[20:180, 20:120] = True
    likeness = skin_colour_mask(rgb.astype(np.uint8), sure, iod=160)
    assert likeness[:, :130].min() > 0.9
    assert likeness[:, 145:].max() == 0.0


def test_to_rgb8_handles_every_input_kind():
    gray16 = np.full((4, 5, 1), 65535, np.uint16)
    np.testing.assert_array_equal(to_rgb8(gray16), np.full((4, 5, 3), 255, np.uint8))
    rgba = np.zeros((2, 2, 4), np.float32)
    rgba[..., 0], rgba[..., 3] = 0.5, 1.0
    assert to_rgb8(rgba)[0, 0].tolist() == [128, 0, 0]
    with pytest.raises(BadImageError):
        to_rgb8(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(BadImageError):
        to_rgb8(np.zeros((4, 4, 3), np.int32))


# ---- the models on real photos ------------------------------------------------------------------


_cache: dict[str, np.ndarray] = {}


def photo(portraits_dir: Path, name: str) -> np.ndarray:
    if name not in _cache:
        _cache[name] = imageio.read(portraits_dir / name).pixels
    return _cache[name]


@pytest.mark.parametrize("name", FFHQ + ["styleavatar-retouching-input-2.png"])
def test_one_face_in_each_aligned_portrait(portraits_dir, name):
    faces = find_faces(photo(portraits_dir, name))
    assert len(faces) == 1
    face = faces[0]
    # FFHQ alignment puts the eyes' midpoint near (512, 480) with about 260 px between them.
    assert 200 < face.iod < 300
    np.testing.assert_allclose((face.left_eye + face.right_eye) / 2, (512, 480), atol=30)
    assert face.left_eye[0] > face.right_eye[0]  # the subject's left eye is on the image's right


@pytest.mark.slow
@pytest.mark.parametrize("name", PEXELS)
def test_one_face_in_each_studio_portrait(portraits_dir, name):
    pixels = photo(portraits_dir, name)
    faces = find_faces(pixels)
    assert len(faces) == 1
    face = faces[0]
    assert 600 < face.iod < 1400  # studio scale: 3-5x FFHQ's
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= pixels.shape[1] and 0 <= y0 < y1 <= pixels.shape[0]
    assert face.landmarks.shape == (468, 2) and face.landmarks.dtype == np.float32


def test_the_child_cut_by_the_frame_is_not_counted(portraits_dir):
    """-input-3: the woman, and a child whose face the left edge cuts through the far eye. A face
    counts only with both eyes in the frame (no IOD, no scale otherwise): one face, the woman's."""
    faces = find_faces(photo(portraits_dir, "styleavatar-retouching-input-3.png"), min_iod=0)
    assert len(faces) == 1
    # The woman's eyes, read off the photo: about (385, 490) and (640, 490).
    np.testing.assert_allclose(faces[0].right_eye, (385, 490), atol=25)
    np.testing.assert_allclose(faces[0].left_eye, (640, 490), atol=25)


def test_a_background_crop_has_no_face(portraits_dir):
    wall = photo(portraits_dir, "pexels-simon-robben-614810.jpg")[0:1500, 3500:4684]
    assert find_faces(wall, min_iod=0) == []
    assert find_faces(np.full((600, 800, 3), 128, np.uint8), min_iod=0) == []


def test_min_iod_skips_small_faces_unless_asked(portraits_dir):
    small = photo(portraits_dir, "ffhq-00002.png")[::4, ::4]  # IOD about 65 px
    assert find_faces(small, min_iod=100) == []
    (face,) = find_faces(small, min_iod=0)
    assert 55 < face.iod < 75


def test_every_dtype_and_channel_count_finds_the_same_face(portraits_dir):
    rgb8 = photo(portraits_dir, "ffhq-00003.png")
    (ref,) = find_faces(rgb8)
    variants = {
        "u16": rgb8.astype(np.uint16) * 257,
        "f32": rgb8.astype(np.float32) / 255,
        "rgba": np.dstack([rgb8, np.full(rgb8.shape[:2], 255, np.uint8)]),
        "gray": rgb8.mean(2, keepdims=True).astype(np.uint8),
    }
    for kind, pixels in variants.items():
        (face,) = find_faces(pixels)
        assert np.abs(face.landmarks - ref.landmarks).max() < (0.05 * ref.iod if kind == "gray" else 1.0), kind
        mask = skin_mask(pixels, face)
        assert mask.dtype == np.float32 and mask.shape == (face.box[3] - face.box[1], face.box[2] - face.box[0])


def reference_points(face) -> dict[str, np.ndarray]:
    """Where cheeks, forehead and chin are, from the eyes, mouth corners, brows and jaw."""
    landmarks = face.landmarks
    brows = landmarks[list(RIGHT_BROW + LEFT_BROW)].mean(0)
    up = brows - (face.left_eye + face.right_eye) / 2
    up /= np.hypot(*up)
    return {
        "right cheek": (face.right_eye + landmarks[61]) / 2,  # 61, 291: the mouth corners
        "left cheek": (face.left_eye + landmarks[291]) / 2,
        "forehead": landmarks[[107, 336]].mean(0) + up * 0.35 * face.iod,  # above the inner brow ends
        "chin": (landmarks[17] + landmarks[152]) / 2,  # lower lip's bottom, jaw's lowest point
    }


def whole_mask(pixels: np.ndarray, face) -> np.ndarray:
    return skin_mask(pixels, face, (0, 0, pixels.shape[1], pixels.shape[0]))


def polygon_pixels(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return fill_polygon(points[:, 1], points[:, 0], shape)


MASKED = ["ffhq-00001.png", "ffhq-00003.png", "ffhq-00005.png", "ffhq-00009.png", "pexels-simon-robben-614810.jpg",
          "pexels-aadil-2598024.jpg", "styleavatar-retouching-input-3.png"]


@pytest.mark.parametrize("name", MASKED)
def test_mask_covers_skin_and_leaves_eyes_brows_lips(portraits_dir, name):
    pixels = photo(portraits_dir, name)
    (face,) = find_faces(pixels)
    mask = whole_mask(pixels, face)
    assert mask.dtype == np.float32 and mask.min() >= 0.0 and mask.max() <= 1.0
    for where, (x, y) in reference_points(face).items():
        assert mask[round(y), round(x)] > 0.5, where
    for loop in (RIGHT_EYE, LEFT_EYE, RIGHT_BROW, LEFT_BROW, LIPS):
        rows, cols = polygon_pixels(face.landmarks[list(loop)], mask.shape)
        assert rows.size > 0 and mask[rows, cols].max() == 0.0
    # Nothing off the face: outside the box the mask is exactly 0, and background corners too.
    x0, y0, x1, y1 = face.box
    assert mask[:y0].max(initial=0) == 0 and mask[y1:].max(initial=0) == 0
    assert mask[:, :x0].max(initial=0) == 0 and mask[:, x1:].max(initial=0) == 0


@pytest.mark.parametrize("name", ["ffhq-00008.png", "styleavatar-retouching-input-2.png"])
def test_hair_over_the_forehead_is_not_skin(portraits_dir, name):
    """Both have dark bangs down to the brows; the cheeks stay in the mask."""
    pixels = photo(portraits_dir, name)
    (face,) = find_faces(pixels)
    mask = whole_mask(pixels, face)
    points = reference_points(face)
    x, y = np.round(points["forehead"]).astype(int)
    r = round(0.08 * face.iod)
    assert mask[y - r : y + r, x - r : x + r].mean() < 0.1
    for cheek in ("right cheek", "left cheek"):
        assert mask[round(points[cheek][1]), round(points[cheek][0])] > 0.5


def test_mask_is_the_same_in_any_region(portraits_dir):
    pixels = photo(portraits_dir, "ffhq-00001.png")
    (face,) = find_faces(pixels)
    whole = whole_mask(pixels, face)
    region = (300, 150, 1024, 700)  # cuts the face, reaches the image edge
    part = skin_mask(pixels, face, region)
    np.testing.assert_array_equal(part, whole[150:700, 300:1024])
    beyond = skin_mask(pixels, face, (-50, -50, 100, 100))  # outside the image and the face
    assert beyond.shape == (150, 150) and beyond.max() == 0.0


@pytest.mark.slow
def test_studio_portrait_mask_at_native_resolution(portraits_dir):
    pixels = photo(portraits_dir, "pexels-ike-louie-natividad-2709388.jpg")
    (face,) = find_faces(pixels)
    mask = skin_mask(pixels, face)
    assert mask.shape == (face.box[3] - face.box[1], face.box[2] - face.box[0])
    x0, y0 = face.box[:2]
    for where in ("left cheek", "forehead", "chin"):  # her right cheek is under strands of hair
        x, y = reference_points(face)[where]
        assert mask[round(y) - y0, round(x) - x0] > 0.5, where
    # The feathered edge is a ramp, not a step: some pixels strictly between 0 and 1.
    assert ((mask > 0.05) & (mask < 0.95)).mean() > 0.01


@pytest.mark.slow
def test_a_small_face_in_a_large_photo_is_found_by_tiles(portraits_dir):
    """IOD ~65 px in a 4800x3600 frame: 2.6 px of the detector's whole-image input, too small
    there; the tiled pass finds it, with the landmarks it has when cropped alone."""
    face_photo = photo(portraits_dir, "ffhq-00002.png")[::4, ::4]  # 256x256, IOD about 65 px
    canvas = np.full((3600, 4800, 3), 90, np.uint8)
    canvas[2000:2256, 3100:3356] = face_photo
    (alone,) = find_faces(face_photo, min_iod=0)
    (found,) = find_faces(canvas)
    np.testing.assert_allclose(found.landmarks - (3100, 2000), alone.landmarks, atol=2.0)
