"""``convert-official``: the authors' StreamingT2V checkpoint -> our pipeline folder.

The official ModelScope-variant checkpoint is a pickled PyTorch Lightning file whose
``state_dict`` holds (see docs/full-size.md):

    unet.*                      the CAM trunk: conv_in, time_embedding, transformer_in,
                                down_blocks, mid_block, controlnet_cond_embedding (E_cond)
    base_model.cross_attention_merger_down_blocks.{i}.temporal_transformer.*   the mergers
    base_model.cross_attention_merger_mid_block.temporal_transformer.*
    base_model.<path>.attn2.{conv,conv_ln,alpha}    the APM's context mixers, one per spatial
                                cross-attention of the base UNet
    base_model.*                the rest: the streaming UNet (ModelScope's, spatial layers
                                fine-tuned)
    resampler.context_embedding.{0,2}.*             the APM's resampler

The frozen public models (ModelScope's UNet, VAE, text encoder; OpenCLIP ViT-H-14) are taken
from their own folders. The checkpoint is opened with ``weights_only=True`` (no pickled code
runs) and memory-mapped; each output component is written on its own, the streaming UNet in
shards, so at most one component is ever materialized. Every key is accounted for: mapped,
skipped as a known unused part (listed by prefix), or reported as unknown; missing or
mis-shaped weights are an error that names them. The folder is built beside OUT and moved
into place only when complete, so a failed conversion leaves no partial output.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from safetensors.torch import save_file
from tqdm import tqdm

from . import __version__
from .config import (
    ApmConfig,
    CamConfig,
    ModelLoadError,
    PipelineConfig,
    SampleConfig,
    StreamConfig,
    UsageError,
    config_to_dict,
    read_json,
)
from .models.apm import AppearancePreservationModule, spatial_cross_attention_names
from .models.cam import ConditionalAttentionModule
from .models.weights import WEIGHTS_NAME, local_model_folder

MERGER_DOWN = re.compile(
    r"base_model\.cross_attention_merger_down_blocks\.(\d+)\.temporal_transformer\.(.+)"
)
MERGER_MID = re.compile(r"base_model\.cross_attention_merger_mid_block\.temporal_transformer\.(.+)")
MIXER_PARAMS = ("conv.weight", "conv.bias", "conv_ln.weight", "conv_ln.bias", "alpha")
# Parts of the Lightning module that are frozen public models, loaded from their own folders.
FROZEN_PREFIXES = ("vae.", "text_encoder.", "image_encoder.", "clip_model.")
UNET_SHARDS = "diffusion_pytorch_model.safetensors.index.json"
BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The official stage settings, a converted folder's defaults: the first chunk with
# DPM-Solver++ (order 2, midpoint) at guidance 9.0 (diffusers' default: the authors pass
# none) and no negative prompt; the streaming chunks with DDIM, eta 1, guidance 7.5 and the
# negative prompt; 50 steps each.
OFFICIAL_SAMPLE = SampleConfig(
    steps=50,
    guidance=9.0,
    scheduler="dpm",
    eta=1.0,
    stream_guidance=7.5,
    stream_scheduler="ddim",
    first_chunk_negative_prompt=False,
)


@dataclass
class ConversionReport:
    """What happened to every key of the checkpoint; written as ``conversion_report.json``."""

    checkpoint: str
    mapped: dict[str, int] = field(default_factory=dict)  # component -> tensors written
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> tensors
    unknown: list[str] = field(default_factory=list)
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {
            "converted_by": f"streamingt2v {__version__}",
            "checkpoint": self.checkpoint,
            "dtype": self.dtype,
            "mapped": self.mapped,
            "skipped": self.skipped,
            "unknown": self.unknown,
        }


def pickle_globals(path: Path) -> list[str]:
    """Every global ("module.name") the checkpoint's pickle refers to, read with
    ``pickletools`` without executing anything. Empty for a file that is not torch's zip
    format (its legacy format is left to ``torch.load(weights_only=True)``)."""
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
        if name is None:
            return []
        data = archive.read(name)
    found, strings, memo = [], [], {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        if isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[arg] = strings[-1]
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
            strings.append(memo[arg])
    return list(dict.fromkeys(found))


def _stand_in(name: str) -> type:
    """A harmless class that takes the place of a global the safe unpickler refuses: it
    accepts whatever the pickle hands it and runs none of the original's code."""

    def __init__(self, *args, **kwargs):  # a refused function "called" makes one of these
        self.__dict__["pickled_args"] = (args, kwargs)

    def __setstate__(self, state):
        self.__dict__["pickled_state"] = state

    methods = {"__init__": __init__, "__setstate__": __setstate__, "__module__": __name__}
    return type(f"StandIn[{name}]", (), methods)


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``, memory-mapped, never running pickled code.

    A Lightning training checkpoint also pickles its hyper-parameters (``argparse.Namespace``,
    ``AttributeDict``) and loop state, which the safe unpickler refuses. Every global it would
    refuse is listed first (``pickle_globals``) and replaced by a stand-in class (a dict
    where the pickle fills one): the tensors load, the original classes never run. If the
    load still fails, the error names the globals and what the user can do.
    """
    from torch._weights_only_unpickler import _get_allowed_globals

    refused = [g for g in pickle_globals(path) if g not in _get_allowed_globals() and "." in g]
    stand_ins = {name: _stand_in(name) for name in refused}
    mmap = zipfile.is_zipfile(path)  # torch's zip format maps; the legacy format cannot
    for _ in range(len(refused) + 1):
        substitutes = [(cls, name) for name, cls in stand_ins.items()]
        try:
            with torch.serialization.safe_globals(substitutes):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            # The safe unpickler fills only real dicts: a dict subclass stands in as a dict.
            needs_dict = re.search(
                r"SETITEMS for .* but got <class '.*StandIn\[(.+?)\]'>", str(err)
            )
            if needs_dict is None or stand_ins.get(needs_dict[1]) is dict:
                raise ModelLoadError(_refused_message(path, refused, err)) from err
            stand_ins[needs_dict[1]] = dict
        except Exception as err:  # torch raises many types for a truncated or foreign file
            raise ModelLoadError(
                f"cannot read checkpoint {path} (corrupt or truncated?): {err}"
            ) from err
    raise ModelLoadError(_refused_message(path, refused, None))


def _refused_message(path: Path, refused: list[str], err: Exception | None) -> str:
    listed = ", ".join(refused) or "none found by the scan"
    detail = str(err).splitlines()[-3:] if err else []
    return (
        f"cannot read {path} safely: its pickle refers to globals that a weights-only load "
        f"does not allow ({listed}); nothing from the file was run. If you trust the file, "
        'save its state_dict alone once and convert that file: python -c "import torch; '
        f"torch.save(torch.load('{path}', weights_only=False)['state_dict'], "
        f"'{path.with_suffix('.state_dict.pt')}')\". " + " ".join(d.strip() for d in detail)
    ).strip()


def open_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's ``state_dict``, memory-mapped, read with ``load_weights_only``."""
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    data = load_weights_only(path)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"{path} has no state_dict of tensors")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return state


def _meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A module built on the meta device: its key names and shapes, no memory."""
    with torch.device("meta"):
        return build()


class _Layout:
    """Where every official key goes, built from the base UNet's config and the checkpoint's
    own shapes (E_cond widths, APM sizes)."""

    def __init__(self, state: dict[str, torch.Tensor], unet_config: dict):
        self.unet = _meta(lambda: UNet3DConditionModel.from_config(unet_config))
        self.mixer_paths = {
            f"base_model.{name}.{p}": (i, p)
            for i, name in enumerate(spatial_cross_attention_names(self.unet))
            for p in MIXER_PARAMS
        }
        self.cam_config = CamConfig(cond_embedding_channels=_cond_widths(state))
        self.apm_config = _apm_config(state, unet_config)
        self.cam = _meta(lambda: ConditionalAttentionModule(unet_config, self.cam_config))
        layers = len(spatial_cross_attention_names(self.unet))
        self.apm = _meta(lambda: AppearancePreservationModule(self.apm_config, layers))

    def route(self, key: str) -> tuple[str, str] | None:
        """(component, our key) for an official key; None when it is not ours to map."""
        if key.startswith("unet."):
            return "cam", key[len("unet.") :]
        if match := MERGER_DOWN.fullmatch(key):
            return "cam", f"down_mergers.{match[1]}.{match[2]}"
        if match := MERGER_MID.fullmatch(key):
            return "cam", f"mid_merger.{match[1]}"
        if key in self.mixer_paths:
            index, param = self.mixer_paths[key]
            return "apm", f"mixers.{index}.{param}"
        if key.startswith("resampler."):
            return "apm", key
        if key.startswith("base_model."):
            return "stream_unet", key[len("base_model.") :]
        return None


def _cond_widths(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """E_cond's widths from its weights: conv_in, then every second block (the stride-2 ones)."""
    prefix = "unet.controlnet_cond_embedding."
    if prefix + "conv_in.weight" not in state:
        raise ModelLoadError(
            "checkpoint lacks the CAM frame encoder (unet.controlnet_cond_embedding)"
        )
    widths = [state[prefix + "conv_in.weight"].shape[0]]
    index = 1
    while prefix + f"blocks.{index}.weight" in state:
        widths.append(state[prefix + f"blocks.{index}.weight"].shape[0])
        index += 2
    return tuple(widths)


def _apm_config(state: dict[str, torch.Tensor], unet_config: dict) -> ApmConfig:
    first = state.get("resampler.context_embedding.0.weight")
    last = state.get("resampler.context_embedding.2.weight")
    if first is None or last is None:
        raise ModelLoadError("checkpoint lacks the APM resampler (resampler.context_embedding)")
    conv = next((v for k, v in state.items() if k.endswith("attn2.conv.weight")), None)
    if conv is None:
        raise ModelLoadError("checkpoint lacks the APM context mixers (attn2.conv.weight)")
    width = unet_config["cross_attention_dim"]
    text_tokens, total = conv.shape[0], conv.shape[1]
    if last.shape[0] != (total - text_tokens) * width:
        raise ModelLoadError(
            f"resampler makes {last.shape[0]} values, the mixers expect "
            f"{total - text_tokens} tokens of {width}"
        )
    return ApmConfig(
        image_embed_dim=first.shape[1],
        resampler_hidden_dim=first.shape[0],
        image_tokens=total - text_tokens,
        text_tokens=text_tokens,
        cross_attention_dim=width,
    )


def _skip_reason(key: str) -> str | None:
    """Why a checkpoint key that maps to nothing of ours may be left out, or None (unknown)."""
    if key.startswith(FROZEN_PREFIXES):
        return f"frozen public model ({key.split('.')[0]}), loaded from its own folder"
    return None


@dataclass
class Routing:
    """Where every key of a checkpoint goes (``route_checkpoint``)."""

    layout: _Layout
    routed: dict[str, list[tuple[str, torch.Tensor]]]  # component -> (our key, tensor)
    skipped: dict[str, int]  # reason -> tensors
    unknown: list[str]  # keys that belong to no known part
    problems: list[str]  # missing, unexpected or mis-shaped weights, by component


def route_checkpoint(state: dict[str, torch.Tensor], unet_config: dict) -> Routing:
    """Route every key of the official ``state`` to our components and check each component
    against our modules built on the meta device. Reads only names and shapes, so it runs on
    meta tensors too (the tests route the real checkpoint's full key list this way)."""
    layout = _Layout(state, unet_config)
    routing = Routing(layout, {"cam": [], "apm": [], "stream_unet": []}, {}, [], [])
    for key, tensor in state.items():
        reason = _skip_reason(key)
        target = layout.route(key)
        if reason is not None:
            routing.skipped[reason] = routing.skipped.get(reason, 0) + 1
        elif target is None:
            routing.unknown.append(key)
        else:
            routing.routed[target[0]].append((target[1], tensor))
    for component, module in (
        ("cam", layout.cam),
        ("apm", layout.apm),
        ("stream_unet", layout.unet),
    ):
        got = {k: v.shape for k, v in routing.routed[component]}
        routing.problems += _check(component, got, _expected(module))
    return routing


def _expected(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def _check(
    component: str, got: dict[str, torch.Size], expected: dict[str, torch.Size]
) -> list[str]:
    problems = []
    missing = sorted(set(expected) - set(got))
    if missing:
        problems.append(f"{component}: missing {len(missing)} weights, e.g. {missing[:5]}")
    unexpected = sorted(set(got) - set(expected))
    if unexpected:
        problems.append(f"{component}: unexpected {len(unexpected)} weights, e.g. {unexpected[:5]}")
    shapes = [
        f"{k} {tuple(got[k])} vs {tuple(expected[k])}"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    if shapes:
        problems.append(f"{component}: wrong shapes (checkpoint vs model), e.g. {shapes[:5]}")
    return problems


def _shards(
    items: list[tuple[str, torch.Tensor]], max_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    shard, size = [], 0
    for key, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_bytes:
            yield shard
            shard, size = [], 0
        shard.append((key, tensor))
        size += nbytes
    if shard:
        yield shard


def _materialize(pairs, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        k: v.to(dtype).contiguous() if v.is_floating_point() else v.contiguous() for k, v in pairs
    }


def _write_unet(folder: Path, unet, items, dtype: torch.dtype, max_bytes: int) -> None:
    """A diffusers UNet folder; weights in shards (diffusers' index format) when large."""
    folder.mkdir(parents=True)
    unet.save_config(folder)
    shards = list(_shards(items, max_bytes))  # groups of views: nothing materialized yet
    if len(shards) == 1:
        save_file(_materialize(shards[0], dtype), folder / "diffusion_pytorch_model.safetensors")
        return
    weight_map, total = {}, 0
    for number, shard in enumerate(tqdm(shards, desc="stream_unet shards"), start=1):
        name = f"diffusion_pytorch_model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = _materialize(shard, dtype)
        save_file(tensors, folder / name, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / UNET_SHARDS).write_text(json.dumps(index, indent=2))


def _write_module(folder: Path, pairs, config: dict, dtype: torch.dtype) -> None:
    folder.mkdir(parents=True)
    text = json.dumps(config, indent=2, sort_keys=True)
    (folder / "config.json").write_text(text + "\n")
    save_file(_materialize(pairs, dtype), folder / WEIGHTS_NAME, metadata={"config": text})


def _copy_tree(src: Path, dst: Path) -> None:
    """Hard-link the files where the filesystem allows (no second copy of 7 GB), else copy."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def check_base_folder(base: Path) -> None:
    missing = [part for part in BASE_PARTS if not (base / part).is_dir()]
    if missing:
        raise UsageError(
            f"{base} is not a ModelScope text-to-video folder in diffusers layout: "
            f"it lacks {missing} (e.g. damo-vilab/text-to-video-ms-1.7b)"
        )


def convert_official(
    checkpoint: Path,
    out: Path,
    base: Path,
    image_encoder: Path,
    dtype: torch.dtype = torch.float16,
    allow_unknown: bool = False,
    max_shard_bytes: int = 2 * 1024**3,
) -> ConversionReport:
    """Write the pipeline folder ``out`` from the official checkpoint plus the public models."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists():
        raise UsageError(f"{out} exists; choose a new folder (nothing was written)")
    base, image_encoder = local_model_folder(base), local_model_folder(image_encoder)
    check_base_folder(base)
    if not (image_encoder / "config.json").is_file():
        raise UsageError(f"{image_encoder} is not a transformers CLIP vision folder")
    unet_config = read_json(base / "unet" / "config.json")
    state = open_checkpoint(checkpoint)
    routing = route_checkpoint(state, unet_config)
    layout, routed = routing.layout, routing.routed
    report = ConversionReport(
        checkpoint=str(checkpoint),
        skipped=routing.skipped,
        unknown=routing.unknown,
        dtype=str(dtype).removeprefix("torch."),
    )
    if routing.problems:
        raise ModelLoadError(
            "checkpoint does not match the official structure:\n  " + "\n  ".join(routing.problems)
        )
    if report.unknown and not allow_unknown:
        raise ModelLoadError(
            f"{len(report.unknown)} checkpoint keys belong to no known part, e.g. "
            f"{report.unknown[:10]}; pass --allow-unknown to convert without them"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for part in BASE_PARTS:
            _copy_tree(base / part, tmp / part)
        _copy_tree(image_encoder, tmp / "image_encoder")
        _write_unet(tmp / "stream_unet", layout.unet, routed["stream_unet"], dtype, max_shard_bytes)
        plain_unet = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        cam_config = {"cam": config_to_dict(layout.cam_config), "unet_config": plain_unet}
        _write_module(tmp / "cam", routed["cam"], cam_config, dtype)
        apm_config = config_to_dict(layout.apm_config) | {"num_layers": len(layout.apm.mixers)}
        _write_module(tmp / "apm", routed["apm"], apm_config, dtype)
        config = PipelineConfig(
            stream=StreamConfig(text_tokens=layout.apm_config.text_tokens),
            sample=OFFICIAL_SAMPLE,
            stream_dtype="float32",  # the official streaming stage runs in fp32
        )
        (tmp / "pipeline_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        index = {"_class_name": "StreamingT2VPipeline", "_streamingt2v_version": __version__}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        report.mapped = {k: len(v) for k, v in routed.items()}
        (tmp / "conversion_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
