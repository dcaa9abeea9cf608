"""SCuts: hard cuts found by PySceneDetect's AdaptiveDetector (paper Sec. 5.2.1).

Settings: ``adaptive_threshold`` 3.0 and ``window_width`` 2 (the library's defaults);
``min_scene_len`` 8 frames instead of its 15, so that a cut at every chunk boundary of an
8-new-frames-per-chunk video can still be found; ``min_content_val`` 2 instead of 15: a
shapes-world object covers ~4% of the frame, and a cut that swaps only the object (same
background) stays under the default floor. Calibrated on rendered ground truth before any
model was compared (``python benchmarks/research/diagnostics.py scuts``): cuts between two world
videos with the same background found in 0/8 at 15 and 7/8 at 2; no false cut in 8 smooth
videos at either (the same again after the mp4 writer moved to x264 without lookahead,
written as MPEG-TS and remuxed). Frames are upscaled to at least
128 pixels first: the detector's statistics are unstable on 32-pixel frames.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

MIN_SCENE_LEN = 8
MIN_CONTENT_VAL = 2.0
MIN_SIZE = 128


def count_cuts(video: np.ndarray, fps: int = 8) -> int:
    """Number of cuts in a (F, H, W, 3) uint8 video."""
    try:
        from scenedetect import AdaptiveDetector, detect
    except ImportError as err:  # a base dependency, unless removed
        raise ImportError("SCuts needs scenedetect-headless and opencv-python-headless") from err
    from ..video_io import VideoWriter

    scale = max(1, -(-MIN_SIZE // min(video.shape[1:3])))
    big = video.repeat(scale, axis=1).repeat(scale, axis=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        writer = VideoWriter(path, fps)
        writer.write(big)
        writer.finish()
        detector = AdaptiveDetector(min_scene_len=MIN_SCENE_LEN, min_content_val=MIN_CONTENT_VAL)
        scenes = detect(str(path), detector)
    return max(0, len(scenes) - 1)
