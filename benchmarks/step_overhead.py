"""Cost of one denoising step of base + CAM + APM over the base UNet alone.

Same chunk (F=16, F_cond=8), same guided (doubled) batch, one process; the two are timed in
alternation and the median of ``--runs`` runs of each is compared. Target: <= 1.35.
Also timed in the same alternation: base + CAM + APM at guidance 1, where only the prompt's
branch runs (``guidance_1_ratio``: its step over the guided step).

    python benchmarks/step_overhead.py --scale tiny mid --runs 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from streamingt2v.random_models import perturb_, random_pipeline
from streamingt2v.sampling import stream_denoiser, text_denoiser


def measure(scale: str, runs: int) -> dict:
    pipe = random_pipeline(scale, seed=0)
    perturb_(pipe.cam, seed=1)  # trained-like: the cost does not depend on the weights
    perturb_(pipe.apm, seed=2)
    stream = pipe.config.stream
    x = torch.randn(pipe.latent_shape(stream.chunk_frames))
    context = torch.randn(2, stream.text_tokens, pipe.unet.config.cross_attention_dim)
    height, width = pipe.frame_size
    cond = torch.rand(1, 3, stream.cond_frames, height, width) * 2 - 1
    embeds = torch.randn(2, pipe.image_encoder.dim)
    t = torch.tensor(500)
    base = text_denoiser(pipe.unet, context, 7.5)
    names = ("base", "base+cam+apm", "base+cam+apm, guidance 1")
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        # Built once per chunk as in real runs (E_cond runs here, once per chunk).
        started = time.perf_counter()
        full = stream_denoiser(pipe.stream_unet, pipe.cam, pipe.apm, context, embeds, cond, 7.5)
        per_chunk_setup = time.perf_counter() - started
        alone = stream_denoiser(pipe.stream_unet, pipe.cam, pipe.apm, context, embeds, cond, 1.0)
        for fn in (base, full, alone):  # warm-up
            fn(x, t)
        for _ in range(runs):
            for name, fn in zip(names, (base, full, alone), strict=True):
                started = time.perf_counter()
                fn(x, t)
                times[name].append(time.perf_counter() - started)
    median = {k: statistics.median(v) for k, v in times.items()}
    params = {
        "unet": sum(p.numel() for p in pipe.unet.parameters()),
        "cam": sum(p.numel() for p in pipe.cam.parameters()),
        "apm": sum(p.numel() for p in pipe.apm.parameters()),
    }
    return {
        "scale": scale,
        "latent": list(x.shape),
        "params": params,
        "median_seconds": median,
        "ratio": median["base+cam+apm"] / median["base"],
        "guidance_1_ratio": median["base+cam+apm, guidance 1"] / median["base+cam+apm"],
        "per_chunk_setup_seconds": per_chunk_setup,
        "runs": runs,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", nargs="+", default=["tiny", "mid"])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for scale in args.scale:
        result = measure(scale, args.runs)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
