"""Model CPU offload between stages (``--offload``).

The large models are the denoising UNets: the base UNet (first chunk), the streaming UNet with
its CAM and APM (every later chunk) and the enhancer's UNet. With offload, they wait in CPU
memory and each group moves to the GPU only while its stage runs; the group that ran before
goes back first. The small models (VAEs, text and image encoders) stay on the GPU. A stage
change happens once per chunk, so the transfers cost little next to a chunk's denoising steps,
and the GPU holds one UNet group instead of all of them.
"""

from __future__ import annotations

import torch
from torch import nn


class Offloader:
    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.active: dict[int, nn.Module] = {}
        self.history: list[str] = []  # names of the groups moved in, in order

    def park(self, *modules: nn.Module) -> None:
        """Start ``modules`` in CPU memory."""
        for module in modules:
            module.to("cpu")
            self.active.pop(id(module), None)

    def use(self, name: str, *modules: nn.Module) -> None:
        """Make ``modules`` (one stage's group) the ones on the device; the previous group goes
        back to CPU memory first, so the two never sit on the device together."""
        wanted = {id(m): m for m in modules}
        if wanted.keys() == self.active.keys():
            return
        for key, module in self.active.items():
            if key not in wanted:
                module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for key, module in wanted.items():
            if key not in self.active:
                module.to(self.device)
        self.active = wanted
        self.history.append(name)
