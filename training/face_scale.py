"""Training pairs at a face scale: each pair resampled so that its face's IOD is the model's scale.

A model trained with ``--face-scale PX`` learns blemishes at PX pixels between the eye centres
(the inter-ocular distance, IOD), whatever the photos' size, and is served with ``scale=PX``: the
engine resamples every face to that IOD before retouching it (``plugin_server/face_retouch.py``).
Training resamples with the same function, so the model sees the same pixels in both::

    iods = read_iods(run_dir / FACES_FILE)                       # what earlier runs measured
    iods |= measure_iods(source, [i for i in range(len(source)) if source.name(i) not in iods])
    source = FaceScaledPairs(source, face_scale=256.0, iods=iods)
    source.left_out                                              # pairs without a face, with why

The IOD is measured once per pair, on the *before* image (what the engine sees), as the largest
face's. Pairs where no face is found are left out rather than kept at native scale: a window at
an unknown scale is what face scaling exists to avoid.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from plugin_server.errors import BadImageError, DataError
from plugin_server.face_retouch import resize

from .pairs import to_float
from .windows import PairSource

# In the run folder: the IOD of every pair measured so far (null: no face), so a resumed or
# restarted run does not detect faces again (about 0.1-1 s a photo).
FACES_FILE = "faces.json"
NO_FACE = "no face found"


def largest_iod(image: np.ndarray) -> float | None:
    """The IOD in px of the largest face in ``image`` (those the engine retouches), or None."""
    # Imported here: it costs ~0.8 s (scipy), which only face-scale runs and evaluations need.
    from plugin_server.landmarks import find_faces

    faces = find_faces(image)
    return float(faces[0].iod) if faces else None


def measure_iods(source: PairSource, indices: Iterable[int]) -> dict[str, float | str]:
    """Pair name -> the IOD of its before image's largest face, or why it has none (text)."""
    out: dict[str, float | str] = {}
    for index in indices:
        try:
            before, _ = source.load(index)
        except BadImageError as exc:
            out[source.name(index)] = f"unreadable ({exc})"
            continue
        iod = largest_iod(before)
        out[source.name(index)] = NO_FACE if iod is None else iod
    return out


def read_iods(path: Path) -> dict[str, float | str]:
    """The IODs a run measured before ({} when there are none)."""
    if not path.is_file():
        return {}
    try:
        iods = json.loads(path.read_text())["iods"]
        return {str(name): NO_FACE if iod is None else float(iod) for name, iod in iods.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path} is not a list of face sizes ({exc}); delete it to find the faces again") from exc


def write_iods(path: Path, iods: Mapping[str, float | str]) -> None:
    # Unreadable pairs are measured again next time: the file may have been fixed.
    kept = {name: (None if value == NO_FACE else value) for name, value in sorted(iods.items())
            if isinstance(value, float) or value == NO_FACE}
    # Written whole then renamed, so an interrupted run never leaves a torn file to read next time.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"version": 1, "iods": kept}, indent=0) + "\n")
    os.replace(temporary, path)


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """(H, W, 3) uint8/uint16/float32 -> float32 resampled by ``factor`` as the engine does.

    Sizes are rounded as ``face_retouch.face_residual`` rounds them; like it, the bicubic
    overshoot is kept (not clipped): that is what the model is given at inference.
    """
    pixels = to_float(image)
    size = (max(1, round(pixels.shape[0] * factor)), max(1, round(pixels.shape[1] * factor)))
    return resize(pixels, size)


class FaceScaledPairs:
    """``source``'s pairs with a face, both images resampled by ``face_scale / iod``.

    ``iods`` maps pair names to IODs (from ``measure_iods``); a pair whose entry is text or
    missing is left out, and named with why in ``left_out``. Images come back as float32.
    """

    def __init__(self, source: PairSource, face_scale: float, iods: Mapping[str, float | str]) -> None:
        if not (face_scale > 0 and math.isfinite(face_scale)):
            raise ValueError(f"face_scale must be a positive number of pixels, got {face_scale}")
        self.source, self.face_scale, self.aligned = source, face_scale, source.aligned
        self.kept: list[int] = []  # indices into ``source``
        self.iods: list[float] = []
        self.left_out: list[tuple[str, str]] = []  # (name, why)
        for index in range(len(source)):
            value = iods.get(source.name(index), "IOD not measured")
            if isinstance(value, float):
                self.kept.append(index)
                self.iods.append(value)
            else:
                self.left_out.append((source.name(index), value))

    def __len__(self) -> int:
        return len(self.kept)

    def name(self, index: int) -> str:
        return self.source.name(self.kept[index])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        before, after = self.source.load(self.kept[index])
        factor = self.face_scale / self.iods[index]
        return rescale(before, factor), rescale(after, factor)
