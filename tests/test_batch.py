"""``autoretouch batch``: mirrors folders, resumes, reports failures, never overwrites inputs."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from plugin_server import batch, checkpoint, cli, engine, imageio, retouchers
from plugin_server.errors import AutoRetouchError
from plugin_server.wire import RetouchOptions
from server_fixtures import ffhq_crop, free_port, make_checkpoint, require_data, start_server


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("batch") / "g.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    server = start_server(ckpt)
    yield server
    server.stop()


@pytest.fixture
def shoot(tmp_path):
    """A small studio folder: JPEG with ICC, 16-bit PNG in a sub-folder, float TIFF deeper down."""
    require_data()
    root = tmp_path / "shoot"
    (root / "day2" / "tiff").mkdir(parents=True)
    icc = imageio.read(Path(__file__).resolve().parent.parent.parent / "shared/data/portraits/pexels-aadil-2598024.jpg").icc_profile
    imageio.write(root / "a.jpg", imageio.Picture(ffhq_crop(1, (64, 80)), "jpeg", icc))
    imageio.write(root / "day2" / "b.png", imageio.Picture(ffhq_crop(2, (72, 64)).astype(np.uint16) * 257, "png"))
    imageio.write(root / "day2" / "tiff" / "c.tif", imageio.Picture(ffhq_crop(3, (48, 56)).astype(np.float32) / 255, "tiff"))
    (root / "notes.txt").write_text("not a photo")
    return root


def autoretouch_batch(in_dir: Path, out_dir: Path, *servers: str, jobs: int | None = None,
                      checkpoint: Path | None = None) -> int:
    """`autoretouch batch IN_DIR OUT_DIR --no-faces [--server URL]... [--jobs N] [--checkpoint PATH --device cpu]`, as typed."""
    argv = ["batch", str(in_dir), str(out_dir), "--no-faces"]  # whole images: comparable with engine.retouch
    for url in servers:
        argv += ["--server", url]
    if jobs is not None:
        argv += ["--jobs", str(jobs)]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint), "--device", "cpu"]
    return cli.main(argv)


def _digests(root: Path) -> dict[Path, str]:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_batch_through_servers_matches_in_process(shoot, tmp_path, server, ckpt):
    inputs = _digests(shoot)
    dead = f"http://127.0.0.1:{free_port()}"  # a second server that is down: its share moves over
    assert autoretouch_batch(shoot, tmp_path / "out", server.url, dead, jobs=2) == 0
    assert autoretouch_batch(shoot, tmp_path / "local", checkpoint=ckpt) == 0  # a model file: in-process
    assert _digests(shoot) == inputs  # nothing written into the inputs
    model = checkpoint.load(ckpt)
    for name in ("a.jpg", "day2/b.png", "day2/tiff/c.tif"):
        source, remote, local = imageio.read(shoot / name), imageio.read(tmp_path / "out" / name), imageio.read(tmp_path / "local" / name)
        assert remote.format == source.format and remote.pixels.dtype == source.pixels.dtype
        assert remote.icc_profile == source.icc_profile
        np.testing.assert_array_equal(remote.pixels, local.pixels)
        if source.format != "jpeg":  # lossless formats: exactly the engine's pixels
            np.testing.assert_array_equal(remote.pixels, engine.retouch(source.pixels, model, RetouchOptions(device="cpu")))
            assert not np.array_equal(remote.pixels, source.pixels)
    assert not (tmp_path / "out" / "notes.txt").exists()


def test_resume_skips_complete_outputs_and_redoes_partial_ones(shoot, tmp_path, server, capsys):
    out = tmp_path / "out"
    calls = []

    def flaky(picture, progress=None):
        calls.append(picture.format)
        if picture.format == "png":
            raise AutoRetouchError("the power went out")
        return retouchers.Outcome(picture, None)  # unchanged, face finding off

    tasks = batch.plan(shoot, out)
    report = batch.run_tasks(tasks, [flaky], 1, io.StringIO())
    assert len(report.done) == 2 and len(report.failed) == 1
    done_before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    (out / "day2" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a partial file under the final name
    assert autoretouch_batch(shoot, out, server.url) == 0
    assert "1 retouched, 2 already done, 0 failed" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in done_before} == done_before  # untouched on resume
    assert imageio.read(out / "day2" / "b.png").pixels.shape == (72, 64, 3)
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind


def test_failures_are_summarised_with_a_nonzero_exit(shoot, tmp_path, server, capsys):
    (shoot / "broken.jpg").write_bytes((shoot / "a.jpg").read_bytes()[:200])
    (shoot / "day2" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2
                                              + b"\x08\x02\x00\x00\x00" + bytes(4))
    assert autoretouch_batch(shoot, tmp_path / "out", server.url) == 1
    err = capsys.readouterr().err
    assert "3 retouched, 0 already done, 2 failed" in err
    assert "FAILED" in err and "broken.jpg" in err and "huge.png" in err
    assert not (tmp_path / "out" / "broken.jpg").exists()


@pytest.mark.parametrize("layout", ["same", "inside", "around"])
def test_layouts_that_could_overwrite_inputs_are_refused(shoot, layout, capsys):
    out = {"same": shoot, "inside": shoot / "retouched", "around": shoot.parent}[layout]
    inputs = _digests(shoot)
    assert autoretouch_batch(shoot, out, "http://127.0.0.1:1") == 2
    err = capsys.readouterr().err
    assert "outside" in err and len(err.strip().splitlines()) == 1, err
    assert _digests(shoot) == inputs


def test_bad_jobs_count_is_a_usage_error(shoot, tmp_path, capsys):
    assert autoretouch_batch(shoot, tmp_path / "out", "http://127.0.0.1:1", jobs=0) == 2
    assert "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
