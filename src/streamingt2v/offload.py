"""Model CPU offload between stages (``--offload``).

The large models are the denoising UNets: the base UNet (first chunk), the streaming UNet with
its CAM and APM (every later chunk) and the enhancer's UNet. With offload, they wait in CPU
memory and each group moves to the GPU only while its stage runs; the group that ran before
leaves first. The small models (VAEs, text and image encoders) stay on the GPU, so the GPU
holds one UNet group instead of all of them.

Inference only: the weights never change, so the CPU copy of every tensor is kept (in pinned
memory on CUDA). Moving a group in is one asynchronous copy per tensor from pinned memory;
moving it out copies nothing (the tensors point back at their CPU copies and the GPU copies
are freed). ``generate`` reads the streaming stage's frames in blocks (``READ_AHEAD``), so the
groups change places once per block rather than once per enhancer chunk.

accelerate's offload hooks are the usual tool; this stage-wise offloader stands in for them
on purpose: the hooks move a model with ordinary (unpinned) copies when its forward is called,
as this module's first version did, which cost about 1.7 s per 1.4B-parameter group on an
H200 against 0.09 s now (docs/performance.md; the hooks themselves were not timed), and
``generate`` alternates two groups for the whole video.
"""

from __future__ import annotations

import torch
from torch import nn

# With offload, the enhancer reads this many low-resolution frames at a time: 25 MB of
# 256x256 frames, whatever the video's length.
READ_AHEAD = 128


def read_until(stop: int, num_frames: int, read_ahead: int) -> int:
    """How far the enhancer reads its input to have the frames before ``stop``: to the end of
    that frame's block of ``read_ahead`` frames, and no further than ``num_frames``."""
    block = -(-stop // read_ahead) * read_ahead
    return max(stop, min(block, num_frames))


def place(module: nn.Module, device: str | torch.device, dtype: torch.dtype | None = None) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype`` (None: keep its dtype).
    Re-casting a diffusers model to the dtype it has only prints warnings, so it is not
    done; a module without parameters (a ``PromptTable``) keeps its dtype."""
    first = next(module.parameters(), None)
    same = dtype is None or first is None or first.dtype == dtype
    module.to(device=device) if same else module.to(device=device, dtype=dtype)


class OnDevice:
    """The device plumbing the pipeline and the enhancer share: ``device`` is where their
    models run, with or without offload (``offloader``, shared by both in one run)."""

    unet: nn.Module
    offloader: Offloader | None = None

    @property
    def device(self) -> torch.device:
        """Where the models run (with offload: where each runs when its stage comes)."""
        return self.offloader.device if self.offloader else self.unet.device


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


class Offloader:
    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.active: dict[int, nn.Module] = {}
        self.cpu: dict[int, list[torch.Tensor]] = {}  # module -> its tensors' CPU copies
        self.history: list[str] = []  # names of the groups moved in, in order

    def park(self, *modules: nn.Module) -> None:
        """Start ``modules`` in CPU memory (pinned when the device is a GPU)."""
        pin = self.device.type == "cuda"
        for module in modules:
            module.to("cpu")
            for tensor in _tensors(module):
                if pin and not tensor.is_pinned():
                    tensor.data = tensor.data.pin_memory()
            self.cpu[id(module)] = [t.data for t in _tensors(module)]
            self.active.pop(id(module), None)

    def use(self, name: str, *modules: nn.Module) -> None:
        """Make ``modules`` (one stage's group, each parked first) the ones on the device;
        the previous group leaves first, so the two never sit on the device together."""
        wanted = {id(m): m for m in modules}
        if wanted.keys() == self.active.keys():
            return
        for key, module in self.active.items():
            if key not in wanted:
                for tensor, cpu in zip(_tensors(module), self.cpu[key], strict=True):
                    tensor.data = cpu
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for key, module in wanted.items():
            if key not in self.active:
                for tensor, cpu in zip(_tensors(module), self.cpu[key], strict=True):
                    tensor.data = cpu.to(self.device, non_blocking=True)
        self.active = wanted
        self.history.append(name)
