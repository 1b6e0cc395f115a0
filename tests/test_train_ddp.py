"""DistributedDataParallel with two CPU processes (gloo) under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.state import load_training
from train_fixtures import ffhqr, tiny_config  # noqa: F401  (fixtures)

WORKER = Path(__file__).with_name("train_fixtures.py")


@pytest.mark.parametrize("face_scale", [0.0, 256.0])
def test_two_cpu_ranks_train_and_hold_identical_weights(ffhqr: Path, tmp_path: Path, face_scale: float) -> None:
    # 5 pairs, 2 ranks, batch 1: each rank takes 2 steps on its own pairs; with the RaGAN term
    # on, the running averages are gathered across ranks too. At a face scale, each rank finds
    # the faces of half the pairs and both train on the gathered IODs.
    config = tiny_config(ffhqr, None, beta=0.0, batch_size=1, face_scale=face_scale)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(WORKER), str(tmp_path / "config.json"), str(tmp_path / "run"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_training(tmp_path / "run" / "last.pt")
    assert saved["step"] == 2 and len(saved["rng"]) == 2  # only rank 0 wrote; both ranks' RNG kept
    assert not any(k.startswith("module.") for k in saved["generator"])  # saved unwrapped
    assert any(not torch.equal(rank0[k], v) for k, v in _initial(config).items())  # it did train
    assert "2 process(es)" in proc.stderr
    if face_scale:  # the 5 training pairs and the validation one, measured once
        assert len(json.loads((tmp_path / "run" / "faces.json").read_text())["iods"]) == 6


def _initial(config) -> dict[str, torch.Tensor]:
    from plugin_server.model import Generator

    torch.manual_seed(config.seed)
    return Generator(config.generator).state_dict()
