"""FreeNoise (Qiu et al., 2024), the training-free long-video baseline, on our base model.

Two parts, both on the base text-to-video UNet alone:

1. Noise rescheduling: the first ``window`` frames get fresh noise; every later block of
   ``stride`` frames reuses, shuffled, the noise of the block one window earlier, so distant
   frames share noise (long-range consistency) while neighbours differ.
2. Window-fused temporal attention: the whole video's latents go through the UNet at once;
   spatial layers work per frame as always, and every temporal attention (``transformer_in``
   and the ``temp_attentions``) attends within windows of ``window`` frames, ``stride`` apart;
   a frame's output is the average of its windows' outputs, weighted by closeness to each
   window's centre. A video no longer than one window is plain attention.

Memory grows with the video's length (all latents are denoised together), unlike streaming.

Written from the FreeNoise paper's description, not from its code: the exact shuffle (blocks
of ``stride`` frames taken from one window earlier) and the fusion weights (1 / (1 + distance
to the window's centre)) are this implementation's choices; figures made with it are
"FreeNoise as implemented here".
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers import UNet3DConditionModel


def window_starts(frames: int, window: int, stride: int) -> list[int]:
    """Window starts covering ``frames``; the last window ends exactly at the last frame."""
    if frames <= window:
        return [0]
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] != frames - window:
        starts.append(frames - window)
    return starts


def rescheduled_noise(
    shape: tuple[int, ...], window: int, stride: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, C, N, h, w) initial noise: fresh for the first window, then each block of
    ``stride`` frames a shuffle of the block ``window`` frames before it."""
    noise = torch.randn(shape, generator=generator)
    frames = shape[2]
    for start in range(window, frames, stride):
        block = range(start, min(start + stride, frames))
        source = torch.arange(start - window, start - window + len(block))
        order = source[torch.randperm(len(block), generator=generator)]
        noise[:, :, block.start : block.stop] = noise[:, :, order]
    return noise


def _weights(window: int) -> torch.Tensor:
    """Fusion weights over a window's frames: highest at the centre (our choice; see above)."""
    centre = (window - 1) / 2
    return 1.0 / (1.0 + (torch.arange(window) - centre).abs())


class WindowedProcessor:
    """Runs the attention processor it wraps per window over the frame axis and fuses."""

    def __init__(self, inner, window: int, stride: int):
        self.inner, self.window, self.stride = inner, window, stride

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        frames = hidden_states.shape[1]  # (B*H*W, F, C): temporal attention's sequences
        if frames <= self.window or encoder_hidden_states is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        out = torch.zeros_like(hidden_states)
        total = hidden_states.new_zeros(frames)
        weights = _weights(self.window).to(hidden_states)
        for s in window_starts(frames, self.window, self.stride):
            part = self.inner(attn, hidden_states[:, s : s + self.window], None, *args, **kwargs)
            out[:, s : s + self.window] += part * weights[None, :, None]
            total[s : s + self.window] += weights
        return out / total[None, :, None]


def temporal_attention_names(unet: UNet3DConditionModel) -> list[str]:
    return [
        name
        for name, module in unet.named_modules()
        if name.endswith((".attn1", ".attn2"))
        and (".temp_attentions." in name or name.startswith("transformer_in."))
        and hasattr(module, "set_processor")
    ]


@contextmanager
def windowed_temporal_attention(unet: UNet3DConditionModel, window: int, stride: int):
    """Within the block, ``unet``'s temporal attentions attend within fused windows."""
    names = temporal_attention_names(unet)
    saved = {name: unet.get_submodule(name).processor for name in names}
    try:
        for name, processor in saved.items():
            unet.get_submodule(name).set_processor(WindowedProcessor(processor, window, stride))
        yield
    finally:
        for name, processor in saved.items():
            unet.get_submodule(name).set_processor(processor)
