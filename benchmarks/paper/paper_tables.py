"""The paper's comparisons, reproduced on one model: every method on the same prompts and seeds.

    python benchmarks/paper/paper_tables.py --model src/streamingt2v/default_model \
        --prompts 50 --frames 240 --long-prompts 5 --long-frames 600 --out docs/results

Methods (``streamingt2v.methods.METHODS``): the method itself, ``independent`` chunks,
``no-cam``, ``no-apm`` and ``freenoise``, all on the same base model; ``--trained NAME=DIR``
adds a pipeline trained with another conditioning (the paper's ``conc-cond`` and
``add-cond``, ``model.cam.merge`` in the stream stage's config), run as the method on its
own weights under NAME. Every video is measured
by ``streamingt2v.evaluate.evaluate_video`` (MAWE with OpenCV's DIS flow at ``--mawe-size``,
SCuts, CLIP score with the model's own encoders, the world checks). Writes
``OUT/results.json`` (every video, rewritten after each one), ``OUT/results.md`` (the tables,
the command, the machine) and ``OUT/xt_slices.png`` (each method on the same prompt).
The videos are made prompt by prompt, every method on each, so a stopped run leaves
comparable figures behind; ``--resume`` keeps the videos that ``OUT/results.json`` already
holds (made with the same settings) and makes only the missing ones, so the tables can grow
across runs (``--prompts`` may rise). The tables use only the prompts that every method has
made. The long videos (``--long-prompts`` x ``--long-frames``) are the APM ablation: by
default only ``streamingt2v`` and ``no-apm`` make them. ``--quick`` is a smoke run of a few
minutes at most (2 prompts, 40 frames, 4 steps; 1 long prompt, 56 frames) that the test
suite runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from streamingt2v import StreamingT2VPipeline
from streamingt2v.config import UsageError
from streamingt2v.evaluate import ClipPair
from streamingt2v.methods import METHODS
from streamingt2v.metrics.world_checks import xt_slice
from streamingt2v.protocol import (
    COLUMNS,
    PER_PROMPT_LONG,
    RESAMPLES,
    SPREAD,
    eval_prompts,
    mean_of,
    measure,
    paired_table,
    per_prompt_table,
    spread,
)
from streamingt2v.protocol import (
    table as summary_table,
)

PROMPTS = "paper-tables"  # this protocol's prompt set (protocol.eval_prompts)


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


class Store:
    """``OUT/results.json``, rewritten after every video. With ``resume`` the videos it
    already holds are kept (when they were made with the same settings) and not made again,
    so the tables can grow across runs; without it an existing file is never replaced."""

    SAME = ("model", "trained", "frames", "long_frames", "steps", "scheduler", "mawe_size",
            "seed", "clip", "no_clip")  # fmt: skip

    def __init__(self, out: Path, args: argparse.Namespace, names: list[str], resume: bool):
        self.path, self.xt_dir = out / "results.json", out / "xt"
        self.names = names
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        self.data: dict = {"settings": settings}
        self.data |= {table: {m: [] for m in names} for table in ("videos", "long")}
        if not self.path.exists():
            return
        if not resume:
            raise UsageError(f"{self.path} exists: pass --resume to add to it, or another --out")
        old = json.loads(self.path.read_text())
        if changed := [k for k in self.SAME if old["settings"].get(k) != settings.get(k)]:
            raise UsageError(f"--resume: {self.path} was made with other settings: {changed}")
        for table in ("videos", "long"):
            for m in names:
                self.data[table][m] = old.get(table, {}).get(m, [])

    def has(self, table: str, name: str, seed: int) -> bool:
        return any(row["seed"] == seed for row in self.data[table][name])

    def add(self, table: str, name: str, row: dict) -> None:
        self.data[table][name].append(row)
        self.write()

    def write(self) -> None:
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps(self.data, indent=2, default=str))
        part.replace(self.path)

    def balanced(self, table: str, names: list[str]) -> dict[str, list[dict]]:
        """Each method's rows of the prompts that all of ``names`` have made (a stopped run
        can leave a prompt made by only some); no rows for the other methods."""
        rows = self.data[table]
        seeds = set.intersection(*({r["seed"] for r in rows[m]} for m in names))
        return {m: [r for r in rows[m] if m in names and r["seed"] in seeds] for m in self.names}

    def save_slice(self, name: str, xt: np.ndarray) -> None:
        self.xt_dir.mkdir(exist_ok=True)
        Image.fromarray(xt).save(self.xt_dir / f"{name}.png")

    def slices(self) -> dict[str, np.ndarray]:
        paths = {m: self.xt_dir / f"{m}.png" for m in self.names}
        return {m: np.asarray(Image.open(p).convert("RGB")) for m, p in paths.items() if p.exists()}


LONG_METHODS = ("streamingt2v", "no-apm")  # the long videos are the APM ablation


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--long-methods",
        nargs="+",
        default=None,
        help="names run on the long prompts (default: the APM ablation's streamingt2v and "
        "no-apm, those of them that run; all if neither does)",
    )
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--scheduler", default=None, help="ddim or dpm (default: the model's)")
    parser.add_argument("--mawe-size", type=int, default=256, help="official: 720")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--quick", action="store_true", help="2 prompts x 40 frames, 4 steps")
    parser.add_argument("--clip", type=Path, default=None, help="CLIP pair (default: --model's)")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP score")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the videos already measured in OUT/results.json (same settings) and make "
        "only the missing ones",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="make no video: write the tables from OUT/results.json (implies --resume)",
    )
    return parser


def _make_videos(store, runs, args, prompt_lists, name_lists, settings, clip) -> None:
    """Every missing video of the two tables, measured and stored as it is made."""
    prompts, long_prompts = prompt_lists
    names, long_names = name_lists
    # prompt by prompt, every method on each: a stopped run leaves balanced tables behind
    for table_name, prompt_list, frames, first_seed, wanted in (
        ("videos", prompts, args.frames, 0, names),
        ("long", long_prompts, args.long_frames, 1000, long_names),
    ):
        for i, prompt in enumerate(prompt_list):
            for name, model, method in runs:
                seed = first_seed + i
                if name not in wanted or store.has(table_name, name, seed):
                    continue
                started = time.perf_counter()
                video = model(prompt, frames, seed=seed, method=method, **settings).frames
                row = {"prompt": prompt, "seed": seed, "seconds": time.perf_counter() - started}
                row |= measure(video, prompt, clip, args.mawe_size)
                if table_name == "videos" and i == 0:
                    store.save_slice(name, xt_slice(video))
                store.add(table_name, name, row)
                print(json.dumps({"method": name, **row}, default=str), flush=True)


def _summary(rows: dict, long_rows: dict, names: list[str]) -> dict:
    """Each method's means over the balanced rows (and its long videos')."""
    return {
        m: {k: mean_of(rows[m], k) for k, _ in COLUMNS}
        | spread(rows[m])
        | {
            "seconds_per_video": mean_of(rows[m], "seconds"),
            "long_anchor_drift_last": mean_of(long_rows[m], "anchor_drift_last"),
            "long_colour_drift_last": mean_of(long_rows[m], "colour_drift_last"),
            "long_colour": mean_of(long_rows[m], "colour"),
        }
        for m in names
    }


def _report(args, argv, settings, prompts, rows, long_rows, names, long_names, summary) -> list:
    """The lines of results.md."""
    command = "python benchmarks/paper/paper_tables.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    measured, long_measured = len(rows[names[0]]), len(long_rows[long_names[0]])
    seeds = ", ".join(str(r["seed"]) for r in rows[names[0]]) or "none"
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    long_keys = (
        (
            "long_anchor_drift_last",
            f"1 - cos to the anchor (image encoder), last 8 of {args.long_frames} frames",
        ),
        ("long_colour_drift_last", "object colour's RGB distance from frame 0's, same frames"),
        ("long_colour", f"colour right over {args.long_frames} frames"),
    )
    paired_lines = (  # each method against the method itself, prompt by prompt
        [
            "## Differences from `streamingt2v`, paired by prompt",
            "",
            f"Each method's mean of (its figure - `streamingt2v`'s) over the {measured} prompts, "
            f"with a 95% percentile-bootstrap interval over prompts ({RESAMPLES} resamples, "
            "seed 0; percentages in points); **bold** where the interval excludes 0.",
            "",
            *paired_table(rows, "streamingt2v"),
            "",
        ]
        if "streamingt2v" in names and measured >= 2
        else []
    )
    xt_lines = (  # none when the run made long videos only (--prompts 0)
        [f"XT slices of prompt 0 (`{prompts[0]}`), one column per method: ![](xt_slices.png)", ""]
        if prompts
        else []
    )
    lines = [
        "# Results: the method against its baselines and ablations",
        "",
        f"Command: `{command}`  ",
        f"Model: `{args.model}`; machine: {machine}; {measured} of {len(prompts)} prompts x "
        f"{args.frames} frames made by every method (seeds {seeds}), {long_measured} long "
        f"prompt(s); sampling: the model's defaults"
        + "".join(f", {k} {v}" for k, v in settings.items())
        + f"; MAWE with OpenCV DIS flow at {args.mawe_size} px (official: RAFT at 720 px).",
        "",
        "## Table 1 analogue",
        "",
        *summary_table(summary, names, COLUMNS),
        "",
        f"The same videos' spread over the {measured} prompts:",
        "",
        *summary_table(summary, names, SPREAD),
        "",
        *paired_lines,
        "## Long videos: appearance over time (APM ablation)",
        "",
        *summary_table(summary, long_names, long_keys),
        "",
        "The same long videos prompt by prompt (same columns, methods in the order named):",
        "",
        *per_prompt_table(long_rows, long_names, PER_PROMPT_LONG),
        "",
        *xt_lines,
        "Every video's figures: `results.json`.",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    args.resume = args.resume or args.tables_only
    if args.quick:
        args.prompts, args.frames, args.steps = 2, 40, 4
        args.long_prompts, args.long_frames, args.mawe_size = 1, 56, 64
    trained = []  # (name, folder) of each trained baseline
    for spec in args.trained:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--trained takes NAME=DIR, got {spec!r}")
        trained.append((name, Path(folder)))
    names = [*args.methods, *(name for name, _ in trained)]
    long_names = args.long_methods or [n for n in LONG_METHODS if n in names] or names
    if unknown := sorted(set(long_names) - set(names)):
        parser.error(f"--long-methods names no run: {unknown}")
    try:
        store = Store(args.out, args, names, resume=args.resume)
    except UsageError as err:
        parser.error(str(err))
    if args.tables_only and not store.path.exists():
        parser.error(f"--tables-only: {store.path} does not exist")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in (("steps", args.steps), ("scheduler", args.scheduler)) if v}
    prompts = eval_prompts(args.prompts, args.seed, key=PROMPTS)
    long_prompts = eval_prompts(args.long_prompts, args.seed + 1, key=PROMPTS)
    runs, clip = [], None  # (name in the tables, pipeline, method); none with --tables-only
    if not args.tables_only:
        pipe = StreamingT2VPipeline.from_pretrained(args.model)
        runs = [(method, pipe, method) for method in args.methods]  # then the trained baselines
        runs += [(n, StreamingT2VPipeline.from_pretrained(f), "streamingt2v") for n, f in trained]
        clip = None if args.no_clip else ClipPair.from_pipeline(args.clip or args.model)
    _make_videos(store, runs, args, (prompts, long_prompts), (names, long_names), settings, clip)
    rows, long_rows = store.balanced("videos", names), store.balanced("long", long_names)
    summary = _summary(rows, long_rows, names)
    store.data["summary"] = summary
    store.write()
    if slices := store.slices():
        xt_figure(slices, args.out / "xt_slices.png")
    lines = _report(args, argv, settings, prompts, rows, long_rows, names, long_names, summary)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
