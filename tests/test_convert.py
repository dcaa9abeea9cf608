"""convert-official: a tiny Lightning checkpoint with the official key names converts into a
pipeline folder whose streaming model computes exactly what the source modules computed."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from streamingt2v import StreamingT2VPipeline
from streamingt2v.cli import main
from streamingt2v.config import ApmConfig, CamConfig, ModelLoadError, UsageError
from streamingt2v.convert import convert_official
from streamingt2v.models.apm import AppearancePreservationModule, spatial_cross_attention_names
from streamingt2v.models.cam import ConditionalAttentionModule
from streamingt2v.random_models import SCALES, make_image_encoder, perturb_
from streamingt2v.sampling import stream_model


@pytest.fixture(scope="module")
def official(tmp_path_factory, modelscope_dir):
    """Source modules (a fine-tuned streaming UNet, trained CAM and APM) and the checkpoint
    the official code would have saved for them."""
    root = tmp_path_factory.mktemp("official")
    base = StreamingT2VPipeline.from_pretrained(modelscope_dir)
    stream_unet = copy.deepcopy(base.unet)
    perturb_(stream_unet, seed=11)
    cam = ConditionalAttentionModule.from_unet(
        stream_unet, CamConfig(cond_embedding_channels=SCALES["tiny"].cond_embedding)
    )
    apm_config = ApmConfig(
        image_embed_dim=SCALES["tiny"].image_embed_dim,
        resampler_hidden_dim=40,
        image_tokens=4,
        text_tokens=77,
        cross_attention_dim=stream_unet.config.cross_attention_dim,
    )
    apm = AppearancePreservationModule.for_unet(stream_unet, apm_config)
    perturb_(cam, seed=12, std=0.05)
    perturb_(apm, seed=13, std=0.05)

    state = {}
    for key, value in stream_unet.state_dict().items():
        state[f"base_model.{key}"] = value
    for key, value in cam.state_dict().items():
        head, _, rest = key.partition(".")
        if head == "down_mergers":
            index, _, rest = rest.partition(".")
            name = f"base_model.cross_attention_merger_down_blocks.{index}.temporal_transformer"
            state[f"{name}.{rest}"] = value
        elif head == "mid_merger":
            state[f"base_model.cross_attention_merger_mid_block.temporal_transformer.{rest}"] = (
                value
            )
        else:
            state[f"unet.{key}"] = value
    layers = spatial_cross_attention_names(stream_unet)
    for key, value in apm.state_dict().items():
        if key.startswith("mixers."):
            _, index, rest = key.split(".", 2)
            state[f"base_model.{layers[int(index)]}.{rest}"] = value
        else:
            state[key] = value  # resampler.context_embedding.{0,2}.*
    # Parts a real checkpoint also carries, which the converter must account for.
    state["vae.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    state["image_encoder.model.visual.proj"] = torch.zeros(4, 4)
    trunk_attn2 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    state[f"{trunk_attn2}.conv.weight"] = torch.zeros(77, 81, 3)
    state[f"{trunk_attn2}.alpha"] = torch.zeros(1)
    checkpoint = root / "streaming_t2v.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200}, checkpoint)

    image_encoder = make_image_encoder(SCALES["tiny"])
    image_encoder.save_pretrained(root / "clip")
    apm.attach(stream_unet)
    modules = {"stream_unet": stream_unet, "cam": cam, "apm": apm, "image_encoder": image_encoder}
    return {"checkpoint": checkpoint, "state": state, "clip": root / "clip", **modules}


@torch.no_grad()
def _stream_output(stream_unet, cam, apm, image_encoder, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, 16, generator=g)  # tiny VAE: 2x
    context = torch.randn(1, 77, stream_unet.config.cross_attention_dim, generator=g)
    cond = torch.rand(1, 3, 8, 32, 32, generator=g) * 2 - 1
    anchor = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    model = stream_model(
        stream_unet, cam, apm, context, image_encoder(anchor), cam.embed_frames(cond)
    )
    return model(x, 500)


def test_converted_pipeline_equals_the_source_modules(official, modelscope_dir, tmp_path):
    out = tmp_path / "converted"
    report = convert_official(
        official["checkpoint"], out, modelscope_dir, official["clip"], dtype=torch.float32
    )
    assert report.unknown == []
    assert sum(report.skipped.values()) == 4
    assert report.mapped["cam"] == len(official["cam"].state_dict())
    pipe = StreamingT2VPipeline.from_pretrained(out)
    expected = _stream_output(
        official["stream_unet"], official["cam"], official["apm"], official["image_encoder"]
    )
    got = _stream_output(pipe.stream_unet, pipe.cam, pipe.apm, pipe.image_encoder)
    assert torch.equal(got, expected)
    # the first chunk still comes from ModelScope's own UNet, unchanged
    base = StreamingT2VPipeline.from_pretrained(modelscope_dir)
    for key, value in base.unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[key], value)
    saved = json.loads((out / "conversion_report.json").read_text())
    assert saved["mapped"] == report.mapped


def test_large_streaming_unet_is_written_in_shards_that_load(official, modelscope_dir, tmp_path):
    out = tmp_path / "sharded"
    convert_official(
        official["checkpoint"],
        out,
        modelscope_dir,
        official["clip"],
        dtype=torch.float32,
        max_shard_bytes=200_000,
    )
    shards = sorted((out / "stream_unet").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1
    pipe = StreamingT2VPipeline.from_pretrained(out)
    for key, value in official["stream_unet"].state_dict().items():
        assert torch.equal(pipe.stream_unet.state_dict()[key], value)


def test_half_precision_conversion_halves_the_weights(official, modelscope_dir, tmp_path):
    convert_official(official["checkpoint"], tmp_path / "fp16", modelscope_dir, official["clip"])
    pipe = StreamingT2VPipeline.from_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert pipe.cam.conv_in.weight.dtype == torch.float16


def _rewrite(official, tmp_path, change):
    state = dict(official["state"])
    change(state)
    path = tmp_path / "edited.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def test_unknown_keys_are_listed_and_refused_unless_allowed(official, modelscope_dir, tmp_path):
    path = _rewrite(official, tmp_path, lambda s: s.update({"ema.decay": torch.ones(1)}))
    with pytest.raises(ModelLoadError, match="ema.decay"):
        convert_official(path, tmp_path / "a", modelscope_dir, official["clip"])
    assert not (tmp_path / "a").exists()
    report = convert_official(
        path, tmp_path / "b", modelscope_dir, official["clip"], allow_unknown=True
    )
    assert report.unknown == ["ema.decay"]


def test_missing_and_misshaped_weights_are_named(official, modelscope_dir, tmp_path):
    key = "base_model.cross_attention_merger_mid_block.temporal_transformer.proj_in.weight"
    path = _rewrite(official, tmp_path, lambda s: s.pop(key))
    with pytest.raises(ModelLoadError, match=r"cam: missing 1 weights.*mid_merger\.proj_in"):
        convert_official(path, tmp_path / "a", modelscope_dir, official["clip"])
    key = "base_model.conv_in.weight"
    path = _rewrite(official, tmp_path, lambda s: s.update({key: torch.zeros(1, 2, 3, 3)}))
    with pytest.raises(ModelLoadError, match="stream_unet: wrong shapes.*conv_in.weight"):
        convert_official(path, tmp_path / "b", modelscope_dir, official["clip"])


def test_corrupt_or_truncated_checkpoint_is_a_clear_cli_error(
    official, modelscope_dir, tmp_path, capsys
):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(official["checkpoint"].read_bytes()[:5000])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (truncated, garbage, tmp_path / "missing.ckpt"):
        argv = ["convert-official", str(path), str(tmp_path / "out"), "--base", str(modelscope_dir)]
        code = main([*argv, "--image-encoder", str(official["clip"])])
        err = capsys.readouterr().err
        assert code == 2
        assert str(path.name) in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()


def test_existing_output_and_bad_base_are_refused(official, modelscope_dir, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists"):
        convert_official(official["checkpoint"], out, modelscope_dir, official["clip"])
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="lacks"):
        convert_official(official["checkpoint"], tmp_path / "x", tmp_path, official["clip"])


def test_full_clip_folder_loads_as_its_vision_tower(tmp_path):
    """OpenCLIP ViT-H-14 is published as a whole CLIPModel; its vision half is the APM encoder."""
    from transformers import CLIPConfig, CLIPModel

    from streamingt2v.models.encoders import ImageEncoder

    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )
    torch.manual_seed(0)
    clip = CLIPModel(config).eval()
    clip.save_pretrained(tmp_path / "clip")
    encoder = ImageEncoder.from_folder(tmp_path / "clip")
    frames = torch.rand(2, 3, 48, 48) * 2 - 1
    pixels = (frames + 1) / 2
    pixels = torch.nn.functional.interpolate(
        pixels, size=(32, 32), mode="bicubic", align_corners=False, antialias=True
    )
    pixels = (pixels - encoder.mean) / encoder.std
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=pixels).pooler_output
        expected = clip.visual_projection(pooled)
    torch.testing.assert_close(encoder(frames), expected)
