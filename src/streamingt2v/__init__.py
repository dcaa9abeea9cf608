"""streamingt2v: long text-to-video generation the StreamingT2V way (Henschel et al., 2024).

Public API: ``StreamingT2VPipeline`` (from_pretrained / save_pretrained / stream / __call__)
and ``generate`` (the function behind ``streamingt2v generate``).
"""

__version__ = "0.1.0"

from .pipeline import StreamingT2VPipeline, VideoOutput  # noqa: E402
from .streaming import Request, VideoChunk  # noqa: E402

__all__ = ["StreamingT2VPipeline", "VideoOutput", "Request", "VideoChunk", "__version__"]
