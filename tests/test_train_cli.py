"""``autoretouch-train synthetic`` and ``model-card``: help a newcomer reads, one-line errors, exit codes.

The real entry point runs in a subprocess where what a user sees matters (help, the one error
line, the exit status); the model card's figures run in-process on a tiny model and small photos.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugin_server import checkpoint
from plugin_server.model import GeneratorConfig
from training.cli import main
from conftest import make_edit_model
from train_fixtures import SHARED_DATA, needs_shared_data

ENTRY = Path(sys.executable).with_name("autoretouch-train")
PORTRAITS = SHARED_DATA / "portraits"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENTRY), *args], capture_output=True, text=True, timeout=120)


def test_help_of_synthetic_and_model_card_says_what_they_do() -> None:
    top = run("--help")
    assert top.returncode == 0 and "synthetic" in top.stdout and "model-card" in top.stdout
    synthetic = run("synthetic", "--help")
    assert synthetic.returncode == 0, synthetic.stderr
    assert "blemishes" in synthetic.stdout and "--pairs-per-photo" in synthetic.stdout and "--layout studio" in synthetic.stdout
    card = run("model-card", "--help")
    assert card.returncode == 0, card.stderr
    assert "held-out" in card.stdout and "--crops" in card.stdout and "metrics.json" in card.stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        # Asking for something impossible: the command line's fault, exit code 2.
        (["synthetic", "--out", "OUT", "--photos", "a.png", "--keep-crops"], 2, "--keep-crops needs --aligned"),
        (["synthetic", "--out", "OUT", "--photos", "a.png", "--pairs-per-photo", "0"], 2, "at least 1"),
        (["train", "--data", "D", "--out", "OUT", "--window", "4"], 2, "window must be >= 8"),
        (["train", "--data", "D", "--out", "OUT", "--face-scale", "-256"], 2, "face_scale must be 0 (native) or a positive IOD"),
        (["train", "--data", "D", "--out", "OUT", "--edit-weight", "0"], 2, "edit_weight must be > 0"),
        (["model-card", "--checkpoint", "m.pt", "--photos", ".", "--crops", "c.json", "--out", "OUT", "--strength", "2.5"], 2,
         "strength must be a number from 0 to 2, got 2.5"),
        # The work failed: exit code 1.
        (["synthetic", "--out", "OUT", "--photos", "missing.png"], 1, "cannot read the photo missing.png"),
    ],
)
def test_a_bad_argument_is_one_line_and_its_exit_code(args: list[str], code: int, words: str, tmp_path: Path) -> None:
    done = subprocess.run([str(ENTRY), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoretouch-train: error: ") and words in lines[0], done.stderr
    assert not (tmp_path / "OUT").exists()


def test_model_card_refuses_a_bad_crops_file_before_measuring(tmp_path: Path, capsys) -> None:
    crops = tmp_path / "crops.json"
    crops.write_text(json.dumps({"side": 64, "crops": [{"photo": "a.png", "label": "cheek"}]}))  # no centre, no name
    args = ["model-card", "--checkpoint", str(tmp_path / "none.pt"), "--heldout", str(tmp_path),
            "--pair", "a.png", "b.png", "--photos", str(tmp_path), "--crops", str(crops), "--out", str(tmp_path / "card")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a crops file" in err[0]
    crops.write_text(json.dumps({"side": 64, "crops": [{"photo": "a.png", "label": "cheek", "centre": None, "name": "a.png"}]}))
    assert main(args) == 1  # a valid plan; now the missing model stops it
    assert "none.pt" in capsys.readouterr().err
    assert not (tmp_path / "card").exists()


def _model_card(tmp_path: Path, *extra: str) -> dict:
    """The card of a tiny model that edits, measured on shared photos: its metrics.json."""
    model = tmp_path / "edits.pt"
    checkpoint.save(model, make_edit_model(0, GeneratorConfig(4, 8, 1), scale=128.0,
                                           metadata={"steps": 7, "trained_on": "nothing"}))
    heldout = tmp_path / "heal"
    assert main(["heal", "--out", str(heldout), "--photos", str(PORTRAITS / "ffhq-00007.png"), "--face-scale", "128"]) == 0
    crops = tmp_path / "crops.json"
    crops.write_text(json.dumps({"side": 100, "crops": [
        {"photo": "ffhq-00008.png", "label": "left cheek", "centre": [600, 380], "name": "left.png"},
        {"photo": "ffhq-00008.png", "label": "skin", "centre": None, "name": "skin.png"},
        {"photo": "ffhq-00008.png", "label": "corner", "centre": [0, 5000], "name": "corner.png"},  # kept inside
    ]}))
    teaser = SHARED_DATA / "ffhqr-teaser"
    out = tmp_path / "card"
    assert main(["model-card", "--checkpoint", str(model), "--heldout", str(heldout), "--held-out-photos", "ffhq-00008.png",
                 "--pair", str(teaser / "teaser-1-original.png"), str(teaser / "teaser-1-retouched.png"),
                 "--photos", str(PORTRAITS), "--crops", str(crops), "--out", str(out), "--device", "cpu", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


@needs_shared_data
def test_model_card_measures_what_the_crops_file_names(tmp_path: Path) -> None:
    report = _model_card(tmp_path)
    out = tmp_path / "card"
    assert report["strength"] == 1.0
    assert report["model"] == {"file": "edits.pt", "steps": 7, "trained_on": "nothing", "scale": 128.0, "trained_photos": []}
    assert report["heldout_heal"]["images"] == 1 and report["heldout_heal"]["no_edit"]["psnr"] > 20
    pair = report["pairs"]["teaser-1-original"]
    assert pair["faces"] == 1 and pair["no_edit"]["psnr"] > 25
    assert pair["heal"]["psnr"] != pair["no_edit"]["psnr"] and -1 <= pair["model"]["corr_L"] <= 1
    photo = report["held_out_photos"]["ffhq-00008"]
    assert photo["changed"] > 0 and photo["changed_off_skin"] == 0  # edits everywhere, kept to the skin
    face = photo["faces"][0]
    assert face["red_spots"] > 0 and face["redness_removed_heal"] > 0.5
    assert 0 < face["texture_kept_model"] and np.isfinite(face["redness_removed_model"])
    shown = {c["file"]: c for c in report["crops"]["ffhq-00008"]}
    assert (shown["left.png"]["top"], shown["left.png"]["left"]) == (550, 330)
    assert (shown["corner.png"]["top"], shown["corner.png"]["left"]) == (0, 1024 - 100)
    assert shown["left.png"]["max_change"] > 0 and shown["corner.png"]["max_change"] == 0  # a background corner
    before = np.asarray(Image.open(PORTRAITS / "ffhq-00008.png").convert("RGB"))
    strip = np.asarray(Image.open(out / "left.png"))
    assert strip.shape == (200, 2 * (3 * 100 + 16), 3)  # before | after | difference, at 2x
    assert np.array_equal(strip[::2, :200:2], before[550:650, 330:430])  # the before panel is the photo


@needs_shared_data
def test_model_card_at_strength_0_measures_photos_left_as_they_were(tmp_path: Path) -> None:
    report = _model_card(tmp_path, "--strength", "0")
    assert report["strength"] == 0.0
    assert report["heldout_heal"]["model"] == report["heldout_heal"]["no_edit"]
    assert report["pairs"]["teaser-1-original"]["model"]["psnr"] == report["pairs"]["teaser-1-original"]["no_edit"]["psnr"]
    photo = report["held_out_photos"]["ffhq-00008"]
    assert photo["changed"] == 0 and photo["faces"][0]["redness_removed_model"] == 0
    assert all(crop["max_change"] == 0 for crop in report["crops"]["ffhq-00008"])
