"""The full-size system's speed and GPU memory, with random weights (docs/performance.md).

    python benchmarks/full_size.py --out runs/eval/full_size          # on a CUDA machine

The paper's system at its real size; speed and memory do not depend on the weights' values:
ModelScope's 1.7B UNet for the first chunk, a second UNet of that size (the official
checkpoint's fine-tuned copy) for the streaming chunks with its CAM and APM, an OpenCLIP
ViT-H/14 vision tower, an OpenCLIP-H size text encoder and SD's VAE; the enhancer a UNet of
the same size with its own VAE and text encoder, at 720x720 (the official MS-Vid2Vid-XL
size; ModelScope's UNet architecture stands in for MS-Vid2Vid-XL's own). The official
figures (A100 80 GB): 1.4 s per frame for the 256x256 video, 8.5 s per frame with the
enhancement.

Phases, each written to OUT/full_size.json as soon as it ends (a failing phase is recorded
and the next one runs; a phase that would start after --budget seconds is skipped):

- ``plan``: ``generate --plan``'s prediction for the official 80-frame run;
- ``stream``: --frames frames at --size with the official settings (50 DDIM steps, guidance
  7.5): seconds per frame and peak memory;
- ``enhance``: those frames enhanced to --enhance-size (30 steps, strength 0.6, chunks of 24
  overlapping by 8, randomized blending): seconds per frame and peak memory;
- ``length``: streaming and enhancement piped as ``generate`` does, with --long-steps
  denoising steps (the peak does not depend on the number of steps), for each of
  --long-frames: peak memory and seconds per frame against the length;
- ``wide``: the first --long-frames run again at --wide-size, enhanced to --wide-enhance-size
  (non-square through every stage);
- ``offload``: the --long-frames runs again with ``--offload``: peak memory, seconds, the
  moves of UNet groups and the plan's prediction of them.

A smoke test on the CPU (tests/test_enhancer.py) runs every phase at the tiny scale.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from streamingt2v.enhancer import parse_size
from streamingt2v.plan import format_plan, make_plan
from streamingt2v.random_models import random_enhancer, random_pipeline

PROMPT = "a cat surfing a wave at sunset"
PHASES = ("plan", "stream", "enhance", "length", "wide", "offload")


def _gib(n: int) -> float:
    return round(n / 2**30, 3)


class Memory:
    """Peak GPU memory over a phase (CUDA's allocator); on the CPU it reports nothing."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> dict:
        if not self.cuda:
            return {}
        torch.cuda.synchronize(self.device)
        return {
            "peak_allocated_gib": _gib(torch.cuda.max_memory_allocated(self.device)),
            "peak_reserved_gib": _gib(torch.cuda.max_memory_reserved(self.device)),
            "resident_after_gib": _gib(torch.cuda.memory_allocated(self.device)),
        }


def _count(frames: Iterable[np.ndarray]) -> int:
    """Consume the frames (made one by one, dropped at once) and count them."""
    return sum(1 for _ in frames)


def build(args) -> tuple:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    started = time.perf_counter()
    with torch.device(device):  # random initialization on the device: quicker at 1.7B
        pipe = random_pipeline(args.scale, seed=0, own_stream_unet=True)
        enhancer = random_enhancer(scale=args.scale, seed=1, size=args.enhance_size)
    pipe.to(device, dtype)
    enhancer.to(device, dtype)
    params = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (
            ("base_unet", pipe.unet),
            ("stream_unet", pipe.stream_unet),
            ("cam", pipe.cam),
            ("apm", pipe.apm),
            ("image_encoder", pipe.image_encoder),
            ("text_encoder", pipe.text_encoder),
            ("vae", pipe.vae),
            ("enhancer_unet", enhancer.unet),
            ("enhancer_vae", enhancer.vae),
            ("enhancer_text_encoder", enhancer.text_encoder),
        )
    }
    info = {"seconds": round(time.perf_counter() - started, 1), "parameters": params}
    return pipe, enhancer, info


def piped(pipe, enhancer, frames: int, steps: int, enhance_steps: int, args, size=None):
    """Streaming into enhancement, frame by frame, as ``generate`` runs them."""
    low = (
        frame
        for chunk in pipe.stream(PROMPT, frames, **_stream_settings(args, steps, size))
        for frame in chunk.frames
    )
    cfg = enhancer.config.defaults.merged(steps=enhance_steps, seed=0)
    return enhancer.enhance(low, frames, PROMPT, cfg)


def _stream_settings(args, steps: int, size: tuple[int, int] | None = None) -> dict:
    height, width = size or (args.size, args.size)
    return dict(seed=0, steps=steps, scheduler="ddim", guidance=7.5, height=height, width=width)


def run_phases(args, pipe, enhancer, report: dict, save: Callable[[], None]) -> None:
    device = torch.device(args.device)
    memory = Memory(device)
    started = time.perf_counter()
    low_res: list[np.ndarray] = []

    def phase_plan() -> dict:
        request = pipe.request(PROMPT, args.frames, **_stream_settings(args, args.steps))
        cfg = enhancer.config.defaults.merged(steps=args.enhance_steps, seed=0)
        plan = make_plan(pipe, request, enhancer, cfg)
        print(format_plan(plan), flush=True)
        stages = [
            {"name": s.name, "count": s.count, "seconds_each": round(s.seconds, 4)}
            for s in plan.stages
        ]
        peak = plan.peak_device_bytes
        return {
            "predicted_seconds": round(plan.seconds, 1),
            "stages": stages,
            "weights_gib": _gib(plan.weights_bytes),
            "predicted_peak_gib": None if peak is None else _gib(peak),
        }

    def phase_stream() -> dict:
        t0 = time.perf_counter()
        for chunk in pipe.stream(PROMPT, args.frames, **_stream_settings(args, args.steps)):
            low_res.extend(chunk.frames)
        seconds = _synced(device, t0)
        return {
            "frames": len(low_res),
            "steps": args.steps,
            "seconds": round(seconds, 1),
            "seconds_per_frame": round(seconds / len(low_res), 3),
        }

    def phase_enhance() -> dict:
        if not low_res:
            raise RuntimeError("needs the stream phase's frames")
        cfg = enhancer.config.defaults.merged(steps=args.enhance_steps, seed=0)
        t0 = time.perf_counter()
        n = _count(enhancer.enhance(low_res, len(low_res), PROMPT, cfg))
        seconds = _synced(device, t0)
        return {
            "frames": n,
            "steps": args.enhance_steps,
            "strength": cfg.strength,
            "size": list(enhancer.output_size(args.size, args.size)),
            "seconds": round(seconds, 1),
            "seconds_per_frame": round(seconds / n, 3),
        }

    def long_runs(phase: str, extra: Callable[[int], dict] = lambda frames: {}) -> dict:
        """Streaming piped into enhancement for each of --long-frames (``extra(frames)``,
        before the run, adds to its figures); each run's figures are saved as it ends."""
        runs = {}
        for frames in args.long_frames:
            figures = extra(frames)
            moved = len(pipe.offloader.history) if pipe.offloader else 0
            memory.reset()
            t0 = time.perf_counter()
            steps = args.long_steps, args.long_enhance_steps
            n = _count(piped(pipe, enhancer, frames, *steps, args))
            seconds = _synced(device, t0)
            runs[str(frames)] = {
                "frames": n,
                "seconds": round(seconds, 1),
                "seconds_per_frame": round(seconds / n, 4),
                **figures,
                **memory.peak(),
            }
            if pipe.offloader:  # UNet groups moved to the device during the run
                runs[str(frames)]["moves"] = len(pipe.offloader.history) - moved
            report["phases"][phase] = {"partial": runs}
            save()
        return {"steps": args.long_steps, "enhance_steps": args.long_enhance_steps, "runs": runs}

    def phase_length() -> dict:
        return long_runs("length")

    def phase_wide() -> dict:
        square, enhancer.config.size = enhancer.config.size, args.wide_enhance_size
        frames = args.long_frames[0]
        t0 = time.perf_counter()
        try:
            n = _count(
                piped(
                    pipe,
                    enhancer,
                    frames,
                    args.long_steps,
                    args.long_enhance_steps,
                    args,
                    args.wide_size,
                )
            )
        finally:
            enhancer.config.size = square
        seconds = _synced(device, t0)
        return {
            "frames": n,
            "size": list(args.wide_size),
            "enhanced": list(args.wide_enhance_size),
            "seconds": round(seconds, 1),
            "seconds_per_frame": round(seconds / n, 4),
        }

    def phase_offload() -> dict:
        pipe.enable_offload(device)
        enhancer.enable_offload(pipe.offloader)
        cfg = enhancer.config.defaults.merged(steps=args.long_enhance_steps, seed=0)

        def planned(frames: int) -> dict:
            request = pipe.request(PROMPT, frames, **_stream_settings(args, args.long_steps))
            plan = make_plan(pipe, request, enhancer, cfg)
            return {
                "planned_moves": plan.stages[-1].count,
                "seconds_per_move": round(plan.stages[-1].seconds, 3),
                "predicted_seconds": round(plan.seconds, 1),
                "predicted_peak_allocated_gib": _gib(plan.peak_device_bytes or 0),
            }

        return long_runs("offload", planned)

    phases = {
        "plan": phase_plan,
        "stream": phase_stream,
        "enhance": phase_enhance,
        "length": phase_length,
        "wide": phase_wide,
        "offload": phase_offload,
    }
    for name in args.phases:
        if time.perf_counter() - started > args.budget:
            report["phases"][name] = {"skipped": f"past the {args.budget} s budget"}
            continue
        print(f"== {name}", flush=True)
        memory.reset()
        try:
            result = phases[name]() | memory.peak()
        except Exception as err:  # recorded, and the next phase still runs
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {err}"}
        report["phases"][name] = result
        print(json.dumps(result), flush=True)
        save()


def _synced(device: torch.device, t0: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", default="modelscope")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--size", type=int, default=256, help="the streaming frames' side")
    parser.add_argument("--enhance-size", type=parse_size, default=(720, 720))
    parser.add_argument("--wide-size", type=parse_size, default=(256, 448))
    parser.add_argument("--wide-enhance-size", type=parse_size, default=(576, 1024))
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--enhance-steps", type=int, default=30)
    parser.add_argument("--long-frames", type=int, nargs="+", default=[80, 1200])
    parser.add_argument("--long-steps", type=int, default=2)
    parser.add_argument("--long-enhance-steps", type=int, default=4)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    report = {
        "machine": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "python": platform.python_version(),
        },
        "settings": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "out"
        },
        "phases": {},
    }

    def save() -> None:
        (args.out / "full_size.json").write_text(json.dumps(report, indent=2) + "\n")

    pipe, enhancer, report["build"] = build(args)
    if device.type == "cuda":
        report["build"]["weights_on_device_gib"] = _gib(torch.cuda.memory_allocated(device))
    print(json.dumps(report["build"]), flush=True)
    save()
    run_phases(args, pipe, enhancer, report, save)
    print(json.dumps(report["phases"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
