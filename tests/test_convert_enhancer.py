"""The paper's enhancer (MS-Vid2Vid-XL): its UNet's LDM key names route to diffusers'
UNet3DConditionModel, for the real key list and for a tiny model in the real key format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel

from streamingt2v.convert_enhancer import convert_msvid2vid_unet, msvid2vid_unet_key
from streamingt2v.models.unet import unet_forward
from streamingt2v.random_models import SCALES, make_unet

KEYS = json.loads((Path(__file__).parent / "data" / "msvid2vid_unet_keys.json").read_text())


def test_every_key_of_the_real_unet_routes_with_its_shape():
    """non_ema_0035000.pth's 1,480 tensors (names and shapes from the authors' classes at
    full size) on meta tensors against ModelScope's UNet: 0 unknown, 0 missing, 34
    temporal projections reshaped from Conv1d(k=1) to Linear, every other shape equal."""
    state = {k: torch.empty(v, device="meta") for k, v in KEYS.items()}
    with torch.device("meta"):
        unet = make_unet(SCALES["modelscope"])
    expected = {k: v.shape for k, v in unet.state_dict().items()}
    converted, problems = convert_msvid2vid_unet(state, expected)
    assert problems == [] and len(converted) == len(expected) == 1480
    reshaped = [
        k for k, v in KEYS.items() if tuple(v) != tuple(converted[msvid2vid_unet_key(k)].shape)
    ]
    assert len(reshaped) == 34 and all(".proj_in." in k or ".proj_out." in k for k in reshaped)


def test_a_tiny_model_in_the_real_key_format_converts_and_computes_the_same():
    torch.manual_seed(0)
    tiny = UNet3DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 128, 128),  # channel changes where ModelScope's are
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    real_name = {msvid2vid_unet_key(k): k for k in KEYS}
    ldm = {}
    for name, tensor in tiny.state_dict().items():
        key = real_name[name]
        ldm[key] = (
            tensor.reshape(*tensor.shape, 1) if len(KEYS[key]) == tensor.dim() + 1 else tensor
        )
    assert set(ldm) == set(KEYS)  # the tiny model has exactly the real key names
    expected = {k: v.shape for k, v in tiny.state_dict().items()}
    converted, problems = convert_msvid2vid_unet(ldm, expected)
    assert problems == []
    fresh = UNet3DConditionModel.from_config(tiny.config).eval()
    fresh.load_state_dict(converted, strict=True)
    x = torch.randn(1, 4, 3, 8, 16)
    context = torch.randn(1, 5, 32)
    with torch.no_grad():
        assert torch.equal(
            unet_forward(fresh, x, 400, context), unet_forward(tiny, x, 400, context)
        )


def test_unknown_and_missing_keys_are_named():
    state = {k: torch.empty(v, device="meta") for k, v in KEYS.items()}
    state["input_blocks.0.9.weight"] = torch.empty(1, device="meta")
    del state["out.2.bias"]
    with torch.device("meta"):
        expected = {k: v.shape for k, v in make_unet(SCALES["modelscope"]).state_dict().items()}
    _, problems = convert_msvid2vid_unet(state, expected)
    assert "unknown key input_blocks.0.9.weight" in problems
    assert any("missing 1 keys" in p and "conv_out.bias" in p for p in problems)


def _four_level_unet() -> UNet3DConditionModel:
    torch.manual_seed(0)
    return UNet3DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def test_msvid2vid_padding_runs_at_its_legal_sizes_and_computes_its_two_quirks():
    from streamingt2v.config import UsageError
    from streamingt2v.models.unet import check_msvid2vid_size, use_msvid2vid_padding

    plain, quirky = _four_level_unet(), use_msvid2vid_padding(_four_level_unet())
    x = torch.randn(1, 4, 2, 10, 16)  # latent 10 x 16: height 2 (mod 8), width 0 (mod 8)
    context = torch.randn(1, 5, 32)
    with torch.no_grad():
        out = unet_forward(quirky, x, 300, context)
        assert out.shape == x.shape
        assert not torch.allclose(out, unet_forward(plain, x, 300, context))
        # downsampling: two zero rows above and below, one column each side, then the conv
        down = quirky.down_blocks[0].downsamplers[0].conv
        h = torch.randn(2, 32, 10, 16)
        manual = torch.nn.functional.conv2d(
            torch.nn.functional.pad(h, (1, 1, 2, 2)), down.weight, down.bias, stride=2
        )
        assert torch.equal(down(h), manual)
        # upsampling: nearest x2, the first and last rows dropped, then the conv
        up = quirky.up_blocks[0].upsamplers[0]
        h = torch.randn(2, 128, 3, 2)
        doubled = torch.nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        manual = torch.nn.functional.conv2d(
            doubled[:, :, 1:-1], up.conv.weight, up.conv.bias, padding=1
        )
        assert torch.equal(up(h), manual)
    check_msvid2vid_size(90, 160)
    for size in ((32, 32), (90, 90), (72, 128)):  # the sizes the authors' UNet cannot run
        with pytest.raises(UsageError, match="2 \\(mod 8\\)"):
            check_msvid2vid_size(*size)


def test_every_key_of_the_sd21_vae_routes_with_its_shape():
    from diffusers import AutoencoderKL

    from streamingt2v.convert_enhancer import SD_VAE_CONFIG, convert_sd_vae

    vae_keys = json.loads((Path(__file__).parent / "data" / "msvid2vid_vae_keys.json").read_text())
    state = {f"first_stage_model.{k}": torch.empty(v, device="meta") for k, v in vae_keys.items()}
    state["cond_stage_model.model.ln_final.weight"] = torch.empty(1024, device="meta")  # ignored
    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE_CONFIG)
    expected = {k: v.shape for k, v in vae.state_dict().items()}
    converted, problems = convert_sd_vae(state, expected)
    assert problems == [] and len(converted) == len(expected) == len(vae_keys) == 248


def test_msvid2vid_schedule_has_the_authors_noise_levels_and_loads_in_diffusers():
    """sigma(599) = 0.9724 and alpha(599) = 0.2335 (the SDEdit start the authors use), zero
    terminal SNR, and a diffusers scheduler built from the config keeps those levels."""
    from diffusers import DDIMScheduler

    from streamingt2v.convert_enhancer import msvid2vid_scheduler_config, msvid2vid_sigmas

    sigmas = msvid2vid_sigmas()
    assert abs(float(sigmas[599]) - 0.9724) < 5e-5
    assert abs(float((1 - sigmas[599] ** 2).sqrt()) - 0.2335) < 5e-5
    assert float(sigmas[-1]) == 1.0 and bool((sigmas[1:] > sigmas[:-1]).all())
    scheduler = DDIMScheduler.from_config(msvid2vid_scheduler_config())
    assert scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), 1 - sigmas**2, atol=1e-6, rtol=0)
