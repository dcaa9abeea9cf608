"""README media: sample GIFs of the embedded default and XT slices of them.

    python scripts/readme_media.py --model src/streamingt2v/default_model --frames 240 \
        --out docs/media

An XT slice stacks one row of pixels over time (time runs down): the row through the
object's mean height, so a moving object draws a continuous track and any jump between
chunks shows as a break in it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from streamingt2v import StreamingT2VPipeline
from streamingt2v.metrics.world_checks import xt_slice
from streamingt2v.video_io import VideoWriter

PROMPTS = (
    "a red circle moving right on a black background",
    "a yellow square bouncing on a navy background",
    "a cyan triangle circling on a gray background",
    "a white square moving down on a gray background",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--scale", type=int, default=4, help="pixel upscale of the media")
    parser.add_argument("--out", type=Path, default=Path("docs/media"))
    args = parser.parse_args()
    pipe = StreamingT2VPipeline.from_pretrained(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    slices, index = [], []
    for i, prompt in enumerate(PROMPTS):
        video = pipe(prompt, args.frames, seed=i).frames
        big = video.repeat(args.scale, 1).repeat(args.scale, 2)
        writer = VideoWriter(args.out / f"sample_{i}.gif", pipe.config.fps)
        writer.write(big)
        writer.finish()
        xt = xt_slice(video).repeat(2, 0).repeat(args.scale, 1)  # (2F, W*scale, 3)
        slices.append(np.pad(xt, ((0, 0), (0, 8), (0, 0)), constant_values=255))
        index.append(
            {"file": f"sample_{i}.gif", "prompt": prompt, "seed": i, "frames": args.frames}
        )
    Image.fromarray(np.concatenate(slices, axis=1)).save(args.out / "xt_slices.png")
    (args.out / "index.json").write_text(json.dumps(index, indent=2))


if __name__ == "__main__":
    main()
