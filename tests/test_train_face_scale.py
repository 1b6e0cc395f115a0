"""Training at a face scale (``--face-scale``): pairs resampled by their detected IOD, on real photos."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plugin_server import checkpoint as server_checkpoint
from plugin_server import landmarks
from plugin_server.errors import DataError
from plugin_server.face_retouch import resize
from training.cli import main
from training.config import TrainConfig
from training.face_scale import FACES_FILE, NO_FACE, FaceScaledPairs, measure_iods, read_iods
from training.pairs import list_pairs
from training.state import export, load_training
from training.train import _datasets, train
from training.windows import FilePairs, WindowDataset, WindowSpec
from train_fixtures import SHARED_DATA, ffhqr, needs_shared_data, tiny_config  # noqa: F401  (fixtures)

pytestmark = needs_shared_data


def _no_face_finding(*args, **kwargs):
    raise AssertionError("faces were searched for")


def test_an_ffhq_pair_and_its_3x_upscale_give_windows_at_the_same_scale(tmp_path: Path) -> None:
    # The real FFHQR pair, and the same pair upscaled 3x (Lanczos): a 9 MP "studio" photo of it.
    for side in ("before", "after"):
        (tmp_path / side).mkdir()
    for side, name in (("before", "00000-original.png"), ("after", "00000-retouched.png")):
        with Image.open(SHARED_DATA / "ffhqr-pair" / name) as im:
            rgb = im.convert("RGB")
        rgb.save(tmp_path / side / "ffhq.png", compress_level=1)
        rgb.resize((3 * rgb.width, 3 * rgb.height), Image.LANCZOS).save(tmp_path / side / "ffhq-x3.png", compress_level=1)
    source = FilePairs(list_pairs(tmp_path, "studio"))
    iods = measure_iods(source, range(len(source)))
    assert abs(iods["ffhq-x3"] / iods["ffhq"] - 3) < 0.06, iods  # the detector sees the same face 3x larger
    scaled = FaceScaledPairs(source, 256.0, iods)
    names = [scaled.name(i) for i in range(len(scaled))]
    (b1, a1), (b3, a3) = scaled.load(names.index("ffhq")), scaled.load(names.index("ffhq-x3"))
    assert b1.dtype == np.float32 and b1.shape == a1.shape and b3.shape == a3.shape
    assert abs(b1.shape[0] - b3.shape[0]) <= 0.02 * b1.shape[0], (b1.shape, b3.shape)
    # Both resampled faces have the face scale's IOD, as the engine would measure them.
    found = [landmarks.find_faces(np.clip(b, 0, 1))[0].iod for b in (b1, b3)]
    assert all(abs(iod / 256 - 1) < 0.03 for iod in found), found
    # And the same pixels: brought to one size (982 and 983 px here), the images agree within
    # about a level (0.73 measured), and so do the retoucher's edits (0.34 levels, cropped).
    level = float(np.sqrt(np.mean((b1 - resize(b3, b1.shape[:2])) ** 2))) * 255
    h, w = min(b1.shape[0], b3.shape[0]), min(b1.shape[1], b3.shape[1])
    edits = float(np.sqrt(np.mean(((a1 - b1)[:h, :w] - (a3 - b3)[:h, :w]) ** 2))) * 255
    assert level < 1.5 and edits < 1, (level, edits)


def test_face_scale_zero_cuts_todays_windows_without_looking_for_faces(
    ffhqr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(landmarks, "find_faces", _no_face_finding)
    config = tiny_config(ffhqr, None, window=48, focus="edits", background_prob=0.3, colour_jitter=0.1, seed=7)
    assert config.face_scale == 0 and TrainConfig.from_dict({}).face_scale == 0  # old checkpoints: native
    dataset, _, left_out = _datasets(config, tmp_path / "run", rank=0, world=1)
    spec = WindowSpec(48, "edits", 0.3, True, 0.1)
    today = WindowDataset(FilePairs(list_pairs(ffhqr, split="train")), spec, seed=7)
    assert not left_out and not (tmp_path / "run").exists()
    for key in [(0, i) for i in range(len(today))] + [(1, 2)]:
        assert all(torch.equal(x, y) for x, y in zip(dataset[key][:2], today[key][:2]))


def test_a_face_scale_run_leaves_out_faceless_pairs_and_exports_its_scale(
    ffhqr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(ffhqr, data, symlinks=True)
    flat = Image.fromarray(np.full((512, 512, 3), 128, np.uint8))  # no face: left out, and named
    for folder in ("images1024x1024", "retouched"):
        flat.save(data / folder / "00010.png")
    config = tiny_config(data, None, alpha=0, beta=0, face_scale=256.0, val_images=1)
    run = tmp_path / "run"
    train(config, run)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    left = [r for r in records if r["kind"] == "left_out"]
    assert left and left[0]["files"] == [{"name": "00010", "why": NO_FACE}]
    cached = json.loads((run / FACES_FILE).read_text())["iods"]
    assert cached["00010"] is None and all(200 < cached[k] < 300 for k in ("00000", "00001", "56000"))

    # Resuming takes the IODs from faces.json: no face is searched for again.
    monkeypatch.setattr(landmarks, "find_faces", _no_face_finding)
    train(replace(config, epochs=2), run, resume=True)

    model_path = tmp_path / "model.pt"
    assert main(["export", "--run", str(run), "--which", "last", "--out", str(model_path)]) == 0
    assert "faces at an IOD of 256 px" in capsys.readouterr().out
    model = server_checkpoint.load(model_path)
    assert model.scale == 256.0 and model.metadata["scale"] == 256.0
    assert model.metadata["train_config"]["face_scale"] == 256.0
    monkeypatch.undo()
    # Scored as validation scores it: whole images at the model's face scale.
    assert main(["evaluate", "--checkpoint", str(model_path), "--data", str(data), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "face scale (IOD 256 px)" in out and "val split" in out and "1 images" in out

    # A checkpoint from before face scales (no face_scale in its config) exports as native.
    payload = load_training(run / "last.pt")
    del payload["config"]["face_scale"]
    torch.save(payload, tmp_path / "old.pt")
    old = server_checkpoint.load(export(tmp_path / "old.pt", tmp_path / "old-model.pt"))
    assert old.scale is None and old.metadata["scale"] == "native"


def test_a_damaged_faces_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / FACES_FILE).write_text('{"iods": [')
    with pytest.raises(DataError, match="delete it to find the faces again"):
        read_iods(tmp_path / FACES_FILE)
