"""Finding, splitting, reading and checking before/after image pairs.

Two layouts (see docs/training.md):

* ``ffhqr``: ``D/images1024x1024/**/NNNNN.png`` (FFHQ originals) and ``D/retouched/**/NNNNN.png``
  (FFHQR retouches), paired by their five-digit names and split by id as published:
  train 00000-55999, validation 56000-62999, test 63000-69999.
* ``studio``: ``D/before/**`` and ``D/after/**`` with matching relative names (the suffix may
  differ, e.g. ``a.jpg`` and ``a.tif``); or ``csv``: a CSV file with ``before,after`` columns
  (paths relative to the CSV) and an optional ``split`` column. Without a split column, a pair's
  split comes from a stable hash of its name, so adding photos never moves old ones.

    listing = list_pairs(Path("data"), split="train")
    before, after = read_pair(listing.pairs[0])       # (H, W, 3) uint8 or uint16 arrays
    report = check_pairs(Path("data"))                # unpaired / unreadable / mismatched
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from plugin_server import imageio
from plugin_server.errors import AutoRetouchError, BadImageError, DataError

Split = Literal["train", "val", "test"]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"})
FFHQR_SPLITS: dict[str, range] = {
    "train": range(0, 56000),
    "val": range(56000, 63000),
    "test": range(63000, 70000),
}


@dataclass(frozen=True)
class Pair:
    name: str  # what the pair is called in reports: the id or the relative path
    before: Path
    after: Path


@dataclass(frozen=True)
class Listing:
    layout: str
    aligned: bool  # face-aligned photos (FFHQ): the face is the central region
    pairs: tuple[Pair, ...]
    unpaired: tuple[Path, ...] = ()


@dataclass
class CheckReport:
    pairs: int = 0
    unpaired: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    mismatched: list[tuple[Pair, tuple[int, int], tuple[int, int]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unpaired or self.unreadable or self.mismatched)

    def lines(self) -> list[str]:
        out = [f"{self.pairs} pairs found"]
        out += [f"unpaired: {p}" for p in self.unpaired]
        out += [f"unreadable: {p}: {why}" for p, why in self.unreadable]
        out += [
            f"size mismatch: {pair.name}: before {a[0]}x{a[1]}, after {b[0]}x{b[1]}"
            for pair, a, b in self.mismatched
        ]
        problems = len(self.unpaired) + len(self.unreadable) + len(self.mismatched)
        out.append("no problems found" if self.ok else f"{problems} problem(s) found")
        return out


def detect_layout(root: Path) -> str:
    if root.is_file() and root.suffix.lower() == ".csv":
        return "csv"
    if (root / "images1024x1024").is_dir() and (root / "retouched").is_dir():
        return "ffhqr"
    if (root / "before").is_dir() and (root / "after").is_dir():
        return "studio"
    raise DataError(
        f"{root} is not a known data layout: expected images1024x1024/ and retouched/ (FFHQR), "
        "before/ and after/ (studio), or a .csv file of pairs. See docs/training.md."
    )


def list_pairs(
    root: Path,
    layout: str = "auto",
    split: Split | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Listing:
    """All pairs under ``root`` (of one split, when given), sorted by name."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "ffhqr":
        listing = _list_ffhqr(root)
        keep = [p for p in listing.pairs if split is None or int(p.name) in FFHQR_SPLITS[split]]
    elif layout in ("studio", "csv"):
        listing, splits = _list_csv(root) if layout == "csv" else _list_studio(root)
        keep = [
            p
            for p in listing.pairs
            if split is None or (splits.get(p.name) or _hash_split(p.name, val_fraction, test_fraction)) == split
        ]
    else:
        raise DataError(f"unknown layout {layout!r}; use ffhqr, studio or csv")
    return Listing(listing.layout, listing.aligned, tuple(keep), listing.unpaired)


def _images_by_key(folder: Path, key: Callable[[Path], str]) -> dict[str, Path]:
    return {key(p): p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def _match(before: dict[str, Path], after: dict[str, Path]) -> tuple[tuple[Pair, ...], tuple[Path, ...]]:
    pairs = tuple(Pair(k, before[k], after[k]) for k in sorted(before.keys() & after.keys()))
    unpaired = tuple(sorted([before[k] for k in before.keys() - after.keys()] + [after[k] for k in after.keys() - before.keys()]))
    return pairs, unpaired


def _list_ffhqr(root: Path) -> Listing:
    def five_digits(p: Path) -> str:
        return p.stem if len(p.stem) == 5 and p.stem.isdigit() else f"?{p}"

    before = {k: v for k, v in _images_by_key(root / "images1024x1024", five_digits).items() if not k.startswith("?")}
    after = {k: v for k, v in _images_by_key(root / "retouched", five_digits).items() if not k.startswith("?")}
    pairs, unpaired = _match(before, after)
    return Listing("ffhqr", True, pairs, unpaired)


def _list_studio(root: Path) -> tuple[Listing, dict[str, str]]:
    def relative_stem(base: Path) -> Callable[[Path], str]:
        return lambda p: p.relative_to(base).with_suffix("").as_posix()

    before = _images_by_key(root / "before", relative_stem(root / "before"))
    after = _images_by_key(root / "after", relative_stem(root / "after"))
    pairs, unpaired = _match(before, after)
    return Listing("studio", False, pairs, unpaired), {}


def _list_csv(path: Path) -> tuple[Listing, dict[str, str]]:
    pairs, unpaired, splits = [], [], {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"before", "after"} <= set(reader.fieldnames):
            raise DataError(f"{path}: a pairs CSV needs a header with 'before' and 'after' columns")
        for row in reader:
            before, after = path.parent / row["before"], path.parent / row["after"]
            missing = [p for p in (before, after) if not p.is_file()]
            if missing:
                unpaired += [p for p in (before, after) if p.is_file()] + missing
                continue
            name = row["before"]
            pairs.append(Pair(name, before, after))
            if row.get("split"):
                if row["split"] not in FFHQR_SPLITS:
                    raise DataError(f"{path}: split must be train, val or test, got {row['split']!r}")
                splits[name] = row["split"]
    return Listing("csv", False, tuple(sorted(pairs, key=lambda p: p.name)), tuple(unpaired)), splits


def _hash_split(name: str, val_fraction: float, test_fraction: float) -> str:
    u = zlib.crc32(name.encode()) / 2**32  # stable across runs and machines, unlike hash()
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 or uint16 RGB, 16-bit kept; alpha is dropped (FFHQR targets are RGBA,
    alpha 255) and gray repeated. Any unreadable file is a BadImageError, which training skips."""
    try:
        pixels = imageio.read(path).pixels
    except AutoRetouchError as exc:
        raise BadImageError(f"{path}: cannot read image ({exc})") from exc
    if pixels.dtype == np.float32:
        raise BadImageError(f"{path}: float images are not training pairs; save them as 8- or 16-bit")
    return pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels, 3, axis=2)


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Both images of a pair; a BadImageError if either is unreadable or their sizes differ."""
    before, after = read_image(pair.before), read_image(pair.after)
    if before.shape != after.shape:
        raise BadImageError(
            f"{pair.name}: before is {before.shape[1]}x{before.shape[0]} but after is "
            f"{after.shape[1]}x{after.shape[0]}"
        )
    return before, after


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 or uint16 (H, W, 3) to float32 in [0, 1]; float32 (pairs resampled to a face
    scale, ``face_scale.FaceScaledPairs``) as it is."""
    if image.dtype == np.float32:
        return image
    return image.astype(np.float32) / full_scale(image.dtype)


def full_scale(dtype: np.dtype) -> float:
    """The value of white: 255, 65535, or 1.0 for float32."""
    return 1.0 if dtype == np.float32 else float(np.iinfo(dtype).max)


def check_pairs(root: Path, layout: str = "auto", workers: int = 4) -> CheckReport:
    """Decode every image once and report unpaired, unreadable and size-mismatched files."""
    listing = list_pairs(root, layout)
    report = CheckReport(pairs=len(listing.pairs), unpaired=list(listing.unpaired))

    def size_of(path: Path) -> tuple[int, int] | str:
        try:
            image = read_image(path)
        except BadImageError as exc:
            return str(exc.__cause__ or exc)
        return image.shape[1], image.shape[0]

    with ThreadPoolExecutor(max(1, workers)) as pool:  # the decoders release the GIL
        sizes = list(pool.map(lambda p: (size_of(p.before), size_of(p.after)), listing.pairs))
    for pair, (a, b) in zip(listing.pairs, sizes):
        for path, size in ((pair.before, a), (pair.after, b)):
            if isinstance(size, str):
                report.unreadable.append((path, size))
        if not isinstance(a, str) and not isinstance(b, str) and a != b:
            report.mismatched.append((pair, a, b))
    return report
