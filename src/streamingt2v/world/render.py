"""The shapes world (``docs/world.md``): procedural videos with exact ground truth.

One object (circle, square or upright triangle, about a fifth of the frame wide) in one of 8
colours moves on one of 4 backgrounds, by one of 6 motions that hold for the whole video,
however long. Captions read ``a {colour} {shape} {motion} on a {background} background``.

Rendering is anti-aliased: every frame is drawn at ``supersample`` times the resolution and
box-downsampled. Positions are in units of the frame width (0..1, y down), so ground truth is
independent of the resolution.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 240),
    "yellow": (245, 215, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 210, 220),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
BACKGROUNDS = {
    "black": (16, 16, 16),
    "gray": (128, 128, 128),
    "navy": (24, 32, 96),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
STRAIGHT = {
    "moving left": (-1, 0),
    "moving right": (1, 0),
    "moving up": (0, -1),
    "moving down": (0, 1),
}
MOTIONS = (*STRAIGHT, "bouncing", "circling")
# Fraction of its bounding box each shape fills (the world checks' shape cue).
FILL_RATIO = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
SPEED_RANGE = (1 / 40, 1 / 20)  # frame widths per frame at 8 fps
SIZE = 0.2  # object width in frame widths (the world's default)
MAX_SIZE = 1 / 3  # no object is wider than this (world spec)
SIZE_SPREAD = (0.9, 1.1)  # each video's object width, as a factor of the mean


@dataclass(frozen=True)
class WorldParams:
    """Everything that determines one video. Positions and sizes in frame widths."""

    colour: str
    shape: str
    motion: str
    background: str
    size: float
    speed: float  # frame widths per frame
    x0: float  # start centre
    y0: float
    angle: float  # bouncing: initial diagonal (radians); circling: start phase
    clockwise: bool  # circling direction
    radius: float  # circling radius

    def __post_init__(self) -> None:
        for value, allowed in (
            (self.colour, COLOURS),
            (self.shape, SHAPES),
            (self.motion, MOTIONS),
            (self.background, BACKGROUNDS),
        ):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {list(allowed)}")
        if self.colour == self.background:
            raise ValueError(f"object and background are both {self.colour}")

    @property
    def caption(self) -> str:
        return caption_of(self.colour, self.shape, self.motion, self.background)

    def to_dict(self) -> dict:
        return asdict(self)


def rng_for(*keys: object) -> np.random.Generator:
    """A generator seeded from any tuple of keys (stable across runs and platforms)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_params(rng: np.random.Generator, object_size: float = SIZE, **fixed: str) -> WorldParams:
    """Random world parameters; ``fixed`` pins any of colour, shape, motion, background.

    ``object_size``: the mean object width in frame widths; each video draws within 10% of
    it. The world's default is a fifth, and no object may be wider than a third, so the
    mean is at most 0.303.
    """
    if not 0 < object_size * SIZE_SPREAD[1] <= MAX_SIZE:
        raise ValueError(
            f"object_size must be in (0, {MAX_SIZE / SIZE_SPREAD[1]:.3f}], got {object_size!r}"
        )
    colour = fixed.get("colour") or rng.choice(list(COLOURS))
    backgrounds = [b for b in BACKGROUNDS if b != colour]
    background = fixed.get("background") or rng.choice(backgrounds)
    motion = str(fixed.get("motion") or rng.choice(MOTIONS))
    if motion == "bouncing":  # one of the four diagonals, slightly perturbed
        angle = float(rng.choice([1, 3, 5, 7]) * np.pi / 4 + rng.uniform(-0.1, 0.1))
    else:  # circling: the start phase (unused by straight motions)
        angle = float(rng.uniform(0, 2 * np.pi))
    return WorldParams(
        colour=str(colour),
        shape=str(fixed.get("shape") or rng.choice(SHAPES)),
        motion=motion,
        background=str(background),
        size=object_size * float(rng.uniform(*SIZE_SPREAD)),
        speed=float(rng.uniform(*SPEED_RANGE)),
        x0=float(rng.uniform(0.2, 0.8)),
        y0=float(rng.uniform(0.2, 0.8)),
        angle=angle,
        clockwise=bool(rng.integers(2)),
        radius=float(rng.uniform(0.2, 0.3)),
    )


def caption_of(colour: str, shape: str, motion: str, background: str) -> str:
    """The world's caption of these words (``WorldParams.caption``)."""
    return f"a {colour} {shape} {motion} on a {background} background"


def parse_caption(caption: str) -> dict[str, str]:
    """Inverse of ``caption_of``: the words of a world prompt, or ValueError."""
    words = caption.strip().removeprefix("a ").removesuffix(" background").split(" on a ")
    if len(words) != 2:
        raise ValueError(f"not a shapes-world caption: {caption!r}")
    left, background = words
    colour, shape, *motion = left.split(" ")
    parsed = dict(colour=colour, shape=shape, motion=" ".join(motion), background=background)
    for key, allowed in (
        ("colour", COLOURS),
        ("shape", SHAPES),
        ("motion", MOTIONS),
        ("background", BACKGROUNDS),
    ):
        if parsed[key] not in allowed:
            raise ValueError(f"unknown {key} {parsed[key]!r} in {caption!r}")
    return parsed


def track(params: WorldParams, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre positions (N, 2) and velocities (N, 2) at the given frame indices.

    Straight motions wrap around (positions modulo 1); bouncing reflects the bounding box off
    the walls; circling runs around the frame centre.
    """
    t = np.asarray(frames, dtype=np.float64)
    p = params
    if p.motion in STRAIGHT:
        dx, dy = STRAIGHT[p.motion]
        pos = np.stack([(p.x0 + dx * p.speed * t) % 1.0, (p.y0 + dy * p.speed * t) % 1.0], -1)
        vel = np.tile([dx * p.speed, dy * p.speed], (len(t), 1))
    elif p.motion == "bouncing":
        half = p.size / 2
        lo, span = half, 1.0 - 2 * half
        v = p.speed * np.array([np.cos(p.angle), np.sin(p.angle)])
        pos, vel = [], []
        for start, speed in zip((p.x0, p.y0), v, strict=True):
            raw = (np.clip(start, lo, lo + span) - lo) + speed * t  # unfolded coordinate
            phase = np.mod(raw, 2 * span)
            forward = phase <= span
            pos.append(lo + np.where(forward, phase, 2 * span - phase))
            vel.append(np.where(forward, speed, -speed))
        pos, vel = np.stack(pos, -1), np.stack(vel, -1)
    else:  # circling
        omega = p.speed / p.radius * (-1 if p.clockwise else 1)
        theta = p.angle + omega * t
        pos = np.stack([0.5 + p.radius * np.cos(theta), 0.5 - p.radius * np.sin(theta)], -1)
        vel = np.stack([-p.radius * omega * np.sin(theta), -p.radius * omega * np.cos(theta)], -1)
    return pos, vel


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Inside-test for offsets (dx, dy) from the centre, in frame widths."""
    half = size / 2
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Upright triangle in its size x size box: apex at the top centre.
    depth = dy + half  # 0 at the apex, size at the base
    return (depth >= 0) & (depth <= size) & (np.abs(dx) <= depth / 2)


def render(
    params: WorldParams, frames: int | np.ndarray, size: int = 32, supersample: int = 4
) -> np.ndarray:
    """Frames (an index array, or a count from 0) as (F, size, size, 3) uint8."""
    index = np.arange(frames) if np.isscalar(frames) else np.asarray(frames)
    pos, _ = track(params, index)
    hi = size * supersample
    grid = (np.arange(hi) + 0.5) / hi  # pixel centres in frame widths
    colour = np.array(COLOURS[params.colour], dtype=np.float32)
    background = np.array(BACKGROUNDS[params.background], dtype=np.float32)
    wrap = (-1.0, 0.0, 1.0) if params.motion in STRAIGHT else (0.0,)
    out = np.empty((len(index), size, size, 3), dtype=np.uint8)
    for i, (cx, cy) in enumerate(pos):
        mask = np.zeros((hi, hi), dtype=bool)
        for ox in wrap:  # straight motions wrap: draw the copies across the edges too
            for oy in wrap:
                dx = grid[None, :] - (cx + ox)
                dy = grid[:, None] - (cy + oy)
                mask |= _shape_mask(params.shape, dx, dy, params.size)
        cover = mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
        pixel = background + cover[..., None] * (colour - background)  # (H, W, 3)
        out[i] = np.round(pixel).astype(np.uint8)
    return out
