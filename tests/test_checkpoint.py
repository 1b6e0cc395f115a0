"""The checkpoint format: round trip, safe loading and clear errors."""

import pickle
import resource
import time

import pytest
import torch

from conftest import make_edit_generator
from plugin_server import checkpoint
from plugin_server.errors import CheckpointError
from plugin_server.model import GeneratorConfig, Model

CONFIG = GeneratorConfig(full_channels=4, body_channels=8, blocks=1)


@pytest.mark.parametrize("floor, scale", [(0.0, None), (3 / 255, 64.5)], ids=["plain", "floor-and-scale"])
def test_round_trip_keeps_config_weights_floor_scale_and_metadata(tmp_path, floor, scale):
    generator = make_edit_generator(config=CONFIG)
    path = tmp_path / "g.pt"
    checkpoint.save(path, Model(generator, residual_floor=floor, scale=scale, metadata={"trained_on": "tests", "steps": 3}))
    loaded = checkpoint.load(path)
    assert isinstance(loaded, Model) and loaded.generator.config == CONFIG
    assert loaded.residual_floor == floor and loaded.scale == scale
    meta = loaded.metadata
    assert meta["trained_on"] == "tests" and meta["steps"] == 3 and "date" in meta
    image = torch.rand(1, 3, 33, 21)
    with torch.no_grad():
        assert torch.equal(loaded.generator(image), generator(image))
    assert not loaded.generator.training
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_old_files_with_the_floor_in_the_config_still_load(tmp_path):
    """Files written before "inference" existed: the floor sat in "config", there was no scale."""
    old = payload(config={**CONFIG.to_dict(), "residual_floor": 0.0125})
    del old["inference"]
    torch.save(old, tmp_path / "old.pt")
    loaded = checkpoint.load(tmp_path / "old.pt")
    assert loaded.residual_floor == 0.0125 and loaded.scale is None and loaded.generator.config == CONFIG


def test_the_bundled_starter_declares_its_floor_and_face_scale():
    raw = torch.load(checkpoint.BUNDLED, map_location="cpu", weights_only=True)
    assert raw["inference"] == {"residual_floor": 0.0, "scale": 256.0}
    model = checkpoint.load(checkpoint.BUNDLED)
    assert model.residual_floor == 0.0 and model.scale == 256.0
    assert model.generator.config == GeneratorConfig()


def payload(**changes):
    generator = make_edit_generator(config=CONFIG)
    data = {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": CONFIG.to_dict(),
        "inference": {"residual_floor": 0.0, "scale": "native"},
        "state_dict": generator.state_dict(), "metadata": {},
    }
    data.update(changes)
    return data


class Exploit:
    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "not an AutoRetouch checkpoint"),
        (b"PK\x03\x04garbage", "not an AutoRetouch checkpoint"),
        (pickle.dumps(Exploit()), "not an AutoRetouch checkpoint"),
        (payload(format="something-else"), "format tag"),
        (payload(version=99), "version 99"),
        (payload(config={"full_channels": 4, "wings": 2}), "invalid generator config"),
        (payload(config=GeneratorConfig(blocks=2).to_dict()), "weights but the file holds"),
        (payload(state_dict={("tail.w" if k == "tail.weight" else k): v
                             for k, v in make_edit_generator(config=CONFIG).state_dict().items()}),
         "weights do not match"),
        ([1, 2, 3], "not an AutoRetouch checkpoint"),
        (payload(inference={"residual_floor": 0.7}), "invalid inference settings"),
        (payload(inference={"residual_floor": "strong"}), "invalid inference settings"),
        (payload(inference={"residual_floor": 0.0, "scale": -1.0}), "invalid inference settings"),
        (payload(state_dict={"head.weight": "not a tensor"}), "no generator weights"),
    ],
    ids=["empty", "garbage-zip", "pickle-exploit", "other-format", "new-version", "bad-config",
         "mismatched-weights", "renamed-weight", "a-list", "floor-too-big", "floor-not-a-number", "negative-scale", "no-tensors"],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the exploit file
def test_bad_files_name_the_file_and_the_problem(tmp_path, capsys, content, words):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=words) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)
    assert "code ran" not in capsys.readouterr().out


def test_missing_file_and_no_bundled_model(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
    monkeypatch.setattr(checkpoint, "BUNDLED", tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="checkpoint file") as info:
        checkpoint.resolve(None)
    assert "--" not in str(info.value)  # the message reaches GIMP and HTTP too: no CLI flags


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "g.pt"
    checkpoint.save(path, Model(make_edit_generator(config=CONFIG)))
    before = path.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, Model(make_edit_generator(seed=1, config=CONFIG)))
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


FORGED = [
    {"full_channels": 10**6},
    {"body_channels": 10**6},
    {"blocks": 10**7},
    {"blocks": True},
    {"full_channels": 16.5},
    {"kernel_size": 10**4 + 1},
]


@pytest.mark.parametrize("forged", FORGED, ids=["1e6-full", "1e6-body", "1e7-blocks", "bool-size", "fractional-size", "huge-kernel"])
def test_forged_configs_are_refused_fast_without_building_the_network(tmp_path, forged):
    """A config checked against the weights present: nothing the size of the forged network is built."""
    path = tmp_path / "forged.pt"
    torch.save(payload(config={**CONFIG.to_dict(), **forged}), path)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load(path)
    assert time.monotonic() - started < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024
