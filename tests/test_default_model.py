"""The shipped embedded default: loads offline and makes the video its prompt asks for."""

from __future__ import annotations

import pytest

from streamingt2v import StreamingT2VPipeline
from streamingt2v.generate import DEFAULT_MODEL_DIR
from streamingt2v.metrics.world_checks import check_video
from streamingt2v.world.render import parse_caption

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
    from safetensors import safe_open

    with safe_open(DEFAULT_MODEL_DIR / "cam" / "model.safetensors", "pt") as f:
        key = next(iter(f.keys()))
        assert str(f.get_tensor(key).dtype) == "torch.float16"
