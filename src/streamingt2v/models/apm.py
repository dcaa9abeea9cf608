"""Appearance Preservation Module: the long-term memory (paper Sec. 4.2.2).

The anchor frame (frame 0 of the first chunk) is encoded once by a CLIP-like image encoder;
the resampler MLP turns its pooled embedding into k image tokens that are appended after the
T text tokens. Every spatial cross-attention of the base UNet then mixes the T+k tokens back
to T before computing its keys and values (official code):

    ctx = text_T + SiLU(alpha) * LayerNorm(Conv1d(T+k -> T, kernel 3, padding 1)(ctx_{T+k}))

with tokens as the convolution's channels, sliding along the feature dimension, and one
scalar alpha per layer initialized to 0, so an untrained APM leaves the base output unchanged
to the bit (tested).

The mixing is installed through diffusers' attention-processor mechanism: the processor
rewrites ``encoder_hidden_states`` and hands over to the processor that was there before.
A context of exactly T tokens (the first chunk, or any caller without image tokens) passes
through untouched, so the UNet behaves as the plain base model.
"""

from __future__ import annotations

import torch
from diffusers import UNet3DConditionModel
from torch import nn

from ..config import ApmConfig


class Resampler(nn.Module):
    """Pooled image embedding (B, E) -> k image tokens (B, k, D) (official: 1024->1280->16x1024)."""

    def __init__(self, config: ApmConfig):
        super().__init__()
        self.tokens = config.image_tokens
        self.context_embedding = nn.Sequential(
            nn.Linear(config.image_embed_dim, config.resampler_hidden_dim),
            nn.SiLU(),
            nn.Linear(
                config.resampler_hidden_dim, config.image_tokens * config.cross_attention_dim
            ),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.context_embedding(image_embeds).unflatten(-1, (self.tokens, -1))  # (B, k, D)


class ContextMixer(nn.Module):
    """One cross-attention layer's mixing of T+k tokens back to T tokens."""

    def __init__(self, config: ApmConfig):
        super().__init__()
        self.text_tokens = config.text_tokens
        total = config.text_tokens + config.image_tokens
        self.conv = nn.Conv1d(total, config.text_tokens, kernel_size=3, padding=1)
        self.conv_ln = nn.LayerNorm(config.cross_attention_dim)
        # A 0-d parameter, as in the authors' checkpoint (``attn2.alpha``, shape ()); folders
        # saved before held shape (1,), read by ``AppearancePreservationModule.upgrade_state``.
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """context: (N, T+k, D) -> (N, T, D)."""
        text = context[:, : self.text_tokens]  # (N, T, D)
        mixed = self.conv_ln(self.conv(context))  # (N, T, D)
        return text + nn.functional.silu(self.alpha) * mixed


class ApmProcessor:
    """Attention processor that mixes image tokens into the context, then delegates.

    Deliberately not an ``nn.Module``: the mixer's weights belong to the APM, so the UNet's own
    state dict stays exactly the base model's.
    """

    def __init__(self, mixer: ContextMixer, inner):
        self.mixer = mixer
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if (
            encoder_hidden_states is not None
            and encoder_hidden_states.shape[1] != self.mixer.text_tokens
        ):
            encoder_hidden_states = self.mixer(encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def spatial_cross_attention_names(unet: UNet3DConditionModel) -> list[str]:
    """Paths of the spatial cross-attention layers (attn2 of ``attentions``, not of the
    temporal ``temp_attentions`` / ``transformer_in``, whose attn2 is a self-attention)."""
    return [
        name
        for name, module in unet.named_modules()
        if name.endswith(".attn2") and ".attentions." in name and module.is_cross_attention
    ]


class AppearancePreservationModule(nn.Module):
    """The resampler and one context mixer per spatial cross-attention of the base UNet."""

    def __init__(self, config: ApmConfig, num_layers: int):
        super().__init__()
        self.config = config
        self.resampler = Resampler(config)
        self.mixers = nn.ModuleList(ContextMixer(config) for _ in range(num_layers))

    @classmethod
    def for_unet(
        cls, unet: UNet3DConditionModel, config: ApmConfig
    ) -> AppearancePreservationModule:
        """A fresh (untrained) APM sized for ``unet``."""
        if config.cross_attention_dim != unet.config.cross_attention_dim:
            raise ValueError(
                f"APM token width {config.cross_attention_dim} != UNet cross_attention_dim "
                f"{unet.config.cross_attention_dim}"
            )
        apm = cls(config, len(spatial_cross_attention_names(unet)))
        return apm.to(device=unet.conv_in.weight.device, dtype=unet.conv_in.weight.dtype)

    @staticmethod
    def upgrade_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An APM state dict in today's format: the mixers' ``alpha`` of shape (1,), as this
        library saved it before matching the official 0-d shape, becomes 0-d (same value)."""
        return {
            k: v.reshape(()) if k.endswith(".alpha") and v.shape == (1,) else v
            for k, v in state.items()
        }

    def attach(self, unet: UNet3DConditionModel) -> None:
        """Install the mixing processors in ``unet``'s spatial cross-attentions."""
        names = spatial_cross_attention_names(unet)
        if len(names) != len(self.mixers):
            raise ValueError(f"APM has {len(self.mixers)} mixers, UNet has {len(names)} layers")
        for name, mixer in zip(names, self.mixers, strict=True):
            attn = unet.get_submodule(name)
            inner = (
                attn.processor.inner if isinstance(attn.processor, ApmProcessor) else attn.processor
            )
            attn.set_processor(ApmProcessor(mixer, inner))

    def extend_context(self, text: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Append the image tokens: text (B, T, D), image_embeds (B, E) -> (B, T+k, D)."""
        if text.shape[1] != self.config.text_tokens:
            raise ValueError(
                f"APM expects {self.config.text_tokens} text tokens, got {text.shape[1]}"
            )
        tokens = self.resampler(image_embeds.to(self.resampler.context_embedding[0].weight.dtype))
        return torch.cat([text, tokens.to(text.dtype)], dim=1)


def detach_apm(unet: UNet3DConditionModel) -> None:
    """Restore the processors that ``attach`` replaced."""
    for name in spatial_cross_attention_names(unet):
        attn = unet.get_submodule(name)
        if isinstance(attn.processor, ApmProcessor):
            attn.set_processor(attn.processor.inner)
