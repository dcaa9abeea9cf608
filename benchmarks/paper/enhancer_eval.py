"""Does the enhancer beat plain upsampling? The figures of the enhancer's model card.

    python benchmarks/paper/enhancer_eval.py --model DIR [--videos 8] [--generated 4] [--frames 48]
        [--steps N] [--strength S] [--guidance G]
        [--out runs/eval/enhancer]

Rendered: world videos rendered at the streaming resolution (the input) and at the
enhancer's output resolution (the truth, same parameters). Each input is brought to the
output size by bilinear upsampling (``Enhancer.upscale``, what SDEdit starts from) and by
the enhancer (the folder's default settings unless overridden; noise seed --seed plus the
video's index), and both are compared with the truth: PSNR, sharpness (mean spatial
gradient magnitude, the truth's beside it) and the world checks (colour, background, shape
right per frame). Generated: the pipeline's own videos (seed 0) of evaluation prompts drawn
as benchmarks/paper/world_eval.py draws them from --seed, which have no truth: world checks and
sharpness of the upsampled and the enhanced video. Different --seed values give other
video sets (a setting chosen on one is checked on another). Writes
``OUT/enhancer_eval.json`` and ``OUT/frames.png`` (every 6th frame; per video, rows
upsampled / enhanced, and the truth for rendered videos).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from streamingt2v import StreamingT2VPipeline
from streamingt2v.metrics.world_checks import check_video
from streamingt2v.protocol import eval_prompts, psnr
from streamingt2v.runtime import load_enhancer
from streamingt2v.world.render import parse_caption, render, rng_for, sample_params


def sharpness(video: np.ndarray) -> float:
    """Mean magnitude of the horizontal and vertical pixel differences (0-255 scale)."""
    x = video.astype(np.float64).mean(-1)
    return float((np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()) / 2)


def figures(video: np.ndarray, words: dict[str, str], truth: np.ndarray | None) -> dict:
    report = check_video(video, words)
    row = {
        "colour_right": report.colour_right,
        "background_right": report.background_right,
        "shape_right": report.shape_right,
        "sharpness": sharpness(video),
    }
    if truth is not None:
        row["psnr"] = psnr(video, truth)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a folder with enhancer/")
    parser.add_argument("--videos", type=int, default=8, help="rendered videos")
    parser.add_argument("--generated", type=int, default=4, help="generated videos")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=32, help="input (streaming) resolution")
    parser.add_argument("--steps", type=int, default=None, help="default: the folder's")
    parser.add_argument("--strength", type=float, default=None, help="default: the folder's")
    parser.add_argument("--guidance", type=float, default=None, help="default: the folder's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/eval/enhancer"))
    args = parser.parse_args(argv)

    pipe = StreamingT2VPipeline.from_pretrained(args.model)
    enhancer = load_enhancer(args.model, torch.device("cpu"), torch.float32, pipe=pipe)
    chosen = enhancer.config.defaults.merged(
        steps=args.steps, strength=args.strength, guidance=args.guidance
    )
    size = enhancer.output_size(args.size, args.size)  # the rendered truth's size
    rng = rng_for("enhancer-eval", args.seed)
    inputs = []  # (kind, caption, low-resolution video, truth or None)
    for _ in range(args.videos):
        params = sample_params(rng)
        low = render(params, args.frames, size=args.size)
        inputs.append(("rendered", params.caption, low, render(params, args.frames, size[0])))
    for prompt in eval_prompts(args.generated, args.seed):
        inputs.append(("generated", prompt, pipe(prompt, args.frames, seed=0).frames, None))

    rows, picture = [], []
    seconds = []
    for i, (kind, caption, low, truth) in enumerate(inputs):
        cfg = replace(chosen, seed=args.seed + i)
        started = time.perf_counter()
        enhanced = np.stack(list(enhancer.enhance(iter(low), len(low), caption, cfg)))
        seconds.append((time.perf_counter() - started) / len(low))
        upsampled = enhancer.upsampled(low)
        words = parse_caption(caption)
        row = {
            "kind": kind,
            "prompt": caption,
            "upsampled": figures(upsampled, words, truth),
            "enhanced": figures(enhanced, words, truth),
        }
        if truth is not None:
            row["truth_sharpness"] = sharpness(truth)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if sum(r["kind"] == kind for r in rows) <= 2:  # the first two of each kind
            shown = [upsampled, enhanced] + ([truth] if truth is not None else [])
            picture += [np.concatenate(list(v[::6]), axis=1) for v in shown]

    summary = {}
    for kind in ("rendered", "generated"):
        of_kind = [r for r in rows if r["kind"] == kind]
        for method in ("upsampled", "enhanced"):
            for key in of_kind[0][method] if of_kind else ():
                summary[f"{kind}/{method}/{key}"] = statistics.mean(r[method][key] for r in of_kind)
        if kind == "rendered" and of_kind:
            summary["rendered/truth/sharpness"] = statistics.mean(
                r["truth_sharpness"] for r in of_kind
            )
    summary["enhance_seconds_per_frame"] = statistics.median(seconds)
    summary |= {"steps": chosen.steps, "strength": chosen.strength, "guidance": chosen.guidance}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "enhancer_eval.json").write_text(
        json.dumps({"summary": summary, "videos": rows, "settings": vars(args)}, indent=2,
                   default=str)
    )  # fmt: skip
    Image.fromarray(np.concatenate(picture, axis=0)).save(args.out / "frames.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
