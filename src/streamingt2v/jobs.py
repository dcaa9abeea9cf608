"""A queue of generate runs on one loaded model, for the web UI (and any long-lived app).

One worker thread runs the jobs one at a time, in the order they came, on models loaded
once; every job writes into the queue's output folder under a name the queue makes (never
a path from outside). Each job reports its progress (frames made, time left, a preview of
its latest chunk) and can be stopped: the run ends after the chunk in progress and keeps a
playable video of the chunks made, with its manifest, as Ctrl-C does.
"""

from __future__ import annotations

import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import OutputError, UsageError
from .outputs import GenerateResult, Stopped
from .run_config import GenerateConfig

STATES = ("queued", "running", "done", "stopped", "failed")
PREVIEW_SIZE = 256  # pixels: smaller frames are enlarged (nearest) in the chunk previews


@dataclass
class Job:
    id: str
    config: GenerateConfig
    label: str  # what it makes, in a few words
    state: str = "queued"
    frames_done: int = 0
    frames_total: int = 0
    started: float | None = None
    seconds_left: float | None = None
    preview: Path | None = None  # the latest chunk as an animated gif
    result: GenerateResult | None = None
    error: str | None = None
    stop_requested: bool = False
    _made_here: int = field(default=0, repr=False)  # frames this run made (not read back)


class JobQueue:
    """Runs ``GenerateConfig`` jobs one after another in a worker thread (``submit``)."""

    def __init__(
        self,
        out_dir: Path,
        load: Callable[[GenerateConfig], object],
        run: Callable[..., GenerateResult],
    ):
        """``load(config)``: the models (``generate.load_models``), called once;
        ``run(config, loaded, on_chunk)``: one run (``generate.generate``)."""
        self.out_dir = Path(out_dir)
        self.previews = self.out_dir / "previews"
        self._load, self._run = load, run
        self._loaded = None
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker = threading.Thread(target=self._work, daemon=True, name="streamingt2v-jobs")
        self._worker.start()

    def new_output(self, suffix: str = ".mp4") -> Path:
        """A fresh output path in the folder, named by the queue."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return self.out_dir / f"{stamp}-{secrets.token_hex(3)}{suffix}"

    def submit(self, config: GenerateConfig, label: str) -> Job:
        """Queue ``config`` (its ``out`` must be in the queue's folder)."""
        if config.out.resolve().parent != self.out_dir.resolve():
            raise UsageError(f"{config.out} is not in the output folder {self.out_dir}")
        job = Job(secrets.token_hex(6), config, label, frames_total=config.num_frames)
        with self._lock:
            self._jobs.append(job)
            self._wake.notify()
        return job

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs if j.id == job_id), None)

    def position(self, job: Job) -> int:
        """0 while running or ended; else 1 + the jobs ahead of it."""
        with self._lock:
            if job.state != "queued":
                return 0
            waiting = [j for j in self._jobs if j.state in ("queued", "running")]
            return waiting.index(job) + (0 if waiting[0].state == "running" else 1)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {state: sum(j.state == state for j in self._jobs) for state in STATES}

    def stop(self, job_id: str) -> None:
        """Stop a job: a queued one is dropped, a running one ends after its chunk."""
        with self._lock:
            job = next((j for j in self._jobs if j.id == job_id), None)
            if job is None:
                return
            job.stop_requested = True
            if job.state == "queued":
                job.state = "stopped"

    def _next(self) -> Job:
        with self._lock:
            while True:
                job = next((j for j in self._jobs if j.state == "queued"), None)
                if job is not None:
                    job.state, job.started = "running", time.monotonic()
                    return job
                self._wake.wait()

    def _work(self) -> None:
        while True:
            job = self._next()
            try:
                if self._loaded is None:
                    self._loaded = self._load(job.config)
                result = self._run(job.config, self._loaded, lambda c, j=job: self._chunk(j, c))
                job.result = result
                job.state = "stopped" if result.interrupted else "done"
            except (UsageError, OutputError) as err:
                job.error, job.state = str(err), "failed"
            except KeyboardInterrupt:  # stopped before its first frame
                job.state = "stopped"
            except Exception as err:  # noqa: BLE001 - the worker must outlive a bad job
                job.error = f"{type(err).__name__}: {err}"
                job.state = "failed"
                traceback.print_exc()

    def _chunk(self, job: Job, chunk) -> None:
        """A chunk of ``job`` is written: progress, preview, and the stop if asked."""
        from .video_io import VideoWriter

        job.frames_done = chunk.start + len(chunk.frames)
        job._made_here += len(chunk.frames)
        elapsed = time.monotonic() - (job.started or time.monotonic())
        left = job.frames_total - job.frames_done
        job.seconds_left = elapsed / job._made_here * left if job._made_here else None
        self.previews.mkdir(parents=True, exist_ok=True)
        preview = self.previews / f"{job.id}-{chunk.index}.gif"
        scale = max(1, PREVIEW_SIZE // max(chunk.frames.shape[1:3]))  # small frames: enlarged
        frames = chunk.frames.repeat(scale, axis=1).repeat(scale, axis=2)
        writer = VideoWriter(preview, job.config.fps or 8)
        writer.write(frames)
        writer.finish()
        job.preview = preview
        if job.stop_requested:
            raise Stopped("stop")
