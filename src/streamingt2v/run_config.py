"""The settings of the commands that run models (``generate``, ``enhance``), each declared once.

A field is the Python API's argument and, through ``options.option``, the command line's
flag with its help text: ``cli.py`` builds both commands from these classes. Every value is
checked here, before any model is loaded (no torch import: ``--help`` stays instant).
Unset sampling settings (None) take the model folder's defaults when the run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    ENHANCE_SAMPLERS,
    MODES,
    SCHEDULERS,
    EnhanceConfig,
    SampleConfig,
    UsageError,
    check_request,
)
from .drift import DriftGuard
from .methods import METHODS
from .options import option
from .timeline import Timeline

DTYPE_NAMES = ("float32", "float16", "bfloat16")
# RunOptions' fields (the options every command that runs a model takes).
RUN_FIELDS = ("device", "dtype", "offload", "overwrite", "progress")
# The embedded default model shipped in the package (used where no --model is given).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

# Help texts name the model's defaults as {steps}, {guidance}, {scheduler}: the CLI fills
# them from the embedded default's pipeline_config.json (``cli._model_defaults``).


@dataclass(kw_only=True)
class RunOptions:
    """Device, precision, offload, overwriting and progress: shared by the commands."""

    device: str = option("auto", "cpu, cuda, cuda:1, ... (default: auto)")
    dtype: str = option(
        "auto",
        "weights' precision (default: float16 on CUDA, float32 on CPU; a model folder's "
        "stream_dtype, e.g. float32 for a converted official checkpoint, then keeps the "
        "streaming stage in that precision)",
        choices=["auto", *DTYPE_NAMES],
    )
    offload: bool = option(
        False,
        "keep each UNet in CPU memory until its stage runs (less GPU memory)",
        action="store_true",
    )
    overwrite: bool = option(False, "replace an existing output", action="store_true")
    progress: bool = option(
        True, "no progress bars or warnings", flag="--quiet", action="store_false"
    )

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPE_NAMES:
            raise UsageError(
                f"unknown dtype {self.dtype!r}; choose auto or one of {list(DTYPE_NAMES)}"
            )


def check_fps(fps: object) -> None:
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= 240
    ):
        raise UsageError(f"fps must be an integer in [1, 240], got {fps!r}")


# The fields of GenerateConfig that are the model's sampling settings (SampleConfig's);
# scripts take them with ``options.add_options(parser, GenerateConfig, only=SAMPLE_FIELDS)``.
SAMPLE_FIELDS = (
    "steps",
    "guidance",
    "scheduler",
    "negative_prompt",
    "stream_guidance",
    "replace_overlap",
)


def sample_overrides(settings: object) -> dict[str, Any]:
    """The sampling settings that ``settings`` (a GenerateConfig or parsed flags) gives, not
    None, by ``SampleConfig`` field."""
    values = {name: getattr(settings, name) for name in SAMPLE_FIELDS}
    return {k: v for k, v in values.items() if v is not None}


@dataclass
class GenerateConfig(RunOptions):
    """Everything one ``streamingt2v generate`` run needs (``generate.generate``)."""

    prompt: str | None = option(
        None, "text prompt (or give --timeline or --prompts)", positional=True, nargs="?"
    )
    num_frames: int | None = option(
        None,
        "number of frames, any integer >= 1 (default: 80; a --timeline's: the sum of its segments)",
        flag="--frames",
    )
    out: Path = option(
        Path("video.mp4"),
        "output: .mp4 (H.264), .gif, or a folder name for PNG frames (default: video.mp4)",
    )
    seed: int = option(
        0,
        "seed, an integer in [0, 2**63 - 1]; chunk k's noise derives from (seed, k) (default: 0)",
    )
    steps: int | None = option(
        None,
        "denoising steps per chunk, at most the schedule's timesteps (default: {steps})",
    )
    guidance: float | None = option(
        None, "classifier-free guidance scale, finite and >= 0 (default: {guidance})"
    )
    stream_guidance: float | None = option(
        None, "guidance of the streaming chunks >= 0 (default: the model's, else --guidance)"
    )
    replace_overlap: bool | None = option(
        None,
        "streaming chunks: pin the overlap frames' latents to the conditioning frames', "
        "noised to each step (not in the paper; default: the model's setting, else off)",
        action=argparse.BooleanOptionalAction,
    )
    negative_prompt: str | None = option(None, "negative prompt for guidance (default: empty)")
    scheduler: str | None = option(
        None,
        "ddim (eta 1, the paper's) or dpm (DPM-Solver++) (default: {scheduler})",
        choices=SCHEDULERS,
    )
    model: Path | None = option(
        None,
        "pipeline or ModelScope folder, or a hub id (default: the embedded default model)",
    )
    fps: int | None = option(
        None,
        "frames per second of the output (default: the model folder's, 8 for the "
        "embedded default and the paper's)",
    )
    height: int | None = option(
        None, "frame height in pixels, a multiple of the VAE factor (default: the model's)"
    )
    width: int | None = option(None, "frame width in pixels (default: the model's)")
    enhancer: Path | None = option(
        None,
        "enhancer folder or diffusers video model (default: the model folder's "
        "enhancer/, if it has one)",
    )
    enhance_size: str | None = option(
        None,
        "HEIGHTxWIDTH of the enhanced video, for an enhancer trained at a fixed size "
        "(e.g. 576x1024; default: the enhancer folder's own factor)",
    )
    method: str = option(
        "streamingt2v",
        "the method, or a baseline/ablation for comparisons: "
        + "; ".join(f"{k}: {v.description}" for k, v in METHODS.items()),
        choices=list(METHODS),
    )
    enhance: bool = option(
        True,
        "skip the enhancer (default: enhance when the model folder has enhancer/)",
        flag="--no-enhance",
        action="store_false",
    )
    resume: bool = option(
        False,
        "continue the run that wrote --out, stopped or killed (same settings and model; its "
        "saved state OUT.state.safetensors, or a killed run's beside its partial video), or "
        "extend a finished one to --frames: the frames are those of one uninterrupted run",
        action="store_true",
    )
    branch: Path | None = option(
        None,
        "a video this model made (a PNG folder keeps its frames exact): keep its frames "
        "before --branch-chunk and make the rest with these settings (another --seed or "
        "prompt); every chunk from there on changes, as each follows the one before",
    )
    branch_chunk: int | None = option(
        None, "the first chunk --branch re-makes (1 or more; chunk k starts at frame 16 + 8(k-1))"
    )
    extend: Path | None = option(
        None,
        "continue this video to --frames in all, written to --out (the video is not "
        "changed): one this model made, with its saved state (VIDEO.state.safetensors), "
        "continues exactly as a longer run would; any other from its last 8 frames and its "
        "first frame (its compressed pixels, read back)",
    )
    timeline: Path | None = option(
        None,
        "a prompt timeline instead of a prompt: a JSON file of segments, each a prompt and "
        "its frames (optional seed, guidance, negative_prompt), and the anchor (keep or "
        "reanchor); the prompt changes at the chunk boundary at or after each segment's "
        "first frame",
    )
    drift_guard: int | None = option(
        None,
        "re-sample a streaming chunk that drifts from the first frame or cuts, up to this "
        "many samples of it in all (off by default; see --drift-max-distance, "
        "--drift-max-jump); every try is in the manifest",
    )
    drift_max_distance: float = option(
        0.4,
        "the drift guard's limit on the image-embedding distance to the anchor (default: "
        "0.4, calibrated on the embedded default; its scale is the model's image encoder's)",
    )
    drift_max_jump: float = option(
        5.3,
        "the drift guard's limit on the change across a chunk boundary, over the chunk's own "
        "frame-to-frame change (default: 5.3, calibrated on the embedded default)",
    )
    prompts: Path | None = option(
        None,
        "a file of prompts, one per line: one video each, into --out-dir; under "
        "torchrun or accelerate launch the prompts are split over the processes, and a "
        "video already made is skipped, one stopped or killed resumed",
    )
    out_dir: Path | None = option(None, "with --prompts: the folder of the videos")
    extra: dict[str, Any] = option({}, cli=False)  # recorded in the manifest as is

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out = Path(self.out)
        given = [n for n in ("prompt", "timeline", "prompts") if getattr(self, n) is not None]
        if len(given) != 1:
            raise UsageError(
                "give a prompt, --timeline FILE or --prompts FILE"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if self.prompts is not None and self.out_dir is None:
            raise UsageError("--prompts needs --out-dir, the folder of its videos")
        if self.out_dir is not None and self.prompts is None:
            raise UsageError("--out-dir goes with --prompts (one video: --out)")
        if self.timeline is not None:
            timeline = self.read_timeline()
            if self.num_frames not in (None, timeline.num_frames):
                raise UsageError(
                    f"--frames {self.num_frames} differs from the timeline's "
                    f"{timeline.num_frames} frames (the sum of its segments): leave it out"
                )
            self.num_frames = timeline.num_frames
            if self.branch is not None or self.extend is not None:
                raise UsageError("--timeline starts a video; it does not take --branch or --extend")
        if self.num_frames is None:
            self.num_frames = 80
        self.guard()  # checked now
        size = (
            None
            if self.height is None and self.width is None
            else (
                self.height or 1,
                self.width or 1,
            )
        )
        prompt = "-" if self.prompts is not None else self.first_prompt  # a batch: each line's
        check_request(prompt, self.num_frames, self.seed, size, self.method)
        # Each sampling setting given is checked as SampleConfig checks it (the others keep
        # valid placeholders until the model's defaults are known).
        dataclasses.replace(SampleConfig(), **sample_overrides(self))
        check_fps(self.fps)
        starts = [name for name in ("resume", "branch", "extend") if getattr(self, name)]
        if len(starts) > 1:
            raise UsageError(f"choose one of --{' or --'.join(starts)}")
        if self.extend is not None:
            self.extend = Path(self.extend)
            if not self.extend.exists():
                raise UsageError(f"--extend video not found: {self.extend}")
        if (self.branch is None) != (self.branch_chunk is None):
            raise UsageError("--branch and --branch-chunk go together")
        if self.branch is not None:
            self.branch = Path(self.branch)
            if not self.branch.exists():
                raise UsageError(f"--branch video not found: {self.branch}")
            chunk = self.branch_chunk
            if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
                raise UsageError(f"--branch-chunk must be an integer >= 1, got {chunk!r}")

    @classmethod
    def extending(cls, video: Path, num_frames: int, out: Path, **given: Any) -> GenerateConfig:
        """The run that continues ``video`` to ``num_frames`` (``streamingt2v extend``): each
        setting not given (None) is the one VIDEO was made with, from its manifest
        (VIDEO.json), where it has one; a video without one needs ``prompt``."""
        video = Path(video)
        values = recorded_settings(video)
        values |= {k: v for k, v in given.items() if v is not None}
        if "prompt" not in values:
            raise UsageError(f"{video} has no manifest ({video.name}.json): give --prompt")
        return cls(num_frames=num_frames, out=out, extend=video, **values)

    def guard(self) -> DriftGuard | None:
        """The drift guard of the run, None when off."""
        if self.drift_guard is None:
            return None
        return DriftGuard(self.drift_guard, self.drift_max_distance, self.drift_max_jump)

    def read_timeline(self) -> Timeline | None:
        return None if self.timeline is None else Timeline.load(self.timeline)

    @property
    def first_prompt(self) -> str | None:
        """The prompt the run starts with: the prompt, or the timeline's first segment's."""
        timeline = self.read_timeline()
        return timeline.segments[0].prompt if timeline else self.prompt

    def request_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``pipe.request`` for this run."""
        return dict(
            seed=self.seed,
            height=self.height,
            width=self.width,
            method=self.method,
            **{name: getattr(self, name) for name in SAMPLE_FIELDS},
        )


def recorded_settings(video: Path) -> dict[str, Any]:
    """The settings ``video`` was made with, by ``GenerateConfig`` field, from its manifest
    (VIDEO.json; none without one): prompt, seed, model, method, fps, size, sampling."""
    video = Path(video)
    manifest_file = video.with_name(video.name + ".json")
    made = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    sample = made.get("sample", {})
    size = made.get("size") or [None, None]
    recorded = {
        "prompt": made.get("prompt"),
        "seed": made.get("seed"),
        "model": made.get("model", {}).get("path"),
        "method": made.get("method"),
        "fps": made.get("fps"),
        "height": size[0],
        "width": size[1],
        **{name: sample.get(name) for name in SAMPLE_FIELDS},
    }
    return {k: v for k, v in recorded.items() if v is not None}


@dataclass
class EnhanceFileConfig(RunOptions):
    """One ``streamingt2v enhance`` run (``enhance_file.enhance_file``). Unset refinement
    settings (None) take the enhancer's defaults from its ``enhancer_config.json``."""

    video: Path = option(help="input video (.mp4, .gif or a PNG folder)", positional=True)
    prompt: str = option(help="text prompt of the video", required=True)
    out: Path = option(help="output: .mp4, .gif or a folder for PNG frames", required=True)
    mode: str | None = option(
        None, "chunk blending (default: the enhancer's, randomized)", choices=MODES
    )
    chunk: int | None = option(None, "frames per chunk (default: the enhancer's, 24 officially)")
    overlap: int | None = option(
        None, "frames shared by neighbours (default: the enhancer's, 8 officially)"
    )
    strength: float | None = option(
        None,
        "SDEdit noise level in (0, 1] (default: the enhancer's, 0.6 officially, i.e. "
        "t=600 of 1000)",
    )
    steps: int | None = option(
        None,
        "sampler steps, at most the schedule's timesteps (default: the enhancer's, 30 officially)",
    )
    guidance: float | None = option(
        None, "guidance, finite and >= 0 (default: the enhancer's, 7.5 officially)"
    )
    sampler: str | None = option(
        None,
        "ddim, or dpmpp-2m-sde (MS-Vid2Vid-XL's: its steps run from the SDEdit start) "
        "(default: the enhancer's)",
        choices=ENHANCE_SAMPLERS,
    )
    guidance_rescale: float | None = option(
        None, "CFG rescale in [0, 1] (default: the enhancer's; 0.2 for MS-Vid2Vid-XL)"
    )
    negative_prompt: str = option("", "negative prompt (default: empty)")
    seed: int = option(0, "seed (default: 0)")
    size: str | None = option(
        None,
        "HEIGHTxWIDTH of the output, for an enhancer trained at a fixed size "
        "(default: the enhancer folder's own factor)",
    )
    model: Path | None = option(
        None,
        "pipeline folder with enhancer/, an enhancer folder, or a diffusers video model "
        "({enhancer_default})",
    )
    fps: int = option(8, "output frame rate (default: 8)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.video, self.out = Path(self.video), Path(self.out)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UsageError("the prompt is empty")
        self.overrides(EnhanceConfig())  # validate now, against placeholder defaults
        check_fps(self.fps)

    def overrides(self, defaults: EnhanceConfig) -> EnhanceConfig:
        """``defaults`` with each refinement setting given here (validated)."""
        return defaults.merged(
            mode=self.mode,
            chunk=self.chunk,
            overlap=self.overlap,
            strength=self.strength,
            steps=self.steps,
            guidance=self.guidance,
            sampler=self.sampler,
            guidance_rescale=self.guidance_rescale,
            seed=self.seed,
        )
