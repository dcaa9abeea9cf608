"""Checks of a shapes-world video that need no learned model (``docs/world.md``).

Per frame: the background is the dominant border colour; the object is what differs from
it; its median colour, bounding-box fill ratio and coverage-weighted centroid give colour,
shape and position. Over 8-frame windows, the centroid track gives the motion direction
(straight motions wrap around the edges, so displacements are taken modulo the frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..world.render import BACKGROUNDS, COLOURS, STRAIGHT

_COLOUR_NAMES = list(COLOURS)
_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float32)
_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
# A pixel at least this far (RGB distance) from the background belongs to the object.
OBJECT_THRESHOLD = 40.0
MIN_OBJECT_PIXELS = 2.0  # coverage below this: no object in the frame
# Area / soft bounding box of each shape as read from anti-aliased 32x32 renders (median over
# 2400 ground-truth frames); the geometric ratios are 0.785 / 1.0 / 0.5, but a 6-pixel
# triangle's anti-aliased apex widens its reading. Shapes are told apart by the nearest one.
MEASURED_FILL = {"circle": 0.79, "square": 1.0, "triangle": 0.625}


@dataclass
class FrameReading:
    background: str
    colour: str | None  # None when no object is found
    shape: str | None
    fill: float
    centroid: tuple[float, float] | None  # in frame widths, y down
    coverage: float  # object area in pixels
    rgb: tuple[float, float, float] | None = None  # the object's median colour


def _nearest(rgb: np.ndarray, names: list[str], table: np.ndarray) -> str:
    return names[int(np.argmin(((table - rgb) ** 2).sum(-1)))]


def _unsplit_shift(profile: np.ndarray) -> int:
    """Roll that moves the longest empty run of a wrapped profile to the array's ends."""
    if not (profile[0] and profile[-1]) or profile.all():
        return 0
    empty = ~profile
    best_len, best_end, run = 0, 0, 0
    for i, e in enumerate(empty):
        run = run + 1 if e else 0
        if run > best_len:
            best_len, best_end = run, i
    return len(profile) - 1 - best_end  # the run's end lands on the last index


def read_frame(frame: np.ndarray) -> FrameReading:
    """Read one (H, W, 3) uint8 frame."""
    x = frame.astype(np.float32)
    height, width = x.shape[:2]
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])  # (2H + 2W, 3)
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, _BG_NAMES, _BG_RGB)
    bg = _BG_RGB[_BG_NAMES.index(background)]
    distance = np.linalg.norm(x - bg, axis=-1)  # (H, W)
    mask = distance > OBJECT_THRESHOLD
    if mask.sum() < MIN_OBJECT_PIXELS:
        return FrameReading(background, None, None, 0.0, None, 0.0)
    # The object's core (pixels far from the background) carries its true colour.
    core = distance >= np.quantile(distance[mask], 0.5)
    rgb = np.median(x[mask & core], axis=0)
    colour = _nearest(rgb, _COLOUR_NAMES, _COLOUR_RGB)
    full = np.linalg.norm(_COLOUR_RGB[_COLOUR_NAMES.index(colour)] - bg)
    cover = np.clip(distance / max(full, 1.0), 0.0, 1.0) * mask  # soft coverage (H, W)
    # An object that wraps around an edge is split in two: roll it back into one piece.
    shift_x = _unsplit_shift(mask.any(axis=0))
    shift_y = _unsplit_shift(mask.any(axis=1))
    cover = np.roll(cover, (shift_y, shift_x), axis=(0, 1))
    area = float(cover.sum())
    # Soft extents (sum of each column's / row's largest coverage) measure the bounding box
    # to a fraction of a pixel, which a 6-pixel object needs.
    box = float(cover.max(axis=0).sum() * cover.max(axis=1).sum())
    fill = area / max(box, 1e-6)
    shape = min(MEASURED_FILL, key=lambda s: abs(MEASURED_FILL[s] - fill))
    yy, xx = np.mgrid[0:height, 0:width]
    cx = ((cover * (xx + 0.5)).sum() / area - shift_x) % width / width
    cy = ((cover * (yy + 0.5)).sum() / area - shift_y) % height / width
    centroid = (float(cx), float(cy))
    return FrameReading(background, colour, shape, fill, centroid, area, tuple(map(float, rgb)))


def direction_of(displacement: np.ndarray) -> str:
    """The straight motion nearest to a displacement (dx, dy), y down."""
    dx, dy = displacement
    if abs(dx) >= abs(dy):
        return "moving right" if dx > 0 else "moving left"
    return "moving down" if dy > 0 else "moving up"


def wrapped_steps(centroids: np.ndarray) -> np.ndarray:
    """Frame-to-frame displacements (N-1, 2), each taken modulo the frame into [-0.5, 0.5)."""
    return (np.diff(centroids, axis=0) + 0.5) % 1.0 - 0.5


@dataclass
class VideoReport:
    frames: int
    colour_right: float  # fractions of frames (or windows) that match the caption
    background_right: float
    shape_right: float
    object_found: float
    direction_right: float | None  # straight motions only: fraction of 8-frame windows
    speed_first: float | None  # mean speed (frame widths / frame) over the first 80 frames
    speed_last: float | None  # ... and over the last 80 frames
    speeds: list[float]  # mean speed per 8-frame window
    directions: list[str]  # per 8-frame window with the object found: its straight motion
    # Per 8-frame window: RGB distance of the object's colour from its colour in the first
    # frame where it was found (None: no object in the window). Long-video drift shows here.
    colour_drift: list[float | None]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def check_video(video: np.ndarray, expected: dict[str, str], window: int = 8) -> VideoReport:
    """Compare a (F, H, W, 3) uint8 video with the caption's words (``parse_caption``)."""
    readings = [read_frame(f) for f in video]
    n = len(readings)
    found = [r for r in readings if r.colour is not None]
    colour = sum(r.colour == expected["colour"] for r in readings) / n
    background = sum(r.background == expected["background"] for r in readings) / n
    shape = sum(r.shape == expected["shape"] for r in readings) / n
    # Speeds and directions from consecutive frames where the object was found.
    centroids = np.array([r.centroid if r.centroid else (np.nan, np.nan) for r in readings])
    steps = wrapped_steps(centroids) if n > 1 else np.zeros((0, 2))
    speeds, directions = [], []
    for start in range(0, len(steps) - window + 2, window):
        part = steps[start : start + window - 1]
        part = part[~np.isnan(part).any(axis=1)]
        if len(part) == 0:
            continue
        speeds.append(float(np.linalg.norm(part, axis=1).mean()))
        directions.append(direction_of(part.sum(axis=0)))
    direction = None
    if expected["motion"] in STRAIGHT and directions:
        direction = sum(d == expected["motion"] for d in directions) / len(directions)

    def mean_speed(part: np.ndarray) -> float | None:
        part = part[~np.isnan(part).any(axis=1)]
        return float(np.linalg.norm(part, axis=1).mean()) if len(part) else None

    first = next((r.rgb for r in readings if r.rgb is not None), None)
    colour_drift = []
    for start in range(0, n, window):
        part = [r.rgb for r in readings[start : start + window] if r.rgb is not None]
        drift = None
        if part and first is not None:
            drift = float(np.linalg.norm(np.mean(part, axis=0) - np.array(first)))
        colour_drift.append(drift)
    span = min(80, max(n - 1, 0))
    return VideoReport(
        frames=n,
        colour_right=colour,
        background_right=background,
        shape_right=shape,
        object_found=len(found) / n,
        direction_right=direction,
        speed_first=mean_speed(steps[:span]) if span else None,
        speed_last=mean_speed(steps[-span:]) if span else None,
        speeds=speeds,
        directions=directions,
        colour_drift=colour_drift,
    )


def xt_slice(video: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) -> (F, W, 3): the row through the object's mean centroid height, every
    frame stacked over time (the middle row when no object is found). Continuity reads at a
    glance: a cut is a horizontal break, motion a slanted trace."""
    ys = [r.centroid[1] for r in map(read_frame, video) if r.centroid]  # in frame widths
    row = int(np.clip(np.mean(ys) * video.shape[2], 0, video.shape[1] - 1)) if ys else None
    return video[:, video.shape[1] // 2 if row is None else row]
