"""``generate``: prompt -> video file + JSON manifest; the function behind the CLI.

All input is checked before any model is loaded, and nothing on disk is replaced until the
video is complete (or the run is stopped with Ctrl-C, which finishes a playable video of the
chunks made so far and records ``"interrupted": true`` in the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import SampleConfig, UsageError, config_to_dict
from .pipeline import StreamingT2VPipeline
from .streaming import Request
from .video_io import VideoWriter, output_kind

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class GenerateConfig:
    """Everything one ``streamingt2v generate`` run needs. Unset sampling settings (None) take
    the model's defaults from its ``pipeline_config.json``."""

    prompt: str
    num_frames: int
    out: Path
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    negative_prompt: str | None = None
    model: Path | None = None  # None: the embedded default model shipped in the package
    fps: int | None = None  # None: the model's training frame rate (8 for the paper's models)
    overwrite: bool = False
    device: str = "auto"  # "auto": CUDA when available, else CPU
    dtype: str = "auto"  # "auto": float16 on CUDA, float32 on CPU
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest as is

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        # Validate the sampling settings now, with placeholder defaults for unset ones.
        Request(
            self.prompt,
            self.num_frames,
            self.seed,
            SampleConfig(
                steps=1 if self.steps is None else self.steps,
                guidance=0.0 if self.guidance is None else self.guidance,
                scheduler="ddim" if self.scheduler is None else self.scheduler,
            ),
        )
        if self.fps is not None and (isinstance(self.fps, bool) or not 1 <= self.fps <= 240):
            raise UsageError(f"fps must be an integer in [1, 240], got {self.fps!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}; choose auto or one of {list(DTYPES)}")


@dataclass
class GenerateResult:
    video: Path
    manifest: Path
    frames: int
    interrupted: bool
    seconds: float


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


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


def resolve_model_dir(model: Path | None) -> Path:
    if model is not None:
        if not Path(model).is_dir():
            raise UsageError(f"model folder not found: {model}")
        return Path(model)
    if not (DEFAULT_MODEL_DIR / "unet").is_dir():
        raise UsageError(
            "the embedded default model is not part of this installation yet; "
            "pass --model DIR with a pipeline or ModelScope folder"
        )
    return DEFAULT_MODEL_DIR


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UsageError(f"unknown device {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but CUDA is not available")
    if dtype == "auto":
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    return dev, DTYPES[dtype]


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


def generate(config: GenerateConfig) -> GenerateResult:
    """Generate ``config.num_frames`` frames into ``config.out`` chunk by chunk.

    Memory does not grow with the video's length (mp4 and PNG outputs; a gif keeps its
    palette frames until the end). Raises UsageError for bad input before any work is done.
    """
    check_output(config.out, config.overwrite)
    model_dir = resolve_model_dir(config.model)
    device, dtype = resolve_device(config.device, config.dtype)
    pipe = StreamingT2VPipeline.from_pretrained(model_dir, device=device, dtype=dtype)
    request = pipe.request(
        config.prompt,
        config.num_frames,
        seed=config.seed,
        steps=config.steps,
        guidance=config.guidance,
        scheduler=config.scheduler,
        negative_prompt=config.negative_prompt,
    )
    fps = config.fps or pipe.config.fps
    manifest = _manifest_head(config, request, pipe, model_dir, fps, device, dtype)
    writer = VideoWriter(config.out, fps)
    started = time.perf_counter()
    interrupted = False
    try:
        for chunk in pipe.stream(
            request.prompt, request.num_frames, progress=config.progress, **_settings(request)
        ):
            writer.write(chunk.frames)
            manifest["chunks"].append(
                dict(
                    index=chunk.index,
                    start=chunk.start,
                    frames=len(chunk.frames),
                    seed=chunk.seed,
                    seconds=round(chunk.seconds, 3),
                )
            )
    except KeyboardInterrupt:
        interrupted = True
        if writer.frames_written == 0:
            writer.abort()
            raise
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    manifest.update(
        frames=writer.frames_written, interrupted=interrupted, seconds=round(seconds, 3)
    )
    video = writer.finish()
    path = manifest_path(config.out)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return GenerateResult(video, path, writer.frames_written, interrupted, seconds)


def _settings(request: Request) -> dict[str, Any]:
    s = request.sample
    return dict(
        seed=request.seed,
        steps=s.steps,
        guidance=s.guidance,
        scheduler=s.scheduler,
        negative_prompt=s.negative_prompt,
    )


def _manifest_head(config, request, pipe, model_dir, fps, device, dtype) -> dict[str, Any]:
    return {
        "streamingt2v_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompt": request.prompt,
        "negative_prompt": request.sample.negative_prompt,
        "requested_frames": request.num_frames,
        "seed": request.seed,
        "fps": fps,
        "size": list(pipe.frame_size),
        "sample": config_to_dict(request.sample),
        "stream": config_to_dict(pipe.config.stream),
        "model": {"path": str(model_dir), "files": file_hashes(model_dir)},
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "extra": config.extra,
        "chunks": [],
    }
