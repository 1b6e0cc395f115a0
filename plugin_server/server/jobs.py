"""The job store and scheduler: a bounded queue, one inference at a time per device, expiry.

    scheduler = Scheduler(models_for(model, ["cpu"]), settings)
    await scheduler.start()
    job = scheduler.submit(pixels, options, render, render_mask, media_type, watched=False)
    scheduler.get(job.id).status()          # {"id", "state", "phase", "progress", ...}
    scheduler.cancel(job.id)                # the engine stops at its next tile
    await scheduler.stop()

Every device has one worker task and one engine thread, all fed from one queue, so jobs
spread over devices by whoever is free. The engine is synchronous; it runs in the device's
thread and polls the job's cancel flag between tiles. Encoding the result runs in the
loop's default executor, so the next inference does not wait for it.

Jobs made by the jobs API are "unwatched": when nobody has polled one for ``idle_timeout``
it is cancelled (its editor probably died), and a finished one is kept for ``result_ttl``
and within ``result_memory`` bytes, oldest dropped first. Synchronous requests are "watched"
jobs: the handler waits on ``job.done`` and discards the job itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import engine, face_retouch
from ..devices import resolve_device
from ..errors import AutoRetouchError, BusyError, CancelledError, InternalError, NotFoundError
from ..model import Model
from ..wire import ACTIVE, TRAVELLING, JobPhase, JobState, RetouchOptions
from .settings import ServerSettings

log = logging.getLogger("autoretouch.server")


def log_bug(what: str) -> InternalError:
    """Log the exception being handled with a fresh id, and return the error to report."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("internal error %s while %s", error_id, what)
    return InternalError(f"internal server error (id {error_id}); the server log has the details")


@dataclass(eq=False)
class Job:
    id: str
    pixels: np.ndarray | None  # the input; dropped once the engine has run
    options: RetouchOptions  # the request's, with the server's engine settings
    render: Callable[[np.ndarray], bytes]  # output pixels -> response body; runs in a thread
    render_mask: Callable[[np.ndarray], bytes]  # (H, W, 1) mask pixels of the input's dtype -> body
    media_type: str
    watched: bool  # a synchronous request waits on it
    done: asyncio.Future
    state: JobState = "queued"
    progress: float = 0.0
    # (phase, face, faces): one tuple, so a status read from the loop never mixes two phases
    doing: tuple[JobPhase, int, int] = ("queued", 0, 0)
    error: AutoRetouchError | None = None
    result: bytes | None = None
    mask: bytes | None = None  # the skin mask's body, when the request asked for it
    faces: int | None = None  # faces found; None until known, or when face finding is off
    device: str | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    last_seen: float = field(default_factory=time.monotonic)
    finished_at: float | None = None

    def status(self) -> dict[str, Any]:
        phase, face, faces = self.doing
        status: dict[str, Any] = {"id": self.id, "state": self.state, "phase": phase,
                                  "progress": round(self.progress, 4)}
        if face:
            status["face"], status["faces"] = face, faces
        if self.device is not None:
            status["device"] = self.device
        if self.state == "done":
            status["faces"] = "off" if self.faces is None else self.faces
        if self.state in ACTIVE and self.cancel_event.is_set():
            status["cancel_requested"] = True
        if self.error is not None and self.state in ("failed", "cancelled"):
            status["error"] = {"code": self.error.code, "message": str(self.error)}
        return status

    def result_bytes(self) -> int:
        return len(self.result or b"") + len(self.mask or b"")

    def set_progress(self, fraction: float) -> None:
        self.progress = fraction  # called from the engine thread; a float store is atomic

    def set_phase(self, phase: JobPhase, face: int = 0, faces: int = 0) -> None:
        self.doing = (phase, face, faces)  # from the engine thread too; one store


def models_for(model: Model, devices: list[str]) -> dict[str, Model]:
    """One model per device, placed there once (the engine copies a misplaced one per call)."""
    return {name: dataclasses.replace(model, generator=engine.model_on(model.generator, resolve_device(name)))
            for name in devices}


class Scheduler:
    def __init__(self, models: dict[str, Model], settings: ServerSettings) -> None:
        self.models = models
        self.settings = settings
        self.limits = settings.limits
        self._jobs: dict[str, Job] = {}
        self._finished: OrderedDict[str, Job] = OrderedDict()  # kept unwatched jobs, oldest first
        self._result_bytes = 0
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._renders: set[asyncio.Task] = set()
        self._executors = {d: ThreadPoolExecutor(1, thread_name_prefix=f"engine-{d}") for d in models}
        self._seconds_per_job = 1.0  # running mean, for Retry-After
        self.counters = {"submitted": 0, "done": 0, "failed": 0, "cancelled": 0, "expired": 0}

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(d), name=f"worker-{d}") for d in self.models]
        self._tasks.append(asyncio.create_task(self._sweeper(), name="job-sweeper"))

    async def stop(self) -> None:
        for job in self._jobs.values():
            job.cancel_event.set()
        for task in [*self._tasks, *self._renders]:
            task.cancel()
        for task in [*self._tasks, *self._renders]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)  # at most one tile per device

    # -- the API the handlers use -----------------------------------------------------------

    def check_capacity(self) -> None:
        """BusyError when the queue is full, so a request can be refused before it is decoded."""
        queued = self._count("queued")
        if queued >= self.limits.queue_size:
            wait = math.ceil(self._seconds_per_job * (queued + 1) / len(self.models))
            wait = min(max(wait, 1), 60)
            raise BusyError(
                f"the server is busy ({queued} jobs waiting); retry in {wait} s", retry_after=wait
            )

    def submit(
        self, pixels: np.ndarray, options: RetouchOptions, render: Callable[[np.ndarray], bytes],
        render_mask: Callable[[np.ndarray], bytes], media_type: str, watched: bool,
    ) -> Job:
        """Queue a job; only the request's travelling options are taken, the rest are the server's."""
        self.check_capacity()
        options = dataclasses.replace(self.settings.engine, **{name: getattr(options, name) for name in TRAVELLING})
        job = Job(
            id=secrets.token_urlsafe(12), pixels=pixels, options=options, render=render, render_mask=render_mask,
            media_type=media_type, watched=watched, done=asyncio.get_running_loop().create_future(),
        )
        self._jobs[job.id] = job
        self._queue.put_nowait(job)
        self.counters["submitted"] += 1
        return job

    def get(self, job_id: str) -> Job:
        """The job, marked as polled just now."""
        job = self._jobs.get(job_id)
        if job is None or job.watched:
            raise NotFoundError(f"there is no job {job_id!r} (it never existed, or it expired)")
        job.last_seen = time.monotonic()
        return job

    def cancel(self, job: Job, reason: str = "the job was cancelled") -> None:
        """A queued job is cancelled at once; a running one at the engine's next tile."""
        if job.state not in ACTIVE:
            return
        if job.error is None:
            job.error = CancelledError(reason)
        job.cancel_event.set()
        if job.state == "queued":
            self._finish(job, "cancelled")

    def forget(self, job: Job) -> None:
        """Drop a job's record and result (DELETE of a finished job, or a finished sync request)."""
        self._jobs.pop(job.id, None)
        if self._finished.pop(job.id, None) is not None:
            self._result_bytes -= job.result_bytes()
        job.result = job.mask = None

    def stats(self) -> dict[str, Any]:
        return {
            "queued": self._count("queued"),
            "running": self._count("running"),
            "capacity": self.limits.queue_size,
            "workers": list(self.models),
            "kept_jobs": len(self._finished),
            "kept_result_bytes": self._result_bytes,
            **self.counters,
        }

    # -- internals ----------------------------------------------------------------------------

    def _count(self, state: JobState) -> int:
        return sum(1 for job in self._jobs.values() if job.state == state)

    async def _worker(self, device: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.state != "queued":  # cancelled while it waited
                continue
            job.state, job.device = "running", device
            started = time.monotonic()
            try:
                out = await loop.run_in_executor(self._executors[device], self._infer, job, device)
            except asyncio.CancelledError:
                job.cancel_event.set()  # server shutting down: let the thread stop at its next tile
                raise
            except CancelledError:
                self._finish(job, "cancelled")
                continue
            except AutoRetouchError as exc:
                job.error = exc
                self._finish(job, "failed")
                continue
            except Exception:
                job.error = log_bug(f"retouching job {job.id} on {device}")
                self._finish(job, "failed")
                continue
            finally:
                job.pixels = None
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.monotonic() - started)
            task = asyncio.create_task(self._render(job, out))
            self._renders.add(task)
            task.add_done_callback(self._renders.discard)

    def _infer(self, job: Job, device: str) -> face_retouch.Result:
        options = dataclasses.replace(job.options, device=device)
        return face_retouch.retouch(job.pixels, self.models[device], options, job.set_progress, job.cancel_event.is_set,
                                    phase=job.set_phase)

    async def _render(self, job: Job, out: face_retouch.Result) -> None:
        job.faces = out.faces
        job.set_phase("encoding")
        try:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, job.render, out.pixels)
            if out.mask is not None:
                job.mask = await loop.run_in_executor(None, job.render_mask, out.mask_pixels(out.pixels.dtype))
        except AutoRetouchError as exc:
            job.error = exc
            self._finish(job, "failed")
            return
        except Exception:
            job.error = log_bug(f"encoding the result of job {job.id}")
            self._finish(job, "failed")
            return
        if job.cancel_event.is_set():
            self._finish(job, "cancelled")
        else:
            job.result = body
            self._finish(job, "done")

    def _finish(self, job: Job, state: JobState) -> None:
        job.state, job.finished_at = state, time.monotonic()
        job.set_phase("finished")
        if state == "done":
            job.progress, job.error = 1.0, None
        self.counters[state] += 1
        if not job.done.done():
            job.done.set_result(None)
        if job.watched or job.id not in self._jobs:
            return
        self._finished[job.id] = job
        self._result_bytes += job.result_bytes()
        self._evict()

    def _evict(self) -> None:
        """Oldest finished jobs go while over the limits; the newest is always kept."""
        while len(self._finished) > 1 and (
            len(self._finished) > self.limits.max_finished or self._result_bytes > self.limits.result_memory
        ):
            self._expire(next(iter(self._finished.values())))

    def _expire(self, job: Job) -> None:
        self.forget(job)
        self.counters["expired"] += 1

    async def _sweeper(self) -> None:
        interval = min(max(min(self.limits.idle_timeout, self.limits.result_ttl) / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            self._sweep(time.monotonic())

    def _sweep(self, now: float) -> None:
        idle, ttl = self.limits.idle_timeout, self.limits.result_ttl
        for job in list(self._jobs.values()):
            if job.watched:
                continue
            if job.state in ACTIVE and now - job.last_seen > idle:
                log.info("cancelling job %s: nobody polled it for %.0f s", job.id, idle)
                self.cancel(job, f"nobody asked about this job for {idle:g} s, so it was cancelled")
            elif job.finished_at is not None and now - job.finished_at > ttl:
                self._expire(job)
