"""Generation speed of a model folder, with the time split by stage.

    python benchmarks/speed.py --model src/streamingt2v/default_model --frames 240 --runs 3

Each run generates ``--frames`` frames into an mp4 (as ``streamingt2v generate`` does);
the figures are medians over the runs. The split is measured by wrapping the functions that
do the work: the UNet forward (its time includes the CAM mergers and the APM mixing that run
inside it; the mergers are also shown alone), the CAM trunk, VAE decoding and video writing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from streamingt2v import StreamingT2VPipeline, sampling
from streamingt2v.models.cam import ConditionalAttentionModule
from streamingt2v.video_io import VideoWriter

TIMES: dict[str, float] = defaultdict(float)


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - started

    return wrapper


def instrument() -> None:
    sampling.unet_forward = timed("unet (incl. mergers, APM)", sampling.unet_forward)
    cam = ConditionalAttentionModule
    cam.features = timed("cam trunk", cam.features)
    cam.merge = timed("cam mergers", cam.merge)
    StreamingT2VPipeline.decode_latents = timed("vae decode", StreamingT2VPipeline.decode_latents)
    VideoWriter.write = timed("writing", VideoWriter.write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--scheduler", default=None)
    args = parser.parse_args()
    instrument()
    pipe = StreamingT2VPipeline.from_pretrained(args.model)
    settings = {k: v for k, v in (("steps", args.steps), ("scheduler", args.scheduler)) if v}
    runs = []
    for run in range(args.runs):
        TIMES.clear()
        with tempfile.TemporaryDirectory() as tmp:
            writer = VideoWriter(Path(tmp) / "v.mp4", pipe.config.fps)
            started = time.perf_counter()
            for chunk in pipe.stream(
                "a red circle moving right on a black background", args.frames, seed=run, **settings
            ):
                writer.write(chunk.frames)
            writer.finish()
            total = time.perf_counter() - started
        runs.append({"seconds": total, **TIMES})
        print(
            json.dumps(
                {
                    "run": run,
                    "seconds": round(total, 2),
                    **{k: round(v, 2) for k, v in TIMES.items()},
                }
            ),
            flush=True,
        )
    median = {k: round(statistics.median(r.get(k, 0.0) for r in runs), 2) for k in runs[0]}
    print(
        json.dumps(
            {
                "frames": args.frames,
                "median_seconds": median["seconds"],
                "frames_per_second": round(args.frames / median["seconds"], 3),
                "median_split_seconds": median,
                "settings": {**pipe.config.sample.__dict__, **settings},
                "runs": args.runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
