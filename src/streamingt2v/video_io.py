"""Reading and writing videos: H.264 mp4 (PyAV), gif (Pillow), or a folder of PNG frames.

Frames cross this module as uint8 arrays in ``(F, H, W, 3)`` layout (``_fhwc``), the layout
of image files; models use ``(B, C, F, H, W)`` (see ``config``).

Writers append chunk by chunk to a partial file beside the target (``NAME.partial``) and move
it into place only when told to finish, so an existing output is never touched by a run that
fails, and a run stopped early can still finish a playable video of what it made.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .config import UsageError

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


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class VideoWriter:
    """Append frames to ``path``'s partial file; ``finish`` moves it into place."""

    def __init__(self, path: Path, fps: int):
        self.path = Path(path)
        self.kind = output_kind(self.path)
        self.fps = fps
        self.partial = partial_path(self.path)
        self.frames_written = 0
        self._container = self._stream = None
        self._gif_frames: list[Image.Image] = []
        _remove(self.partial)
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
            self._container = av.open(str(self.partial), "w", format="mp4")
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.height, self._stream.width = frame.shape[:2]
            # 4:2:0 needs even sizes; odd sizes keep full chroma instead of failing.
            even = frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
            self._stream.pix_fmt = "yuv420p" if even else "yuv444p"
            self._stream.options = {"crf": "17"}
        packet_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(packet_frame):
            self._container.mux(packet)

    def _write_gif(self, frame: np.ndarray) -> None:
        # GIF's palette and timing are written at the end: kept as 1 byte per pixel meanwhile.
        self._gif_frames.append(Image.fromarray(frame).quantize(colors=256))

    def _write_frames(self, frame: np.ndarray) -> None:
        Image.fromarray(frame).save(self.partial / f"frame_{self.frames_written:06d}.png")

    def _close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
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

    def finish(self) -> Path:
        """Close the file and move it over ``path`` (replacing what was there)."""
        if self.frames_written == 0:
            raise ValueError("no frames were written")
        self._close()
        _remove(self.path)
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file; ``path`` is left as it was."""
        try:
            self._close()
        finally:
            _remove(self.partial)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_video(path: str | Path) -> np.ndarray:
    """All frames of an mp4, gif, or PNG folder as (F, H, W, 3) uint8."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    elif not path.is_file():
        raise UsageError(f"video not found: {path}")
    else:
        import av

        try:
            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except (av.error.FFmpegError, IndexError) as err:
            raise UsageError(f"not a readable video: {path} ({err})") from err
    if not frames:
        raise UsageError(f"video has no frames: {path}")
    return np.stack(frames)
