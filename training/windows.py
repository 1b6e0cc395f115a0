"""Random training windows cut from before/after pairs, and the per-epoch batch plan.

The dataset reads pairs through a ``PairSource`` (files on disk today; a synthetic generator
can be another source later) and cuts one w x w window per item, the same for both images,
with the same mirror, quarter turn and colour perturbation. All randomness of an item comes from
``(seed, epoch, index)``: windows do not depend on worker count, rank or resume point, which
is what makes ``--resume`` exact and DDP ranks independent without seeding workers.

    source = FilePairs(list_pairs(root, split="train"))
    data = WindowDataset(source, WindowSpec(window=150), seed=0)
    plan = epoch_batches(len(source), batch_size=75, epoch=3, seed=0, rank=0, world=1)
    loader = DataLoader(data, batch_sampler=plan, collate_fn=collate_windows)
    for before, after, skipped in loader: ...      # (N, 3, w, w) float32 in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from plugin_server.errors import BadImageError, DataError

from .pairs import Listing, full_scale, read_pair, to_float

# For face-aligned photos (FFHQ), the face fills roughly this central box (fractions of W, H).
FACE_BOX = (0.25, 0.75, 0.25, 0.8)  # x0, x1, y0, y1
EDIT_LEVEL = 2 / 255  # a pixel counts as retouched when a channel moved more than this
MAX_BAD_IN_A_ROW = 32


class PairSource(Protocol):
    """Indexable before/after pairs; ``load`` may raise BadImageError for a bad item."""

    aligned: bool

    def __len__(self) -> int: ...

    def name(self, index: int) -> str: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class FilePairs:
    """Pairs of image files, decoded on every access (workers keep no cache)."""

    def __init__(self, listing: Listing) -> None:
        self.pairs = listing.pairs
        self.aligned = listing.aligned

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index].name

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_pair(self.pairs[index])


@dataclass(frozen=True)
class WindowSpec:
    window: int = 150
    focus: Literal["center", "edits"] = "center"
    background_prob: float = 0.2
    mirror: bool = True
    colour_jitter: float = 0.05
    rotate: bool = False  # quarter turns: a spot on skin has no up, and a few faces need every view


class WindowDataset(Dataset):
    """Items are keyed by ``(epoch, index)``; each is (before, after, skipped pair names)."""

    def __init__(self, source: PairSource, spec: WindowSpec, seed: int) -> None:
        self.source, self.spec, self.seed = source, spec, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        epoch, index = key
        skipped = []
        # A bad file is skipped by taking the next pair instead, so every batch stays full and
        # DDP ranks keep taking the same number of steps.
        for attempt in range(min(MAX_BAD_IN_A_ROW, len(self.source))):
            i = (index + attempt) % len(self.source)
            try:
                before, after = self.source.load(i)
                break
            except BadImageError:
                skipped.append(self.source.name(i))
        else:
            raise DataError(f"{len(skipped)} unreadable pairs in a row from {skipped[0]}: run `autoretouch-train check`")
        rng = np.random.default_rng([self.seed, epoch, index])
        b, a = self.cut(before, after, rng)
        return torch.from_numpy(b), torch.from_numpy(a), skipped

    def cut(self, before: np.ndarray, after: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One augmented window of both images: two (3, w, w) float32 arrays."""
        w, spec = self.spec.window, self.spec
        before, after = _pad_to(before, w), _pad_to(after, w)
        y, x = self._corner(before, after, rng)
        b = to_float(before[y : y + w, x : x + w])  # (w, w, 3)
        a = to_float(after[y : y + w, x : x + w])
        if spec.mirror and rng.random() < 0.5:
            b, a = b[:, ::-1], a[:, ::-1]
        if spec.rotate:
            turns = int(rng.integers(4))
            b, a = np.rot90(b, turns), np.rot90(a, turns)
        if spec.colour_jitter > 0:
            gains = 1 + rng.uniform(-spec.colour_jitter, spec.colour_jitter, size=3)
            b, a = _colour(b, gains), _colour(a, gains)
        return np.ascontiguousarray(b.transpose(2, 0, 1)), np.ascontiguousarray(a.transpose(2, 0, 1))

    def _corner(self, before: np.ndarray, after: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the window: mostly on the face (or the edits), sometimes anywhere."""
        h, w, win = before.shape[0], before.shape[1], self.spec.window
        if rng.random() < self.spec.background_prob:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        elif self.spec.focus == "center":
            x0, x1, y0, y1 = FACE_BOX
            cy, cx = rng.uniform(y0 * h, y1 * h), rng.uniform(x0 * w, x1 * w)
        else:
            cy, cx = _edited_pixel(before, after, rng)
        y = int(np.clip(round(cy - win / 2), 0, h - win))
        x = int(np.clip(round(cx - win / 2), 0, w - win))
        return y, x


def _edited_pixel(before: np.ndarray, after: np.ndarray, rng: np.random.Generator, step: int = 4) -> tuple[float, float]:
    """A random pixel the retoucher changed (searched on a coarse grid to stay cheap on 24 MP)."""
    level = EDIT_LEVEL * full_scale(before.dtype)
    # float32 holds every 8/16-bit difference exactly, and float pairs (face-scaled) as they are.
    diff = np.abs(before[::step, ::step].astype(np.float32) - after[::step, ::step].astype(np.float32))
    ys, xs = np.nonzero(diff.max(axis=2) > level)
    if len(ys) == 0:
        return rng.uniform(0, before.shape[0]), rng.uniform(0, before.shape[1])
    k = rng.integers(len(ys))
    return float(ys[k] * step), float(xs[k] * step)


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else image


def _colour(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Brightness, contrast and saturation gains; the same gains go to both images of a pair."""
    brightness, contrast, saturation = gains
    out = image * brightness
    out = (out - out.mean()) * contrast + out.mean()
    grey = out.mean(axis=2, keepdims=True)
    out = (out - grey) * saturation + grey
    return np.clip(out, 0, 1).astype(np.float32)


def collate_windows(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    before = torch.stack([b for b, _, _ in items])  # (N, 3, w, w)
    after = torch.stack([a for _, a, _ in items])
    return before, after, [name for _, _, skipped in items for name in skipped]


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[list[tuple[int, int]]]:
    """This rank's batches for one epoch: a seeded permutation dealt out so that every rank
    takes the same number of whole batches (the tail is dropped, as DDP needs equal steps)."""
    per_rank = n // world
    steps = per_rank // batch_size
    if steps == 0:
        raise DataError(
            f"{n} training pairs are too few for batch size {batch_size} on {world} process(es)"
        )
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    mine = perm[rank * per_rank : (rank + 1) * per_rank]
    return [[(epoch, i) for i in mine[s * batch_size : (s + 1) * batch_size]] for s in range(steps)]
