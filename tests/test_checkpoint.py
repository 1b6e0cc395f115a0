"""The checkpoint format: round trip, safe loading and clear errors."""

import pickle

import pytest
import torch

from conftest import make_edit_generator
from plugin_server import checkpoint
from plugin_server.errors import CheckpointError
from plugin_server.model import GeneratorConfig

CONFIG = GeneratorConfig(full_channels=4, body_channels=8, blocks=1)


def test_round_trip_keeps_config_weights_and_metadata(tmp_path):
    generator = make_edit_generator(config=CONFIG)
    path = tmp_path / "g.pt"
    checkpoint.save(path, generator, {"trained_on": "tests", "steps": 3})
    loaded, meta = checkpoint.load(path)
    assert loaded.config == CONFIG
    assert meta["trained_on"] == "tests" and meta["steps"] == 3 and "date" in meta
    image = torch.rand(1, 3, 33, 21)
    with torch.no_grad():
        assert torch.equal(loaded(image), generator(image))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def payload(**changes):
    generator = make_edit_generator(config=CONFIG)
    data = {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": CONFIG.to_dict(),
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
        (payload(config=GeneratorConfig(blocks=2).to_dict()), "weights do not match"),
        ([1, 2, 3], "not an AutoRetouch checkpoint"),
    ],
    ids=["empty", "garbage-zip", "pickle-exploit", "other-format", "new-version", "bad-config",
         "mismatched-weights", "a-list"],
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
    with pytest.raises(CheckpointError, match="--checkpoint"):
        checkpoint.resolve(None)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "g.pt"
    checkpoint.save(path, make_edit_generator(config=CONFIG))
    before = path.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, make_edit_generator(seed=1, config=CONFIG))
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
