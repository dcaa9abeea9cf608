"""The learnability ladder of the embedded default: one cheap, fixed measurement per rung.

Each rung is measured on its own, on frames no training step drew (the evaluation draws its
world parameters from its own stream, ``rng_for("ladder", rung, seed)``), with the world's
model-free checks, in about a minute on 2 cores:

  rung 0  representation: the VAE's round trip of rendered frames (colour, background,
          shape, PSNR). Gate: colour and background 100%, shape >= 95%.
  rung 1  appearance: text -> one frame from the base UNet alone (F = 1), sampled for
          held-out draws of the world's captions. Gate: colour >= 95%, background >= 98%,
          shape >= 90%.
  rung 2  motion in the first chunk: text -> 16 frames, for held-out captions with straight
          motions (and bouncing, circling). Gate: direction >= 90% of 8-frame windows on the
          straight motions, colour and shape held (rung 1's figures over all frames).

    python benchmarks/research/ladder.py rung0 --vae DIR [--object-size 0.3]
    python benchmarks/research/ladder.py rung1 --unet DIR --vae DIR [--guidance G] [--steps N]
    python benchmarks/research/ladder.py rung1 --run RUN_DIR --vae DIR  # latest checkpoint (EMA)
    python benchmarks/research/ladder.py rung2 --run RUN_DIR --vae DIR [--count 24]

Each prints one JSON line (add ``--out FILE`` to append it to a JSON-lines file), so a run's
learning curve is the ladder measured on its checkpoints.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from streamingt2v.metrics.world_checks import read_frame
from streamingt2v.world.render import SIZE, parse_caption, render, rng_for, sample_params


def world_frames(rung: int, count: int, object_size: float, size: int = 32, seed: int = 0):
    """``count`` held-out (caption, frame) pairs: one frame of a random world video each."""
    rng = rng_for("ladder", rung, seed)
    pairs = []
    for _ in range(count):
        params = sample_params(rng, object_size)
        start = int(rng.integers(0, 600))
        pairs.append((params.caption, render(params, np.array([start]), size)[0]))
    return pairs


def frame_scores(frames: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Share of frames whose background, object colour and shape read as their caption."""
    right = []
    for frame, caption in zip(frames, captions, strict=True):
        words, read = parse_caption(caption), read_frame(frame)
        right.append(
            (
                read.colour == words["colour"],
                read.background == words["background"],
                read.shape == words["shape"],
            )
        )
    colour, background, shape = np.mean(right, axis=0)
    return {"colour": float(colour), "background": float(background), "shape": float(shape)}


def to_model(frames_fhwc: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(frames_fhwc).float().permute(0, 3, 1, 2) / 127.5 - 1


def to_uint8(frames_fchw: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((frames_fchw.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def rung0(vae_dir: Path, object_size: float, count: int) -> dict:
    from diffusers import AutoencoderKL

    from streamingt2v.models.weights import load_diffusers

    vae = load_diffusers(AutoencoderKL, vae_dir).eval()
    captions, frames = zip(*world_frames(0, count, object_size), strict=True)
    frames = np.stack(frames)
    x = to_model(frames)
    back = to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample)
    mse = np.mean((back.astype(np.float64) - frames) ** 2)
    return {
        "rung": 0,
        "vae": str(vae_dir),
        "factor": 2 ** (len(vae.config.block_out_channels) - 1),
        "latent_channels": vae.config.latent_channels,
        "object_size": object_size,
        "frames": count,
        "rendered": frame_scores(frames, list(captions)),
        "round_trip": frame_scores(back, list(captions)),
        "psnr_db": round(float(10 * np.log10(255**2 / mse)), 2),
    }


def load_unet(path: Path):
    """A UNet folder, or a run folder's latest checkpoint (its EMA weights)."""
    from diffusers import UNet3DConditionModel

    from streamingt2v.models.weights import load_diffusers

    if (path / "checkpoint").is_dir():
        return checkpoint_unet(path).eval()
    return load_diffusers(UNet3DConditionModel, path).eval()


@torch.no_grad()
def sample_clips(unet, vae, captions: list[str], frames: int, guidance: float, steps: int,
                 scheduler: str) -> np.ndarray:  # fmt: skip
    """(B, F, 32, 32, 3) uint8: the base UNet's text -> video for ``captions`` (seed 1)."""
    from streamingt2v.config import SampleConfig
    from streamingt2v.sampling import make_scheduler, sample, text_denoiser
    from streamingt2v.training.common import WORLD_SCHEDULER, minilm

    text = minilm()
    context = torch.cat([text([""] * len(captions)), text(captions)])  # (2B, T, D)
    side = 32 // 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator().manual_seed(1)
    shape = (len(captions), vae.config.latent_channels, frames, side, side)
    noise = torch.randn(shape, generator=generator)
    config = SampleConfig(steps=steps, guidance=guidance, scheduler=scheduler)
    latents = sample(
        text_denoiser(unet, context, guidance),
        noise,
        make_scheduler(config, WORLD_SCHEDULER),
        generator,
    )  # (B, C, F, h, w)
    z = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / vae.config.scaling_factor  # (B*F, C, h, w)
    return to_uint8(vae.decode(z).sample).reshape(len(captions), frames, 32, 32, 3)


@torch.no_grad()
def rung2(run: Path, vae_dir: Path, object_size: float, count: int, guidance: float,
          steps: int, scheduler: str) -> dict:  # fmt: skip
    from diffusers import AutoencoderKL

    from streamingt2v.metrics.world_checks import check_video
    from streamingt2v.models.weights import load_diffusers

    unet = load_unet(run)
    vae = load_diffusers(AutoencoderKL, vae_dir).eval()
    rng = rng_for("ladder", 2, 0)
    motions = ["moving left", "moving right", "moving up", "moving down"]
    captions = [
        sample_params(rng, object_size, motion=motions[i % 4]).caption for i in range(count)
    ]
    started = time.perf_counter()
    videos = sample_clips(unet, vae, captions, 16, guidance, steps, scheduler)
    reports = [check_video(v, parse_caption(c)) for v, c in zip(videos, captions, strict=True)]
    directions = [r.direction_right for r in reports if r.direction_right is not None]
    return {
        "rung": 2,
        "unet": str(run),
        "step": getattr(unet, "ladder_step", None),
        "guidance": guidance,
        "steps": steps,
        "videos": count,
        "seconds": round(time.perf_counter() - started, 1),
        "colour": float(np.mean([r.colour_right for r in reports])),
        "background": float(np.mean([r.background_right for r in reports])),
        "shape": float(np.mean([r.shape_right for r in reports])),
        "direction": float(np.mean(directions)) if directions else None,
    }


@torch.no_grad()
def rung1(
    unet_dir: Path,
    vae_dir: Path,
    object_size: float,
    count: int,
    guidance: float,
    steps: int,
    scheduler: str,
) -> dict:
    from diffusers import AutoencoderKL

    from streamingt2v.models.weights import load_diffusers

    unet = load_unet(unet_dir)
    vae = load_diffusers(AutoencoderKL, vae_dir).eval()
    captions = [caption for caption, _ in world_frames(1, count, object_size)]
    started = time.perf_counter()
    frames = sample_clips(unet, vae, captions, 1, guidance, steps, scheduler)[:, 0]
    return {
        "rung": 1,
        "unet": str(unet_dir),
        "step": getattr(unet, "ladder_step", None),
        "guidance": guidance,
        "steps": steps,
        "scheduler": scheduler,
        "frames": count,
        "seconds": round(time.perf_counter() - started, 1),
        **frame_scores(frames, captions),
    }


def checkpoint_unet(run: Path):
    """The EMA weights of a base run's latest checkpoint as a UNet (its config from the
    checkpoint's state.json), and the step it was saved at in ``unet.ladder_step``."""
    from diffusers import UNet3DConditionModel
    from safetensors.torch import load_file

    state = json.loads((run / "checkpoint" / "state.json").read_text())
    unet = UNet3DConditionModel(**state["config"]["model"])
    ema = load_file(run / "checkpoint" / "ema.safetensors")
    missing, unexpected = unet.load_state_dict(ema, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match: {missing[:5]} {unexpected[:5]}")
    unet.ladder_step = state["step"]
    return unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="rung", required=True)
    r0 = sub.add_parser("rung0", help="the VAE's round trip")
    r0.add_argument("--vae", type=Path, required=True)
    r1 = sub.add_parser("rung1", help="text -> one frame")
    r1.add_argument("--unet", type=Path, help="a UNet folder")
    r1.add_argument("--run", type=Path, help="a base run's folder: its latest checkpoint")
    r1.add_argument("--vae", type=Path, required=True)
    r1.add_argument("--guidance", type=float, default=2.0)
    r1.add_argument("--steps", type=int, default=20)
    r1.add_argument("--scheduler", default="dpm")
    r2 = sub.add_parser("rung2", help="text -> 16 frames: motion")
    r2.add_argument("--run", type=Path, required=True, help="a UNet folder or a run folder")
    r2.add_argument("--vae", type=Path, required=True)
    r2.add_argument("--guidance", type=float, default=2.0)
    r2.add_argument("--steps", type=int, default=20)
    r2.add_argument("--scheduler", default="dpm")
    for p in (r0, r1, r2):
        p.add_argument("--object-size", type=float, default=SIZE)
        p.add_argument("--count", type=int, default=96, help="held-out frames")
        p.add_argument("--out", type=Path, default=None, help="append the result (JSON lines)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.rung == "rung0":
        result = rung0(args.vae, args.object_size, args.count)
    elif args.rung == "rung2":
        count = 24 if args.count == 96 else args.count  # 16-frame clips: fewer
        result = rung2(
            args.run, args.vae, args.object_size, count, args.guidance, args.steps, args.scheduler
        )
    else:
        result = rung1(
            args.run or args.unet,
            args.vae,
            args.object_size,
            args.count,
            args.guidance,
            args.steps,
            args.scheduler,
        )
    line = json.dumps(result)
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
