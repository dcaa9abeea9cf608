"""``generate --prompts FILE --out-dir DIR``: one video per prompt, over several processes.

Under ``torchrun`` or ``accelerate launch`` (which set ``RANK`` and ``WORLD_SIZE``), process
r of n makes the prompts on lines r + 1, r + 1 + n, ...: every prompt exactly once, with no
talk between the processes. Each video is ``DIR/NNNN-words-of-the-prompt.EXT`` (NNNN its
line number), made as ``generate`` makes one: a video already made with these settings is
skipped, one stopped or killed is resumed, so a batch run again after a crash finishes the
rest. On CUDA each process takes the GPU of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

from .config import UsageError
from .outputs import GenerateResult, manifest_path, resumable_runs
from .run_config import GenerateConfig


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompts file, one per line; a UsageError naming the line for a blank
    line or a prompt given twice (the file's last newline is allowed)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise UsageError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"not a readable prompts file: {path} ({err})") from None
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        prompt = line.strip()
        if not prompt:
            raise UsageError(f"{path}: line {number} is blank; give one prompt per line")
        if prompt in seen:
            raise UsageError(f"{path}: line {number} repeats line {seen[prompt]}: {prompt!r}")
        seen[prompt] = number
    if not seen:
        raise UsageError(f"{path} has no prompts")
    return list(seen)


def process_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process, from the variables that torchrun
    and accelerate launch set; (0, 1, 0) when run alone."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise UsageError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err})") from None
    if not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is not in [0, WORLD_SIZE {world})")
    return rank, world, local


def video_name(number: int, prompt: str, suffix: str) -> str:
    """``0007-a-red-circle-moving-right.mp4``: the line number and the prompt's first words."""
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].rstrip("-")
    return f"{number:04d}-{words or 'video'}{suffix}"


def generate_batch(config: GenerateConfig) -> list[GenerateResult]:
    """Make this process's share of ``config.prompts`` into ``config.out_dir``, each with
    ``config``'s other settings (its ``--out`` gives the videos' kind: .mp4, .gif, or none
    for PNG folders). Returns the results of the videos made here (not those skipped)."""
    from .generate import generate, load_models

    prompts = read_prompts(config.prompts)
    rank, world, local = process_rank()
    out_dir = Path(config.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot make --out-dir {out_dir}: {err.strerror}") from None
    device = config.device
    if device == "auto" and world > 1:
        import torch

        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    mine = [(n, p) for n, p in enumerate(prompts, 1) if (n - 1) % world == rank]
    suffix = config.out.suffix
    runs = [
        dataclasses.replace(
            config,
            prompt=prompt,
            out=out_dir / video_name(number, prompt, suffix),
            prompts=None,
            out_dir=None,
            device=device,
            extra={**config.extra, "batch": {"line": number, "rank": rank, "world_size": world}},
        )
        for number, prompt in mine
    ]
    loaded, results = None, []
    for done, run in enumerate(runs, 1):
        if not config.overwrite and _finished(run):
            _say(config, rank, world, f"{done}/{len(runs)} {run.out.name}: already made")
            continue
        if not config.overwrite and resumable_runs(run.out):
            run = dataclasses.replace(run, resume=True)
        loaded = loaded or load_models(run)
        _say(config, rank, world, f"{done}/{len(runs)} {run.out.name}")
        results.append(generate(run, loaded))
        if results[-1].interrupted:  # stopped (Ctrl-C, SIGTERM): stop the batch too
            break
    return results


def _finished(run: GenerateConfig) -> bool:
    """Whether ``run.out`` is a whole video of this prompt and length (its manifest says)."""
    path = manifest_path(run.out)
    if not (run.out.exists() and path.is_file()):
        return False
    try:
        made = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        not made.get("interrupted")
        and made.get("prompt") == run.prompt
        and made.get("frames") == run.num_frames
        and made.get("seed") == run.seed
    )


def _say(config: GenerateConfig, rank: int, world: int, message: str) -> None:
    if config.progress:
        prefix = f"[{rank + 1}/{world}] " if world > 1 else ""
        print(f"streamingt2v: {prefix}{message}", file=sys.stderr)
