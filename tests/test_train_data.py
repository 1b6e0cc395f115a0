"""Pairs, splits, checks and training windows on real photos from ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugin_server.errors import DataError
from training.pairs import check_pairs, list_pairs, read_image, read_pair
from training.windows import FilePairs, WindowDataset, WindowSpec, collate_windows, epoch_batches
from train_fixtures import SHARED_DATA, ffhqr, needs_shared_data  # noqa: F401  (fixtures)

PORTRAITS = SHARED_DATA / "portraits"


def test_ffhqr_pairs_are_split_by_id(ffhqr: Path) -> None:
    assert [p.name for p in list_pairs(ffhqr, split="train").pairs] == ["00000", "00001", "00002", "00003", "00004"]
    assert [p.name for p in list_pairs(ffhqr, split="val").pairs] == ["56000"]
    assert [p.name for p in list_pairs(ffhqr, split="test").pairs] == ["63000"]
    listing = list_pairs(ffhqr)
    assert listing.layout == "ffhqr" and listing.aligned and not listing.unpaired


def test_ffhqr_rgba_target_is_read_as_rgb(ffhqr: Path) -> None:
    with Image.open(ffhqr / "retouched" / "00000.png") as im:
        assert im.mode == "RGBA"
    before, after = read_pair(list_pairs(ffhqr).pairs[0])
    assert before.shape == after.shape == (1024, 1024, 3) and after.dtype == np.uint8
    # The real retouch is local: most pixels are unchanged.
    assert (before == after).all(axis=2).mean() > 0.8


def _studio(root: Path) -> Path:
    """before/after folders: two good pairs, one unpaired, one unreadable, one size mismatch."""
    for side in ("before", "after"):
        (root / side / "shoot").mkdir(parents=True)
    for i in (1, 2):
        (root / "before" / "shoot" / f"a{i}.png").symlink_to(PORTRAITS / f"ffhq-0000{i}.png")
        (root / "after" / "shoot" / f"a{i}.png").symlink_to(PORTRAITS / f"ffhq-0000{i}.png")
    (root / "before" / "lonely.png").symlink_to(PORTRAITS / "ffhq-00003.png")
    (root / "before" / "broken.png").symlink_to(PORTRAITS / "ffhq-00004.png")
    (root / "after" / "broken.png").write_bytes((PORTRAITS / "ffhq-00004.png").read_bytes()[:5000])
    (root / "before" / "small.png").symlink_to(PORTRAITS / "ffhq-00005.png")
    with Image.open(PORTRAITS / "ffhq-00005.png") as im:
        im.resize((512, 512)).save(root / "after" / "small.png")
    return root


@needs_shared_data
def test_check_reports_unpaired_unreadable_and_mismatched(tmp_path: Path) -> None:
    report = check_pairs(_studio(tmp_path), workers=2)
    assert report.pairs == 4 and not report.ok
    assert [p.name for p in report.unpaired] == ["lonely.png"]
    assert [p.name for p, _ in report.unreadable] == ["broken.png"]
    assert [(pair.name, a, b) for pair, a, b in report.mismatched] == [("small", (1024, 1024), (512, 512))]
    text = "\n".join(report.lines())
    assert "unpaired" in text and "unreadable" in text and "size mismatch" in text


@needs_shared_data
def test_studio_split_is_stable_and_csv_pairs_work(tmp_path: Path) -> None:
    root = _studio(tmp_path / "studio")
    splits = {s: {p.name for p in list_pairs(root, split=s, val_fraction=0.3, test_fraction=0.3).pairs} for s in ("train", "val", "test")}
    assert set().union(*splits.values()) == {"shoot/a1", "shoot/a2", "broken", "small"}
    assert sum(len(v) for v in splits.values()) == 4
    csv = tmp_path / "pairs.csv"
    csv.write_text("before,after,split\nstudio/before/shoot/a1.png,studio/after/shoot/a1.png,val\n"
                   "studio/before/lonely.png,studio/after/missing.png,train\n")
    listing = list_pairs(csv)
    assert listing.layout == "csv" and [p.name for p in listing.pairs] == ["studio/before/shoot/a1.png"]
    assert len(listing.unpaired) == 2 and list_pairs(csv, split="val").pairs and not list_pairs(csv, split="train").pairs


def test_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a known data layout"):
        list_pairs(tmp_path)


def test_windows_are_deterministic_and_augment_both_images_alike(ffhqr: Path) -> None:
    listing = list_pairs(ffhqr, split="train")
    spec = WindowSpec(window=48, focus="center", background_prob=0.3, mirror=True, colour_jitter=0.1)
    data = WindowDataset(FilePairs(listing), spec, seed=7)
    b1, a1, skipped = data[(3, 0)]
    b2, a2, _ = data[(3, 0)]
    assert b1.shape == a1.shape == (3, 48, 48) and not skipped
    assert (b1 == b2).all() and (a1 == a2).all()  # keyed by (seed, epoch, index) only
    assert not (data[(4, 0)][0] == b1).all()  # another epoch, another window
    # The same image as before and after: identical augmentation gives identical windows.
    image = read_image(listing.pairs[1].before)
    rng_windows = [data.cut(image, image.copy(), np.random.default_rng(s)) for s in range(8)]
    assert all(np.array_equal(b, a) for b, a in rng_windows)
    assert 0 <= float(b1.min()) and float(b1.max()) <= 1


def test_rotate_gives_all_four_quarter_turns_of_both_images_alike() -> None:
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)  # no two quarter turns alike
    marked = image.copy()
    marked[2, 5] = 255  # the "after": one retouched pixel, off every symmetry axis
    data = WindowDataset(None, WindowSpec(window=16, background_prob=0.0, mirror=False, colour_jitter=0, rotate=True), seed=0)
    turns = {  # counter-clockwise quarter turns of an (H, W, C) image, built from transposes and flips
        0: lambda x: x, 1: lambda x: x.transpose(1, 0, 2)[::-1], 2: lambda x: x[::-1, ::-1], 3: lambda x: x.transpose(1, 0, 2)[:, ::-1],
    }
    seen = set()
    for s in range(24):
        b, a = data.cut(image, marked, np.random.default_rng(s))
        b, a = (np.round(x.transpose(1, 2, 0) * 255).astype(np.uint8) for x in (b, a))
        k = next(k for k, turn in turns.items() if np.array_equal(b, turn(image)))
        assert np.array_equal(a, turns[k](marked)), "the after image turned differently from the before"
        seen.add(k)
    assert seen == {0, 1, 2, 3}


def test_edit_focus_centres_windows_on_retouched_pixels(ffhqr: Path) -> None:
    pair = FilePairs(list_pairs(ffhqr, split="train"))
    before, after = pair.load(0)  # the real FFHQR pair: about 11% of pixels changed
    data = WindowDataset(pair, WindowSpec(window=32, focus="edits", background_prob=0.0, mirror=False, colour_jitter=0), seed=0)
    hits = sum(
        bool((lambda w: (w[0] != w[1]).any())(data.cut(before, after, np.random.default_rng(s)))) for s in range(20)
    )
    assert hits >= 18


def test_epoch_plan_deals_equal_disjoint_shares() -> None:
    plans = [epoch_batches(11, 2, epoch=1, seed=3, rank=r, world=2) for r in (0, 1)]
    assert [len(p) for p in plans] == [2, 2]
    seen = [i for plan in plans for batch in plan for _, i in batch]
    assert len(seen) == len(set(seen)) == 8
    assert plans[0] == epoch_batches(11, 2, epoch=1, seed=3, rank=0, world=2)
    assert plans[0] != epoch_batches(11, 2, epoch=2, seed=3, rank=0, world=2)
    with pytest.raises(DataError, match="too few"):
        epoch_batches(3, 2, epoch=0, seed=0, rank=0, world=2)


def test_bad_pair_is_skipped_and_named(ffhqr: Path, tmp_path: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(ffhqr, root, symlinks=True)
    (root / "retouched" / "00001.png").write_bytes(b"not a png")
    data = WindowDataset(FilePairs(list_pairs(root, split="train")), WindowSpec(window=32), seed=0)
    before, after, skipped = collate_windows([data[(0, 1)], data[(0, 2)]])
    assert before.shape == (2, 3, 32, 32) and skipped == ["00001"]


def test_16_bit_rgb_pairs_keep_16_bits(tmp_path: Path) -> None:
    from plugin_server import imageio

    pixels = (np.arange(12 * 10 * 3, dtype=np.uint16).reshape(12, 10, 3) * 181) + 7  # not multiples of 257
    imageio.write(tmp_path / "deep.png", imageio.Picture(pixels, "png"))
    assert np.array_equal(read_image(tmp_path / "deep.png"), pixels)
