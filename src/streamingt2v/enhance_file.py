"""``enhance``: a video file -> its enhanced video + JSON manifest; the function behind the
CLI command (the refinement itself: ``enhancer.Enhancer.enhance``)."""

from __future__ import annotations

from datetime import UTC, datetime

import torch

from . import __version__
from .config import UsageError, config_to_dict
from .offload import Offloader
from .outputs import GenerateResult, check_output, claimed_output, file_hashes, write_video
from .run_config import EnhanceFileConfig
from .runtime import check_enhance_steps, load_enhancer, resolve_device, resolve_model_dir
from .video_io import read_video


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
