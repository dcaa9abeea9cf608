"""Saving and strictly loading weights: safetensors with their config, never pickles.

Our own modules (CAM, APM) are saved as ``config.json`` + ``model.safetensors`` whose metadata
also carries the config. diffusers and transformers components use their own
``save_pretrained`` folders, loaded here with missing or unexpected keys treated as errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelLoadError, UsageError, read_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_module(module: nn.Module, folder: Path, config: dict[str, Any]) -> None:
    """Write ``folder/config.json`` and ``folder/model.safetensors`` (config in its metadata)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True)
    (folder / CONFIG_NAME).write_text(text + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"config": text})


def load_state_strict(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``module``; any key or shape mismatch is a ModelLoadError
    naming the keys. A module whose saved format changed reads its earlier files through its
    ``upgrade_state(state) -> state`` (e.g. the APM's ``alpha``, (1,) before, 0-d now)."""
    if not path.is_file():
        raise ModelLoadError(f"missing weights file: {path}")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"corrupt weights file {path}: {err}") from err
    upgrade = getattr(module, "upgrade_state", None)
    if upgrade is not None:
        state = upgrade(state)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {path} do not match the model: "
            f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}"
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        shapes = {k: (tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]}
        raise ModelLoadError(f"weights in {path} have wrong shapes (file, model): {shapes}")
    module.load_state_dict(state, strict=True)


def read_module_config(folder: Path) -> dict[str, Any]:
    return read_json(folder / CONFIG_NAME)


@contextmanager
def libraries_quiet() -> Iterator[None]:
    """Within: transformers' and diffusers' progress bars and info messages off (their
    "Loading weights" bars would print twice per run before ours), restored after. Loading
    errors still raise; this library checks every load report itself."""
    import diffusers
    import transformers

    saved = [
        (
            lib.utils.logging,
            lib.utils.logging.get_verbosity(),
            lib.utils.logging.is_progress_bar_enabled(),
        )
        for lib in (transformers, diffusers)
    ]
    for logging, _, _ in saved:
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    try:
        yield
    finally:
        for logging, verbosity, bars in saved:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(folder: Path) -> None:
    """Refuse a model folder whose weights are pickles only: unpickling can run code, so
    this library never does it (not even through a library's fallback). The message says
    how to convert them once."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise ModelLoadError(f"no weights (*.safetensors) in {folder}")
    first = pickles[0]
    raise ModelLoadError(
        f"{folder} holds only pickled weights ({', '.join(p.name for p in pickles)}); this "
        "library loads safetensors only, because unpickling a file can run code. If you "
        'trust the file, convert it once: python -c "import torch, safetensors.torch as st; '
        f"st.save_file(torch.load('{first}', weights_only=True), "
        f"'{first.with_suffix('.safetensors')}')\""
    )


def load_diffusers(cls, folder: Path, dtype: torch.dtype | None = None):
    """``cls.from_pretrained(folder)`` with missing or unexpected keys treated as errors;
    safetensors weights only."""
    if not (folder / CONFIG_NAME).is_file():
        raise ModelLoadError(f"missing model folder or its config.json: {folder}")
    require_safetensors(folder)
    try:
        with libraries_quiet():
            model, info = cls.from_pretrained(
                folder, output_loading_info=True, torch_dtype=dtype, use_safetensors=True
            )
    except Exception as err:  # diffusers raises many types for broken folders
        raise ModelLoadError(f"cannot load {cls.__name__} from {folder}: {err}") from err
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if bad:
        raise ModelLoadError(f"weights in {folder} do not match its config: {bad}")
    return model


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a download fetches of a hub repository: the files this library reads (configs,
# tokenizer files, full-precision safetensors weights, sharded or not) and none of the
# pickled, fp16 or framework-specific copies that the big repositories also hold (tens of
# GB for ModelScope's and OpenCLIP-H's). Patterns as huggingface_hub matches them (fnmatch,
# "*" crossing folders).
HUB_FILES = (
    "*.json",
    "*.txt",
    "*.model",
    "diffusion_pytorch_model.safetensors",
    "*/diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model-*-of-*.safetensors",
    "*/diffusion_pytorch_model-*-of-*.safetensors",
    "model.safetensors",
    "*/model.safetensors",
    "model-*-of-*.safetensors",
    "*/model-*-of-*.safetensors",
)


def local_model_folder(spec: str | Path) -> Path:
    """A model folder on disk: ``spec`` itself, or a Hugging Face hub id ("org/name")
    downloaded into the hub cache (needs internet once; then found offline in the cache)."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.exists() or not HUB_ID.fullmatch(str(spec)):
        raise UsageError(f"model folder not found: {spec}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec), allow_patterns=list(HUB_FILES)))
    except Exception as err:  # offline, unknown repo, gated repo, interrupted download
        raise UsageError(
            f"model folder not found: {spec}, and it could not be fetched from the Hugging "
            f"Face hub ({type(err).__name__}); without internet pass a local folder"
        ) from err


def _few(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit]) or "none"
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"
