"""``autoretouch batch IN_DIR OUT_DIR``: retouch a studio's folder tree, resumably.

    autoretouch batch shoot/ retouched/                                  # default server, else in-process
    autoretouch batch shoot/ retouched/ --server http://127.0.0.1:8377 --server http://10.0.0.2:8377 --jobs 4

Sub-folders are mirrored and every file keeps its format, bit depth, ICC profile and EXIF.
Outputs are written through a temporary name and renamed, so a file under its final name is
complete and a rerun skips it. Inputs are never written: OUT_DIR may not be IN_DIR, nor
inside it, nor contain it. Failures are listed at the end and make the exit status 1.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import imageio, outputs, retouchers, wire
from .command import add_model_options, options_from_args
from .errors import AutoRetouchError, BadOptionError, ServerUnavailableError
from .retouchers import Retoucher


@dataclass(frozen=True)
class Task:
    source: Path
    target: Path
    inputs: Path  # IN_DIR: nothing is ever written inside it, whatever links OUT_DIR holds


@dataclass
class Report:
    done: list[Path] = field(default_factory=list)
    faceless: list[Path] = field(default_factory=list)  # done, but no face was found: copied unchanged
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch", help="retouch every photo in a folder tree",
        description="Retouch every PNG, JPEG and TIFF under IN_DIR into the same tree under OUT_DIR. "
                    "Resumable: outputs already complete are skipped.",
    )
    parser.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder of photos (sub-folders included)")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the retouched tree goes; outside IN_DIR")
    parser.add_argument("--server", action="append", metavar="URL",
                        help="retouch server to use; repeat to share the work between servers "
                             f"(default: {wire.DEFAULT_URL} if it answers, else in this process)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="photos in flight at once (default: 2 per server, 1 in-process)")
    add_model_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The batch command."""
    options = options_from_args(args)
    if args.jobs is not None and args.jobs < 1:
        raise BadOptionError(f"the photos in flight must be at least 1, got {args.jobs}")
    tasks = plan(args.in_dir, args.out_dir)
    chosen = retouchers.choose(args.server, args.checkpoint, options, args.token)
    jobs = args.jobs or (2 * len(chosen.retouchers) if chosen.remote else 1)
    print(f"retouching {len(tasks)} photo(s) from {args.in_dir} into {args.out_dir} on {chosen.where}", file=sys.stderr)
    report = run_tasks(tasks, chosen.retouchers, jobs, sys.stderr)
    print(summary(report), file=sys.stderr)
    return 1 if report.failed else 0


def plan(in_dir: Path, out_dir: Path) -> list[Task]:
    """Every photo under ``in_dir`` and its mirror under ``out_dir``; refuses layouts that could overwrite inputs."""
    if not in_dir.is_dir():
        raise BadOptionError(f"{in_dir} is not a folder")
    src, dst = in_dir.resolve(), out_dir.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise BadOptionError(
            f"OUT_DIR {out_dir} must lie outside IN_DIR {in_dir} (and not contain it): outputs would land on inputs"
        )
    tasks = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or path.suffix.lower() not in imageio.SUFFIXES:
                continue
            tasks.append(Task(path, dst / path.relative_to(src), src))
    return tasks


def is_complete(task: Task) -> bool:
    """The output exists under its final name (so it was renamed whole), has the input's size, and
    is no input reached through a link (that one fails in ``_one`` with the reason)."""
    try:
        outputs.check_output(task.target, [task.inputs])
        if not task.target.is_file():
            return False
        done, source = imageio.peek(task.target), imageio.peek(task.source)
        return (done.width, done.height) == (source.width, source.height)
    except (AutoRetouchError, OSError):
        return False


def run_tasks(tasks: list[Task], retouchers: list[Retoucher], jobs: int, out: TextIO) -> Report:
    """Retouch ``tasks`` with ``jobs`` threads spread over ``retouchers`` (one per server)."""
    report = Report()
    pending: queue.Queue[Task] = queue.Queue()
    for task in tasks:
        if is_complete(task):
            report.skipped.append(task.source)
        else:
            pending.put(task)
    bar = _Progress(len(tasks), len(report.skipped), out)
    alive = list(retouchers)
    lock = threading.Lock()

    def worker(index: int) -> None:
        retoucher = retouchers[index % len(retouchers)]
        while True:
            try:
                task = pending.get_nowait()
            except queue.Empty:
                return
            try:
                faces = _one(task, retoucher)
            except ServerUnavailableError as exc:
                with lock:  # this server is gone: hand the photo to another one if any is left
                    if retoucher in alive:
                        alive.remove(retoucher)
                    if alive:
                        retoucher = alive[index % len(alive)]
                        pending.put(task)
                        continue
                    report.failed.append((task.source, str(exc)))
            except AutoRetouchError as exc:
                with lock:
                    report.failed.append((task.source, str(exc)))
            except Exception as exc:  # one bad photo must not stop a night's batch
                with lock:
                    report.failed.append((task.source, f"{type(exc).__name__}: {exc}"))
            else:
                with lock:
                    report.done.append(task.source)
                    if faces == 0:
                        report.faceless.append(task.source)
            bar.update(len(report.done) + len(report.skipped), len(report.failed))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(min(jobs, max(pending.qsize(), 1)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bar.close()
    return report


def _one(task: Task, retoucher: Retoucher) -> int | None:
    """Retouch one photo; the faces found (None: face finding off)."""
    outputs.prepare_folder(task.target, [task.inputs])  # before any work, and links followed
    data = task.source.read_bytes()
    picture = imageio.decode(data, wire.DEFAULT_MAX_PIXELS)  # checks the header first: no decompression bomb
    outcome = retoucher(picture)
    outputs.check_output(task.target, [task.inputs])  # OUT_DIR may have changed during the retouch
    imageio.write(task.target, outcome.picture)  # temporary name + rename
    return outcome.faces


def summary(report: Report) -> str:
    faceless = f" ({len(report.faceless)} with no face found, written unchanged)" if report.faceless else ""
    lines = [f"{len(report.done)} retouched{faceless}, {len(report.skipped)} already done, {len(report.failed)} failed"]
    lines += [f"  FAILED {path}: {message}" for path, message in sorted(report.failed)]
    return "\n".join(lines)


class _Progress:
    """A one-line bar on a terminal, one line per photo otherwise (logs of unattended runs)."""

    def __init__(self, total: int, done: int, out: TextIO) -> None:
        self.total, self.out, self.tty = total, out, out.isatty()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.update(done, 0)

    def update(self, done: int, failed: int) -> None:
        with self.lock:
            finished = done + failed
            if self.tty:
                filled = int(30 * finished / self.total) if self.total else 30
                self.out.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {finished}/{self.total}"
                               f"{f' ({failed} failed)' if failed else ''}")
            elif finished:
                self.out.write(f"{finished}/{self.total} photos ({failed} failed), "
                               f"{time.monotonic() - self.started:.0f} s\n")
            self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()
