"""One trainer for every stage: EMA, gradient clipping and accumulation, checkpoints, resume.

A stage (``training/stages.py``) owns its models and its loss; the trainer owns the loop.
Batches and noise are pure functions of (seed, step, process), so a resumed run continues
exactly as the uninterrupted one would (tested). Runs through ``accelerate``: the same code
runs one CPU process here and several GPUs under ``accelerate launch``.

Checkpoint folder ``OUT/checkpoint``: ``model.safetensors`` (trainable module),
``ema.safetensors``, ``optimizer.pt`` (tensors only, loaded with ``weights_only=True``) and
``state.json``. ``OUT/loss.csv`` logs every step; ``OUT/final`` receives the EMA weights in
the stage's export format, ``OUT/samples`` a sample.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import UsageError, config_to_dict
from ..world.dataset import WorldClips, clip_batch
from .config import TrainConfig


class Ema:
    """Exponential moving average of the trainable parameters."""

    def __init__(self, named: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in named.items()}

    @torch.no_grad()
    def update(self, named: dict[str, torch.Tensor], step: int) -> None:
        # Warm-up (as in diffusers' EMAModel): early steps follow the weights closely.
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in named.items():
            self.shadow[k].lerp_(v.detach().float(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, named: dict[str, torch.Tensor]) -> None:
        for k, v in named.items():
            v.copy_(self.shadow[k].to(v.dtype))


def trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p for k, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: Path, module, ema: Ema, optimizer, step: int, cfg: TrainConfig, seconds: float
) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.shadow.items()}, tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(
        json.dumps({"step": step, "seconds": seconds, "config": config_to_dict(cfg)}, indent=2)
    )
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    os.replace(tmp, folder)


def load_checkpoint(folder: Path, module, ema: Ema, optimizer) -> tuple[int, float]:
    module.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    ema.shadow = load_file(folder / "ema.safetensors")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    return state["step"], state.get("seconds", 0.0)


class StepBatches(Dataset):
    """Item i is the batch of sample index ``indices[i]``: what ``Stage.batch`` returns,
    rendered in DataLoader workers so that the model never waits for the world renderer."""

    def __init__(self, data: WorldClips, batch_size: int, indices: list[int]):
        self.data, self.batch_size, self.indices = data, batch_size, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return clip_batch(self.data, self.indices[i], self.batch_size)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.lr_warmup:
        return cfg.lr * (step + 1) / cfg.lr_warmup
    progress = (step - cfg.lr_warmup) / max(1, cfg.steps - cfg.lr_warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    cfg: TrainConfig, resume: bool = False, progress: bool = True, finish: bool = True
) -> dict[str, Any]:
    """Train ``cfg.stage`` to ``cfg.steps``; returns a summary (final loss, seconds)."""
    from .stages import build_stage

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    out = Path(cfg.out_dir)
    ckpt = out / "checkpoint"
    if ckpt.exists() and not resume:
        raise UsageError(f"{ckpt} exists: pass --resume to continue it, or pick another out_dir")
    if resume and not ckpt.exists():
        raise UsageError(f"nothing to resume: {ckpt} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    stage = build_stage(cfg, accelerator.device)
    module = stage.module
    optimizer = torch.optim.AdamW(
        list(trainable(module).values()), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    ema = Ema(trainable(module), cfg.ema_decay)
    start, seconds = load_checkpoint(ckpt, module, ema, optimizer) if resume else (0, 0.0)
    module, optimizer = accelerator.prepare(module, optimizer)
    stage.module = module
    params = trainable(accelerator.unwrap_model(module))  # the same tensors, named once
    log_path = out / "loss.csv"
    rows = _read_log(log_path)[:start] if resume else []
    _write_log(log_path, rows)
    indices = [
        (step * cfg.grad_accum + micro) * accelerator.num_processes + accelerator.process_index
        for step in range(start, cfg.steps)
        for micro in range(cfg.grad_accum)
    ]
    batches = _batches(stage, cfg, indices)
    started = time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"train {cfg.stage}",
        disable=not progress,
        initial=start,
        total=cfg.steps,
    )
    with log_path.open("a", newline="") as log:
        writer = csv.writer(log)
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            total = 0.0
            for micro in range(cfg.grad_accum):
                index = indices[(step - start) * cfg.grad_accum + micro]
                loss = stage.loss(index, next(batches)) / cfg.grad_accum
                accelerator.backward(loss)
                total += loss.item()
            accelerator.clip_grad_norm_(list(params.values()), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(params, step)
            elapsed = seconds + time.perf_counter() - started
            writer.writerow([step, f"{total:.6f}", f"{lr_at(cfg, step):.3e}", f"{elapsed:.2f}"])
            bar.set_postfix(loss=f"{total:.4f}")
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                log.flush()
                save_checkpoint(
                    ckpt, accelerator.unwrap_model(module), ema, optimizer, done, cfg, elapsed
                )
    seconds += time.perf_counter() - started
    summary = {
        "stage": cfg.stage,
        "steps": cfg.steps,
        "seconds": round(seconds, 1),
        "final_loss_mean_last_100": _tail_mean(_read_log(log_path)),
    }
    if finish and accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(module)
        ema.copy_to(trainable(unwrapped))
        summary |= stage.export(out / "final") or {}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _batches(stage, cfg: TrainConfig, indices: list[int]) -> Iterator[dict]:
    """The batches of ``indices`` in order, rendered ahead by ``cfg.workers`` processes."""
    loader = DataLoader(
        StepBatches(stage.data, cfg.batch_size, indices),
        batch_size=None,
        num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None,
    )
    return iter(loader)


def _read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return [row for row in csv.reader(f) if row and row[0] != "step"]


def _write_log(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "lr", "seconds"])  # seconds: run time at step end
        writer.writerows(rows)


def _tail_mean(rows: list[list[str]], n: int = 100) -> float | None:
    values = [float(r[1]) for r in rows[-n:]]
    return round(sum(values) / len(values), 6) if values else None
