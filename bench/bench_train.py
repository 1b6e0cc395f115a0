"""Training throughput: samples/s of the full training step at w = 150, per device and precision.

CPU: fp32 and bf16 autocast at a modest batch; GPU (when CUDA exists): bf16 autocast at the
largest batch that fits (doubling until out of memory). The step is the real one
(``training.step.train_step``: generator + VGG-19 perceptual + RaGAN discriminator, the paper's
default losses) on random windows, so data loading is not included. VGG weights are random:
the cost of the perceptual term does not depend on their values.

    python -m bench.bench_train                 # table on stdout, JSON in bench/results/train.json
    from bench.bench_train import main; main([])   # as bench/run_all.py calls it
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.step import build_models, train_step
from training.vgg import VggFeatures

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(device: torch.device, precision: str, batch: int, window: int, warmup: int, steps: int) -> list[float]:
    """Seconds per training step for ``steps`` steps after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    config = replace(TrainConfig(), batch_size=batch, window=window)
    models = build_models(config, device, VggFeatures(config.perceptual_layer), torch.bfloat16 if precision == "bf16" else None)
    before = torch.rand(batch, 3, window, window, device=device)
    after = (before + 0.01 * torch.randn_like(before)).clamp(0, 1)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        train_step(models, before, after)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def largest_gpu_batch(device: torch.device, window: int, start: int = 16, limit: int = 2048) -> int:
    """Double the batch until a step runs out of memory; the last one that fitted."""
    fits, batch = 0, start
    while batch <= limit:
        try:
            time_steps(device, "bf16", batch, window, warmup=1, steps=0)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        fits, batch = batch, batch * 2
    return fits


def measure(device: torch.device, precision: str, batch: int, window: int, warmup: int, steps: int) -> dict[str, Any]:
    times = time_steps(device, precision, batch, window, warmup, steps)
    median = statistics.median(times)
    return {
        "device": device.type,
        "precision": precision,
        "batch": batch,
        "window": window,
        "timed_steps": steps,
        "median_step_s": median,
        "samples_per_s": batch / median,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--window", type=int, default=150, help="training window side (pixels)")
    parser.add_argument("--cpu-batch", type=int, default=8, help="batch for the CPU runs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)

    results = []
    cpu = torch.device("cpu")
    for precision in ("fp32", "bf16"):
        results.append(measure(cpu, precision, args.cpu_batch, args.window, args.warmup, args.steps))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        batch = largest_gpu_batch(gpu, args.window)
        if batch:
            results.append(measure(gpu, "bf16", batch, args.window, max(args.warmup, 2), max(args.steps, 5)))
    report = {"benchmark": "train", "machine": machine(), "results": results}

    print(f"training step at w = {args.window} ({report['machine']['cpu']}, {report['machine']['cores']} cores)")
    print(f"{'device':<7} {'precision':<9} {'batch':>6} {'median step (s)':>16} {'samples/s':>10}")
    for r in results:
        print(f"{r['device']:<7} {r['precision']:<9} {r['batch']:>6} {r['median_step_s']:>16.3f} {r['samples_per_s']:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
