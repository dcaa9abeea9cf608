"""The FreeNoise baseline: noise rescheduling and window-fused temporal attention."""

from __future__ import annotations

import numpy as np
import torch

from streamingt2v.freenoise import (
    WindowedProcessor,
    rescheduled_noise,
    temporal_attention_names,
    window_starts,
    windowed_temporal_attention,
)
from streamingt2v.models.unet import unet_forward


def test_window_starts_cover_the_video_and_end_on_its_last_frame():
    assert window_starts(10, 16, 4) == [0]
    assert window_starts(16, 16, 4) == [0]
    assert window_starts(26, 16, 4) == [0, 4, 8, 10]


def test_rescheduled_noise_reuses_the_block_one_window_earlier_shuffled():
    noise = rescheduled_noise((1, 2, 30, 3, 3), 16, 4, torch.Generator().manual_seed(0))
    frames = [noise[0, :, f].flatten() for f in range(30)]
    shuffled = False
    for start in range(16, 30, 4):
        block = range(start, min(start + 4, 30))
        earlier = [frames[f - 16] for f in block]
        for f in block:  # each frame's noise is one of the earlier block's, each used once
            assert sum(torch.equal(frames[f], e) for e in earlier) == 1
        shuffled |= any(not torch.equal(frames[f], frames[f - 16]) for f in block)
    assert shuffled
    assert len({tuple(frames[f].tolist()) for f in range(16)}) == 16  # the first window: fresh


def test_window_fusion_is_plain_attention_within_one_window(tiny_pipe):
    unet = tiny_pipe.unet
    assert len(temporal_attention_names(unet)) >= 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, 16, generator=g)
    tokens = tiny_pipe.config.stream.text_tokens
    context = torch.randn(1, tokens, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        plain = unet_forward(unet, x, 400, context)
        with windowed_temporal_attention(unet, 16, 4):
            windowed = unet_forward(unet, x, 400, context)
        longer = torch.randn(1, 4, 28, 16, 16, generator=g)
        with windowed_temporal_attention(unet, 16, 4):
            fused = unet_forward(unet, longer, 400, context)
        whole = unet_forward(unet, longer, 400, context)
    assert torch.equal(plain, windowed)
    assert not torch.allclose(fused, whole)  # 28 frames: windows differ from full attention
    for name in temporal_attention_names(unet):  # the processors are restored
        assert not isinstance(unet.get_submodule(name).processor, WindowedProcessor)


def test_freenoise_method_makes_the_requested_frames(tiny_pipe):
    video = tiny_pipe("a red circle", 30, seed=1, method="freenoise", steps=2).frames
    assert video.shape == (30, *tiny_pipe.frame_size, 3)
    again = tiny_pipe("a red circle", 30, seed=1, method="freenoise", steps=2).frames
    assert np.array_equal(video, again)


def test_plan_refuses_a_baseline_method(tiny_pipe):
    import pytest

    from streamingt2v.config import UsageError
    from streamingt2v.plan import make_plan

    request = tiny_pipe.request("a red circle", 40, method="freenoise")
    with pytest.raises(UsageError, match="--plan covers the method itself"):
        make_plan(tiny_pipe, request)
