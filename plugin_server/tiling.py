"""Pure tile geometry for exact tiled inference.

An image is cut into *cores* (the pixels a tile writes) and each core is run inside a
*window*: the core plus a margin of at least the model's receptive-field radius, so every
output pixel sees exactly what it would see in a whole-image run. Two more rules make the
result equal to whole-image inference:

- window origins are multiples of the model's stride, so the half-resolution grid of every
  window lines up with the whole image's;
- every window of a plan has one fixed shape; at the image's borders windows shift inward
  rather than shrink, and the window length is congruent to the image length modulo the
  stride, so that a window shifted against the far border still starts on the stride grid.

    plan = TilePlan.create(height, width, core=512, radius=g.receptive_radius, stride=g.stride)
    for region in plan.regions():
        window = plan.window_for(region)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Region:
    """A half-open pixel rectangle [y0, y1) x [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def axis_cores(start: int, stop: int, core: int) -> list[tuple[int, int]]:
    """Split [start, stop) into consecutive cores of length ``core`` (the last may be shorter)."""
    return [(c, min(c + core, stop)) for c in range(start, stop, core)]


def window_length(length: int, core: int, margin: int, stride: int) -> int:
    """The fixed window length along an axis of ``length`` pixels."""
    window = core + 2 * margin
    if window >= length:
        return length
    # Congruent to the axis length, so a window flush with the far border starts on the grid.
    return window + (length - window) % stride


def window_start(core_start: int, length: int, window: int, margin: int) -> int:
    """Origin of the window around a core starting at ``core_start``, shifted inward at borders."""
    return min(max(core_start - margin, 0), length - window)


@dataclass(frozen=True)
class TilePlan:
    """How one image is tiled for one core size."""

    height: int
    width: int
    core: int  # core side, a multiple of the stride
    margin: int  # >= the receptive radius, a multiple of the stride
    stride: int
    window_height: int
    window_width: int

    @classmethod
    def create(cls, height: int, width: int, core: int | None, radius: int, stride: int) -> TilePlan:
        """``core=None`` means one window over the whole image."""
        if height < 1 or width < 1:
            raise ValueError(f"image must be at least 1x1, got {width}x{height}")
        if core is None:
            core = round_up(max(height, width), stride)
        if core < 1:
            raise ValueError(f"core must be positive, got {core}")
        core = round_up(core, stride)
        margin = round_up(radius, stride)
        return cls(
            height, width, core, margin, stride,
            window_length(height, core, margin, stride), window_length(width, core, margin, stride),
        )

    def with_core(self, core: int) -> TilePlan:
        return TilePlan.create(self.height, self.width, core, self.margin, self.stride)

    def regions(self, within: Region | None = None) -> Iterator[Region]:
        """Cores of this plan covering ``within`` (default: the whole image), row by row.

        ``within`` must start on the stride grid (any region a plan made does).
        """
        area = within or Region(0, self.height, 0, self.width)
        for y0, y1 in axis_cores(area.y0, area.y1, self.core):
            for x0, x1 in axis_cores(area.x0, area.x1, self.core):
                yield Region(y0, y1, x0, x1)

    def window_for(self, core: Region) -> Region:
        """The window (of this plan's fixed shape) in which ``core`` is computed exactly."""
        y = window_start(core.y0, self.height, self.window_height, self.margin)
        x = window_start(core.x0, self.width, self.window_width, self.margin)
        return Region(y, y + self.window_height, x, x + self.window_width)
