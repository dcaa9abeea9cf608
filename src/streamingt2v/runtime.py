"""What a run loads before it starts: the model folder, the device and precision, the
enhancer."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import UsageError
from .enhancer import Enhancer
from .models.weights import local_model_folder
from .pipeline import StreamingT2VPipeline
from .run_config import DEFAULT_MODEL_DIR
from .sampling import max_steps

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def check_enhance_steps(enhancer: Enhancer, steps: int) -> None:
    most = max_steps(enhancer.scheduler_config)
    if steps > most:
        raise UsageError(f"enhancer steps must be at most {most} (its schedule), got {steps}")
