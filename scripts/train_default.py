"""Train the embedded default's stages in order, each within a wall-clock budget.

    python scripts/train_default.py --runs runs/default --stages vae_sharp base stream \
        --seconds vae_sharp=45 base=200 stream=150 --set base.batch_size=96 --workers 12

A stage NAME runs ``configs/default/NAME.json`` (or ``configs/archive/NAME.json``) with its
``runs/default`` paths moved under ``--runs`` and the ``--set NAME.KEY=VALUE`` overrides
applied. With a budget, a probe run of ``--probe`` steps measures this machine's seconds
per step (from ``loss.csv``), and the stage's ``steps`` becomes budget / seconds per step,
so the run still follows its whole learning-rate schedule; the config actually used is in
``RUNS/NAME/checkpoint/state.json``.

``--text-table FILE`` trains with a ``PromptTable`` of MiniLM's outputs (written here with
``--write-text-table FILE`` where the encoder's package is installed) instead of MiniLM
itself. ``--pack FILE`` writes a tar of the last stage's pipeline in fp16 safetensors with
every stage's loss log, summary, config and samples: the form in which a run on a remote
GPU machine comes back; ``--pack-also NAME...`` adds those stages' ``final/`` (an enhancer
and its decoder, say).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import tarfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from streamingt2v.training.common import write_text_table
from streamingt2v.training.trainer import TrainConfig, train

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "default"
ARCHIVE = CONFIGS.parent / "archive"  # configs of runs that did not ship
DEFAULT_RUNS = "runs/default"


def stage_config(name: str, runs: Path, overrides: dict[str, object], table: Path | None):
    path = CONFIGS / f"{name}.json"
    cfg = TrainConfig.load(path if path.is_file() else ARCHIVE / f"{name}.json")
    moved = {k: v.replace(DEFAULT_RUNS, str(runs), 1) for k, v in cfg.inputs.items()}
    if table:
        moved["text_table"] = str(table)
    return replace(cfg, out_dir=str(runs / name), inputs=moved, **overrides)


def seconds_per_step(cfg: TrainConfig, probe: int) -> float:
    """Run ``probe`` steps in a scratch folder; time the second half (warm caches)."""
    scratch = Path(cfg.out_dir + ".probe")
    shutil.rmtree(scratch, ignore_errors=True)
    train(replace(cfg, out_dir=str(scratch), steps=probe), progress=False, finish=False)
    with (scratch / "loss.csv").open() as f:
        times = [float(row["seconds"]) for row in csv.DictReader(f)]
    shutil.rmtree(scratch)
    half = probe // 2
    return (times[-1] - times[half - 1]) / (len(times) - half)


def pack(runs: Path, names: list[str], out: Path, also: Iterable[str] = ()) -> None:
    """A tar of the last stage's pipeline (fp16 safetensors) as ``pipeline/``, the ``final/``
    of each stage named in ``also`` as ``NAME/final/``, and every stage's records."""
    with tarfile.open(out, "w") as tar:
        for name in names:
            run = runs / name
            for record in ("loss.csv", "summary.json", "checkpoint/state.json"):
                if (run / record).is_file():
                    tar.add(run / record, f"{name}/{record}")
            for sample in sorted((run / "samples").glob("*")) + sorted(run.glob("final/*.png")):
                tar.add(sample, f"{name}/{sample.relative_to(run)}")
        _add_fp16(tar, runs / names[-1] / "final", "pipeline")
        for name in also:
            _add_fp16(tar, runs / name / "final", f"{name}/final")


def _add_fp16(tar: tarfile.TarFile, folder: Path, prefix: str) -> None:
    """``folder``'s files under ``prefix``, its safetensors in fp16."""
    for path in sorted(folder.rglob("*")):
        arcname = f"{prefix}/{path.relative_to(folder)}"
        if path.suffix == ".safetensors":
            data = fp16_safetensors(path)
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        elif path.is_file():
            tar.add(path, arcname)


def fp16_safetensors(path: Path) -> bytes:
    """The file's floating tensors in fp16, its other tensors and metadata unchanged."""
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        metadata = f.metadata()
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    return save(half, metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path(DEFAULT_RUNS))
    parser.add_argument("--stages", nargs="+", default=[])
    parser.add_argument("--seconds", nargs="*", default=[], help="NAME=SECONDS budgets")
    parser.add_argument("--set", nargs="*", default=[], help="NAME.KEY=JSON overrides")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--probe", type=int, default=30)
    parser.add_argument("--text-table", type=Path)
    parser.add_argument("--write-text-table", type=Path)
    parser.add_argument("--pack", type=Path)
    parser.add_argument(
        "--pack-also", nargs="*", default=[], help="stages whose final/ also goes in the pack"
    )
    args = parser.parse_args()

    if args.pack_also and not args.pack:
        parser.error("--pack-also needs --pack")
    unknown = [n for n in args.pack_also if n not in args.stages]
    unknown = [n for n in unknown if not (args.runs / n / "final").is_dir()]
    if unknown:
        parser.error(f"--pack-also: no stage and no {args.runs}/NAME/final for {unknown}")
    if args.write_text_table:
        write_text_table(args.write_text_table)
    budgets = {k: float(v) for k, v in (item.split("=", 1) for item in args.seconds)}
    overrides: dict[str, dict[str, object]] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        name, field = key.split(".", 1)
        overrides.setdefault(name, {})[field] = json.loads(value)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    for name in args.stages:
        cfg = stage_config(
            name, args.runs, {"workers": args.workers, **overrides.get(name, {})}, args.text_table
        )
        shutil.rmtree(args.runs / name, ignore_errors=True)
        if name in budgets:
            per_step = seconds_per_step(cfg, args.probe)
            steps = max(args.probe, int(budgets[name] / per_step))
            cfg = replace(cfg, steps=steps, checkpoint_every=max(1, steps // 4))
            print(f"{name}: {per_step * 1000:.1f} ms/step -> {steps} steps", flush=True)
        started = time.perf_counter()
        summary = train(cfg, progress=False)
        print(f"{name}: {json.dumps(summary)} ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.pack:
        pack(args.runs, args.stages, args.pack, args.pack_also)
        print(f"packed {args.pack} ({args.pack.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
