"""The paper's comparisons, reproduced on one model: every method on the same prompts and seeds.

    python benchmarks/paper_tables.py --model src/streamingt2v/default_model \
        --prompts 50 --frames 240 --long-prompts 5 --long-frames 600 --out docs/results

Methods (``streamingt2v.streaming.METHODS``): the method itself, ``independent`` chunks,
``no-cam``, ``no-apm`` and ``freenoise``, all on the same base model; ``--trained NAME=DIR``
adds a pipeline trained with another conditioning (the paper's ``conc-cond`` and
``add-cond``, ``model.cam.merge`` in the stream stage's config), run as the method on its
own weights under NAME. Every video is measured
by ``streamingt2v.evaluate.evaluate_video`` (MAWE with OpenCV's DIS flow at ``--mawe-size``,
SCuts, CLIP score with the model's own encoders, the world checks). Writes
``OUT/results.json`` (every video), ``OUT/results.md`` (the tables, the command, the machine)
and ``OUT/xt_slices.png`` (each method on the same prompt). ``--quick`` is a smoke run of a
few minutes at most (2 prompts, 40 frames, 4 steps) that the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from streamingt2v import StreamingT2VPipeline
from streamingt2v.evaluate import ClipPair, evaluate_video
from streamingt2v.metrics.world_checks import xt_slice
from streamingt2v.streaming import METHODS
from streamingt2v.world.render import STRAIGHT, rng_for, sample_params

COLUMNS = (
    ("mawe", "MAWE (lower better)"),
    ("scuts", "SCuts per video"),
    ("clip", "CLIP score"),
    ("colour", "colour right"),
    ("background", "background right"),
    ("shape", "shape right"),
    ("direction", "direction right"),
    ("speed_kept", "speed last/first 80"),
)


def eval_prompts(count: int, seed: int) -> list[str]:
    """``count`` prompts from the world's vocabulary; the motions cycle so all are present."""
    motions = [*STRAIGHT, "bouncing", "circling"]
    rng = rng_for("paper-tables", seed)
    return [sample_params(rng, motion=motions[i % len(motions)]).caption for i in range(count)]


def measure(video: np.ndarray, prompt: str, clip: ClipPair | None, mawe_size: int) -> dict:
    report = evaluate_video(video, prompt, clip, mawe_size=mawe_size)
    world = report["world"] or {}
    speeds = [s for s in report["curves"].get("speed", []) if s is not None]
    first, last = (speeds[:10], speeds[-10:]) if len(speeds) >= 20 else (speeds[:1], speeds[-1:])
    kept = (
        statistics.mean(last) / statistics.mean(first) if first and statistics.mean(first) else None
    )
    drift = report["curves"].get("embedding_drift", [])
    colour_drift = report["curves"].get("colour_drift", [])
    return {
        "mawe": report["mawe"]["mawe"],
        "scuts": report["scuts"],
        "clip": report.get("clip_score"),
        "colour": world.get("colour_right"),
        "background": world.get("background_right"),
        "shape": world.get("shape_right"),
        "direction": world.get("direction_right"),
        "speed_kept": kept,
        "anchor_drift_last": drift[-1] if drift else None,
        "colour_drift_last": colour_drift[-1] if colour_drift else None,
    }


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return statistics.mean(values) if values else None


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key in ("colour", "background", "shape", "direction"):
        return f"{value:.1%}"
    return f"{value:.2f}"


def table(summary: dict, methods: list[str], keys: tuple[tuple[str, str], ...]) -> list[str]:
    lines = ["| method | " + " | ".join(label for _, label in keys) + " |"]
    lines.append("|---" * (len(keys) + 1) + "|")
    for m in methods:
        cells = [fmt(summary[m].get(k), k) for k, _ in keys]
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return lines


def xt_figure(slices: dict[str, np.ndarray], out: Path, scale: int = 4) -> None:
    """Each method's XT slice of the same prompt, side by side, labelled."""
    columns = []
    for method, xt in slices.items():
        big = xt.repeat(scale, 1)  # (F, W*scale, 3)
        label = np.full((14, big.shape[1], 3), 255, np.uint8)
        image = Image.fromarray(label)
        ImageDraw.Draw(image).text((2, 1), method, fill=(0, 0, 0))
        columns.append(np.concatenate([np.asarray(image), big]))
        columns.append(np.full((columns[-1].shape[0], 6, 3), 255, np.uint8))
    Image.fromarray(np.concatenate(columns[:-1], axis=1)).save(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--trained",
        nargs="+",
        default=[],
        metavar="NAME=DIR",
        help="trained baselines, e.g. conc-cond=runs/conc_cond/final",
    )
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--long-prompts", type=int, default=5)
    parser.add_argument("--long-frames", type=int, default=600)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--mawe-size", type=int, default=256, help="official: 720")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--quick", action="store_true", help="2 prompts x 40 frames, 4 steps")
    parser.add_argument("--clip", type=Path, default=None, help="CLIP pair (default: --model's)")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP score")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.frames, args.steps = 2, 40, 4
        args.long_prompts, args.long_frames, args.mawe_size = 1, 56, 64
    pipe = StreamingT2VPipeline.from_pretrained(args.model)
    # (name in the tables, pipeline, method): the methods on the model, then trained baselines
    runs = [(method, pipe, method) for method in args.methods]
    for spec in args.trained:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--trained takes NAME=DIR, got {spec!r}")
        runs.append((name, StreamingT2VPipeline.from_pretrained(Path(folder)), "streamingt2v"))
    names = [name for name, _, _ in runs]
    clip = None if args.no_clip else ClipPair.from_pipeline(args.clip or args.model)
    settings = {"steps": args.steps} if args.steps else {}
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {m: [] for m in names}
    long_rows: dict[str, list[dict]] = {m: [] for m in names}
    slices, seconds = {}, {m: 0.0 for m in names}
    prompts = eval_prompts(args.prompts, args.seed)
    long_prompts = eval_prompts(args.long_prompts, args.seed + 1)
    for name, model, method in runs:
        for i, prompt in enumerate(prompts):
            started = time.perf_counter()
            video = model(prompt, args.frames, seed=i, method=method, **settings).frames
            seconds[name] += time.perf_counter() - started
            rows[name].append(
                {"prompt": prompt, "seed": i} | measure(video, prompt, clip, args.mawe_size)
            )
            if i == 0:
                slices[name] = xt_slice(video)
            print(json.dumps({"method": name, **rows[name][-1]}, default=str), flush=True)
        for i, prompt in enumerate(long_prompts):
            video = model(prompt, args.long_frames, seed=1000 + i, method=method, **settings).frames
            long_rows[name].append(
                {"prompt": prompt, "seed": 1000 + i} | measure(video, prompt, clip, args.mawe_size)
            )
    summary = {
        m: {k: mean_of(rows[m], k) for k, _ in COLUMNS}
        | {
            "seconds_per_video": seconds[m] / max(1, len(prompts)),
            "long_anchor_drift_last": mean_of(long_rows[m], "anchor_drift_last"),
            "long_colour_drift_last": mean_of(long_rows[m], "colour_drift_last"),
            "long_colour": mean_of(long_rows[m], "colour"),
        }
        for m in names
    }
    xt_figure(slices, args.out / "xt_slices.png")
    command = "python benchmarks/paper_tables.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    (args.out / "results.json").write_text(
        json.dumps(
            {"summary": summary, "videos": rows, "long": long_rows, "settings": vars(args)},
            indent=2,
            default=str,
        )
    )
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    long_keys = (
        (
            "long_anchor_drift_last",
            f"1 - cos to the anchor (image encoder), last 8 of {args.long_frames} frames",
        ),
        ("long_colour_drift_last", "object colour's RGB distance from frame 0's, same frames"),
        ("long_colour", f"colour right over {args.long_frames} frames"),
    )
    lines = [
        "# Results: the method against its baselines and ablations",
        "",
        f"Command: `{command}`  ",
        f"Model: `{args.model}`; machine: {machine}; {len(prompts)} prompts x {args.frames} "
        f"frames, seeds 0-{len(prompts) - 1}; sampling: the model's defaults"
        + (f" with {args.steps} steps" if args.steps else "")
        + f"; MAWE with OpenCV DIS flow at {args.mawe_size} px (official: RAFT at 720 px).",
        "",
        "## Table 1 analogue",
        "",
        *table(summary, names, COLUMNS),
        "",
        "## Long videos: appearance over time (APM ablation)",
        "",
        *table(summary, names, long_keys),
        "",
        f"XT slices of prompt 0 (`{prompts[0]}`), one column per method: ![](xt_slices.png)",
        "",
        "Every video's figures: `results.json`.",
    ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
