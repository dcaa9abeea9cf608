"""Copy a trained pipeline into the package as the embedded default, in fp16, with its card.

    python scripts/ship_default.py --pipeline runs/default/stream/final \
        --eval runs/eval/world_eval.json

Writes ``src/streamingt2v/default_model/``: the pipeline folder (weights stored as fp16
safetensors; loaded back as float32 on CPU), a loss-curve PNG per run behind the weights
(the runs the pipeline's run config names as inputs, recursively; an input taken from an
earlier ship brings that ship's curves and records) and ``training.json`` (each run's config
and summary); ``MODEL_CARD.md`` beside them is written by hand from these and the
evaluation. ``--steps``, ``--scheduler`` and ``--stream-guidance`` set the shipped sampling
defaults. ``--vae`` ships another VAE in the pipeline's latent space (a decoder fine-tuned with
``options.decoder_only``: same latent channels and scaling factor, else an error). ``--unet``
ships another base UNet for the first chunk (a pipeline folder or its ``unet/``, on the same
latents and text width); the streaming chunks keep the pipeline's ``stream_unet/``.
``--enhancer-vae`` gives the shipped enhancer its own VAE in the pipeline's latent space
(e.g. a decoder trained at 64x64), written to ``enhancer/vae/``; ``--enhancer-guidance`` and
``--enhancer-strength`` set the shipped enhancer's defaults.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from PIL import Image, ImageDraw

from streamingt2v import StreamingT2VPipeline
from streamingt2v.config import UsageError
from streamingt2v.enhancer import Enhancer
from streamingt2v.generate import DEFAULT_MODEL_DIR
from streamingt2v.models.weights import load_diffusers
from streamingt2v.options import add_options
from streamingt2v.run_config import SAMPLE_FIELDS, GenerateConfig, sample_overrides


def lineage(folder: Path) -> list[Path]:
    """The training run that wrote ``folder`` (its ``final`` export) and every run its config
    names as an input (``init``, ``base``, ``vae``, ...), each earlier run before the runs
    built on it. An input taken from an earlier shipped folder (one with ``training.json``:
    the folder or a part of it) stands for that ship's records and is listed as the folder;
    other inputs that are not run exports (a text table) are skipped. Paths are resolved, so
    a run reached through a link (a remote run's inputs) is listed once."""
    folder = folder.resolve()
    run = folder.parent
    state = run / "checkpoint" / "state.json"
    if folder.name != "final" or not state.is_file():
        return [f for f in (folder, folder.parent) if (f / "training.json").is_file()][:1]
    runs: list[Path] = []
    for path in json.loads(state.read_text())["config"]["inputs"].values():
        runs += [r for r in lineage(Path(path)) if r not in runs]
    return runs + [run]


def loss_curve(log: Path, out: Path, title: str) -> None:
    """A plain loss-curve PNG (log scale, 100-step running mean) drawn with Pillow."""
    with log.open() as f:
        losses = np.array([float(r["loss"]) for r in csv.DictReader(f)])
    kernel = min(100, len(losses))
    smooth = np.convolve(losses, np.ones(kernel) / kernel, mode="valid")
    w, h, pad = 480, 240, 30
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    y = np.log10(np.maximum(smooth, 1e-8))
    lo, hi = y.min(), y.max() + 1e-9
    xs = pad + np.arange(len(y)) / max(1, len(y) - 1) * (w - 2 * pad)
    ys = h - pad - (y - lo) / (hi - lo) * (h - 2 * pad)
    draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(30, 80, 200), width=2)
    draw.rectangle([pad, pad, w - pad, h - pad], outline="black")
    draw.text((pad, 8), f"{title}: loss (100-step mean, log10)", fill="black")
    draw.text(
        (pad, h - pad + 6), f"step 0 .. {len(losses)}; {10**hi:.4f} .. {10**lo:.4f}", fill="black"
    )
    img.save(out)


LATENT_SPACE = ("latent_channels", "scaling_factor", "block_out_channels")  # a VAE's
UNET_INPUTS = ("in_channels", "out_channels", "sample_size", "cross_attention_dim")


def matching(model, old, keys: tuple[str, ...], path: Path):
    """``model`` (read from ``path``) if its config equals ``old``'s on ``keys`` (a VAE: the
    diffusion models' latent space; a UNet: the latents and text it takes), else a
    UsageError naming what differs."""
    for key in keys:
        if model.config[key] != old.config[key]:
            raise UsageError(
                f"{path}: {key} {model.config[key]!r}, the pipeline's {old.config[key]!r}"
            )
    return model.eval()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, required=True)
    parser.add_argument("--eval", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    # generate's sampling flags: each one given becomes the shipped folder's default
    add_options(parser, GenerateConfig, only=SAMPLE_FIELDS)
    parser.add_argument("--vae", type=Path, default=None, help="a VAE in the same latent space")
    parser.add_argument(
        "--unet", type=Path, default=None, help="the first chunk's base UNet from this folder"
    )
    parser.add_argument("--enhancer", type=Path, default=None, help="enhancer folder to ship")
    parser.add_argument(
        "--enhancer-vae",
        type=Path,
        default=None,
        help="the enhancer's own VAE (the pipeline's latent space, e.g. a 64x64 decoder)",
    )
    parser.add_argument(
        "--enhancer-guidance", type=float, default=None, help="the enhancer's default guidance"
    )
    parser.add_argument(
        "--enhancer-strength", type=float, default=None, help="the enhancer's default strength"
    )
    return parser


def _ship_enhancer(args, pipe: StreamingT2VPipeline, folder: Path) -> None:
    """``--enhancer`` in fp16 into ``folder``, sharing the pipeline's VAE and text encoder
    (or with ``--enhancer-vae``), with its default guidance and strength set."""
    enhancer = Enhancer.from_pretrained(args.enhancer, vae=pipe.vae, text_encoder=pipe.text_encoder)
    defaults = enhancer.config.defaults
    enhancer.config.defaults = defaults.merged(
        guidance=args.enhancer_guidance, strength=args.enhancer_strength
    )
    if args.enhancer_vae:
        vae = load_diffusers(AutoencoderKL, args.enhancer_vae)
        enhancer.vae = matching(vae, pipe.vae, LATENT_SPACE, args.enhancer_vae)
    own_vae = enhancer.vae is not pipe.vae  # given, or the enhancer folder's own
    enhancer.to("cpu", torch.float16).save_pretrained(folder, own_vae=own_vae)


def _write_records(args, tmp: Path) -> None:
    """training.json: the config and summary of every run behind the shipped parts, with
    their loss curves."""
    stages = {}
    runs = lineage(args.pipeline)
    for part in (args.vae, args.unet, args.enhancer, args.enhancer_vae):
        runs += lineage(part) if part else []
    for run in dict.fromkeys(runs):
        if (run / "training.json").is_file():  # an earlier ship: its records and curves
            stages.update(json.loads((run / "training.json").read_text()))
            for curve in run.glob("loss_*.png"):
                shutil.copy(curve, tmp / curve.name)
            continue
        stages[run.name] = {
            "summary": json.loads((run / "summary.json").read_text()),
            "config": json.loads((run / "checkpoint" / "state.json").read_text())["config"],
        }
        loss_curve(run / "loss.csv", tmp / f"loss_{run.name}.png", run.name)
    (tmp / "training.json").write_text(json.dumps(stages, indent=2))


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.enhancer_vae and not args.enhancer:
        parser.error("--enhancer-vae needs --enhancer")

    pipe = StreamingT2VPipeline.from_pretrained(args.pipeline)
    pipe.config.sample = replace(pipe.config.sample, **sample_overrides(args))
    if args.vae:
        vae = load_diffusers(AutoencoderKL, args.vae)
        pipe.vae = matching(vae, pipe.vae, LATENT_SPACE, args.vae)
    if args.unet:
        unet_dir = args.unet / "unet" if (args.unet / "unet").is_dir() else args.unet
        unet = load_diffusers(UNet3DConditionModel, unet_dir)
        pipe.unet = matching(unet, pipe.unet, UNET_INPUTS, args.unet)
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to("cpu", torch.float16).save_pretrained(tmp)
    if args.enhancer:
        _ship_enhancer(args, pipe, tmp / "enhancer")
    card = args.out / "MODEL_CARD.md"
    if card.is_file():  # hand-written: kept across re-ships
        shutil.copy(card, tmp / card.name)
    _write_records(args, tmp)
    if args.eval:
        shutil.copy(args.eval, tmp / "world_eval.json")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"shipped to {args.out}")


if __name__ == "__main__":
    main()
