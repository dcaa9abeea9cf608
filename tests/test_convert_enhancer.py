"""The paper's enhancer (MS-Vid2Vid-XL): its UNet's LDM key names route to diffusers'
UNet3DConditionModel, for the real key list and for a tiny model in the real key format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet3DConditionModel

from streamingt2v.convert_enhancer import convert_msvid2vid_unet, msvid2vid_unet_key
from streamingt2v.models.unet import unet_forward
from streamingt2v.random_models import SCALES, make_unet
from streamingt2v.tiny_checkpoints import ldm_unet_state, tiny_msvid2vid_unet

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
    tiny = tiny_msvid2vid_unet()
    ldm = ldm_unet_state(tiny, KEYS)
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
    return tiny_msvid2vid_unet()


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


def _open_clip_reference(state, ids, heads):
    """OpenCLIP's text tower as its code computes it (pre-LN residual blocks over
    torch's own MultiheadAttention with the fused q-k-v projection and a causal mask, exact
    GELU), read at the penultimate block's output through ``ln_final``."""
    width = state["positional_embedding"].shape[1]
    x = state["token_embedding.weight"][ids] + state["positional_embedding"][: ids.shape[1]]
    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("transformer.")})
    for i in blocks[:-1]:
        p = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict(
            {
                "in_proj_weight": state[p + "attn.in_proj_weight"],
                "in_proj_bias": state[p + "attn.in_proj_bias"],
                "out_proj.weight": state[p + "attn.out_proj.weight"],
                "out_proj.bias": state[p + "attn.out_proj.bias"],
            }
        )

        def norm(h, name, p=p):
            return torch.nn.functional.layer_norm(
                h, (width,), state[p + name + ".weight"], state[p + name + ".bias"]
            )

        h = norm(x, "ln_1")
        x = x + attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        h = torch.nn.functional.gelu(
            torch.nn.functional.linear(
                norm(x, "ln_2"), state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"]
            )
        )
        x = x + torch.nn.functional.linear(
            h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"]
        )
    return torch.nn.functional.layer_norm(
        x, (width,), state["ln_final.weight"], state["ln_final.bias"]
    )


@pytest.mark.parametrize("prefix", ["", "cond_stage_model.model."])
def test_an_open_clip_text_tower_converts_and_computes_what_open_clip_computes(prefix):
    from transformers import CLIPTextConfig, CLIPTextModel

    from streamingt2v.convert_enhancer import convert_open_clip_text, open_clip_text_config
    from streamingt2v.tiny_checkpoints import open_clip_state

    state = open_clip_state(width=64, layers=3, vocab=300, seed=4)
    config = open_clip_text_config({prefix + k: v for k, v in state.items()}, head_dim=32)
    assert config["num_hidden_layers"] == 2 and config["num_attention_heads"] == 2
    ids_ = dict(bos_token_id=298, eos_token_id=299, pad_token_id=0)
    model = CLIPTextModel(CLIPTextConfig(**config, **ids_)).eval()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, problems = convert_open_clip_text(
        {prefix + k: v for k, v in state.items()}, expected
    )
    assert problems == []
    model.load_state_dict(converted, strict=True)
    ids = torch.randint(0, 300, (2, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=ids).last_hidden_state
        theirs = _open_clip_reference(state, ids, heads=2)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


def test_every_key_of_open_clip_vit_h_text_routes_with_its_shape():
    """OpenCLIP ViT-H-14's text tower (width 1024, 24 blocks, 16 heads, 77 tokens, 49,408
    words: its published configuration, the key names of OpenCLIP's ``TextTransformer``)
    on meta tensors into ModelScope's text encoder (23 layers: the penultimate's output)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from streamingt2v.convert_enhancer import convert_open_clip_text, open_clip_text_config
    from streamingt2v.random_models import SCALES

    def meta(*shape):
        return torch.empty(shape, device="meta")

    state = {"token_embedding.weight": meta(49408, 1024), "positional_embedding": meta(77, 1024)}
    for i in range(24):
        p = f"transformer.resblocks.{i}."
        state |= {p + "ln_1.weight": meta(1024), p + "ln_1.bias": meta(1024)}
        state |= {p + "attn.in_proj_weight": meta(3072, 1024), p + "attn.in_proj_bias": meta(3072)}
        state |= {
            p + "attn.out_proj.weight": meta(1024, 1024),
            p + "attn.out_proj.bias": meta(1024),
        }
        state |= {p + "ln_2.weight": meta(1024), p + "ln_2.bias": meta(1024)}
        state |= {p + "mlp.c_fc.weight": meta(4096, 1024), p + "mlp.c_fc.bias": meta(4096)}
        state |= {p + "mlp.c_proj.weight": meta(1024, 4096), p + "mlp.c_proj.bias": meta(1024)}
    state |= {"ln_final.weight": meta(1024), "ln_final.bias": meta(1024)}
    state |= {"text_projection": meta(1024, 1024), "logit_scale": meta()}
    state |= {"visual.proj": meta(1280, 1024), "visual.conv1.weight": meta(1280, 3, 14, 14)}
    config = open_clip_text_config(state)
    assert config["num_hidden_layers"] == SCALES["modelscope"].text_layers == 23
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**config))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, problems = convert_open_clip_text(state, expected)
    assert problems == [] and set(converted) == set(expected)


@pytest.fixture(scope="module")
def msvid2vid_files(tmp_path_factory):
    from streamingt2v.tiny_checkpoints import write_msvid2vid_files

    return write_msvid2vid_files(
        tmp_path_factory.mktemp("msvid2vid"), Path(__file__).parent / "data", seed=1
    )


def test_a_tiny_msvid2vid_in_the_real_formats_converts_and_enhances(msvid2vid_files, tmp_path):
    """The three files (the UNet's bare LDM state_dict, an SD checkpoint, an OpenCLIP file)
    convert through the CLI into an enhancer folder with the authors' settings, which loads
    and enhances 32x32 frames: fit into 80x128 (latent 10 x 16, a size the padded UNet runs
    at), 80x80 frames out with the bars cut, 80x128 with them kept."""
    from streamingt2v.cli import main
    from streamingt2v.enhancer import Enhancer

    files, out = msvid2vid_files, tmp_path / "enhancer"
    argv = [str(files["unet"]), str(out), "--vae", str(files["vae"])]
    argv += ["--text-encoder", str(files["text"]), "--tokenizer", str(files["tokenizer"])]
    assert main(["convert-msvid2vid", *argv, "--dtype", "float32"]) == 0
    config = json.loads((out / "enhancer_config.json").read_text())
    assert (
        config["fit"] == "pad" and config["msvid2vid_padding"] and config["prompt_suffix"] == ", "
    )
    assert config["defaults"]["sampler"] == "dpmpp-2m-sde"
    assert config["defaults"]["guidance_rescale"] == 0.2 and config["defaults"]["steps"] == 30

    config["size"] = [80, 128]  # the tiny stand-in of 720 x 1280
    (out / "enhancer_config.json").write_text(json.dumps(config))
    enhancer = Enhancer.from_pretrained(out)
    assert enhancer.unet.msvid2vid_padding and enhancer.text_encoder.tokenizer.pad_token == "!"
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    settings = enhancer.config.defaults.merged(steps=3)
    enhanced = list(enhancer.enhance(iter(frames), 6, "a red circle", settings))
    assert len(enhanced) == 6 and enhanced[0].shape == (80, 80, 3)
    assert enhancer.output_size(32, 32) == (80, 80) and enhancer.picture_box(32, 32) == (
        0,
        24,
        80,
        80,
    )
    enhancer.config.keep_padding = True
    assert enhancer.output_size(32, 32) == (80, 128)
    upsampled = enhancer.upsampled(frames[:1])
    assert upsampled.shape == (1, 80, 128, 3) and upsampled[0, :, :24].max() == 0  # black bars


def test_convert_msvid2vid_refuses_an_existing_folder_and_a_missing_file(
    msvid2vid_files, tmp_path, capsys
):
    from streamingt2v.cli import main

    files = msvid2vid_files
    rest = ["--vae", str(files["vae"]), "--text-encoder", str(files["text"])]
    rest += ["--tokenizer", str(files["tokenizer"])]
    (tmp_path / "taken").mkdir()
    assert main(["convert-msvid2vid", str(files["unet"]), str(tmp_path / "taken"), *rest]) == 2
    assert "exists" in capsys.readouterr().err
    missing = tmp_path / "none.pth"
    assert main(["convert-msvid2vid", str(missing), str(tmp_path / "new"), *rest]) == 2
    assert "none.pth" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_the_architecture_read_from_the_real_key_lists_is_modelscopes_and_sd21s():
    """The converter reads the UNet's and the VAE's configs from the tensors: on the real
    files' key lists they build exactly ModelScope's UNet (1,480 tensors, every shape) and
    Stable Diffusion 2.1's VAE (widths 128-256-512-512, 2 layers per block)."""
    from diffusers import AutoencoderKL

    from streamingt2v.convert_enhancer import SD_VAE_CONFIG, msvid2vid_unet_config, sd_vae_config

    state = {k: torch.empty(v, device="meta") for k, v in KEYS.items()}
    with torch.device("meta"):
        ours = UNet3DConditionModel(**msvid2vid_unet_config(state))
        modelscope = make_unet(SCALES["modelscope"])
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in modelscope.state_dict().items()}
    vae_keys = json.loads((Path(__file__).parent / "data" / "msvid2vid_vae_keys.json").read_text())
    config = sd_vae_config({k: torch.empty(v, device="meta") for k, v in vae_keys.items()})
    assert config == SD_VAE_CONFIG | {
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    with torch.device("meta"):
        assert len(AutoencoderKL(**config).state_dict()) == 248
