"""Write tiny random stand-ins for MS-Vid2Vid-XL's released files in their real formats, to
try ``streamingt2v convert-msvid2vid`` end to end without the real files (see
docs/full-size.md):

    python scripts/tiny_checkpoints.py /tmp/tiny
    streamingt2v convert-msvid2vid /tmp/tiny/non_ema_0035000.pth /tmp/tiny/enhancer \\
        --vae /tmp/tiny/v2-1_512-ema-pruned.ckpt \\
        --text-encoder /tmp/tiny/open_clip_pytorch_model.bin --tokenizer /tmp/tiny/tokenizer
    streamingt2v enhance low.mp4 --prompt "a red circle" --model /tmp/tiny/enhancer \\
        --size 80x128 --steps 3 --out /tmp/tiny/enhanced.mp4

(80x128 is the tiny stand-in of 720x1280: its VAE has SD's factor 8, so the latent is
10 x 16, a size MS-Vid2Vid-XL's padded UNet runs at.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streamingt2v.tiny_checkpoints import write_msvid2vid_files

KEY_LISTS = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for part, path in write_msvid2vid_files(args.folder, KEY_LISTS, args.seed).items():
        print(f"{part}: {path}")


if __name__ == "__main__":
    main()
