"""convert-official: a tiny Lightning checkpoint with the official key names converts into a
pipeline folder whose streaming model computes exactly what the source modules computed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from streamingt2v import StreamingT2VPipeline
from streamingt2v.cli import main
from streamingt2v.config import ApmConfig, ModelLoadError, UsageError
from streamingt2v.convert import convert_official
from streamingt2v.models.apm import AppearancePreservationModule
from streamingt2v.random_models import SCALES, make_image_encoder
from streamingt2v.sampling import stream_model
from streamingt2v.tiny_checkpoints import official_modules, official_state


@pytest.fixture(scope="module")
def official(tmp_path_factory, modelscope_dir):
    """Source modules (a fine-tuned streaming UNet, trained CAM and APM) and the checkpoint
    the official code would have saved for them."""
    root = tmp_path_factory.mktemp("official")
    modules = official_modules(StreamingT2VPipeline.from_pretrained(modelscope_dir).unet)
    state = official_state(modules["stream_unet"], modules["cam"], modules["apm"])
    checkpoint = root / "streaming_t2v.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200}, checkpoint)
    modules["image_encoder"].save_pretrained(root / "clip")
    modules["apm"].attach(modules["stream_unet"])
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
    assert sum(report.skipped.values()) == 2
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
    # the official stage settings are the converted folder's defaults
    sample = pipe.config.sample
    assert (sample.scheduler, sample.guidance, sample.negative_prompt_of(0)) == ("dpm", 9.0, "")
    assert (sample.scheduler_of(1), sample.chunk_guidance, sample.eta) == ("ddim", 7.5, 1.0)
    assert sample.first_chunk_negative_prompt is False and sample.steps == 50
    written = json.loads((out / "pipeline_config.json").read_text())["sample"]
    assert written["stream_scheduler"] == "ddim" and written["guidance"] == 9.0


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
    # the official anchor preprocessing: kornia's anti-aliased bicubic resize, then [0, 1]
    from kornia.geometry.transform import resize

    pixels = resize(frames, (32, 32), interpolation="bicubic", align_corners=True, antialias=True)
    pixels = ((pixels + 1) / 2 - encoder.mean) / encoder.std
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=pixels).pooler_output
        expected = clip.visual_projection(pooled)
    torch.testing.assert_close(encoder(frames), expected)


ROOT = Path(__file__).resolve().parent


def test_every_key_of_the_real_checkpoint_routes_with_its_shape():
    """The published streaming_t2v.ckpt's 2,389 trainable keys (names and shapes enumerated
    from the authors' classes at full size) on meta tensors: nothing unknown, nothing
    missing, every shape accepted (the APM's alpha is 0-d there)."""
    from streamingt2v.convert import route_checkpoint
    from streamingt2v.random_models import make_unet

    shapes = json.loads((ROOT / "data" / "official_keys.json").read_text())
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    with torch.device("meta"):
        unet_config = dict(make_unet(SCALES["modelscope"]).config)
    routing = route_checkpoint(state, unet_config)
    assert routing.unknown == [] and routing.problems == [] and routing.skipped == {}
    counts = {k: len(v) for k, v in routing.routed.items()}
    assert counts == {"cam": 825, "apm": 84, "stream_unet": 1480}
    assert sum(counts.values()) == len(shapes) == 2389
    alphas = [k for k in shapes if k.endswith("attn2.alpha")]
    assert len(alphas) == 16 and all(shapes[k] == [] for k in alphas)


def test_apm_alpha_is_0d_and_folders_saved_with_shape_1_still_load(tmp_path):
    from streamingt2v.models.weights import load_state_strict, save_module

    apm = AppearancePreservationModule(ApmConfig(24, 40, 4, 16, 32), num_layers=2)
    assert apm.mixers[0].alpha.shape == ()
    old = {
        k: (v.reshape(1) + 0.25 if k.endswith("alpha") else v) for k, v in apm.state_dict().items()
    }
    folder = tmp_path / "apm"
    save_module(apm, folder, {})
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in old.items()}, folder / "model.safetensors")
    fresh = AppearancePreservationModule(ApmConfig(24, 40, 4, 16, 32), num_layers=2)
    load_state_strict(fresh, folder / "model.safetensors")
    assert fresh.mixers[1].alpha.shape == () and float(fresh.mixers[1].alpha) == 0.25


def test_anchor_resize_matches_the_authors_kornia_within_1e_5():
    """Values stored from kornia 0.7.4's resize (the authors' pin): 256x256, 90x160 and
    320x576 noise frames to 224x224."""
    from streamingt2v.models.encoders import anchor_resize

    reference = json.loads((ROOT / "data" / "kornia07_resize_reference.json").read_text())
    for case in reference["cases"]:
        x = torch.rand(case["shape"], generator=torch.Generator().manual_seed(7)) * 2 - 1
        y = anchor_resize(x, case["size"][0])
        got = y.flatten()[torch.tensor(case["index"])]
        torch.testing.assert_close(got, torch.tensor(case["values"]), atol=1e-5, rtol=0)
        assert abs(float(y.mean()) - case["mean"]) < 1e-6


def test_unconditional_image_is_a_zeros_frame_through_the_preprocessing(tmp_path):
    from streamingt2v.models.encoders import ImageEncoder

    encoder = make_image_encoder(SCALES["tiny"])
    assert encoder.unconditional_image == "gray"  # the official choice is the default
    size = encoder.size
    assert torch.equal(encoder.unconditional(1), encoder(torch.zeros(1, 3, size, size)))
    # a zeros frame of any size is the same gray image to the tower
    torch.testing.assert_close(encoder.unconditional(2)[1], encoder(torch.zeros(1, 3, 64, 64))[0])
    encoder.save_pretrained(tmp_path / "enc")
    assert ImageEncoder.from_folder(tmp_path / "enc").unconditional_image == "gray"
    # the embedded default was trained with zeros at the tower's input, and keeps them
    from streamingt2v.generate import DEFAULT_MODEL_DIR

    shipped = ImageEncoder.from_folder(DEFAULT_MODEL_DIR / "image_encoder")
    assert shipped.unconditional_image == "mean"
    zeros = torch.zeros(1, 3, shipped.size, shipped.size)
    assert torch.equal(shipped.unconditional(1), shipped.model(pixel_values=zeros).image_embeds)


LIGHTNING_MODULE = '''
class AttributeDict(dict):
    """Lightning's hyper-parameter dict (a dict subclass)."""
'''


class _Boom:
    """Pickles as a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _lightning_checkpoint(path, tmp_path, monkeypatch, extra=None):
    """A Lightning-style training file: weights, AdamW state, an argparse.Namespace and an
    AttributeDict of hyper-parameters, loop state; ``extra`` entries added."""
    import argparse
    import importlib

    package = tmp_path / "fake_lightning" / "lightning_fabric" / "utilities"
    package.mkdir(parents=True)
    for folder in (package.parent, package):
        (folder / "__init__.py").write_text("")
    (package / "data.py").write_text(LIGHTNING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "fake_lightning"))
    data = importlib.import_module("lightning_fabric.utilities.data")
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight])
    weight.grad = torch.ones(3)
    optimizer.step()
    checkpoint = {
        "epoch": 7,
        "global_step": 1200,
        "pytorch-lightning_version": "2.0.0",
        "state_dict": {"resampler.w": torch.arange(4.0)},
        "optimizer_states": [optimizer.state_dict()],
        "hyper_parameters": data.AttributeDict(lr=5e-5, args=argparse.Namespace(steps=50)),
        "loops": {"fit_loop": {"state_dict": {}}},
        **(extra or {}),
    }
    torch.save(checkpoint, path)
    return path


def test_lightning_training_files_read_their_weights_without_running_pickled_code(
    tmp_path, monkeypatch
):
    from streamingt2v.convert import load_weights_only, open_checkpoint, pickle_globals

    path = _lightning_checkpoint(tmp_path / "train.ckpt", tmp_path, monkeypatch)
    found = pickle_globals(path)
    for name in ("argparse.Namespace", "lightning_fabric.utilities.data.AttributeDict"):
        assert name in found
    with pytest.raises(pickle.UnpicklingError):  # what a plain safe load says of it
        torch.load(path, weights_only=True)
    data = load_weights_only(path)
    assert torch.equal(data["state_dict"]["resampler.w"], torch.arange(4.0))
    assert data["hyper_parameters"]["lr"] == 5e-5  # an AttributeDict read as a dict
    assert type(data["hyper_parameters"]["args"]).__name__ == "StandIn[argparse.Namespace]"
    assert isinstance(data["optimizer_states"][0]["state"][0]["exp_avg"], torch.Tensor)
    assert list(open_checkpoint(path)) == ["resampler.w"]


def test_a_checkpoint_that_would_run_code_is_refused_naming_the_global(tmp_path, monkeypatch):
    from streamingt2v.convert import open_checkpoint

    marker = tmp_path / "ran"
    path = _lightning_checkpoint(
        tmp_path / "trap.ckpt", tmp_path, monkeypatch, {"trap": _Boom(marker)}
    )
    with pytest.raises(ModelLoadError) as refused:
        open_checkpoint(path)
    message = str(refused.value)
    assert "posix.system" in message and "argparse.Namespace" in message
    assert "nothing from the file was run" in message and "weights_only=False" in message
    assert not marker.exists()  # os.system never ran


def test_unreadable_checkpoints_are_clear_errors(tmp_path, monkeypatch):
    from streamingt2v.convert import open_checkpoint

    path = _lightning_checkpoint(tmp_path / "t.ckpt", tmp_path, monkeypatch)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        open_checkpoint(path)
    torch.save({"epoch": 1, "loops": {}}, path)  # no state_dict: read as a bare one
    with pytest.raises(ModelLoadError, match=r"not tensors: \['epoch', 'loops'\]"):
        open_checkpoint(path)
