"""A prompt switch in a timeline, measured on the shapes world with the world's checks.

For each of ``--count`` objects (colour, shape, background drawn from a fixed stream), one
timeline: "<object> moving right" for ``--frames`` frames, then "<object> moving up" for as
many (the switch falls on a chunk boundary: 120 = 16 + 8 x 13). Made once with each APM
anchor policy (keep, reanchor). Reported per policy, over the videos:

- ``follows_after``: frames after the switch until the motion reads "moving up" in two
  8-frame windows in a row (None: never within the video);
- direction right before the switch (right) and after it (up), per 8-frame window;
- colour, background and shape right before and after;
- cuts (PySceneDetect, the SCuts settings) in the 32 frames around the switch, and in
  the whole video.

    python benchmarks/paper/timeline_switch.py [--model DIR] [--count 4] [--frames 120]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from streamingt2v.generate import DEFAULT_MODEL_DIR
from streamingt2v.metrics.scuts import count_cuts
from streamingt2v.metrics.world_checks import check_video
from streamingt2v.pipeline import StreamingT2VPipeline
from streamingt2v.timeline import Segment, Timeline
from streamingt2v.world.render import caption_of, parse_caption, rng_for, sample_params

WINDOW = 8


def objects(count: int) -> list[tuple[str, str, str]]:
    """(colour, shape, background) of ``count`` world videos from a fixed stream."""
    rng = rng_for("timeline-switch")
    drawn = [sample_params(rng) for _ in range(count)]
    return [(p.colour, p.shape, p.background) for p in drawn]


def follows_after(directions: list[str], motion: str) -> int | None:
    """Frames from the start of ``directions`` (8-frame windows) to the first of two windows
    in a row that read ``motion``."""
    for i in range(len(directions) - 1):
        if directions[i] == motion == directions[i + 1]:
            return i * WINDOW
    return None


def measure(video: np.ndarray, before: str, after: str, switch: int) -> dict:
    first = check_video(video[:switch], parse_caption(before), WINDOW)
    then = check_video(video[switch:], parse_caption(after), WINDOW)
    around = video[max(0, switch - 16) : switch + 16]
    return {
        "follows_after": follows_after(then.directions, parse_caption(after)["motion"]),
        "direction_before": first.direction_right,
        "direction_after": then.direction_right,
        "colour_before": first.colour_right,
        "colour_after": then.colour_right,
        "background_before": first.background_right,
        "background_after": then.background_right,
        "shape_before": first.shape_right,
        "shape_after": then.shape_right,
        "cuts_at_switch": count_cuts(around),
        "cuts": count_cuts(video),
        "directions_after": then.directions,
    }


def summary(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k not in ("follows_after", "directions_after")]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    follows = [r["follows_after"] for r in rows]
    out["follows"] = sum(f is not None for f in follows)
    out["follows_after_median"] = (
        float(np.median([f for f in follows if f is not None])) if any(follows) else None
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--frames", type=int, default=120, help="frames per segment")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pipe = StreamingT2VPipeline.from_pretrained(args.model)
    report: dict = {"model": str(args.model), "frames_per_segment": args.frames, "runs": {}}
    for anchor in ("keep", "reanchor"):
        rows = []
        for seed, (colour, shape, background) in enumerate(objects(args.count)):
            before = caption_of(colour, shape, "moving right", background)
            after = caption_of(colour, shape, "moving up", background)
            timeline = Timeline((Segment(before, args.frames), Segment(after, args.frames)), anchor)
            started = time.perf_counter()
            video = np.concatenate([c.frames for c in pipe.stream_timeline(timeline, seed=seed)])
            row = measure(video, before, after, args.frames)
            row |= {"prompt_before": before, "seed": seed}
            row["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps({"anchor": anchor, **row}), flush=True)
            rows.append(row)
        numeric = [{k: v for k, v in r.items() if k not in ("prompt_before", "seed")} for r in rows]
        report["runs"][anchor] = {"videos": rows, "mean": summary(numeric)}
        print(json.dumps({"anchor": anchor, "mean": report["runs"][anchor]["mean"]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
