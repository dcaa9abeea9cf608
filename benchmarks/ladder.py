"""The learnability ladder of the embedded default: one cheap, fixed measurement per rung.

Each rung is measured on its own, on frames no training step drew (the evaluation draws its
world parameters from its own stream, ``rng_for("ladder", rung, seed)``), with the world's
model-free checks, in about a minute on 2 cores:

  rung 0  representation: the VAE's round trip of rendered frames (colour, background,
          shape, PSNR). Gate: colour and background 100%, shape >= 95%.
  rung 1  appearance: text -> one frame from the base UNet alone (F = 1), sampled for
          held-out draws of the world's captions. Gate: colour >= 95%, background >= 98%,
          shape >= 90%.

    python benchmarks/ladder.py rung0 --vae DIR [--object-size 0.3]
    python benchmarks/ladder.py rung1 --unet DIR --vae DIR [--guidance G] [--steps N]
    python benchmarks/ladder.py rung1 --run RUN_DIR --vae DIR   # a run's latest checkpoint (EMA)

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
    from diffusers import AutoencoderKL, UNet3DConditionModel

    from streamingt2v.config import SampleConfig
    from streamingt2v.models.weights import load_diffusers
    from streamingt2v.sampling import make_scheduler, sample, text_denoiser
    from streamingt2v.training.stages import WORLD_SCHEDULER, minilm

    unet = (
        checkpoint_unet(unet_dir)
        if (unet_dir / "checkpoint").is_dir()
        else load_diffusers(UNet3DConditionModel, unet_dir)
    ).eval()
    vae = load_diffusers(AutoencoderKL, vae_dir).eval()
    text = minilm()
    captions = [caption for caption, _ in world_frames(1, count, object_size)]
    context = torch.cat([text([""] * count), text(captions)])  # (2B, T, D) [negative, prompt]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = 32 // factor
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn((count, vae.config.latent_channels, 1, side, side), generator=generator)
    config = SampleConfig(steps=steps, guidance=guidance, scheduler=scheduler)
    started = time.perf_counter()
    latents = sample(
        text_denoiser(unet, context, guidance),
        noise,
        make_scheduler(config, WORLD_SCHEDULER),
        generator,
    )  # (B, C, 1, h, w)
    z = latents[:, :, 0] / vae.config.scaling_factor  # (B, C, h, w)
    frames = to_uint8(vae.decode(z).sample)
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
    for p in (r0, r1):
        p.add_argument("--object-size", type=float, default=SIZE)
        p.add_argument("--count", type=int, default=96, help="held-out frames")
        p.add_argument("--out", type=Path, default=None, help="append the result (JSON lines)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.rung == "rung0":
        result = rung0(args.vae, args.object_size, args.count)
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
