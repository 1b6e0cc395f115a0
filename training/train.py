"""The training loop: read it top to bottom.

One process, on the CPU or one GPU::

    autoretouch-train train --data data/ffhqr --out runs/paper --vgg-weights vgg19.pth

Several GPUs (or CPU processes, with gloo) on one machine, through torchrun::

    torchrun --standalone --nproc_per_node 8 -m training.cli train --data data/ffhqr --out runs/paper ...

Each rank trains on its own share of every epoch; DistributedDataParallel averages the
gradients, so all ranks hold the same weights. Only rank 0 writes logs and checkpoints.
Re-running the same command with ``--resume`` continues exactly where ``last.pt`` left off.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from plugin_server.errors import BadOptionError
from plugin_server.model import Generator

from .config import TrainConfig
from .errors import DataError, ResumeError
from .evaluate import evaluate
from .pairs import list_pairs
from .report import JsonlLog, Progress, plot_losses, save_grid
from .state import capture_rng, load_any_generator, load_training, restore_rng, save_training
from .step import Models, build_models, train_step
from .vgg import load_vgg19_features
from .windows import FilePairs, WindowDataset, WindowSpec, collate_windows, epoch_batches

GRID_IMAGES = 3


@dataclass
class TrainResult:
    generator: Generator  # the unwrapped generator, on the training device
    epoch: int  # epochs completed
    step: int
    metrics: dict[str, float]
    run_dir: Path


def train(config: TrainConfig, run_dir: Path, resume: bool = False, command: str = "") -> TrainResult:
    # --- distributed set-up: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE -------------------
    ddp = int(os.environ.get("RANK", -1)) != -1
    if config.device not in ("auto", "cpu", "cuda"):
        raise BadOptionError(f"--device must be auto, cpu or cuda, got {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BadOptionError("--device cuda: no CUDA device is available")
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if ddp:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ["LOCAL_RANK"])
        device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
    else:
        rank, world = 0, 1
        device = torch.device("cuda" if cuda else "cpu")
    master = rank == 0  # only rank 0 writes logs and checkpoints
    try:
        result = _train(config, Path(run_dir), resume, command, ddp, rank, world, device, master)
        if ddp:
            # Every rank finishes before any tears gloo down, and the DDP wrappers (which hold
            # the process group and sit in reference cycles) go before it does: either, left
            # to interpreter exit, could abort the process after a successful run.
            dist.barrier()
            gc.collect()
        return result
    finally:
        if ddp:
            dist.destroy_process_group()


def _gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _gather_objects(obj: Any, ddp: bool) -> list[Any]:
    if not ddp:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _train(
    config: TrainConfig, run_dir: Path, resume: bool, command: str,
    ddp: bool, rank: int, world: int, device: torch.device, master: bool,
) -> TrainResult:
    # --- resume: hyperparameters come from the checkpoint; the command line may only change run fields
    payload = None
    if resume:
        try:
            payload = load_training(run_dir / "last.pt")
        except Exception as exc:
            raise ResumeError(f"--resume: cannot continue from {run_dir / 'last.pt'}: {exc}") from exc
        saved = TrainConfig.from_dict(payload["config"])
        if diff := saved.differences(config):
            changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise ResumeError(f"--resume with different hyperparameters ({changes}); start a new run instead")
        config = saved.with_run_fields(config)

    # --- data -----------------------------------------------------------------------------
    root, split_args = Path(config.data), dict(val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    train_listing = list_pairs(root, config.layout, "train", **split_args)
    if not train_listing.pairs:
        raise DataError(f"no training pairs found in {root} (run `autoretouch-train check --data {root}`)")
    val_source = FilePairs(list_pairs(root, config.layout, "val", **split_args))
    focus = config.focus if config.focus != "auto" else ("center" if train_listing.aligned else "edits")
    spec = WindowSpec(config.window, focus, config.background_prob, config.mirror, config.colour_jitter)
    dataset = WindowDataset(FilePairs(train_listing), spec, seed=config.seed)
    steps_per_epoch = len(epoch_batches(len(dataset), config.batch_size, 0, config.seed, rank, world))

    # --- models: the same seed on every rank gives the same initial weights --------------------
    vgg = load_vgg19_features(config.vgg_weights, config.perceptual_layer) if config.uses_perceptual else None
    torch.manual_seed(config.seed)  # right before the generator: its initial weights depend on the seed only
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    m = build_models(config, device, vgg, torch.bfloat16 if precision == "bf16" else None)
    # Per-rank seeds for anything random outside the data windows (which are keyed by index).
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)
    epoch, first_batch, step, best = 0, 0, 0, -math.inf
    metrics: dict[str, float] = {}
    skipped_total = 0
    if config.init and payload is None:
        _init_generator(m.raw_generator, config.init)
    if payload is not None:
        m.load_state_dict(payload)
        if len(payload["rng"]) == world:
            restore_rng(payload["rng"][rank])
        epoch, first_batch, step = payload["epoch"], payload["batch"], payload["step"]
        best, metrics, skipped_total = payload["best"], payload["metrics"], payload["skipped"]
    if ddp:
        m.generator = DDP(m.raw_generator, device_ids=[device.index] if device.type == "cuda" else None)
        if m.raw_discriminator is not None:
            m.discriminator = DDP(m.raw_discriminator, device_ids=[device.index] if device.type == "cuda" else None)

    log = JsonlLog(run_dir / "log.jsonl")
    progress = Progress(steps_per_epoch * config.epochs)
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        progress.message(
            f"{len(dataset)} training pairs, {len(val_source)} validation pairs, {world} process(es) on {device}, "
            f"{precision}, {steps_per_epoch} steps per epoch" + (f", resuming at step {step}" if payload else "")
        )

    def checkpoint(epochs_done: int, batches_done: int, improved: bool = False) -> None:
        rng = _gather_objects(capture_rng(), ddp)  # every rank's RNG, so resume restores each
        if not master:
            return
        state = {
            **m.state_dict(), "config": config.to_dict(), "rng": rng, "epoch": epochs_done,
            "batch": batches_done, "step": step, "best": best, "metrics": metrics,
            "skipped": skipped_total, "command": command,
        }
        save_training(run_dir / "last.pt", state)
        if improved:
            save_training(run_dir / "best.pt", state)

    # --- the loop ---------------------------------------------------------------------------
    stopped = False
    t0, samples_since = time.perf_counter(), 0
    while epoch < config.epochs and not stopped:
        plan = epoch_batches(len(dataset), config.batch_size, epoch, config.seed, rank, world)[first_batch:]
        loader = DataLoader(
            dataset, batch_sampler=plan, collate_fn=collate_windows,
            num_workers=config.workers, pin_memory=device.type == "cuda",
        )
        skipped_local: list[str] = []
        for batch_index, (before, after, skipped) in enumerate(loader, start=first_batch):
            skipped_local += skipped
            before = before.to(device, non_blocking=True)
            after = after.to(device, non_blocking=True)
            losses = train_step(m, before, after, _gather if ddp else None)
            step += 1
            samples_since += len(before) * world
            if master and (step % config.log_every == 0 or batch_index + 1 == steps_per_epoch):
                rate = samples_since / (time.perf_counter() - t0)
                values = {k: float(v) for k, v in losses.items()}
                log.write({"kind": "train", "epoch": epoch, "step": step, "losses": values, "samples_per_s": rate})
                progress.update(step, epoch, values, rate, skipped_total + len(skipped_local))
                t0, samples_since = time.perf_counter(), 0
            if config.stop_after_steps and step >= config.stop_after_steps:
                stopped = True
            if stopped or (config.checkpoint_every and step % config.checkpoint_every == 0):
                checkpoint(epoch, batch_index + 1)
            if stopped:
                break
        if stopped:
            break
        epoch, first_batch = epoch + 1, 0

        # --- end of epoch: bad files, validation, checkpoints -----------------------------
        skipped_all = [name for names in _gather_objects(skipped_local, ddp) for name in names]
        skipped_total += len(skipped_all)
        if master and skipped_all:
            log.write({"kind": "skipped", "epoch": epoch - 1, "count": len(skipped_all), "files": sorted(set(skipped_all))})
            progress.message(f"epoch {epoch - 1}: skipped {len(skipped_all)} unreadable or mismatched pair(s): {', '.join(sorted(set(skipped_all))[:5])}")
        improved = False
        if master and len(val_source) and config.val_every and (epoch % config.val_every == 0 or epoch == config.epochs):
            metrics, improved = _validate(m, val_source, config, device, run_dir, epoch, step, log, progress, best)
            best = max(best, metrics["psnr"])
        checkpoint(epoch, 0, improved)
        t0, samples_since = time.perf_counter(), 0  # throughput counts training time only
    if master:
        progress.message(f"stopped at step {step} (epoch {epoch}); checkpoint {run_dir / 'last.pt'}")
        if (stopped or not len(val_source) or not config.val_every) and log.read():  # else the last validation just plotted
            plot_losses(log.path, run_dir / "loss.png")
    return TrainResult(m.raw_generator, epoch, step, metrics, run_dir)


def _init_generator(generator: Generator, path: str) -> None:
    """Fine-tuning: start from a checkpoint's weights, which must fit this run's generator."""
    source, _ = load_any_generator(path)
    theirs = dataclasses.replace(source.config, residual_floor=0.0)
    if theirs != generator.config:
        raise BadOptionError(
            f"--init {path}: its generator is {theirs}, this run's is {generator.config}; "
            "give the same --full-channels, --body-channels, --blocks and --kernel-size"
        )
    generator.load_state_dict(source.state_dict())


def _validate(
    m: Models, source: FilePairs, config: TrainConfig, device: torch.device, run_dir: Path,
    epoch: int, step: int, log: JsonlLog, progress: Progress, best: float,
) -> tuple[dict[str, float], bool]:
    """Whole-image validation on rank 0, a grid of examples and the loss plot."""
    result = evaluate(m.raw_generator, source, device, limit=config.val_images, keep_samples=GRID_IMAGES)
    metrics = {**result.model, **{f"{k}_noedit": v for k, v in result.noedit.items()}, "images": result.images}
    log.write({"kind": "val", "epoch": epoch, "step": step, **metrics, "skipped": result.skipped})
    progress.message(
        f"validation after epoch {epoch}: PSNR {result.model['psnr']:.2f} dB (no edit {result.noedit['psnr']:.2f}), "
        f"SSIM {result.model['ssim']:.4f} (no edit {result.noedit['ssim']:.4f}) on {result.images} images"
    )
    if result.samples:
        save_grid(run_dir / f"grid-{epoch:04d}.png", result.samples)
    plot_losses(log.path, run_dir / "loss.png")
    return metrics, metrics["psnr"] > best

