"""Peak resident memory of ``generate`` against the video's length.

Each length runs in a fresh process (peak RSS = ``ru_maxrss`` of that process), writing an
H.264 mp4 exactly as ``streamingt2v generate`` does, on a tiny random model folder.
Target (core issue): peak at 1200 frames / peak at 80 frames <= 1.10.

    python benchmarks/memory.py --frames 80 1200 --repeats 3 --steps 2
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


def child(model: str, frames: int, steps: int, out: str) -> None:
    from streamingt2v.generate import GenerateConfig, generate

    started = time.perf_counter()
    generate(
        GenerateConfig(
            "a red circle moving right",
            frames,
            Path(out),
            steps=steps,
            model=Path(model),
            progress=False,
            overwrite=True,
        )
    )
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
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, frames, steps, out = args.child
        return child(model, int(frames), int(steps), out)

    from streamingt2v.random_models import random_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        random_pipeline(args.scale, seed=0).save_pretrained(model)
        peaks: dict[int, list[float]] = {n: [] for n in args.frames}
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
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                peaks[n].append(result["peak_mib"])
                print(json.dumps(result), flush=True)
    median = {n: statistics.median(v) for n, v in peaks.items()}
    lo, hi = min(args.frames), max(args.frames)
    print(
        json.dumps(
            {
                "median_peak_mib": median,
                "ratio": median[hi] / median[lo],
                "scale": args.scale,
                "steps": args.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
