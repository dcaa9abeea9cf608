"""Generation speed of a model folder, with the time split by stage; and the trade-off of
denoising steps against quality.

    python benchmarks/speed.py --model src/streamingt2v/default_model --frames 240 --runs 3

Each run generates ``--frames`` frames into an mp4 (as ``streamingt2v generate`` does);
the figures are medians over the runs. The split is measured by wrapping the functions that
do the work: the UNet forward (its time includes the CAM mergers and the APM mixing that run
inside it; the mergers are also shown alone), the CAM trunk, VAE decoding and video writing.

    python benchmarks/speed.py --model src/streamingt2v/default_model --frames 240 \
        --sweep dpm:10 dpm:15 dpm:25 ddim:50 --prompts 4 --out runs/eval/steps

``--sweep SCHEDULER:STEPS ...`` generates the same ``--prompts`` prompts and seeds (those of
``paper_tables.py``) with each sampler setting and measures every video as the paper tables
do (world checks, MAWE, SCuts; no CLIP score): ``OUT/sweep.json`` and ``OUT/sweep.md``.
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
from streamingt2v.models import cam as cam_module
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
    # The first chunk calls the UNet through sampling, the streaming chunks through the CAM.
    unet = timed("unet (incl. mergers, APM)", sampling.unet_forward)
    sampling.unet_forward = cam_module.unet_forward = unet
    cam = ConditionalAttentionModule
    cam.features = timed("cam trunk", cam.features)
    cam.merge = timed("cam mergers", cam.merge)
    StreamingT2VPipeline.decode_latents = timed("vae decode", StreamingT2VPipeline.decode_latents)
    VideoWriter.write = timed("writing", VideoWriter.write)


SWEEP_KEYS = ("colour", "background", "shape", "direction", "mawe", "scuts")


def sweep_setting(value: str) -> tuple[str, int]:
    scheduler, sep, steps = value.partition(":")
    if not sep or scheduler not in ("ddim", "dpm") or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected ddim:STEPS or dpm:STEPS, got {value!r}")
    return scheduler, int(steps)


def sweep(args) -> None:
    """Each sampler setting on the same prompts and seeds: time and quality per video."""
    from streamingt2v.protocol import eval_prompts, fmt, mean_of, measure

    pipe = StreamingT2VPipeline.from_pretrained(args.model)
    prompts = eval_prompts(args.prompts, 0, key="paper-tables")
    rows: dict[str, list[dict]] = {}
    for scheduler, steps in args.sweep:
        name = f"{scheduler}:{steps}"
        rows[name] = []
        for seed, prompt in enumerate(prompts):
            started = time.perf_counter()
            video = pipe(prompt, args.frames, seed=seed, steps=steps, scheduler=scheduler).frames
            row = {"prompt": prompt, "seed": seed, "seconds": time.perf_counter() - started}
            rows[name].append(row | measure(video, prompt, None, args.mawe_size))
            print(json.dumps({"setting": name, **rows[name][-1]}, default=str), flush=True)
    summary = {
        name: {k: mean_of(r, k) for k in ("seconds", *SWEEP_KEYS)} for name, r in rows.items()
    }
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"summary": summary, "videos": rows, "settings": vars(args)}
    (args.out / "sweep.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    header = "| sampler:steps | s per video | " + " | ".join(SWEEP_KEYS) + " |"
    lines = [
        f"{len(prompts)} prompts x {args.frames} frames, seeds 0-{len(prompts) - 1}, "
        f"model `{args.model}`; MAWE at {args.mawe_size} px (DIS flow)",
        "",
        header,
        "|---" * (len(SWEEP_KEYS) + 2) + "|",
    ]
    for name, s in summary.items():
        cells = [fmt(s[k], k) for k in SWEEP_KEYS]
        lines.append(f"| {name} | {s['seconds']:.1f} | " + " | ".join(cells) + " |")
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--sweep", nargs="+", type=sweep_setting, metavar="SCHEDULER:STEPS")
    parser.add_argument("--prompts", type=int, default=4, help="with --sweep")
    parser.add_argument("--mawe-size", type=int, default=256, help="with --sweep")
    parser.add_argument("--out", type=Path, default=Path("runs/eval/steps"), help="with --sweep")
    args = parser.parse_args(argv)
    if args.sweep:
        sweep(args)
        return
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
