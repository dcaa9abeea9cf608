"""``generate``: prompt -> video file + JSON manifest; the function behind the CLI.

All input is checked before any model is loaded, and nothing on disk is replaced until the
video is complete (or the run is stopped with Ctrl-C or SIGTERM, which finishes a playable
video of the chunks made so far and records ``"interrupted": true`` in the manifest). A run
holds its output's ``OutputLock`` throughout, so a second run on the same output is refused
up front; the video and the manifest each replace their target in one rename. A write that
fails (a full disk, a lost permission) raises ``OutputError`` and leaves what existed as it
was, with no temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import OutputError, SampleConfig, UsageError, config_to_dict
from .enhance import EnhanceConfig
from .enhancer import Enhancer
from .enhancer import settings as enhance_settings
from .models.weights import local_model_folder
from .offload import Offloader
from .pipeline import StreamingT2VPipeline, read_pipeline_config
from .plan import Plan, make_plan
from .sampling import max_steps
from .streaming import Request
from .video_io import (
    OutputLock,
    VideoWriter,
    output_kind,
    partial_path,
    read_video,
    remove_path,
    remove_stale_partials,
)

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
    stream_guidance: float | None = None  # None: the model's (its guidance, if it has none)
    replace_overlap: bool | None = None  # None: the model's (SampleConfig.replace_overlap)
    model: Path | None = None  # None: the embedded default model shipped in the package
    fps: int | None = None  # None: the model's training frame rate (8 for the paper's models)
    overwrite: bool = False
    device: str = "auto"  # "auto": CUDA when available, else CPU
    dtype: str = "auto"  # "auto": float16 on CUDA, float32 on CPU
    progress: bool = True
    enhance: bool = True  # refine with the model folder's enhancer/, when it has one
    height: int | None = None  # None: the model's own frame size
    width: int | None = None
    enhancer: Path | None = None  # None: the model folder's enhancer/ (if any)
    enhance_size: str | None = None  # "HxW": a full-size enhancer's trained resolution
    offload: bool = False  # UNet groups in CPU memory until their stage runs (offload.py)
    method: str = "streamingt2v"  # or a baseline / ablation (streaming.METHODS)
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
                stream_guidance=self.stream_guidance,
                replace_overlap=bool(self.replace_overlap),
            ),
            (self.height or 1, self.width or 1),
            self.method,
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
    stopped_by: str | None = None  # "SIGINT" (Ctrl-C) or "SIGTERM" when interrupted


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal other than Ctrl-C (the CLI raises it on SIGTERM); handled
    exactly like Ctrl-C. ``str(stop)`` is the signal's name."""


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


@contextmanager
def claimed_output(out: Path, overwrite: bool) -> Iterator[None]:
    """Hold ``out``'s ``OutputLock`` for a run: checked again once held (a run may have
    finished meanwhile), and cleared of what runs killed outright left beside it."""
    with OutputLock(out):
        check_output(out, overwrite)
        for target in (out, manifest_path(out)):
            remove_stale_partials(target)
        yield


def resolve_model_dir(model: Path | None) -> Path:
    if model is not None:
        return local_model_folder(model)
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
    palette frames until the end). Raises UsageError for bad input before any work is done,
    and OutputError when the output cannot be written.
    """
    check_output(config.out, config.overwrite)
    with claimed_output(config.out, config.overwrite):
        model_dir, device, dtype, pipe, enhancer, request = _load_run(config)
        fps = config.fps or pipe.config.fps
        manifest = _manifest_head(config, request, pipe, model_dir, fps, device, dtype)
        manifest["warnings"] = pipe.prompt_warnings(request.prompt)
        if config.progress:
            for warning in manifest["warnings"]:
                print(f"streamingt2v: warning: {warning}", file=sys.stderr)

        def frames() -> Iterator[np.ndarray]:
            for chunk in pipe.stream(
                request.prompt, request.num_frames, progress=config.progress, **_settings(request)
            ):
                manifest["chunks"].append(
                    dict(
                        index=chunk.index,
                        start=chunk.start,
                        frames=len(chunk.frames),
                        seed=chunk.seed,
                        seconds=round(chunk.seconds, 3),
                    )
                )
                yield from chunk.frames

        output = frames()
        if enhancer is not None:
            settings = replace(enhancer.config.defaults, seed=request.seed)
            size = enhancer.output_size(*request.size)
            manifest["enhance"] = {"size": list(size), **config_to_dict(settings)}
            output = enhancer.enhance(
                output,
                request.num_frames,
                request.prompt,
                settings,
                request.sample.negative_prompt,
                progress=config.progress,
            )
        return write_video(output, config.out, fps, manifest, config.overwrite)


def plan_run(config: GenerateConfig) -> Plan:
    """What ``generate(config)`` would cost (time, memory), measured on one evaluation of
    each kind; generates and writes nothing."""
    _, _, _, pipe, enhancer, request = _load_run(config)
    settings = replace(enhancer.config.defaults, seed=request.seed) if enhancer else None
    return make_plan(pipe, request, enhancer, settings)


def _load_run(config: GenerateConfig):
    """The models and the validated request of a generate run."""
    model_dir = resolve_model_dir(config.model)
    device, dtype = resolve_device(config.device, config.dtype)
    load_on = torch.device("cpu") if config.offload else device
    stream_dtype = None  # the folder's streaming precision applies unless --dtype is given
    wanted = read_pipeline_config(model_dir).stream_dtype
    if config.dtype == "auto" and wanted and DTYPES[wanted] != dtype:
        stream_dtype = DTYPES[wanted]
    pipe = StreamingT2VPipeline.from_pretrained(
        model_dir, device=load_on, dtype=dtype, stream_dtype=stream_dtype
    )
    if config.offload:
        pipe.enable_offload(device)
    enhancer = None
    if config.enhance and (config.enhancer or (model_dir / "enhancer").is_dir()):
        enhancer = load_enhancer(
            config.enhancer or model_dir, load_on, dtype, pipe, config.enhance_size
        )
        if config.offload:
            enhancer.enable_offload(pipe.offloader)
        check_enhance_steps(enhancer, enhancer.config.defaults.steps)
    request = pipe.request(
        config.prompt,
        config.num_frames,
        seed=config.seed,
        steps=config.steps,
        guidance=config.guidance,
        scheduler=config.scheduler,
        negative_prompt=config.negative_prompt,
        stream_guidance=config.stream_guidance,
        replace_overlap=config.replace_overlap,
        height=config.height,
        width=config.width,
        method=config.method,
    )
    return model_dir, device, dtype, pipe, enhancer, request


def write_video(
    frames: Iterator[np.ndarray],
    out: Path,
    fps: int,
    manifest: dict[str, Any],
    overwrite: bool = True,
) -> GenerateResult:
    """Write frames as they come, then the video and its manifest, each into place in one
    rename. Ctrl-C (or ``Stopped``) keeps a playable video of the frames made so far
    (``"interrupted": true``); any other error, or a stop before the first frame, leaves
    nothing behind and replaces nothing. A failed write raises OutputError naming the path
    and the cause."""
    with _writing(out):
        writer = VideoWriter(out, fps)
    started = time.perf_counter()
    stopped_by = None
    try:
        for frame in frames:
            with _writing(out):
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
        with _writing(out):
            writer.close()
        with _writing(path):
            manifest_tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        with _writing(out):
            video = writer.finish(overwrite)
        with _writing(path):
            os.replace(manifest_tmp, path)
    except BaseException:
        writer.abort()
        remove_path(manifest_tmp)
        raise
    return GenerateResult(
        video, path, writer.frames_written, stopped_by is not None, seconds, stopped_by
    )


class _writing:
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


@dataclass
class EnhanceFileConfig:
    """One ``streamingt2v enhance`` run. Unset refinement settings (None) take the
    enhancer's defaults from its ``enhancer_config.json``."""

    video: Path
    prompt: str
    out: Path
    mode: str | None = None
    chunk: int | None = None
    overlap: int | None = None
    strength: float | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    negative_prompt: str = ""
    model: Path | None = None  # a pipeline folder with enhancer/, or an enhancer folder
    size: str | None = None  # "HxW": output size (a full-size enhancer's trained resolution)
    offload: bool = False  # the UNet in CPU memory until enhancement starts
    fps: int = 8
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.video, self.out = Path(self.video), Path(self.out)
        if not self.prompt or not self.prompt.strip():
            raise UsageError("the prompt is empty")
        self.overrides(EnhanceConfig())  # validate now, against placeholder defaults
        if isinstance(self.fps, bool) or not 1 <= self.fps <= 240:
            raise UsageError(f"fps must be an integer in [1, 240], got {self.fps!r}")

    def overrides(self, defaults: EnhanceConfig) -> EnhanceConfig:
        return enhance_settings(
            defaults,
            mode=self.mode,
            chunk=self.chunk,
            overlap=self.overlap,
            strength=self.strength,
            steps=self.steps,
            guidance=self.guidance,
            seed=self.seed,
        )


def load_enhancer(
    model_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    pipe=None,
    size: str | None = None,
) -> Enhancer:
    """The enhancer of a pipeline folder (sharing its text encoder, and its VAE unless
    enhancer/vae/ holds its own), an enhancer folder of its own, or a diffusers
    text-to-video folder used at ``size`` ("HxW")."""
    model_dir = local_model_folder(model_dir)
    if not (model_dir / "enhancer").is_dir():
        if (model_dir / "pipeline_config.json").is_file():
            raise UsageError(f"{model_dir} has no enhancer (no enhancer/ folder)")
        return Enhancer.from_pretrained(model_dir, device, dtype, size=size)
    pipe = pipe or StreamingT2VPipeline.from_pretrained(model_dir, device=device, dtype=dtype)
    return Enhancer.from_pretrained(
        model_dir / "enhancer",
        device,
        dtype,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        size=size,
    )


def enhance_file(config: EnhanceFileConfig) -> GenerateResult:
    """Enhance the video file ``config.video`` into ``config.out`` (+ manifest)."""
    check_output(config.out, config.overwrite)
    if config.out.resolve() == config.video.resolve():
        raise UsageError("the output would replace the input video; pick another --out")
    with claimed_output(config.out, config.overwrite):
        return _enhance_file(config)


def _enhance_file(config: EnhanceFileConfig) -> GenerateResult:
    video = read_video(config.video)
    model_dir = resolve_model_dir(config.model)
    device, dtype = resolve_device(config.device, config.dtype)
    load_on = torch.device("cpu") if config.offload else device
    enhancer = load_enhancer(model_dir, load_on, dtype, size=config.size)
    if config.offload:
        enhancer.enable_offload(Offloader(device))
    settings = config.overrides(enhancer.config.defaults)
    check_enhance_steps(enhancer, settings.steps)
    size = enhancer.output_size(*video.shape[1:3])
    manifest = {
        "streamingt2v_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": str(config.video),
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "fps": config.fps,
        "size": list(size),
        "enhance": config_to_dict(settings),
        "model": {"path": str(model_dir), "files": file_hashes(model_dir)},
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }
    frames = enhancer.enhance(
        iter(video), len(video), config.prompt, settings, config.negative_prompt, config.progress
    )
    return write_video(frames, config.out, config.fps, manifest, config.overwrite)


def check_enhance_steps(enhancer: Enhancer, steps: int) -> None:
    most = max_steps(enhancer.scheduler_config)
    if steps > most:
        raise UsageError(f"enhancer steps must be at most {most} (its schedule), got {steps}")


def _settings(request: Request) -> dict[str, Any]:
    s = request.sample
    return dict(
        seed=request.seed,
        steps=s.steps,
        guidance=s.guidance,
        stream_guidance=s.chunk_guidance,
        replace_overlap=s.replace_overlap,
        scheduler=s.scheduler,
        negative_prompt=s.negative_prompt,
        height=request.size[0],
        width=request.size[1],
        method=request.method,
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
        "size": list(request.size),
        "method": request.method,
        "sample": config_to_dict(request.sample),
        "stream": config_to_dict(pipe.config.stream),
        "model": {"path": str(model_dir), "files": file_hashes(model_dir)},
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "stream_dtype": str(pipe.stream_dtype).removeprefix("torch."),
        "extra": config.extra,
        "enhance": None,
        "chunks": [],
    }
