"""Writing a run's output: the video and its JSON manifest, safely.

All checks come before any work, and nothing on disk is replaced until the video is
complete (or the run is stopped with Ctrl-C or SIGTERM, which finishes a playable video of
the frames made so far and records ``"interrupted": true`` in the manifest). A run killed
outright leaves its growing partial video beside the output, playable (``video_io``), which
``generate --resume`` continues and any other run on that output removes. A run holds its
output's ``OutputLock`` throughout, so a second run on the same output is refused up front;
the video and the manifest each replace their target in one rename. A write that fails (a
full disk, a lost permission) raises ``OutputError`` and leaves what existed as it was, with
no temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import OutputError, UsageError
from .video_io import (
    OutputLock,
    VideoWriter,
    growing_path,
    output_kind,
    partial_path,
    remove_path,
    remove_stale_partials,
    stale_partials,
)


@dataclass
class GenerateResult:
    video: Path
    manifest: Path
    frames: int
    interrupted: bool
    seconds: float
    stopped_by: str | None = None  # "SIGINT" (Ctrl-C) or "SIGTERM" when interrupted


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal other than Ctrl-C (the CLI raises it on SIGTERM); handled
    exactly like Ctrl-C. ``str(stop)`` is the signal's name."""


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def state_path(out: Path) -> Path:
    """Where the stream's state after the video's last chunk is kept (``generate --resume``)."""
    return out.with_name(out.name + ".state.safetensors")


def check_output(out: Path, overwrite: bool) -> None:
    """Fail early, before any work, if ``out`` cannot or may not be written."""
    output_kind(out)
    for path in (out, manifest_path(out)):
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")
    if out.is_dir() and output_kind(out) != "frames":
        raise UsageError(f"{out} is a folder, not a video file")
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"output folder does not exist: {parent}")
    try:  # the only reliable test of writability (permission bits lie for root)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".streamingt2v-check-"):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to output folder {parent}: {err.strerror}") from err


@contextmanager
def claimed_output(out: Path, overwrite: bool, keep_partials: bool = False) -> Iterator[None]:
    """Hold ``out``'s ``OutputLock`` for a run: checked again once held (a run may have
    finished meanwhile), and cleared of what runs killed outright left beside it (unless
    ``keep_partials``: a resumed run reads them first, then calls ``remove_partials``)."""
    with OutputLock(out):
        check_output(out, overwrite)
        if not keep_partials:
            remove_partials(out)
        yield


def remove_partials(out: Path) -> None:
    """Remove what runs killed outright left beside ``out``; only while holding its lock."""
    for target in (out, manifest_path(out), state_path(out)):
        remove_stale_partials(target)


def resumable_runs(out: Path) -> list[tuple[Path, Path]]:
    """(video, state file) pairs that ``generate --resume`` may continue: ``out`` with its
    state, and the growing partial videos with their states that runs killed outright left
    beside it (newest state after each finished chunk; see ``video_io``)."""
    runs = []
    if out.exists() and state_path(out).is_file():
        runs.append((out, state_path(out)))
    name = re.compile(re.escape(state_path(out).name) + r"\.(\d+-[0-9a-f]{8})\.partial")
    for found in stale_partials(state_path(out)):
        token = name.fullmatch(found.name)
        video = token and growing_path(out, token.group(1))
        if video is not None and video.exists():
            runs.append((video, found))
    return runs


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in the model folder, by relative path."""
    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        hashes[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return hashes


def write_video(
    frames: Iterator[np.ndarray],
    out: Path,
    fps: int,
    manifest: dict[str, Any],
    overwrite: bool = True,
    token: str | None = None,
) -> GenerateResult:
    """Write frames as they come, then the video and its manifest, each into place in one
    rename. Ctrl-C (or ``Stopped``) keeps a playable video of the frames made so far
    (``"interrupted": true``); any other error, or a stop before the first frame, leaves
    nothing behind and replaces nothing. A failed write raises OutputError naming the path
    and the cause. ``token``: the run's ``run_token``, in its partial files' names."""
    with writing(out):
        writer = VideoWriter(out, fps, token)
    started = time.perf_counter()
    stopped_by = None
    try:
        for frame in frames:
            with writing(out):
                writer.write(frame[None])
    except KeyboardInterrupt as stop:
        stopped_by = str(stop) if isinstance(stop, Stopped) else "SIGINT"
        if writer.frames_written == 0:
            writer.abort()
            raise
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    manifest.update(
        frames=writer.frames_written,
        interrupted=stopped_by is not None,
        stopped_by=stopped_by,
        seconds=round(seconds, 3),
    )
    path = manifest_path(out)
    manifest_tmp = partial_path(path)
    try:
        with writing(out):
            writer.close()
        with writing(path):
            manifest_tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        with writing(out):
            video = writer.finish(overwrite)
        with writing(path):
            os.replace(manifest_tmp, path)
    except BaseException:
        writer.abort()
        remove_path(manifest_tmp)
        raise
    return GenerateResult(
        video, path, writer.frames_written, stopped_by is not None, seconds, stopped_by
    )


class writing:
    """Turns an OSError while writing ``path`` into an OutputError naming the path and the
    cause (``No space left on device``, ``Permission denied``, ...)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, traceback) -> bool:
        if isinstance(err, OSError):
            cause = err.strerror or str(err) or type(err).__name__
            raise OutputError(
                f"cannot write {self.path}: {cause}; nothing existing was changed"
            ) from err
        return False
