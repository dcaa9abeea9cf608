"""Quality gates of the embedded default on the shapes world (the project's gates).

Generates one video per prompt (fixed seeds, prompts drawn from the world's vocabulary by a
fixed seed) and measures it with the model-free world checks and PySceneDetect:

    python benchmarks/paper/world_eval.py --model src/streamingt2v/default_model \
        --prompts 50 --frames 240 --long-frames 1200 --long-prompts 3 --out runs/eval

Writes ``OUT/world_eval.json`` (every video's figures, rewritten after each video) and prints
the gates. ``--resume`` keeps the videos already in that file (same model and settings) and
makes only the rest, so a 12-prompt run extends to 50 without redoing the first 12.

    python benchmarks/paper/world_eval.py --summarize runs/eval/world_eval.json --first 12

re-summarizes a saved run over its first N videos (same prompts and seeds as a shorter run,
so two models compare on the same videos) without generating anything; ``--skip 12
--first 50`` summarizes videos 13-50 (the prompts a 12-prompt selection did not see);
``--shape triangle`` keeps only the videos whose prompt names that shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from streamingt2v import StreamingT2VPipeline
from streamingt2v.metrics.scuts import count_cuts
from streamingt2v.metrics.world_checks import check_video
from streamingt2v.models.encoders import PromptTable
from streamingt2v.options import add_options
from streamingt2v.protocol import eval_prompts
from streamingt2v.run_config import SAMPLE_FIELDS, GenerateConfig, sample_overrides
from streamingt2v.world.render import parse_caption

GATES = {
    "colour_right": 0.90,
    "background_right": 0.95,
    "shape_right": 0.75,
    "direction_right": 0.80,
    "speed_kept": 0.50,
    "cuts_per_video": 0.10,  # at most
    "long_colour_right_last_240": 0.85,
}


def run_one(pipe, prompt: str, frames: int, seed: int, settings: dict) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    video = np.concatenate([c.frames for c in pipe.stream(prompt, frames, seed=seed, **settings)])
    return video, time.perf_counter() - started


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="the pipeline folder to evaluate")
    parser.add_argument("--summarize", type=Path, help="a saved world_eval.json to re-summarize")
    parser.add_argument("--first", type=int, default=None, help="with --summarize: N videos")
    parser.add_argument(
        "--skip", type=int, default=0, help="with --summarize: leave out the first N videos"
    )
    parser.add_argument(
        "--shape", default=None, help="with --summarize: only the videos of this shape's prompts"
    )
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--long-prompts", type=int, default=3)
    parser.add_argument("--long-frames", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    add_options(parser, GenerateConfig, only=SAMPLE_FIELDS)  # generate's sampling flags
    parser.add_argument(
        "--method", default="streamingt2v", help="the method or a baseline/ablation (METHODS)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the videos already in OUT/world_eval.json (same model and settings)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--text-table", type=Path, help="a PromptTable in place of the model's text encoder"
    )
    return parser


PRINTED = ("prompt", "colour_right", "shape_right", "direction_right", "cuts", "seconds")


def _videos(pipe, args, settings: dict, done: list[dict], done_long: list[dict]) -> list[dict]:
    """The protocol's videos, each checked and saved as it is made (``done``: kept)."""
    rows = []
    for i, prompt in enumerate(eval_prompts(args.prompts, args.seed)):
        if i < len(done):
            rows.append(done[i])
            continue
        video, seconds = run_one(pipe, prompt, args.frames, seed=i, settings=settings)
        report = check_video(video, parse_caption(prompt)).as_dict()
        report |= {"prompt": prompt, "seed": i, "seconds": seconds, "cuts": count_cuts(video)}
        rows.append(report)
        print(json.dumps({k: report[k] for k in PRINTED}), flush=True)
        save(args, rows, done_long)  # a stopped run resumes from here
    return rows


def _long_videos(pipe, args, settings: dict, done_long: list[dict]) -> list[dict]:
    """The long videos, their last 240 frames checked (``done_long``: kept)."""
    long_rows = []
    for i, prompt in enumerate(eval_prompts(args.long_prompts, args.seed + 1)):
        if i < len(done_long):
            long_rows.append(done_long[i])
            continue
        video, seconds = run_one(pipe, prompt, args.long_frames, seed=1000 + i, settings=settings)
        tail = check_video(video[-240:], parse_caption(prompt))
        long_rows.append(
            {
                "prompt": prompt,
                "frames": len(video),
                "seconds": seconds,
                "colour_right_last_240": tail.colour_right,
                "shape_right_last_240": tail.shape_right,
            }
        )
        print(json.dumps(long_rows[-1]), flush=True)
    return long_rows


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        rows = saved["videos"][args.skip : args.first]
        if args.shape:
            rows = [r for r in rows if args.shape in r["prompt"].split()]
        print(json.dumps(summarize(rows, saved["long"]), indent=2))
        return
    if args.model is None:
        parser.error("--model is required (or --summarize FILE)")
    table = PromptTable.load(args.text_table) if args.text_table else None
    pipe = StreamingT2VPipeline.from_pretrained(args.model, args.device, text_encoder=table)
    settings = sample_overrides(args) | {"method": args.method}  # unset: the model's
    args.out.mkdir(parents=True, exist_ok=True)
    done, done_long = earlier_rows(args) if args.resume else ([], [])
    rows = _videos(pipe, args, settings, done, done_long)
    long_rows = _long_videos(pipe, args, settings, done_long)
    print(json.dumps(save(args, rows, long_rows), indent=2))


# What a resumed run must share with the saved one for their videos to be the same.
SAME = (
    "model",
    "frames",
    "long_frames",
    "seed",
    "steps",
    "scheduler",
    "guidance",
    "stream_guidance",
    "replace_overlap",
    "method",
    "text_table",
)


def earlier_rows(args) -> tuple[list[dict], list[dict]]:
    """The videos and long videos already in ``args.out``/world_eval.json, in prompt order;
    an error if that file was made with other settings."""
    path = args.out / "world_eval.json"
    if not path.is_file():
        return [], []
    saved = json.loads(path.read_text())
    ours = vars(args) | {"model": str(args.model)}
    differ = [k for k in SAME if str(saved["settings"].get(k)) != str(ours[k])]
    if differ:
        raise SystemExit(f"{path} was made with other {', '.join(differ)}: not resumable")
    prompts = eval_prompts(len(saved["videos"]), args.seed)
    if [r["prompt"] for r in saved["videos"]] != prompts:
        raise SystemExit(f"{path} holds other prompts: not resumable")
    return saved["videos"][: args.prompts], saved["long"][: args.long_prompts]


def save(args, rows: list[dict], long_rows: list[dict]) -> dict:
    """Write ``args.out``/world_eval.json with the summary of ``rows``; return the summary."""
    summary = summarize(rows, long_rows)
    (args.out / "world_eval.json").write_text(
        json.dumps(
            {
                "summary": summary,
                "videos": rows,
                "long": long_rows,
                "settings": vars(args) | {"model": str(args.model), "out": str(args.out)},
            },
            indent=2,
            default=str,
        )
    )
    return summary


def summarize(rows: list[dict], long_rows: list[dict]) -> dict:
    def mean(key, items=rows):
        values = [r[key] for r in items if r.get(key) is not None]
        return round(statistics.mean(values), 4) if values else None

    kept = [
        r["speed_last"] / r["speed_first"]
        for r in rows
        if r["speed_first"] and r["speed_last"] is not None
    ]
    measured = {
        "colour_right": mean("colour_right"),
        "background_right": mean("background_right"),
        "shape_right": mean("shape_right"),
        "direction_right": mean("direction_right"),
        "speed_kept": round(statistics.mean(kept), 4) if kept else None,
        "cuts_per_video": mean("cuts"),
        "long_colour_right_last_240": mean("colour_right_last_240", long_rows),
        "seconds_per_video": mean("seconds"),
    }
    passed = {}
    for key, bound in GATES.items():
        value = measured[key]
        passed[key] = (
            None
            if value is None
            else (value <= bound if key == "cuts_per_video" else value >= bound)
        )
    return {"measured": measured, "gates": GATES, "passed": passed, "videos": len(rows)}


if __name__ == "__main__":
    main()
