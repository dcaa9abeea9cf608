"""Prompt timelines: one continuous video whose prompt changes over time.

A timeline is a JSON file (or the same structure in Python)::

    {
      "anchor": "keep",
      "segments": [
        {"prompt": "a red circle moving right on a black background", "frames": 120},
        {"prompt": "a red circle moving up on a black background", "frames": 120,
         "seed": 3, "guidance": 5.0, "negative_prompt": "blurry"}
      ]
    }

Each segment has a ``prompt`` and ``frames`` (> 0); ``seed``, ``guidance`` and
``negative_prompt`` are optional and default to the run's settings (``guidance`` sets every
chunk of its segment, the streaming chunks' included). The video has the sum of the segments'
frames. The text conditioning changes at chunk boundaries: a segment's prompt takes over at
the first chunk that starts at or after its first frame (chunk k starts at frame
16 + 8 (k - 1)); the frames of a chunk that runs past a segment's end keep that segment's
prompt. The CAM carries the motion across every switch.

``anchor`` says what the APM's anchor does at a prompt change: ``"keep"`` (the default)
keeps the video's first frame, as in one prompt's run; ``"reanchor"`` makes the last frame
before the switch the anchor of the segments after it.

This module reads and checks timelines (no torch import); ``streaming.stream_timeline``
makes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import UsageError, check_guidance

ANCHORS = ("keep", "reanchor")
SEGMENT_KEYS = ("prompt", "frames", "seed", "guidance", "negative_prompt")


@dataclass(frozen=True)
class Segment:
    """One prompt and its number of frames; None settings are the run's."""

    prompt: str
    frames: int
    seed: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UsageError(f"a timeline segment's prompt is empty: {self.prompt!r}")
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise UsageError(f"a timeline segment's frames must be >= 1, got {self.frames!r}")
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise UsageError(f"a timeline segment's seed must be in [0, 2**63 - 1], got {seed!r}")
        if self.guidance is not None:
            check_guidance(self.guidance)
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise UsageError(f"negative_prompt must be text, got {self.negative_prompt!r}")


@dataclass(frozen=True)
class Timeline:
    segments: tuple[Segment, ...]
    anchor: str = "keep"

    def __post_init__(self) -> None:
        if not self.segments:
            raise UsageError("a timeline needs at least one segment")
        if self.anchor not in ANCHORS:
            raise UsageError(f"unknown timeline anchor {self.anchor!r}; choose one of {ANCHORS}")

    @property
    def num_frames(self) -> int:
        return sum(segment.frames for segment in self.segments)

    def ends(self) -> list[int]:
        """The frame at which each segment ends (exclusive)."""
        ends, total = [], 0
        for segment in self.segments:
            total += segment.frames
            ends.append(total)
        return ends

    @classmethod
    def from_dict(cls, data: Any, source: str = "timeline") -> Timeline:
        """A timeline from its JSON structure; a UsageError naming what is wrong."""
        if not isinstance(data, dict):
            raise UsageError(f'{source}: expected an object with "segments"')
        unknown = sorted(set(data) - {"segments", "anchor"})
        if unknown:
            raise UsageError(f"{source}: unknown key {unknown[0]!r} (known: segments, anchor)")
        segments = data.get("segments")
        if not isinstance(segments, list):
            raise UsageError(f'{source}: "segments" must be a list')
        parsed = []
        for number, segment in enumerate(segments, 1):
            if not isinstance(segment, dict):
                raise UsageError(f"{source}: segment {number} is not an object")
            unknown = sorted(set(segment) - set(SEGMENT_KEYS))
            if unknown:
                raise UsageError(
                    f"{source}: segment {number} has an unknown key {unknown[0]!r} "
                    f"(known: {', '.join(SEGMENT_KEYS)})"
                )
            for key in ("prompt", "frames"):
                if key not in segment:
                    raise UsageError(f"{source}: segment {number} has no {key!r}")
            try:
                parsed.append(Segment(**segment))
            except UsageError as err:
                raise UsageError(f"{source}: segment {number}: {err}") from None
        return cls(tuple(parsed), data.get("anchor", "keep"))

    @classmethod
    def load(cls, path: str | Path) -> Timeline:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"timeline not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(f"not a readable timeline: {path} ({err})") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        segments = [
            {k: v for k, v in asdict(segment).items() if v is not None} for segment in self.segments
        ]
        return {"anchor": self.anchor, "segments": segments}
