"""Reading and writing videos: H.264 mp4 (PyAV), gif (Pillow), or a folder of PNG frames.

Frames cross this module as uint8 arrays in ``(F, H, W, 3)`` layout (``_fhwc``), the layout
of image files; models use ``(B, C, F, H, W)`` (see ``config``).

Writers append chunk by chunk to a partial file of their own beside the target
(``NAME.PID-TOKEN.partial``, unique per run) and move it into place only when told to
finish, with one atomic rename: an existing output is only ever replaced by a complete new
one, never by a run that fails, and two runs never write the same partial file.
``OutputLock`` keeps a second run from writing the same target at the same time.

What a writer has written is playable at every moment, even after the process is killed
outright (SIGKILL, power loss of the process): an mp4 grows as an MPEG-TS stream
(``NAME.PID-TOKEN.partial.ts``, each frame's packet written as soon as it is encoded) that is
remuxed into the mp4, without re-encoding, when the video is finished; a PNG folder grows frame
by frame. A gif is written at the end (its palette needs every frame).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .config import OutputError, UsageError

VIDEO_SUFFIXES = {".mp4": "mp4", ".gif": "gif"}


def output_kind(path: Path) -> str:
    """ "mp4", "gif", or "frames" (a folder of PNGs: a path without a suffix)."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return VIDEO_SUFFIXES[suffix]
    if suffix == "":
        return "frames"
    raise UsageError(
        f"unsupported output {path}: use .mp4, .gif, or a folder name without a suffix"
    )


def run_token() -> str:
    """A name part that no other run uses: process id and a random token."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def partial_path(path: Path, token: str | None = None) -> Path:
    """A temporary name beside ``path`` (``NAME.TOKEN.partial``); a run that gives its own
    ``run_token`` to several paths can find them together again."""
    return path.with_name(f"{path.name}.{token or run_token()}.partial")


def stale_partials(path: Path) -> list[Path]:
    """The partial files (``partial_path``'s names, a growing mp4's ``.ts``, a PNG folder's
    ``.old``) that runs killed outright (SIGKILL, power loss) left beside ``path``."""
    pattern = re.compile(re.escape(path.name) + r"(\.\d+-[0-9a-f]{8}\.partial)+(\.old|\.ts)?")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def remove_stale_partials(path: Path) -> None:
    """Remove ``stale_partials(path)``. Only safe while holding ``path``'s ``OutputLock``:
    then no live run owns them."""
    for found in stale_partials(path):
        remove_path(found)


class OutputLock:
    """An exclusive lock on an output path (``NAME.lock`` beside it), held for a whole run, so
    a second run aimed at the same path is refused up front and names the first.

    The lock is the kernel's (``fcntl.flock``): it is released when its holder exits, even
    when killed, so a killed run never blocks the next one. The lock file is removed on
    release. Where ``fcntl`` does not exist (Windows), runs are not serialized.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux or macOS
            return self
        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(f"cannot create {self.file}: {err.strerror}") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UsageError(
                    f"another run is writing {self.path} ({holder}); wait for it to finish "
                    "or choose another output"
                ) from None
            # The holder before us may have removed the file after we opened it: then our
            # lock is on a file nobody else will see, so start again on the new one.
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        try:  # who holds it, for the message of a run refused; a full disk must not stop us
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()}, started {started}".encode(), 0)
        except OSError:
            pass
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.file.unlink(missing_ok=True)  # while still locked: see acquire
        finally:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class VideoWriter:
    """Append frames to ``path``'s partial file; ``finish`` moves it into place.

    ``growing``: the file (or PNG folder) that holds every frame written so far, playable
    at any moment; None for a gif. ``token``: the ``run_token`` in the partial's name.
    """

    def __init__(self, path: Path, fps: int, token: str | None = None):
        self.path = Path(path)
        self.kind = output_kind(self.path)
        self.fps = fps
        self.token = token or run_token()
        self.partial = partial_path(self.path, self.token)
        self.growing = growing_path(self.path, self.token)
        self.frames_written = 0
        self._container = self._stream = None
        self._gif_frames: list[Image.Image] = []
        if self.kind == "frames":
            self.partial.mkdir(parents=True)

    def write(self, frames_fhwc: np.ndarray) -> None:
        if frames_fhwc.dtype != np.uint8 or frames_fhwc.ndim != 4 or frames_fhwc.shape[-1] != 3:
            raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames_fhwc.shape}")
        for frame in frames_fhwc:
            getattr(self, f"_write_{self.kind}")(frame)
            self.frames_written += 1

    def _write_mp4(self, frame: np.ndarray) -> None:
        import av  # imported on use: GIF and PNG output need no FFmpeg

        if self._container is None:
            # MPEG-TS with every packet written at once, from an encoder that holds no
            # frames back: a process killed at any moment leaves every frame written.
            options = {"flush_packets": "1"}
            self._container = av.open(str(self.growing), "w", format="mpegts", options=options)
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.height, self._stream.width = frame.shape[:2]
            # 4:2:0 needs even sizes; odd sizes keep full chroma instead of failing.
            even = frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
            self._stream.pix_fmt = "yuv420p" if even else "yuv444p"
            self._stream.options = {"crf": "17", "tune": "zerolatency"}
        packet_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(packet_frame):
            self._container.mux(packet)

    def _write_gif(self, frame: np.ndarray) -> None:
        # GIF's palette and timing are written at the end: kept as 1 byte per pixel meanwhile.
        self._gif_frames.append(Image.fromarray(frame).quantize(colors=256))

    def _write_frames(self, frame: np.ndarray) -> None:
        Image.fromarray(frame).save(self.partial / f"frame_{self.frames_written:06d}.png")

    def close(self) -> None:
        """Finish writing the partial file (its last frames, the container's index); the
        step of ``finish`` that can run out of space."""
        self._close()

    def _close(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            try:
                for packet in self._stream.encode():
                    container.mux(packet)
            finally:  # closed even when flushing fails (a full disk): no open file left
                container.close()
            _remux_mp4(self.growing, self.partial)
            remove_path(self.growing)
        if self.kind == "gif" and self._gif_frames:
            first, *rest = self._gif_frames
            duration = round(1000 / self.fps)
            first.save(
                self.partial,
                format="GIF",
                save_all=True,
                append_images=rest,
                duration=duration,
                loop=0,
            )
            self._gif_frames = []

    def finish(self, overwrite: bool = True) -> Path:
        """Close the file and move it over ``path`` in one rename (a file is replaced
        atomically; a PNG folder is swapped in, the old one removed after). Without
        ``overwrite``, a ``path`` that appeared meanwhile is left alone (OutputError)."""
        if self.frames_written == 0:
            raise ValueError("no frames were written")
        self._close()
        if not overwrite and (self.path.exists() or self.path.is_symlink()):
            raise OutputError(
                f"{self.path} appeared while the video was being made; the new video is "
                f"kept as {self.partial}"
            )
        if self.kind == "frames" and self.path.is_dir():
            old = self.path.with_name(f"{self.partial.name}.old")
            os.replace(self.path, old)
            os.replace(self.partial, self.path)
            remove_path(old)
        else:
            os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file; ``path`` is left as it was."""
        try:
            self._close()
        except OSError:  # closing can fail for the reason the run is aborted (a full disk)
            pass
        finally:
            self._gif_frames = []
            remove_path(self.partial)
            if self.growing is not None:
                remove_path(self.growing)


def growing_path(path: Path, token: str) -> Path | None:
    """What a ``VideoWriter`` for ``path`` with ``token`` grows while it writes (playable at
    any moment): an mp4's MPEG-TS stream beside its partial file, a PNG folder's partial
    folder; None for a gif."""
    partial = partial_path(path, token)
    return {"mp4": partial.with_name(partial.name + ".ts"), "frames": partial}.get(
        output_kind(path)
    )


def _remux_mp4(stream_file: Path, out: Path) -> None:
    """Copy the H.264 packets of an MPEG-TS stream into an mp4 (no re-encoding)."""
    import av

    with av.open(str(stream_file)) as source, av.open(str(out), "w", format="mp4") as target:
        video = source.streams.video[0]
        copied = target.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.dts is None:  # the demuxer's empty packet at the end
                continue
            packet.stream = copied
            target.mux(packet)


def remove_path(path: Path) -> None:
    """Remove a file, link or folder, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_video(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The frames of an mp4 (or an MPEG-TS stream), gif, or PNG folder as (F, H, W, 3)
    uint8; only the first ``limit`` when given (what a killed run's growing file holds
    before its last, possibly cut, frame)."""
    frames = list(iter_video(path, limit))
    if not frames:
        raise UsageError(f"video has no frames: {path}")
    return np.stack(frames)


def iter_video(path: str | Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """The frames of a video one at a time, (H, W, 3) uint8 (see ``read_video``)."""
    path = Path(path)
    if path.is_dir():
        for file in sorted(path.glob("*.png"))[:limit]:
            try:
                with Image.open(file) as image:
                    yield np.asarray(image.convert("RGB"))
            except OSError as err:
                raise UsageError(f"not a readable frame: {file} ({err})") from err
        return
    if not path.is_file():
        raise UsageError(f"video not found: {path}")
    import av

    count = 0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, IndexError) as err:
        raise UsageError(f"not a readable video: {path} ({err})") from err
