"""Pipeline folders: ModelScope layout as base, save/load round trip, strict errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from streamingt2v import StreamingT2VPipeline
from streamingt2v.config import ModelLoadError
from streamingt2v.random_models import SCALES, make_image_encoder

FAST = dict(steps=2, seed=3)


def test_modelscope_folder_loads_unchanged_as_base(modelscope_dir):
    pipe = StreamingT2VPipeline.from_pretrained(modelscope_dir)
    assert pipe.cam is None and pipe.stream_unet is pipe.unet
    assert pipe.config.stream.text_tokens == 77  # CLIP's length, the ModelScope default
    frames = pipe("a red circle", 16, **FAST).frames
    assert frames.shape == (16, *pipe.frame_size, 3)
    # Fresh streaming modules on top of it make long videos.
    streaming = pipe.add_streaming_modules(make_image_encoder(SCALES["tiny"]))
    assert len(streaming("a red circle", 30, **FAST).frames) == 30


def test_save_and_load_round_trip_gives_identical_video(tiny_pipe, tiny_model_dir):
    loaded = StreamingT2VPipeline.from_pretrained(tiny_model_dir)
    a = tiny_pipe("a red circle moving right", 24, **FAST).frames
    b = loaded("a red circle moving right", 24, **FAST).frames
    assert np.array_equal(a, b)
    for part in (
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "cam",
        "apm",
        "image_encoder",
    ):
        assert (tiny_model_dir / part).is_dir()
    assert not list(tiny_model_dir.rglob("*.bin")) and not list(tiny_model_dir.rglob("*.pt"))
    meta = json.loads((tiny_model_dir / "cam" / "config.json").read_text())
    assert meta["cam"]["cond_embedding_channels"] == [8, 16]


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        StreamingT2VPipeline.from_pretrained(tmp_path / "nope")


def test_missing_component_is_named(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path)
    shutil.rmtree(model / "vae")
    with pytest.raises(ModelLoadError, match="vae"):
        StreamingT2VPipeline.from_pretrained(model)


def test_partial_streaming_modules_are_named(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path)
    shutil.rmtree(model / "apm")
    with pytest.raises(ModelLoadError, match="apm"):
        StreamingT2VPipeline.from_pretrained(model)


def test_corrupt_weights_are_a_clear_error(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path)
    path = model / "cam" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt"):
        StreamingT2VPipeline.from_pretrained(model)


def test_missing_and_unexpected_keys_are_named(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path)
    path = model / "apm" / "model.safetensors"
    state = load_file(path)
    state["bogus.weight"] = state.pop("mixers.0.alpha")
    save_file(state, path)
    with pytest.raises(ModelLoadError, match=r"missing keys \[mixers.0.alpha\].*bogus.weight"):
        StreamingT2VPipeline.from_pretrained(model)


def test_unet_with_missing_keys_is_refused(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path)
    path = model / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state.pop("conv_in.weight")
    save_file(state, path)
    with pytest.raises(ModelLoadError, match="conv_in.weight"):
        StreamingT2VPipeline.from_pretrained(model)


def test_corrupt_config_is_a_clear_error(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path)
    (model / "pipeline_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="pipeline_config.json"):
        StreamingT2VPipeline.from_pretrained(model)


MODELSCOPE_REPO = [  # the files of the ModelScope text-to-video repository on the hub
    ".gitattributes", "README.md", "model_index.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin",
    "text_encoder/pytorch_model.fp16.bin", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.bin",
    "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
]  # fmt: skip
OPENCLIP_H_REPO = [  # OpenCLIP ViT-H-14: four copies of the 3.9 GB weights
    ".gitattributes", "README.md", "config.json", "merges.txt", "open_clip_config.json",
    "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
    "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json", "vocab.json",
]  # fmt: skip


def test_hub_downloads_fetch_only_the_files_the_loaders_read(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from streamingt2v.models.weights import HUB_FILES, local_model_folder

    asked = {}

    def fake_download(repo_id, allow_patterns=None, **kwargs):
        asked[repo_id] = allow_patterns
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert local_model_folder("org/model") == tmp_path
    assert asked["org/model"] == list(HUB_FILES)
    fetched = set(filter_repo_objects(MODELSCOPE_REPO, allow_patterns=list(HUB_FILES)))
    weights = {f for f in fetched if not f.endswith((".json", ".txt"))}
    assert weights == {
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    assert {"tokenizer/merges.txt", "tokenizer/vocab.json", "model_index.json"} <= fetched
    clip = set(filter_repo_objects(OPENCLIP_H_REPO, allow_patterns=list(HUB_FILES)))
    assert {f for f in clip if not f.endswith((".json", ".txt"))} == {"model.safetensors"}
    assert "preprocessor_config.json" in clip and "config.json" in clip
