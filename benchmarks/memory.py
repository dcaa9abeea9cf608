"""Peak resident memory (and time) of ``generate`` or ``enhance`` against the video's length.

Each length runs in a fresh process (peak RSS = ``ru_maxrss`` of that process), writing an
H.264 mp4 exactly as the command does, on a tiny random model folder.
Targets: generate, peak at 1200 frames / at 80 <= 1.10; enhance, peak at 1200
frames / at 120 <= 1.10 and time per frame within 10% of linear.

    python benchmarks/memory.py --frames 80 1200 --repeats 3 --steps 2
    python benchmarks/memory.py --enhance --frames 120 1200 --repeats 3 --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(model: str, frames: int, steps: int, out: str, enhance: str | None) -> None:
    from streamingt2v.enhance_file import enhance_file
    from streamingt2v.generate import generate
    from streamingt2v.run_config import EnhanceFileConfig, GenerateConfig

    started = time.perf_counter()
    prompt = "a red circle moving right"
    if enhance:  # ``enhance`` is the input video
        enhance_file(
            EnhanceFileConfig(
                Path(enhance), prompt, Path(out), steps=steps, model=Path(model), progress=False,
                overwrite=True,
            )
        )  # fmt: skip
    else:
        generate(
            GenerateConfig(
                prompt, frames, Path(out), steps=steps, model=Path(model), progress=False,
                overwrite=True, enhance=False,
            )
        )  # fmt: skip
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "frames": frames,
                "peak_mib": peak_kib / 1024,
                "seconds": time.perf_counter() - started,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[80, 1200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--enhance", action="store_true", help="measure enhance, not generate")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, frames, steps, out, source = args.child
        return child(model, int(frames), int(steps), out, source if source != "-" else None)

    from streamingt2v.random_models import random_enhancer, random_pipeline
    from streamingt2v.video_io import VideoWriter
    from streamingt2v.world.render import render, rng_for, sample_params

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        pipe = random_pipeline(args.scale, seed=0)
        pipe.save_pretrained(model)
        sources = {n: "-" for n in args.frames}
        if args.enhance:
            random_enhancer(pipe.vae, pipe.text_encoder, seed=1).save_pretrained(model / "enhancer")
            params = sample_params(rng_for("memory", 0))
            for n in args.frames:  # the input: a world video of n frames
                sources[n] = str(Path(tmp) / f"in{n}.mp4")
                writer = VideoWriter(Path(sources[n]), 8)
                writer.write(render(params, n, size=pipe.frame_size[0]))
                writer.finish()
        peaks: dict[int, list[float]] = {n: [] for n in args.frames}
        seconds: dict[int, list[float]] = {n: [] for n in args.frames}
        for _ in range(args.repeats):
            for n in args.frames:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(model),
                        str(n),
                        str(args.steps),
                        str(Path(tmp) / f"v{n}.mp4"),
                        sources[n],
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                peaks[n].append(result["peak_mib"])
                seconds[n].append(result["seconds"])
                print(json.dumps(result), flush=True)
    median = {n: statistics.median(v) for n, v in peaks.items()}
    per_frame = {n: statistics.median(v) / n for n, v in seconds.items()}
    lo, hi = min(args.frames), max(args.frames)
    print(
        json.dumps(
            {
                "command": "enhance" if args.enhance else "generate",
                "median_peak_mib": median,
                "ratio": median[hi] / median[lo],
                "median_seconds_per_frame": per_frame,
                "time_per_frame_ratio": per_frame[hi] / per_frame[lo],
                "scale": args.scale,
                "steps": args.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
