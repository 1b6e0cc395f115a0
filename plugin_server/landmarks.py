"""Finds faces and their 468 face-mesh landmarks: the one module that runs the face models.

    from plugin_server.landmarks import find_faces
    faces = find_faces(pixels)          # (H, W, C) uint8 | uint16 | float32, C in 1, 3, 4
    for face in faces: print(face.iod, face.box)

The models are MediaPipe's BlazeFace full-range detector and its face-mesh landmark model, run by
LiteRT (``ai-edge-litert``). ``make`` puts the three ``.tflite`` files into
``.venv/share/autoretouch/face-models`` from the pinned mediapipe wheel (``python -m
plugin_server.landmarks install WHEEL``); nothing is downloaded at run time. Models load on first
use, once per process; importing this module loads nothing. ``docs/faces.md`` says why this
runtime and how the pipeline compares with mediapipe itself.

Pipeline: the detector sees the whole image letterboxed into 192x192 and, for photos much larger
than that, overlapping tiles too (so small faces in a 24 MP group photo are found); each detection
gives a rotated square region of interest, which is cut from the native-resolution image (box
filtered, so no aliasing) into the landmark model's 192x192 input; the landmarks then give a
tighter region and the landmark model runs once more there, as MediaPipe's tracker does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from plugin_server.errors import FaceModelError
from plugin_server.faces import (
    LEFT_EYE_OUTER,
    RIGHT_EYE_OUTER,
    Face,
    face_from_landmarks,
    to_rgb8,
)
from plugin_server.wire import DEFAULT_MIN_IOD

# The models, by the sha256 of the exact files in mediapipe 0.10.21 (the last wheel that ships them).
MODELS = {
    "face_detection_full_range_sparse.tflite": "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    "face_landmark.tflite": "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
}
WHEEL_MEMBERS = {
    "face_detection_full_range_sparse.tflite": "mediapipe/modules/face_detection/",
    "face_landmark.tflite": "mediapipe/modules/face_landmark/",
}
MODELS_ENV = "AUTORETOUCH_FACE_MODELS"  # overrides the folder, for installs without make

DETECT_SIZE = 192  # the full-range detector's input side
MESH_SIZE = 192  # the landmark model's input side
MIN_DETECTION_SCORE = 0.5
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold for faces
MIN_PRESENCE = 0.5  # the landmark model's own "is this a face" output
ROI_SCALE = 1.5  # MediaPipe grows the face box by this much for the landmark model
# The smallest IOD, in pixels of the detector's 192-px input, that it is trusted to find; a face
# of min_iod smaller than that in the whole image is looked for in tiles of a less reduced copy.
TILE_MIN_IOD = 5.0  # measured: it finds downscaled FFHQ faces down to 4 px


def models_dir() -> Path:
    """Where the .tflite files are: $AUTORETOUCH_FACE_MODELS, else the running venv's share folder."""
    override = os.environ.get(MODELS_ENV)
    return Path(override) if override else Path(sys.prefix) / "share" / "autoretouch" / "face-models"


def install(wheel: Path, dest: Path) -> None:
    """Copies the pinned model files out of a mediapipe wheel into ``dest``, checking their hashes."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name, digest in MODELS.items():
            data = archive.read(WHEEL_MEMBERS[name] + name)
            if hashlib.sha256(data).hexdigest() != digest:
                raise FaceModelError(f"{name} in {wheel} is not the pinned file (sha256 differs)")
            tmp = dest / (name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest / name)


@dataclass
class _Models:
    detector: object
    mesh: object
    lock: threading.Lock  # a LiteRT interpreter is not safe to run from two threads at once
    anchors: np.ndarray  # (2304, 2) anchor centres, normalised


_models: _Models | None = None
_models_lock = threading.Lock()


def _load() -> _Models:
    global _models
    with _models_lock:
        if _models is None:
            from ai_edge_litert.interpreter import Interpreter

            folder = models_dir()
            paths = {}
            for name, digest in MODELS.items():
                path = folder / name
                if not path.is_file():
                    raise FaceModelError(
                        f"face model {path} is missing; run make (it installs the face models) or set {MODELS_ENV}"
                    )
                if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                    raise FaceModelError(f"face model {path} is not the pinned file; reinstall it with make")
                paths[name] = str(path)
            with _native_stderr_silenced():
                detector = Interpreter(model_path=paths["face_detection_full_range_sparse.tflite"], num_threads=1)
                mesh = Interpreter(model_path=paths["face_landmark.tflite"], num_threads=1)
                detector.allocate_tensors()
                mesh.allocate_tensors()
            _models = _Models(detector, mesh, threading.Lock(), _anchors())
    return _models


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate" on the process's
    stderr, which no setting turns off; a retoucher's terminal should not show it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _anchors() -> np.ndarray:
    """SSD anchors of the full-range detector: one per cell of its 48x48 grid (stride 4), centred."""
    cells = DETECT_SIZE // 4
    centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _run(interpreter: object, tensor: np.ndarray) -> list[np.ndarray]:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor[None])
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()]


@dataclass(frozen=True)
class _Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in image pixels
    eyes: np.ndarray  # (2, 2) the detector's two eye keypoints, image pixels
    score: float


def _detect_window(
    models: _Models, level: Image.Image, window: tuple[int, int, int, int], to_image: float
) -> list[_Detection]:
    """Detections in one window of a downscaled copy (``to_image`` maps its pixels to the image's),
    letterboxed into the detector's square input."""
    x0, y0, x1, y1 = window
    scale = DETECT_SIZE / max(x1 - x0, y1 - y0)
    w, h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    small = level.crop(window)
    small = np.asarray(small if small.size == (w, h) else small.resize((w, h), Image.Resampling.BILINEAR))
    tensor = np.zeros((DETECT_SIZE, DETECT_SIZE, 3), np.float32)  # 0 is mid-gray in [-1, 1]
    ox, oy = (DETECT_SIZE - w) // 2, (DETECT_SIZE - h) // 2
    tensor[oy : oy + h, ox : ox + w] = small / 127.5 - 1.0
    with models.lock:
        raw_boxes, raw_scores = _run(models.detector, tensor)  # (2304, 16), (2304, 1)
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores[:, 0], -80, 80)))
    found = []
    for i in np.flatnonzero(scores >= MIN_DETECTION_SCORE):
        # Offsets are in input pixels from the anchor centre; keypoints 0 and 1 are the eyes.
        points = raw_boxes[i].reshape(8, 2) / DETECT_SIZE
        centre, size = models.anchors[i] + points[0], points[1]
        corners = np.stack([centre - size / 2, centre + size / 2])
        eyes = models.anchors[i] + points[2:4]
        back = lambda p: ((p * DETECT_SIZE - [ox, oy]) / scale + [x0, y0]) * to_image  # noqa: E731
        found.append(_Detection(back(corners).ravel(), back(eyes), float(scores[i])))
    return found


def _detections(models: _Models, rgb: Image.Image, min_iod: float) -> list[_Detection]:
    """The whole image in one look; and where a face of ``min_iod`` would be too small in that,
    overlapping tiles of a copy downscaled just enough for such a face to be found."""
    width, height = rgb.size
    tile = max(DETECT_SIZE, round(DETECT_SIZE * max(min_iod, 1.0) / TILE_MIN_IOD))  # image px per tile
    if max(width, height) <= tile * 1.25:
        factor = max(width, height) / DETECT_SIZE
        level = _reduce(rgb, factor)
        return _detect_window(models, level, (0, 0, *level.size), factor)
    factor = tile / DETECT_SIZE  # image pixels per pixel of the tiled copy
    level = _reduce(rgb, factor)
    lw, lh = level.size
    found = _detect_window(models, level, (0, 0, lw, lh), factor)
    step = DETECT_SIZE * 3 // 4  # tiles overlap a quarter, so every small face lies whole in one
    for y in range(0, max(1, lh - DETECT_SIZE // 4), step):
        for x in range(0, max(1, lw - DETECT_SIZE // 4), step):
            found += _detect_window(models, level, (x, y, min(x + DETECT_SIZE, lw), min(y + DETECT_SIZE, lh)), factor)
    return found


def _reduce(rgb: Image.Image, factor: float) -> Image.Image:
    """The image shrunk by ``factor`` (>= 1 shrinks), antialiased."""
    if factor <= 1.0:
        return rgb
    size = (max(1, round(rgb.width / factor)), max(1, round(rgb.height / factor)))
    return rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _suppress(detections: list[_Detection]) -> list[_Detection]:
    """MediaPipe's weighted non-maximum suppression: overlapping boxes average by score."""
    pending = sorted(detections, key=lambda d: -d.score)
    kept = []
    while pending:
        best = pending[0]
        overlaps = [d for d in pending if _iou(best.box, d.box) > NMS_IOU]
        pending = [d for d in pending if _iou(best.box, d.box) <= NMS_IOU]
        weights = np.array([d.score for d in overlaps])[:, None]
        box = (np.stack([d.box for d in overlaps]) * weights).sum(0) / weights.sum()
        eyes = (np.stack([d.eyes for d in overlaps]) * weights[:, :, None]).sum(0) / weights.sum()
        kept.append(_Detection(box, eyes, best.score))
    return kept


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _mesh(models: _Models, rgb: Image.Image, centre: np.ndarray, side: float, angle: float) -> tuple[np.ndarray, float]:
    """Landmarks (468, 2) in image pixels and the presence score, in a rotated square ROI."""
    cos, sin = math.cos(angle), math.sin(angle)
    # Shrink by an integer box filter first, so the bilinear warp below never skips pixels.
    factor = max(1, int(side / MESH_SIZE))
    reach = side / 2 * (abs(cos) + abs(sin)) + 2 * factor
    x0 = math.floor((centre[0] - reach) / factor) * factor
    y0 = math.floor((centre[1] - reach) / factor) * factor
    x1 = math.ceil((centre[0] + reach) / factor) * factor
    y1 = math.ceil((centre[1] + reach) / factor) * factor
    # Reduce straight from the image (no full-size copy of the crop); zero outside the image.
    inside = (max(x0, 0), max(y0, 0), min(x1, rgb.width), min(y1, rgb.height))
    crop = Image.new("RGB", ((x1 - x0) // factor, (y1 - y0) // factor))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        part = rgb.reduce(factor, box=inside) if factor > 1 else rgb.crop(inside)
        crop.paste(part, ((inside[0] - x0) // factor, (inside[1] - y0) // factor))
    # Output pixel (u, v) -> image point: centre + R(angle) (u - 96, v - 96) * side / 192.
    unit = side / MESH_SIZE
    a, b = cos * unit / factor, -sin * unit / factor
    d, e = sin * unit / factor, cos * unit / factor
    cx = (centre[0] - x0) / factor - (a + b) * MESH_SIZE / 2
    cy = (centre[1] - y0) / factor - (d + e) * MESH_SIZE / 2
    affine = (a, b, cx, d, e, cy)
    patch = crop.transform((MESH_SIZE, MESH_SIZE), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR)
    tensor = np.asarray(patch, np.float32) / 255.0  # the landmark model takes [0, 1]
    with models.lock:
        raw, presence = _run(models.mesh, tensor)  # (1, 1, 1404), (1, 1, 1)
    points = raw.reshape(-1, 3)[:, :2] - MESH_SIZE / 2  # (468, 2) around the ROI centre, input px
    rotation = np.array([[cos, -sin], [sin, cos]], np.float64)
    landmarks = centre + (points * unit) @ rotation.T
    return landmarks.astype(np.float32), float(1.0 / (1.0 + math.exp(-float(presence.ravel()[0]))))


def _roi_from_landmarks(landmarks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """MediaPipe's landmarks-to-ROI: rotation from the outer eye corners, box in that frame, x1.5."""
    dx, dy = landmarks[LEFT_EYE_OUTER] - landmarks[RIGHT_EYE_OUTER]
    angle = math.atan2(dy, dx)
    cos, sin = math.cos(angle), math.sin(angle)
    upright = landmarks.astype(np.float64) @ np.array([[cos, -sin], [sin, cos]])  # rotate by -angle
    lo, hi = upright.min(0), upright.max(0)
    middle = (lo + hi) / 2
    centre = np.array([middle[0] * cos - middle[1] * sin, middle[0] * sin + middle[1] * cos])
    return centre, float(max(hi - lo) * ROI_SCALE), angle


def find_faces(image: np.ndarray, min_iod: float = DEFAULT_MIN_IOD) -> list[Face]:
    """Every face with both eyes in the frame and an inter-ocular distance of at least ``min_iod``
    pixels (0: every face found), largest first. Works at any image size: detection runs on
    downscaled copies, landmarks on native pixels."""
    rgb = Image.fromarray(to_rgb8(image))
    models = _load()
    width, height = rgb.size
    faces = []
    for detection in _suppress(_detections(models, rgb, min_iod)):
        dx, dy = detection.eyes[1] - detection.eyes[0]
        if math.hypot(dx, dy) < 0.7 * min_iod:  # the detector's eyes are rough: decide on the mesh's
            continue
        angle = math.atan2(dy, dx)
        box = detection.box
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        side = float(max(box[2] - box[0], box[3] - box[1]) * ROI_SCALE)
        landmarks, presence = _mesh(models, rgb, centre, side, angle)
        if presence < MIN_PRESENCE:
            continue
        landmarks, presence = _mesh(models, rgb, *_roi_from_landmarks(landmarks))
        if presence < MIN_PRESENCE:
            continue
        face = face_from_landmarks(landmarks, detection.score, (height, width))
        # A face cut by the frame through an eye has no IOD to scale by and a guessed mesh: not counted.
        eyes_inside = all(0 <= x < width and 0 <= y < height for x, y in (face.left_eye, face.right_eye))
        if eyes_inside and face.iod >= min_iod:
            faces.append(face)
    return _distinct(sorted(faces, key=lambda f: -f.iod))


def _distinct(faces: list[Face]) -> list[Face]:
    """Drops a face whose eyes sit on a larger face's (the same face found twice, at two scales)."""
    kept: list[Face] = []
    for face in faces:
        if all(np.hypot(*(face.left_eye - k.left_eye)) > 0.3 * k.iod for k in kept):
            kept.append(face)
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plugin_server.landmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    put = sub.add_parser("install", help="copy the face models out of a mediapipe 0.10.21 wheel")
    put.add_argument("wheel", type=Path)
    put.add_argument("--dest", type=Path, default=None, help="default: this venv's share/autoretouch/face-models")
    args = parser.parse_args(argv)
    install(args.wheel, args.dest or models_dir())


if __name__ == "__main__":
    main()
