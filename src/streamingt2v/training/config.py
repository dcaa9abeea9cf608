"""``TrainConfig``: what one training run is, read from its JSON file. Its own module, so
that the stages (which read it) and the trainer (which runs them) do not import each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import UsageError, config_from_dict, read_json


@dataclass
class TrainConfig:
    """A training run. ``model`` and ``inputs`` are stage-specific (see ``stages``)."""

    stage: str
    out_dir: str
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1  # micro-batches per optimizer step (official: 8)
    lr: float = 1e-4
    lr_warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # official: 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    workers: int = 0  # processes rendering batches ahead of the model (0: in the loop)
    seed: int = 0
    size: int = 32  # frame size in pixels
    model: dict[str, Any] = field(default_factory=dict)  # architecture of what is trained
    inputs: dict[str, str] = field(default_factory=dict)  # folders of earlier stages
    options: dict[str, Any] = field(default_factory=dict)  # stage-specific training options

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise UsageError(f"workers must be an integer >= 0, got {self.workers!r}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr!r}")

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        data = read_json(Path(path))
        data.update({k: v for k, v in overrides.items() if v is not None})
        return config_from_dict(cls, data)
