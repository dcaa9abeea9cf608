"""streamingt2v: long text-to-video generation the StreamingT2V way (Henschel et al., 2024).

Public API: ``StreamingT2VPipeline`` (from_pretrained / save_pretrained / stream / __call__)
and ``generate`` (the function behind ``streamingt2v generate``).

The names below load on first use, so ``import streamingt2v`` (and ``streamingt2v --help``)
does not import torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "StreamingT2VPipeline": "pipeline",
    "VideoOutput": "pipeline",
    "Request": "streaming",
    "VideoChunk": "streaming",
}

if TYPE_CHECKING:
    from .pipeline import StreamingT2VPipeline, VideoOutput
    from .streaming import Request, VideoChunk


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["StreamingT2VPipeline", "VideoOutput", "Request", "VideoChunk", "__version__"]
