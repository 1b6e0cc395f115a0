"""End-to-end training on a tiny real data set: learning, exact resume, bad files, export, CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugin_server import checkpoint as server_checkpoint
from plugin_server.errors import BadOptionError, ResumeError, VggWeightsError
from plugin_server.model import Generator, Model
from plugin_server.wire import RetouchOptions
from training.cli import main
from training.pairs import list_pairs, read_image, to_float
from training.state import RunState, export, load_training
from training.train import train
from training.windows import FilePairs, WindowDataset, WindowSpec
from train_fixtures import SHARED_DATA, ffhqr, tiny_config, vgg_file  # noqa: F401  (fixtures)


def _windows(root: Path, config) -> tuple[torch.Tensor, torch.Tensor]:
    data = WindowDataset(FilePairs(list_pairs(root, split="train")), WindowSpec(window=64, background_prob=0), seed=99)
    items = [data[(0, i)] for i in range(len(data))]
    return torch.stack([b for b, _, _ in items]), torch.stack([a for _, a, _ in items])


def test_a_few_steps_reduce_the_loss(ffhqr: Path, tmp_path: Path) -> None:
    # MSE + RaGAN here; the perceptual term is exercised by the resume test.
    config = tiny_config(ffhqr, None, epochs=4, val_every=4, beta=0.0, lr_g=1e-3)
    before, after = _windows(ffhqr, config)
    torch.manual_seed(config.seed)
    initial = Generator(config.generator)  # the trainer's initial weights: same seed, same config
    result = train(config, tmp_path / "run")
    with torch.no_grad():
        loss_before = F.mse_loss(initial(before), after)
        loss_after = F.mse_loss(result.generator(before), after)
    assert result.step == 8
    # The generator starts near the identity, so the loss starts near No edit's; learning the
    # retouch is slow, but a few steps must already take it down.
    assert loss_after < 0.95 * loss_before
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert set(train_records[0]["losses"]) == {"mse", "ragan_g", "loss_g", "loss_d"}
    assert all(r["samples_per_s"] > 0 for r in train_records)
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["psnr_noedit"] > 30 and 0 < val[0]["ssim"] <= 1
    run = tmp_path / "run"
    assert (run / "loss.png").stat().st_size > 0 and (run / "grid-0004.png").exists()
    assert (run / "best.pt").exists() and (run / "last.pt").exists()


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(ffhqr: Path, vgg_file: Path, tmp_path: Path) -> None:
    config = tiny_config(ffhqr, vgg_file, epochs=2, seed=5)
    train(config, tmp_path / "straight")
    train(replace(config, stop_after_steps=3), tmp_path / "resumed")  # stops mid-epoch 1
    assert load_training(tmp_path / "resumed" / "last.pt")["step"] == 3
    train(config, tmp_path / "resumed", resume=True)
    a, b = load_training(tmp_path / "straight" / "last.pt"), load_training(tmp_path / "resumed" / "last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 4)
    for part in ("generator", "discriminator"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"
    for key, value in a["opt_g"]["state"][0].items():
        assert torch.equal(value, b["opt_g"]["state"][0][key])
    assert torch.equal(a["ragan"]["fake"]["buffer"], b["ragan"]["fake"]["buffer"])
    # The training checkpoint's format version 1, key for key: files written before RunState load.
    assert set(b) == set(V1_KEYS) and set(RunState.from_payload(b).to_payload()) == set(V1_KEYS)


V1_KEYS = ("format", "version", "config", "generator", "discriminator", "opt_g", "opt_d", "ragan", "rng",
           "epoch", "batch", "step", "best", "metrics", "skipped", "command")


def test_resume_refuses_other_hyperparameters(ffhqr: Path, tmp_path: Path) -> None:
    config = tiny_config(ffhqr, None, beta=0.0, stop_after_steps=1)
    train(config, tmp_path / "run")
    with pytest.raises(ResumeError, match="lr_g"):
        train(replace(config, lr_g=1e-2), tmp_path / "run", resume=True)
    with pytest.raises(ResumeError, match="cannot continue"):
        train(config, tmp_path / "elsewhere", resume=True)
    # A new run into the same folder without --resume would overwrite the first: refused, untouched.
    saved = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(ResumeError, match="already holds a run"):
        train(config, tmp_path / "run")
    assert (tmp_path / "run" / "last.pt").read_bytes() == saved


def test_bad_file_mid_epoch_is_skipped_and_counted(ffhqr: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(ffhqr, root, symlinks=True)
    (root / "retouched" / "00002.png").write_bytes((ffhqr / "retouched" / "00002.png").read_bytes()[:3000])
    config = tiny_config(root, None, alpha=0.0, beta=0.0, batch_size=1)
    result = train(config, tmp_path / "run")
    assert result.step == 5  # every step still ran, with a full batch
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert skipped and skipped[0]["files"] == ["00002"] and skipped[0]["count"] >= 1
    assert load_training(tmp_path / "run" / "last.pt")["skipped"] >= 1


def test_missing_vgg_file_stops_before_training(ffhqr: Path, tmp_path: Path) -> None:
    with pytest.raises(VggWeightsError, match="does not exist"):
        train(tiny_config(ffhqr, None), tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_init_fine_tunes_from_a_training_or_exported_checkpoint(ffhqr: Path, tmp_path: Path) -> None:
    config = tiny_config(ffhqr, None, beta=0.0, stop_after_steps=2)
    first = train(config, tmp_path / "first").generator.state_dict()
    export(tmp_path / "first" / "last.pt", tmp_path / "served.pt", residual_floor=2 / 255)
    fresh = train(replace(config, epochs=0), tmp_path / "fresh").generator.state_dict()  # no --init
    for source in ("first/last.pt", "served.pt"):
        # No steps: the run's generator is exactly the one it started from.
        start = train(replace(config, init=str(tmp_path / source), epochs=0), tmp_path / f"from-{source[:5]}")
        assert all(torch.equal(v, first[k]) for k, v in start.generator.state_dict().items())
    assert any(not torch.equal(v, fresh[k]) for k, v in first.items())
    tuned = train(replace(config, init=str(tmp_path / "served.pt"), stop_after_steps=1), tmp_path / "tuned")
    assert any(not torch.equal(v, first[k]) for k, v in tuned.generator.state_dict().items())
    assert server_checkpoint.load(tmp_path / "served.pt").residual_floor == 2 / 255
    tuned_model = server_checkpoint.load(export(tmp_path / "tuned" / "last.pt", tmp_path / "tuned.pt"))
    meta = tuned_model.metadata
    assert tuned_model.residual_floor == 0.0 and meta["steps"] == 1 and meta["init"]["checkpoint"] == str(tmp_path / "served.pt")
    assert meta["init"]["steps"] == 2 and meta["init"]["trained_on"] == str(ffhqr)  # the whole recipe

    wider = replace(config, generator=replace(config.generator, full_channels=8), init=str(tmp_path / "served.pt"))
    with pytest.raises(BadOptionError, match="--init .*full-channels"):
        train(wider, tmp_path / "wider")
    assert not (tmp_path / "wider" / "last.pt").exists()


def test_export_is_served_with_the_trainers_pixels(ffhqr: Path, tmp_path: Path) -> None:
    config = tiny_config(ffhqr, None, beta=0.0, val_every=1)
    result = train(config, tmp_path / "run", command="autoretouch-train train ...")
    out = export(tmp_path / "run" / "last.pt", tmp_path / "model.pt", command="autoretouch-train export ...")
    model = server_checkpoint.load(out)
    served, metadata = model.generator, model.metadata
    assert served.config == config.generator
    image = to_float(read_image(SHARED_DATA / "ffhqr-pair" / "00000-original.png"))[:200, :300]
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    result.generator.eval()
    with torch.no_grad():
        assert torch.equal(served(x), result.generator(x))
    assert metadata["steps"] == result.step and metadata["epochs"] == 1
    assert metadata["train_command"] == "autoretouch-train train ..." and metadata["metrics"]["images"] == 1
    assert metadata["trained_on"] == str(ffhqr)

    # Served by a real server process: the same pixels as the trainer's generator in-process.
    from plugin_server import engine, imageio, retouchers
    from plugin_server.client import Client
    from server_fixtures import start_server

    photo = imageio.read(SHARED_DATA / "ffhqr-pair" / "00000-original.png")
    photo = photo.with_pixels(photo.pixels[300:500, 300:560].copy())
    server = start_server(out, log_dir=tmp_path)
    try:
        answer = retouchers.remote(Client(server.url), RetouchOptions())(photo).picture
    finally:
        server.stop()
    expected = engine.retouch(photo.pixels, Model(result.generator), RetouchOptions(device="cpu"))
    assert np.abs(answer.pixels.astype(int) - expected).max() <= 1
    assert not np.array_equal(expected, photo.pixels)


def test_cli_help_check_export_and_evaluate(ffhqr: Path, tmp_path: Path, capsys) -> None:
    for command in ([], ["train"], ["check"], ["export"], ["evaluate"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "--vgg-weights" in help_text and "masked PSNR" in help_text and "unpaired" in help_text

    assert main(["check", "--data", str(ffhqr)]) == 0
    assert "no problems found" in capsys.readouterr().out

    run = tmp_path / "run"
    assert main(["train", "--data", str(ffhqr), "--out", str(run), "--window", "32", "--batch-size", "2",
                 "--epochs", "1", "--full-channels", "4", "--body-channels", "8", "--blocks", "1",
                 "--disc-channels", "8", "--disc-layers", "2", "--beta", "0", "--workers", "0",
                 "--val-every", "0"]) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "model.pt")]) == 0
    metadata = server_checkpoint.load(tmp_path / "model.pt").metadata
    assert metadata["export_command"].startswith("autoretouch-train export --run")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(ffhqr), "--split", "test"]) == 0
    table = capsys.readouterr().out
    assert "No edit" in table and "Model" in table and "masked PSNR" in table and "1 images" in table

    assert main(["train", "--data", str(ffhqr), "--out", str(tmp_path / "x"), "--batch-size", "2",
                 "--vgg-weights", str(tmp_path / "none.pth")]) == 1  # the work failed: exit code 1
    assert "VGG-19 weights" in capsys.readouterr().err
