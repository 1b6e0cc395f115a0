"""End to end: the real plug-in in a real GIMP 3 (chroot) against the real server on loopback.

One GIMP session runs every scenario (GIMP starts in about 7 s); each scenario loads a real
portrait, dumps the source layer, runs ``plug-in-autoretouch`` and dumps the result.  The test
then posts exactly the dumped source pixels of the region to the server's ``/v1/retouch`` and
checks that GIMP holds the same pixels (blended by the selection mask where one is feathered).

Run with ``pytest -m gimp`` as root; see tests/gimp_chroot.py for the chroot it builds once.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from PIL import Image

from conftest import make_edit_generator
from gimp_chroot import gimp_or_skip
from plugin_server import checkpoint
from plugin_server.model import Model

REPO = Path(__file__).resolve().parents[1]
PORTRAIT = REPO.parent / "shared" / "data" / "portraits" / "ffhq-00001.png"
STRENGTH = 0.8
SELECTION = (300, 420, 400, 260)        # x, y, width, height in image (= layer) coordinates

pytestmark = [pytest.mark.gimp, pytest.mark.slow]


# --------------------------------------------------------------------------------------------
# fixtures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gimp():
    return gimp_or_skip()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ckpt = tmp_path_factory.mktemp("ckpt") / "generator.pt"
    checkpoint.save(ckpt, Model(make_edit_generator()))
    cmd = [sys.executable, "-m", "plugin_server.server.main", "--port", str(port), "--checkpoint", str(ckpt)]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_png16(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    rows = rgb16.astype(">u2").reshape(height, width * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


# Each scenario: file, preparation steps, output mode, dump format (babl) and its numpy layout.
def _scenarios(url: str, down_url: str) -> dict:
    sel = list(SELECTION)
    return {
        "u8_new_layer": dict(file="in8.png", prep=[], mode="new-layer", url=url,
                             babl="R'G'B' u8"),
        "u16_new_layer": dict(file="in16.png", prep=[], mode="new-layer", url=url,
                              babl="R'G'B' u16"),
        "u8_selection_in_place": dict(file="in8.png", prep=[["select", *sel]], mode="in-place",
                                      url=url, babl="R'G'B' u8"),
        "u8_feather_new_layer": dict(file="in8.png", prep=[["ellipse", *sel], ["feather", 40]],
                                     mode="new-layer", url=url, babl="R'G'B' u8"),
        "u8_mask_mode": dict(file="in8.png", prep=[["ellipse", *sel], ["feather", 40]],
                             mode="new-layer-mask", url=url, babl="R'G'B' u8"),
        "float_gray_alpha": dict(file="in8.png", prep=[["gray"], ["alpha"], ["float"]],
                                 mode="in-place", url=url, babl="Y'A float"),
        "u8_skin_mask_mode": dict(file="in8.png", prep=[], mode="new-layer-skin-mask", url=url,
                                  babl="R'G'B' u8"),
        "no_face": dict(file="background.png", prep=[], mode="new-layer", url=url, babl="R'G'B' u8"),
        "server_down": dict(file="in8.png", prep=[], mode="in-place", url=down_url,
                            babl="R'G'B' u8"),
        # Filters > Repeat with GIMP's stored values saying in place (what a cancelled run left
        # behind): with no settings confirmed it makes a new layer; else it runs the confirmed ones.
        "repeat_unconfirmed": dict(file="in8.png", prep=[], mode="in-place", url=url, babl="R'G'B' u8",
                                   run_mode="last", confirmed=None),
        "repeat_after_cancel": dict(file="in8.png", prep=[], mode="in-place", url=url, babl="R'G'B' u8",
                                    run_mode="last", confirmed={"strength": STRENGTH, "output-mode": "new-layer-mask",
                                                                "server-url": url}),
        "mask_active": dict(file="in8.png", prep=[["mask"]], mode="in-place", url=url, babl="R'G'B' u8",
                            drawables="mask"),
        "text_in_place": dict(file="in8.png", prep=[["text"]], mode="in-place", url=url, babl="R'G'B' u8",
                              drawables="top"),
        "several_layers": dict(file="in8.png", prep=[["duplicate"]], mode="new-layer", url=url,
                               babl="R'G'B' u8", drawables="all"),
    }


BATCH = r'''
import json, struct
import gi
gi.require_version('Gimp', '3.0'); gi.require_version('Gegl', '0.4')
from gi.repository import Gimp, Gegl, Gio
WD = @WD@
SCENARIOS = json.loads(@SCENARIOS@)
STRENGTH = @STRENGTH@
CONFIRMED = "autoretouch-confirmed-settings"
RUN_MODES = {"noninteractive": Gimp.RunMode.NONINTERACTIVE, "last": Gimp.RunMode.WITH_LAST_VALS}

def dump(drawable, babl, path):
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    with open(path, "wb") as out:
        out.write(bytes(drawable.get_buffer().get(rect, 1.0, babl, Gegl.AbyssPolicy.NONE)))

proc = Gimp.get_pdb().lookup_procedure("plug-in-autoretouch")
results = {"registered": proc is not None}
for name, sc in SCENARIOS.items():
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(WD + "/" + sc["file"]))
    for step in sc["prep"]:
        if step[0] == "select":
            img.select_rectangle(Gimp.ChannelOps.REPLACE, *step[1:])
        elif step[0] == "ellipse":
            img.select_ellipse(Gimp.ChannelOps.REPLACE, *step[1:])
        elif step[0] == "feather":
            Gimp.Selection.feather(img, step[1])
        elif step[0] == "gray":
            img.convert_grayscale()
        elif step[0] == "alpha":
            img.get_layers()[0].add_alpha()
        elif step[0] == "float":
            img.convert_precision(Gimp.Precision.FLOAT_NON_LINEAR)
        elif step[0] == "mask":
            layer = img.get_layers()[0]
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.WHITE))
        elif step[0] == "text":
            text = Gimp.TextLayer.new(img, "Portrait", Gimp.fonts_get_list("")[0], 60.0, Gimp.Unit.pixel())
            img.insert_layer(text, None, 0)
        elif step[0] == "duplicate":
            img.insert_layer(img.get_layers()[0].copy(), None, 0)
    source = img.get_layers()[-1]   # the portrait, below any layer a step added
    top_before = img.get_layers()[0]
    chosen = {"source": [source], "mask": [source.get_mask()], "top": [top_before],
              "all": img.get_layers()}[sc.get("drawables", "source")]
    if "confirmed" in sc:
        if sc["confirmed"] is None:
            Gimp.detach_parasite(CONFIRMED)
        else:   # what OK in the dialog stores before the run, which was then cancelled
            Gimp.attach_parasite(Gimp.Parasite.new(CONFIRMED, Gimp.PARASITE_PERSISTENT,
                                                   json.dumps(sc["confirmed"]).encode()))
    dump(source, sc["babl"], f"{WD}/{name}.before")
    selected = not Gimp.Selection.is_empty(img)
    if selected:
        dump(img.get_selection(), "Y float", f"{WD}/{name}.mask")
    cfg = proc.create_config()
    cfg.set_property("run-mode", RUN_MODES[sc.get("run_mode", "noninteractive")])
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", chosen)
    cfg.set_property("strength", STRENGTH)
    cfg.set_property("output-mode", sc["mode"])
    cfg.set_property("server-url", sc["url"])
    ret = proc.run(cfg)
    status = ret.index(0)
    error = ret.index(1) if status != Gimp.PDBStatusType.SUCCESS and ret.length() > 1 else None
    layers = img.get_layers()
    top = layers[0]
    dump(top, sc["babl"], f"{WD}/{name}.after")
    dump(source, sc["babl"], f"{WD}/{name}.source_after")
    if name == "u8_new_layer":
        Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(f"{WD}/{name}.png"), None)
    mask = top.get_mask()
    if mask is not None:
        dump(mask, "Y float", f"{WD}/{name}.layermask")
    results[name] = {
        "status": status.value_nick, "error": str(error) if error is not None else None,
        "layers": [l.get_name() for l in layers], "size": [source.get_width(), source.get_height()],
        "precision": img.get_precision().value_nick, "selected": selected,
        "has_mask": mask is not None, "top_is_source": top.get_id() == source.get_id(),
        "top_was_text": top_before.is_text_layer(), "top_is_text": top.is_text_layer(),
    }
    img.delete()
with open(WD + "/results.json", "w") as out:
    json.dump(results, out)
'''


@pytest.fixture(scope="module")
def run(gimp, server, tmp_path_factory):
    from plugin_server import gimp_install
    import argparse

    if not PORTRAIT.is_file():
        pytest.skip(f"real portrait missing: {PORTRAIT}")
    workdir = gimp.workdir()
    host, inside = workdir
    # Install exactly as a user would: `autoretouch gimp install --dir <profile>/plug-ins`.
    parser = argparse.ArgumentParser(prog="autoretouch")
    gimp_install.register(parser.add_subparsers())
    args = parser.parse_args(["gimp", "install", "--dir", str(host / "profile" / "plug-ins")])
    assert args.handler(args) == 0

    rgb8 = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    Image.fromarray(rgb8).save(host / "in8.png")
    Image.fromarray(rgb8[:160, :200]).save(host / "background.png")  # a corner: wall, no face
    _write_png16(host / "in16.png", rgb8.astype(np.uint16) * 257 + np.uint16(3))

    down = f"http://127.0.0.1:{_free_port()}"
    scenarios = _scenarios(server, down)
    script = (BATCH.replace("@WD@", repr(inside))
              .replace("@SCENARIOS@", repr(json.dumps(scenarios)))
              .replace("@STRENGTH@", repr(STRENGTH)))
    result = gimp.run_batch(script, workdir, timeout=900)
    results_file = host / "results.json"
    assert results_file.is_file(), f"GIMP batch failed (exit {result.returncode}):\n{result.output[-6000:]}"
    results = json.loads(results_file.read_text())
    print(f"GIMP batch took {result.elapsed:.1f} s")
    yield {"dir": host, "results": results, "scenarios": scenarios, "server": server,
           "down": down, "output": result.output, "rgb8": rgb8}
    gimp.cleanup(workdir)


# --------------------------------------------------------------------------------------------
# helpers

_NP = {"u8": np.uint8, "u16": np.dtype("<u2"), "float": np.dtype("<f4")}


def _load(run, name: str, kind: str, babl: str) -> np.ndarray:
    width, height = run["results"][name]["size"]
    channels = len(babl.split()[0].replace("'", "").replace("~", ""))
    dtype = _NP[babl.split()[1]]
    data = (run["dir"] / f"{name}.{kind}").read_bytes()
    return np.frombuffer(data, dtype).reshape(height, width, channels)


def _server_retouch(url: str, pixels: np.ndarray) -> np.ndarray:
    """What the server makes of exactly these pixels (the whole layer, as the plug-in sends it)."""
    dtype = {np.dtype(np.uint8): "u8", np.dtype("<u2"): "u16", np.dtype("<f4"): "f32"}[pixels.dtype]
    height, width, channels = pixels.shape
    body = msgpack.packb({"width": width, "height": height, "channels": channels, "dtype": dtype,
                          "data": np.ascontiguousarray(pixels).tobytes()}, use_bin_type=True)
    req = urllib.request.Request(f"{url}/v1/retouch?strength={STRENGTH:g}", data=body,
                                 headers={"Content-Type": "application/x-msgpack",
                                          "Accept": "application/x-msgpack"})
    with urllib.request.urlopen(req, timeout=600) as reply:
        out = msgpack.unpackb(reply.read(), raw=False)
    assert (out["width"], out["height"], out["channels"]) == (width, height, channels)
    return np.frombuffer(out["data"], pixels.dtype).reshape(height, width, channels)


def _ok(run, name: str) -> dict:
    info = run["results"][name]
    assert info["status"] == "success", f"{name}: {info['error']}\n{run['output'][-3000:]}"
    return info


# --------------------------------------------------------------------------------------------
# tests


def test_plugin_is_registered(run):
    assert run["results"]["registered"]


def test_8bit_new_layer_matches_server(run):
    info = _ok(run, "u8_new_layer")
    assert info["layers"] == ["AutoRetouch", "Background"]
    assert info["precision"] == "u8-non-linear"
    before = _load(run, "u8_new_layer", "before", "R'G'B' u8")
    assert np.array_equal(before, run["rgb8"]), "GIMP read the PNG differently"
    after = _load(run, "u8_new_layer", "after", "R'G'B' u8")
    expected = _server_retouch(run["server"], before)
    assert np.array_equal(after, expected)
    assert not np.array_equal(after, before)
    # the source layer is untouched, and the exported PNG holds the retouched pixels
    assert np.array_equal(_load(run, "u8_new_layer", "source_after", "R'G'B' u8"), before)
    exported = np.asarray(Image.open(run["dir"] / "u8_new_layer.png").convert("RGB"))
    assert np.array_equal(exported, expected)


def test_16bit_keeps_16_bits(run):
    info = _ok(run, "u16_new_layer")
    assert info["precision"].startswith("u16")
    before = _load(run, "u16_new_layer", "before", "R'G'B' u16")
    assert np.array_equal(before, run["rgb8"].astype(np.uint16) * 257 + 3)
    after = _load(run, "u16_new_layer", "after", "R'G'B' u16")
    assert np.array_equal(after, _server_retouch(run["server"], before))


def _region(mask: np.ndarray):
    ys, xs = np.nonzero(mask[..., 0] > 0)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def test_selection_in_place_changes_only_the_selection(run):
    name = "u8_selection_in_place"
    info = _ok(run, name)
    assert info["layers"] == ["Background"] and info["top_is_source"]
    before = _load(run, name, "before", "R'G'B' u8")
    after = _load(run, name, "after", "R'G'B' u8")
    x, y, w, h = SELECTION
    inside = (slice(y, y + h), slice(x, x + w))
    outside = np.ones(before.shape[:2], bool)
    outside[inside] = False
    assert np.array_equal(after[outside], before[outside])
    # The whole layer went to the server (its face is found there), and came back through the selection.
    assert np.array_equal(after[inside], _server_retouch(run["server"], before)[inside])
    assert not np.array_equal(after[inside], before[inside])


def _blend_expected(run, name: str):
    before = _load(run, name, "before", "R'G'B' u8")
    mask = np.frombuffer((run["dir"] / f"{name}.mask").read_bytes(), "<f4").reshape(
        before.shape[0], before.shape[1], 1)
    retouched = _server_retouch(run["server"], before).astype(np.float64)
    return before, mask, retouched


def _to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _from_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(np.maximum(v, 0), 1 / 2.4) - 0.055)


def test_feathered_selection_blends(run):
    name = "u8_feather_new_layer"
    _ok(run, name)
    before, mask, retouched = _blend_expected(run, name)
    after = _load(run, name, "after", "R'G'B' u8").astype(np.float64)
    # GIMP composites a selection the way its own filters do: in linear light, in float.
    lin_o, lin_r = _to_linear(before / 255), _to_linear(retouched / 255)
    expected = _from_linear(lin_o + mask * (lin_r - lin_o)) * 255
    assert np.abs(after - expected).max() <= 1.0
    outside = mask[..., 0] == 0
    assert np.array_equal(after[outside], before[outside])
    full = mask[..., 0] == 1
    assert np.array_equal(after[full], retouched[full])


def test_mask_mode_puts_the_blend_in_a_layer_mask(run):
    name = "u8_mask_mode"
    info = _ok(run, name)
    assert info["has_mask"] and info["layers"][0] == "AutoRetouch"
    before, mask, retouched = _blend_expected(run, name)
    after = _load(run, name, "after", "R'G'B' u8")
    rows, cols = _region(mask)
    assert np.array_equal(after[rows, cols], retouched[rows, cols])   # unblended pixels ...
    layer_mask = np.frombuffer((run["dir"] / f"{name}.layermask").read_bytes(), "<f4")
    assert np.allclose(layer_mask.reshape(mask.shape), mask, atol=1 / 255)   # ... and the mask


def _server_job_with_mask(url: str, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The server's (result, skin mask) for these pixels through the jobs API with mask=true."""
    from plugin_server import wire
    from plugin_server.client import Client
    from plugin_server.server import protocol

    options = wire.RetouchOptions(strength=STRENGTH, mask=True)
    reply = Client(url).run_job(protocol.message_for(pixels), wire.MSGPACK_TYPE, options)
    size = pixels.shape[0] * pixels.shape[1]
    return (protocol.pixels_from(wire.decode_message(reply.body, size)),
            protocol.pixels_from(wire.decode_message(reply.mask, size)))


def test_skin_mask_mode_puts_the_skin_in_the_layer_mask(run):
    name = "u8_skin_mask_mode"
    info = _ok(run, name)
    assert info["has_mask"] and info["layers"] == ["AutoRetouch", "Background"]
    before = _load(run, name, "before", "R'G'B' u8")
    after = _load(run, name, "after", "R'G'B' u8")
    result, skin = _server_job_with_mask(run["server"], before)
    assert np.array_equal(after, result)  # the layer: the edit unmasked around the face
    layer_mask = np.frombuffer((run["dir"] / f"{name}.layermask").read_bytes(), "<f4").reshape(skin.shape)
    assert np.abs(layer_mask - skin / 255.0).max() <= 0.5 / 255  # the mask: the server's skin mask
    assert 0.05 < (layer_mask > 0).mean() < 0.6 and layer_mask.max() == 1.0
    # Composited through its mask, the layer is the retouch where the mask is whole, the source where it is 0.
    masked = _server_retouch(run["server"], before)
    full, none = layer_mask[..., 0] == 1.0, layer_mask[..., 0] == 0.0
    # (a mask of 255 may stand for a feather value just under 1: one level at most)
    assert np.abs(after[full].astype(int) - masked[full]).max() <= 1
    assert np.array_equal(masked[none], before[none])


def test_no_face_adds_no_layer_and_says_so(run):
    name = "no_face"
    info = _ok(run, name)
    assert info["layers"] == ["Background"] and info["top_is_source"]
    assert np.array_equal(_load(run, name, "after", "R'G'B' u8"), _load(run, name, "before", "R'G'B' u8"))
    assert "No face found: nothing was changed." in run["output"]


def test_float_gray_alpha_in_place(run):
    name = "float_gray_alpha"
    info = _ok(run, name)
    assert info["precision"] == "float-non-linear"
    before = _load(run, name, "before", "Y'A float")
    after = _load(run, name, "after", "Y'A float")
    expected = _server_retouch(run["server"], np.ascontiguousarray(before[..., :1]))
    assert np.array_equal(after[..., :1], expected)
    assert np.array_equal(after[..., 1], before[..., 1])      # alpha kept by the plug-in


def test_server_down_reports_and_leaves_the_image_alone(run):
    name = "server_down"
    info = run["results"][name]
    assert info["status"] == "execution-error"
    assert "not running" in info["error"] and run["down"] in info["error"]
    assert "autoretouch-server" in info["error"]
    assert info["layers"] == ["Background"]
    assert np.array_equal(_load(run, name, "after", "R'G'B' u8"),
                          _load(run, name, "before", "R'G'B' u8"))


def _summary(run, mode_words: str) -> str:
    """The status-bar line the plug-in printed for a run in ``mode_words`` (batch GIMP logs messages)."""
    prefix = f"AutoRetouch ({mode_words}):"
    lines = [line[line.index(prefix):] for line in run["output"].splitlines() if prefix in line]
    assert lines, f"no summary for {mode_words!r} in:\n{run['output'][-3000:]}"
    return lines[0]


def test_a_run_says_what_it_did(run):
    line = _summary(run, "New layer")
    assert "1 face, " in line and "% of the layer's pixels changed" in line and line.endswith(" s.")
    changed = float(line.split("1 face, ")[1].split("%")[0]) / 100
    before = _load(run, "u8_new_layer", "before", "R'G'B' u8")
    after = _load(run, "u8_new_layer", "after", "R'G'B' u8")
    assert abs(changed - np.any(before != after, axis=2).mean()) < 0.0006


def test_repeat_without_confirmed_settings_makes_a_new_layer(run):
    name = "repeat_unconfirmed"
    info = _ok(run, name)
    assert info["layers"] == ["AutoRetouch", "Background"] and not info["top_is_source"]
    before = _load(run, name, "before", "R'G'B' u8")
    assert np.array_equal(_load(run, name, "source_after", "R'G'B' u8"), before)   # not in place
    assert not np.array_equal(_load(run, name, "after", "R'G'B' u8"), before)
    assert "AutoRetouch (New layer, repeated)" in run["output"]


def test_repeat_after_a_cancelled_run_uses_the_confirmed_settings(run):
    name = "repeat_after_cancel"
    info = _ok(run, name)
    assert info["layers"] == ["AutoRetouch", "Background"] and info["has_mask"]   # new-layer-mask, as confirmed
    before = _load(run, name, "before", "R'G'B' u8")
    assert np.array_equal(_load(run, name, "source_after", "R'G'B' u8"), before)
    assert np.array_equal(_load(run, name, "after", "R'G'B' u8"), _server_retouch(run["server"], before))
    assert "AutoRetouch (New layer with mask, repeated)" in run["output"]


def test_an_active_layer_mask_retouches_its_layer(run):
    name = "mask_active"
    info = _ok(run, name)
    assert info["layers"] == ["Background"] and info["has_mask"]
    before = _load(run, name, "before", "R'G'B' u8")
    assert np.array_equal(_load(run, name, "after", "R'G'B' u8"), _server_retouch(run["server"], before))


def test_a_text_layer_is_never_rasterised_in_place(run):
    name = "text_in_place"
    info = run["results"][name]
    assert info["status"] == "execution-error" and "text layer" in info["error"] and "New layer" in info["error"]
    assert info["top_was_text"] and info["top_is_text"]   # still editable text
    assert info["layers"][1:] == ["Background"] and len(info["layers"]) == 2


def test_several_selected_layers_are_refused_with_what_to_do(run):
    name = "several_layers"
    info = run["results"][name]
    assert info["status"] == "execution-error"
    assert info["error"] == "AutoRetouch works on one layer at a time: select one layer."
    assert len(info["layers"]) == 2
