"""Does the drift guard help, and at what cost? Measured on the shapes world.

Two steps, the limits fixed by the first before the second runs:

  calibrate  the guard's measurements (tries 1: measure only, frames unchanged) of every
             streaming chunk of ``--videos`` videos of calibration prompts (their own
             stream, ``key="drift-calibration"``); prints their percentiles, from which
             the limits are set (``--percentile``, default 80: the worst fifth of chunks
             re-sampled).
  compare    the evaluation protocol's first ``--videos`` prompts, each made without the
             guard and with it (``--tries``, ``--max-distance``, ``--max-jump``): colour,
             background, shape and direction right (world checks), SCuts, the colour's
             drift over the last 80 frames, and wall time per video, side by side.

    python benchmarks/paper/drift_guard.py calibrate [--videos 4] [--frames 240]
    python benchmarks/paper/drift_guard.py compare --max-distance D --max-jump J
        [--tries 3] [--videos 6] [--frames 240] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from streamingt2v.drift import DriftGuard
from streamingt2v.generate import DEFAULT_MODEL_DIR
from streamingt2v.metrics.scuts import count_cuts
from streamingt2v.metrics.world_checks import check_video
from streamingt2v.pipeline import StreamingT2VPipeline
from streamingt2v.protocol import eval_prompts
from streamingt2v.world.render import parse_caption


def make(pipe, prompt: str, frames: int, seed: int, guard: DriftGuard):
    started = time.perf_counter()
    chunks = list(pipe.stream(prompt, frames, seed=seed, guard=guard))
    video = np.concatenate([c.frames for c in chunks])
    return video, chunks, time.perf_counter() - started


def calibrate(pipe, args) -> dict:
    measure_only = DriftGuard(tries=1, max_anchor_distance=1e9, max_jump=1e9)
    scores = []
    for seed, prompt in enumerate(eval_prompts(args.videos, 0, key="drift-calibration")):
        _, chunks, seconds = make(pipe, prompt, args.frames, seed, measure_only)
        scores += [c.tries[0] for c in chunks if c.tries]
        print(json.dumps({"prompt": prompt, "seconds": round(seconds, 1)}), flush=True)
    out = {"chunks": len(scores)}
    for key in ("anchor_distance", "jump"):
        values = np.array([s[key] for s in scores])
        out[key] = {f"p{q}": round(float(np.percentile(values, q)), 5) for q in (50, 80, 90, 95)}
        out[key]["max"] = round(float(values.max()), 5)
    return out


def video_row(video: np.ndarray, prompt: str, chunks, seconds: float) -> dict:
    report = check_video(video, parse_caption(prompt))
    drift = [d for d in report.colour_drift[-10:] if d is not None]
    return {
        "colour": report.colour_right,
        "background": report.background_right,
        "shape": report.shape_right,
        "direction": report.direction_right,
        "scuts": count_cuts(video),
        "colour_drift_last80": float(np.mean(drift)) if drift else None,
        "resampled_chunks": sum(len(c.tries) > 1 for c in chunks),
        "samples": sum(max(1, len(c.tries)) for c in chunks),
        "seconds": round(seconds, 1),
    }


def compare(pipe, args) -> dict:
    guard = DriftGuard(args.tries, args.max_distance, args.max_jump)
    measure_only = DriftGuard(tries=1, max_anchor_distance=1e9, max_jump=1e9)
    rows = {"off": [], "on": []}
    for seed, prompt in enumerate(eval_prompts(args.videos, 0)):
        for name, used in (("off", measure_only), ("on", guard)):
            video, chunks, seconds = make(pipe, prompt, args.frames, seed, used)
            row = {"prompt": prompt, **video_row(video, prompt, chunks, seconds)}
            rows[name].append(row)
            print(json.dumps({"guard": name, **row}), flush=True)
    means = {}
    for name, part in rows.items():
        keys = [k for k in part[0] if k != "prompt"]
        means[name] = {
            k: float(np.mean([r[k] for r in part if r[k] is not None]))
            for k in keys
            if any(r[k] is not None for r in part)
        }
    return {"guard": vars(args) | {"model": str(args.model)}, "rows": rows, "mean": means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["calibrate", "compare"])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--videos", type=int, default=None)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--max-distance", type=float)
    parser.add_argument("--max-jump", type=float)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pipe = StreamingT2VPipeline.from_pretrained(args.model)
    if args.step == "calibrate":
        args.videos = args.videos or 4
        result = calibrate(pipe, args)
    else:
        if args.max_distance is None or args.max_jump is None:
            parser.error("compare needs --max-distance and --max-jump (from calibrate)")
        args.videos = args.videos or 6
        result = compare(pipe, args)
        print(json.dumps(result["mean"]), flush=True)
    print(json.dumps(result) if args.step == "calibrate" else "", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
