"""Write tiny random stand-ins for the paper's released files in their real formats, to try
``convert-official`` and ``convert-msvid2vid`` end to end without the real files (see
docs/full-size.md):

    python scripts/tiny_checkpoints.py /tmp/tiny
    streamingt2v convert-official /tmp/tiny/streaming_t2v.ckpt /tmp/tiny/streamingt2v-ms \\
        --base /tmp/tiny/text-to-video-ms --image-encoder /tmp/tiny/clip
    streamingt2v convert-msvid2vid /tmp/tiny/non_ema_0035000.pth /tmp/tiny/msvid2vid-xl \\
        --vae /tmp/tiny/v2-1_512-ema-pruned.ckpt \\
        --text-encoder /tmp/tiny/open_clip_pytorch_model.bin --tokenizer /tmp/tiny/tokenizer
    streamingt2v generate "a red circle" --model /tmp/tiny/streamingt2v-ms --frames 24 \\
        --steps 2 --enhancer /tmp/tiny/msvid2vid-xl --enhance-size 80x128 --out /tmp/tiny/v.mp4

(80x128 is the tiny stand-in of 720x1280: the tiny VAE has SD's factor 8, so the latent is
10 x 16, a size MS-Vid2Vid-XL's padded UNet runs at. The weights are random: the video is
noise; what the commands show is that the files convert and the converted system runs.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streamingt2v.models.weights import libraries_quiet
from streamingt2v.tiny_checkpoints import write_msvid2vid_files, write_official_files

KEY_LISTS = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the files (a new folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.folder.exists():
        parser.error(f"{args.folder} exists; choose a new folder")
    with libraries_quiet():
        written = write_official_files(args.folder, args.seed)
        written |= write_msvid2vid_files(args.folder, KEY_LISTS, args.seed)
    for part, path in written.items():
        print(f"{part}: {path}")


if __name__ == "__main__":
    main()
