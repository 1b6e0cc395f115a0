"""`autoretouch retouch` as a user runs it: a real process on real photos."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_edit_model
from plugin_server import checkpoint, imageio
from plugin_server.engine import retouch
from plugin_server.wire import RetouchOptions
from server_fixtures import free_port


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "g.pt"
    checkpoint.save(path, make_edit_model())
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory, portraits_dir):
    """A crop of a real studio JPEG, saved with its ICC profile."""
    picture = imageio.read(portraits_dir / "pexels-aadil-2598024.jpg")
    path = tmp_path_factory.mktemp("in") / "portrait.jpg"
    imageio.write(path, picture.with_pixels(picture.pixels[1500:1800, 1400:1650].copy()))
    return path


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "plugin_server", *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )


@pytest.mark.parametrize("suffix", ["png", "tif", "jpg"])
def test_retouch_writes_engine_output_with_icc(tmp_path, photo, model_file, suffix):
    out = tmp_path / f"out.{suffix}"
    result = run("retouch", photo, out, "--checkpoint", model_file, "--strength", "0.8", "--tile-size", "96", "--no-faces")
    assert result.returncode == 0, result.stderr
    source = imageio.read(photo)
    expected = retouch(source.pixels, make_edit_model(), RetouchOptions(strength=0.8))  # the whole image, as --no-faces
    written = imageio.read(out)
    assert written.icc_profile == source.icc_profile
    if suffix == "jpg":  # the same encoder on the same pixels gives the same file
        reference = imageio.decode(imageio.encode(source.with_pixels(expected)))
        assert np.array_equal(written.pixels, reference.pixels)
    else:
        assert np.abs(written.pixels.astype(int) - expected).max() <= 1


def test_16_bit_tiff_stays_16_bit(tmp_path, photo, model_file):
    source = imageio.read(photo)
    deep = tmp_path / "deep.tif"
    imageio.write(deep, source.with_pixels(source.pixels.astype(np.uint16) * 257))
    result = run("retouch", deep, tmp_path / "deep-out.tif", "--checkpoint", model_file, "--no-faces")
    assert result.returncode == 0, result.stderr
    out = imageio.read(tmp_path / "deep-out.tif").pixels
    assert out.dtype == np.uint16 and (out % 257 != 0).mean() > 0.5  # real 16-bit values


def user_error(result, *words, code=None):
    """A failure told in one line on stderr, with the exit code of its kind (2 usage, 1 failed work)."""
    assert result.returncode != 0 if code is None else result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_refuses_to_overwrite_its_input(tmp_path, photo, model_file):
    before = photo.read_bytes()
    user_error(run("retouch", photo, photo, "--checkpoint", model_file), "which is an input")
    link = tmp_path / "same.jpg"
    os.link(photo, link)
    user_error(run("retouch", photo, link, "--checkpoint", model_file), "which is an input")
    assert photo.read_bytes() == before


def test_clear_errors_for_bad_input_and_options(tmp_path, photo, model_file):
    user_error(run("retouch", photo, tmp_path / "o.png", "--checkpoint", tmp_path / "absent.pt"), "absent.pt")
    user_error(run("retouch", tmp_path / "missing.jpg", tmp_path / "o.png", "--checkpoint", model_file), "missing.jpg")
    (tmp_path / "notes.jpg").write_text("not a photo")
    user_error(run("retouch", tmp_path / "notes.jpg", tmp_path / "o.png", "--checkpoint", model_file), "not a PNG, JPEG or TIFF")
    user_error(run("retouch", photo, tmp_path / "o.png", "--checkpoint", model_file, "--strength", "3"), "from 0 to 2")
    user_error(run("retouch", photo, tmp_path / "o.webp", "--checkpoint", model_file), ".webp")
    user_error(run("retouch", photo, tmp_path / "no" / "o.png", "--checkpoint", model_file), "does not exist")
    user_error(run("retouch", photo, tmp_path / "o.png", "--checkpoint", photo), "not an AutoRetouch checkpoint")
    user_error(run("retouch", photo, tmp_path / "o.png", "--checkpoint", model_file, "--device", "cuda:3"), "CUDA")
    assert not (tmp_path / "o.png").exists()


def test_help_explains_every_option():
    result = run("retouch", "--help")
    assert result.returncode == 0
    for option in ("--checkpoint", "--strength", "--tile-size", "--device", "--precision"):
        assert option in result.stdout


def test_retouch_through_a_server_gives_the_in_process_pixels(tmp_path, photo, model_file):
    from server_fixtures import start_server

    server = start_server(model_file, "--tile-size", "96", log_dir=tmp_path)
    try:
        via_server = tmp_path / "server.png"
        result = run("retouch", photo, via_server, "--server", server.url, "--no-faces")
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()
    local = tmp_path / "local.png"
    assert run("retouch", photo, local, "--checkpoint", model_file, "--no-faces").returncode == 0
    served, mine = imageio.read(via_server), imageio.read(local)
    assert np.array_equal(served.pixels, mine.pixels) and served.icc_profile == mine.icc_profile
    assert not np.array_equal(mine.pixels, imageio.read(photo).pixels)
    user_error(run("retouch", photo, tmp_path / "x.png", "--server", server.url), "not running", server.url)


@pytest.mark.parametrize("option, words", [
    (["--tile-size", "64"], "tile size"),
    (["--tile-size", "0"], "tile size"),
    (["--device", "cpu"], "device"),
    (["--precision", "fp32"], "precision"),
    (["--checkpoint", None], "model file"),
])
@pytest.mark.parametrize("command", ["retouch", "batch"])
def test_in_process_settings_are_refused_with_a_server(tmp_path, photo, model_file, option, words, command):
    """A server uses its own model and settings: such a flag is refused, never silently dropped."""
    option = [model_file if value is None else value for value in option]
    server = f"http://127.0.0.1:{free_port()}"  # refused before any server is asked
    if command == "retouch":
        result = run("retouch", photo, tmp_path / "o.png", "--server", server, *option)
    else:
        result = run("batch", photo.parent, tmp_path / "out", "--server", server, *option)
    user_error(result, words, "server", code=2)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "out").exists()


def serve(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "plugin_server.server.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_server_refuses_a_bad_tile_size_before_starting():
    port = free_port()
    result = serve("--tile-size", "-4", "--port", port, "--device", "cpu")
    user_error(result, "tile size", "-4", code=2)
    assert "ready" not in result.stdout


@pytest.mark.parametrize("args, code, words", [
    (["--queue-size", "0"], 2, "queue size"),
    (["--precision", "fp8"], 2, "fp8"),  # argparse's own refusal, also exit 2
    (["--host", "0.0.0.0"], 2, "token"),
    (["--device", "cpu,cpu"], 2, "twice"),
    (["--checkpoint", "/nonexistent/absent.pt"], 1, "absent.pt"),  # failed work, not a usage error
])
def test_server_startup_errors_have_consistent_exit_codes(args, code, words):
    result = subprocess.run([sys.executable, "-m", "plugin_server.server.main", "--port", str(free_port()), *args],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and words in result.stderr, result.stderr
