"""The shipped embedded default: loads offline and makes the video its prompt asks for."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from streamingt2v import StreamingT2VPipeline
from streamingt2v.cli import main
from streamingt2v.evaluate import ClipPair, evaluate_video
from streamingt2v.generate import DEFAULT_MODEL_DIR
from streamingt2v.metrics.world_checks import check_video
from streamingt2v.video_io import read_video
from streamingt2v.world.render import parse_caption, render, sample_params

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "unet").is_dir(), reason="the embedded default model is not shipped"
)

PROMPT = "a red circle moving right on a black background"


@pytest.fixture(scope="module")
def default_pipe():
    return StreamingT2VPipeline.from_pretrained(DEFAULT_MODEL_DIR)


def test_shipped_weights_make_the_right_colours(default_pipe):
    video = default_pipe(PROMPT, 24, seed=0).frames
    assert video.shape == (24, 32, 32, 3)
    report = check_video(video, parse_caption(PROMPT))
    assert report.background_right >= 0.9, report
    assert report.colour_right >= 0.8, report


def test_shipped_model_has_its_card_and_fp16_weights():
    assert (DEFAULT_MODEL_DIR / "MODEL_CARD.md").is_file()
    with safe_open(DEFAULT_MODEL_DIR / "cam" / "model.safetensors", "pt") as f:
        key = next(iter(f.keys()))
        assert str(f.get_tensor(key).dtype) == "torch.float16"


def test_readme_first_command_runs_on_the_default(tmp_path):
    out = tmp_path / "video.mp4"
    assert main(["generate", PROMPT, "--frames", "24", "--out", str(out), "--quiet"]) == 0
    assert read_video(out).shape[0] == 24


def test_default_encoders_score_the_right_caption_highest():
    # The in-domain CLIP score: a rendered video scores higher with its own caption than
    # with the same caption in another colour, shape or background.
    clip = ClipPair.from_pipeline(DEFAULT_MODEL_DIR)
    words = dict(colour="red", shape="circle", motion="moving right", background="black")
    video = render(sample_params(np.random.default_rng(0), **words), 16)
    right = evaluate_video(video, PROMPT, clip, mawe_size=32)["clip_score"]
    for wrong in (
        "a blue circle moving right on a black background",
        "a red square moving right on a black background",
        "a red circle moving right on a white background",
    ):
        assert evaluate_video(video, wrong, clip, mawe_size=32)["clip_score"] < right, wrong
