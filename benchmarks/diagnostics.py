"""Measurements behind the design decisions recorded in docs/ (training.md, evaluation.md).

    python benchmarks/diagnostics.py scuts            # SCuts floor: object-only cuts found
    python benchmarks/diagnostics.py vae --vae DIR    # world checks after a VAE round trip
    python benchmarks/diagnostics.py x0 --unet DIR [--schedule S] [--prediction P]

``scuts``: 8 pairs of world videos with the same background, cut at frame 24, and the
uncut first videos, counted by AdaptiveDetector at several ``min_content_val`` floors.
``vae``: 12 rendered videos through the VAE and back, world checks before and after.
``x0``: a base UNet's error at several noise levels, as its prediction and as the clean
latents it implies (the epsilon-at-high-noise problem of run v1).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def scuts() -> None:
    from scenedetect import AdaptiveDetector, detect

    from streamingt2v.metrics.scuts import MIN_SCENE_LEN
    from streamingt2v.video_io import VideoWriter
    from streamingt2v.world.render import render, rng_for, sample_params

    def cuts(video: np.ndarray, floor: float) -> int:
        big = video.repeat(4, 1).repeat(4, 2)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "v.mp4"
            writer = VideoWriter(path, 8)
            writer.write(big)
            writer.finish()
            detector = AdaptiveDetector(min_scene_len=MIN_SCENE_LEN, min_content_val=floor)
            return max(0, len(detect(str(path), detector)) - 1)

    for floor in (15, 5, 2, 1):
        rng = rng_for("cuts", 0)
        found = false = 0
        for _ in range(8):
            a = sample_params(rng)
            b = sample_params(rng, background=a.background)
            first = render(a, 48)
            found += cuts(np.concatenate([first[:24], render(b, np.arange(100, 148))[24:]]), floor)
            false += cuts(first, floor)
        print(f"min_content_val {floor}: cuts found {found}/8, false cuts {false} in 8 videos")


def vae_round_trip(folder: Path) -> None:
    from diffusers import AutoencoderKL

    from streamingt2v.metrics.world_checks import check_video
    from streamingt2v.models.weights import load_diffusers
    from streamingt2v.world.render import parse_caption, render, rng_for, sample_params

    vae = load_diffusers(AutoencoderKL, folder).eval()
    rng = rng_for("diag", 0)
    rows = {"rendered": [], "vae": []}
    for _ in range(12):
        params = sample_params(rng)
        video = render(params, 32)
        x = torch.from_numpy(video).float().permute(0, 3, 1, 2) / 127.5 - 1  # (F, 3, H, W)
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        back = ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        for name, v in (("rendered", video), ("vae", back)):
            r = check_video(v, parse_caption(params.caption))
            rows[name].append((r.colour_right, r.background_right, r.shape_right))
    for name, values in rows.items():
        colour, background, shape = np.mean(values, axis=0)
        print(f"{name}: colour {colour:.1%} background {background:.1%} shape {shape:.1%}")


def x0_error(vae_dir: Path, unet_dir: Path, schedule: str, prediction: str | None) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel

    from streamingt2v.models.unet import unet_forward
    from streamingt2v.models.weights import load_diffusers
    from streamingt2v.training.stages import SCHEDULES, minilm
    from streamingt2v.world.dataset import WorldClips, clip_batch

    vae = load_diffusers(AutoencoderKL, vae_dir).eval()
    unet = load_diffusers(UNet3DConditionModel, unet_dir).eval()
    config = SCHEDULES[schedule] | ({"prediction_type": prediction} if prediction else {})
    noise = DDPMScheduler.from_config(config)
    batch = clip_batch(WorldClips(16, 32, 600, seed=99), 5, 2)
    with torch.no_grad():
        frames = batch["video"].permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*F, 3, H, W)
        z0 = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
        z0 = z0.unflatten(0, (2, -1)).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
        context = minilm()(batch["caption"])
        generator = torch.Generator().manual_seed(0)
        print(f"latent variance {z0.var().item():.3f}; prediction {noise.config.prediction_type}")
        for step in (50, 200, 500, 800, 950, 999):
            eps = torch.randn(z0.shape, generator=generator)
            t = torch.full((2,), step)
            x = noise.add_noise(z0, eps, t)
            out = unet_forward(unet, x, t, context)
            a = noise.alphas_cumprod[step]
            if noise.config.prediction_type == "v_prediction":
                x0 = a.sqrt() * x - (1 - a).sqrt() * out
                target = noise.get_velocity(z0, eps, t)
            else:
                x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
                target = eps
            print(
                f"t={step}: prediction error {((out - target) ** 2).mean().item():.4f}, "
                f"implied x0 error {((x0 - z0) ** 2).mean().item():.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["scuts", "vae", "x0"])
    parser.add_argument("--vae", type=Path, default=Path("runs/default/vae_sharp/final"))
    parser.add_argument("--unet", type=Path, default=Path("runs/default/base/final"))
    parser.add_argument("--schedule", default="world", choices=["world", "modelscope"])
    parser.add_argument(
        "--prediction", choices=["epsilon", "v_prediction"], help="what the UNet predicts"
    )
    args = parser.parse_args()
    if args.what == "scuts":
        scuts()
    elif args.what == "vae":
        vae_round_trip(args.vae)
    else:
        x0_error(args.vae, args.unet, args.schedule, args.prediction)


if __name__ == "__main__":
    main()
