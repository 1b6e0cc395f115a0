"""Synthetic before/after pairs made from the real photos in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import synthetic
from training.cli import main
from training.synthetic import FEATURE_BOXES, SyntheticPairs, aligned_face_box, make_pair, skin_mask

PORTRAITS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "portraits"
FFHQ_IDS = ("00001", "00003", "00006")


@pytest.fixture(scope="module")
def ffhq() -> dict[str, np.ndarray]:
    if not PORTRAITS.is_dir():
        pytest.skip(f"real photos not found at {PORTRAITS} (the shared data folder beside the checkout)")
    return {i: synthetic.load_photo(PORTRAITS / f"ffhq-{i}.png") for i in FFHQ_IDS}


@pytest.fixture(scope="module")
def ffhq_pairs(ffhq: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(clean, mask, before, after) for two seeds per FFHQ photo."""
    box = aligned_face_box(1024, 1024)
    out = []
    for clean in ffhq.values():
        mask = skin_mask(clean, box)
        for seed in (0, 1):
            before, after = make_pair(clean, np.random.default_rng(seed), box)
            out.append((clean, mask, before, after))
    return out


def _changed(before: np.ndarray, after: np.ndarray, levels: int = 0) -> np.ndarray:
    return np.abs(before.astype(np.int16) - after).max(axis=-1) > levels


def test_same_seed_same_pair_other_seed_other_pair(ffhq: dict[str, np.ndarray]) -> None:
    clean = ffhq["00001"]
    box = aligned_face_box(1024, 1024)
    a = make_pair(clean, np.random.default_rng(7), box)
    b = make_pair(clean, np.random.default_rng(7), box)
    c = make_pair(clean, np.random.default_rng(8), box)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_after_is_clean_and_before_changes_only_skin(ffhq_pairs) -> None:
    for clean, mask, before, after in ffhq_pairs:
        assert before.dtype == after.dtype == np.uint8 and before.shape == clean.shape
        assert np.array_equal(after, clean)
        changed = _changed(before, after)
        assert changed.any()
        assert not (changed & ~mask).any(), "a pixel outside the skin mask changed"


def test_eyes_mouth_and_background_untouched_on_aligned_faces(ffhq_pairs) -> None:
    box = aligned_face_box(1024, 1024)
    for _, _, before, after in ffhq_pairs:
        changed = _changed(before, after)
        for part in FEATURE_BOXES:
            p = box.part(*part)
            assert not changed[p.top : p.bottom, p.left : p.right].any(), f"feature box {part} changed"
        outside = np.ones_like(changed)
        outside[box.top : box.bottom, box.left : box.right] = False
        assert not (changed & outside).any(), "background outside the face box changed"


def test_changed_fractions_like_a_real_retouch(ffhq_pairs) -> None:
    # The real FFHQR pair changes ~11% of pixels at all (mostly by 1-2 levels) and ~0.2% by >10.
    touched = [_changed(b, a).mean() for _, _, b, a in ffhq_pairs]
    strong = [_changed(b, a, 10).mean() for _, _, b, a in ffhq_pairs]
    assert all(0.002 < t < 0.20 for t in touched), touched
    assert all(s < 0.05 for s in strong), strong
    assert 0.005 < np.mean(touched) < 0.20
    assert 0.0005 < np.mean(strong) < 0.05


def test_no_global_colour_change(ffhq_pairs) -> None:
    for _, _, before, after in ffhq_pairs:
        shift = before.reshape(-1, 3).mean(axis=0) - after.reshape(-1, 3).mean(axis=0)
        assert np.abs(shift).max() < 1.0, shift


def test_skin_mask_covers_the_face_and_leaves_eyes_out(ffhq_pairs) -> None:
    box = aligned_face_box(1024, 1024)
    for _, mask, _, _ in ffhq_pairs:
        assert mask.dtype == bool and mask.shape == (1024, 1024)
        assert 0.05 < mask.mean() < 0.5
        face = mask[box.top : box.bottom, box.left : box.right]
        assert face.mean() > 0.15
        for part in FEATURE_BOXES[:2]:
            p = box.part(*part)
            assert not mask[p.top : p.bottom, p.left : p.right].any()


def test_unaligned_portrait_without_face_box() -> None:
    path = PORTRAITS / "pexels-simon-robben-614810.jpg"
    if not path.is_file():
        pytest.skip(f"real photo not found at {path}")
    photo = synthetic.load_photo(path, short_side=512)
    assert min(photo.shape[:2]) == 512
    crop = synthetic.crop_around_skin(photo, 384)
    assert crop.shape == (384, 384, 3)
    mask = skin_mask(crop)
    before, after = make_pair(crop, np.random.default_rng(0))
    changed = _changed(before, after)
    assert mask.mean() > 0.05 and changed.any()
    assert not (changed & ~mask).any()
    assert np.array_equal(after, crop)


def test_dataset_is_deterministic_per_index(ffhq: dict[str, np.ndarray]) -> None:
    photos = [PORTRAITS / "ffhq-00001.png", ffhq["00003"]]
    pairs = SyntheticPairs(photos, pairs_per_photo=2, seed=3, short_side=256, aligned=True)
    assert len(pairs) == 4
    last = pairs[3]
    again = SyntheticPairs(photos, pairs_per_photo=2, seed=3, short_side=256, aligned=True)[3]
    assert np.array_equal(last[0], again[0])
    first, second = pairs[0], pairs[1]
    assert first[0].shape == (256, 256, 3)
    assert np.array_equal(first[1], second[1]) and not np.array_equal(first[0], second[0])
    with pytest.raises(IndexError):
        pairs[4]


def test_fit_short_side_only_shrinks() -> None:
    image = np.zeros((300, 200, 3), np.uint8)
    assert synthetic.fit_short_side(image, 100).shape == (150, 100, 3)
    assert synthetic.fit_short_side(image, 400) is image


def test_make_pair_rejects_non_rgb8() -> None:
    with pytest.raises(ValueError):
        make_pair(np.zeros((8, 8), np.uint8), np.random.default_rng(0))


def test_cli_writes_matching_studio_pairs(ffhq: dict[str, np.ndarray], tmp_path: Path) -> None:
    photos = [PORTRAITS / "ffhq-00001.png", PORTRAITS / "ffhq-00002.png"]
    args = ["--out", str(tmp_path), "--photos", *map(str, photos), "--pairs-per-photo", "2", "--seed", "5",
            "--short-side", "256", "--aligned"]
    assert main(["synthetic", *args]) == 0
    befores = sorted(p.name for p in (tmp_path / "before").iterdir())
    afters = sorted(p.name for p in (tmp_path / "after").iterdir())
    assert befores == afters == ["ffhq-00001-000.png", "ffhq-00001-001.png", "ffhq-00002-000.png", "ffhq-00002-001.png"]
    before = np.asarray(Image.open(tmp_path / "before" / "ffhq-00001-001.png"))
    after = np.asarray(Image.open(tmp_path / "after" / "ffhq-00001-001.png"))
    assert np.array_equal(after, synthetic.load_photo(photos[0], short_side=256))
    expected = SyntheticPairs(photos, 2, 5, short_side=256, aligned=True)[1][0]
    assert np.array_equal(before, expected)


def test_cli_kinds_keeps_only_local_blemishes(tmp_path: Path) -> None:
    photo = PORTRAITS / "ffhq-00003.png"
    common = ["--photos", str(photo), "--seed", "2", "--short-side", "512", "--aligned"]
    assert main(["synthetic", "--out", str(tmp_path / "local"), "--kinds", "spots", "pimples", *common]) == 0
    after = np.asarray(Image.open(tmp_path / "local" / "after" / "ffhq-00003-000.png"))
    local = np.asarray(Image.open(tmp_path / "local" / "before" / "ffhq-00003-000.png"))
    config = synthetic.BlemishConfig(redness=(0, 0), blotches=(0, 0))
    assert np.array_equal(local, SyntheticPairs([photo], 1, 2, short_side=512, aligned=True, config=config)[0][0])
    everything = SyntheticPairs([photo], 1, 2, short_side=512, aligned=True)[0][0]
    # Broad tone patches touch far more pixels than spots and pimples do.
    assert 0 < _changed(local, after).mean() < 0.5 * _changed(everything, after).mean()


def test_keep_crops_are_untouched_features_of_the_photo(tmp_path: Path) -> None:
    photo = PORTRAITS / "ffhq-00001.png"
    args = ["--out", str(tmp_path), "--photos", str(photo), "--pairs-per-photo", "6", "--seed", "3", "--aligned", "--keep-crops"]
    assert main(["synthetic", *args]) == 0
    names = sorted(p.name for p in (tmp_path / "before").iterdir())
    assert names == sorted([f"ffhq-00001-{k:03d}{s}.png" for k in range(6) for s in ("", "-keep")])
    clean = synthetic.load_photo(photo)
    face = aligned_face_box(1024, 1024)
    centres = [((p.top + p.bottom) / 2, (p.left + p.right) / 2) for p in (face.part(*b) for b in FEATURE_BOXES)]
    for k in range(6):
        before = np.asarray(Image.open(tmp_path / "before" / f"ffhq-00001-{k:03d}-keep.png"))
        assert np.array_equal(before, np.asarray(Image.open(tmp_path / "after" / f"ffhq-00001-{k:03d}-keep.png")))
        size = before.shape[0]
        assert before.shape == (256, 256, 3)  # a quarter of the aligned 1024 x 1024 photo
        # Where in the photo it was cut (it must be a piece of it): on an eye, the mouth, or a top corner.
        candidates = zip(*np.nonzero((clean[: 1024 - size + 1, : 1024 - size + 1] == before[0, 0]).all(axis=2)))
        found = [(y, x) for y, x in candidates if np.array_equal(clean[y : y + size, x : x + size], before)]
        assert found, "the keep crop is not a piece of the photo"
        y, x = found[0]
        cy, cx = y + size / 2, x + size / 2
        near_feature = any(abs(cy - fy) <= 0.2 * size + 1 and abs(cx - fx) <= 0.2 * size + 1 for fy, fx in centres)
        assert near_feature or y == 0, (y, x)
    assert main(["synthetic", "--out", str(tmp_path / "x"), "--photos", str(photo), "--keep-crops"]) == 2
    assert not (tmp_path / "x").exists()
