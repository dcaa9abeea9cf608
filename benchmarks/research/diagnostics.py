"""Measurements behind the design decisions recorded in docs/ (training.md, evaluation.md).

    python benchmarks/research/diagnostics.py scuts            # SCuts floor: object-only cuts found
    python benchmarks/research/diagnostics.py vae --vae DIR    # world checks after a VAE round trip
    python benchmarks/research/diagnostics.py x0 --unet DIR [--schedule S] [--prediction P]
    python benchmarks/research/diagnostics.py cam --model DIR  # does the CAM use its frames?
    python benchmarks/research/diagnostics.py words --model DIR [--stream]  # is each word used?
    python benchmarks/research/diagnostics.py readme --model DIR [--guidance G]
    python benchmarks/research/diagnostics.py chunks --model DIR  # first chunk vs streaming chunks
    python benchmarks/research/diagnostics.py continuation --model DIR [--stream-guidance G]
        [--replace-overlap] [--against] [--videos N] [--out PNG]
    python benchmarks/research/diagnostics.py side-by-side --model DIR --out PNG  # made vs rendered
    python benchmarks/research/diagnostics.py windows --eval JSON  # does chunk 0's motion last?

``scuts``: 8 pairs of world videos with the same background, cut at frame 24, and the
uncut first videos, counted by AdaptiveDetector at several ``min_content_val`` floors.
``vae``: 12 rendered videos through the VAE and back, world checks before and after.
``x0``: a base UNet's error at several noise levels, as its prediction and as the clean
latents it implies (the epsilon-at-high-noise problem of run v1).
``words``: the base UNet's v-prediction error on the object's latent cells of rendered
clips, with the true caption and with one word swapped (colour, shape, motion - a straight
motion to its opposite -, background) or no caption: a word the model ignores costs nothing
when swapped. ``--stream``: the streaming UNet with the clip's own conditioning frames and
anchor, over the 8 new positions.
``continuation``: chunk 1 generated from a rendered video's first 8 frames and frame 0 (the
CAM's and the APM's inputs), read against the rendered continuation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def scuts() -> None:
    from scenedetect import AdaptiveDetector, detect

    from streamingt2v.metrics.scuts import MIN_SCENE_LEN
    from streamingt2v.video_io import VideoWriter
    from streamingt2v.world.render import render, rng_for, sample_params

    def cuts(video: np.ndarray, floor: float) -> int:
        big = video.repeat(4, 1).repeat(4, 2)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "v.mp4"
            writer = VideoWriter(path, 8)
            writer.write(big)
            writer.finish()
            detector = AdaptiveDetector(min_scene_len=MIN_SCENE_LEN, min_content_val=floor)
            return max(0, len(detect(str(path), detector)) - 1)

    for floor in (15, 5, 2, 1):
        rng = rng_for("cuts", 0)
        found = false = 0
        for _ in range(8):
            a = sample_params(rng)
            b = sample_params(rng, background=a.background)
            first = render(a, 48)
            found += cuts(np.concatenate([first[:24], render(b, np.arange(100, 148))[24:]]), floor)
            false += cuts(first, floor)
        print(f"min_content_val {floor}: cuts found {found}/8, false cuts {false} in 8 videos")


def vae_round_trip(folder: Path, size: int = 32) -> None:
    """The VAE's encode-decode of 12 rendered videos at ``size`` x ``size``: world checks of
    the rendered and the returned frames, and the return's PSNR against the render."""
    from diffusers import AutoencoderKL

    from streamingt2v.metrics.world_checks import check_video
    from streamingt2v.models.weights import load_diffusers
    from streamingt2v.protocol import psnr
    from streamingt2v.world.render import parse_caption, render, rng_for, sample_params

    vae = load_diffusers(AutoencoderKL, folder).eval()
    rng = rng_for("diag", 0)
    rows, psnrs = {"rendered": [], "vae": []}, []
    for _ in range(12):
        params = sample_params(rng)
        video = render(params, 32, size)
        x = torch.from_numpy(video).float().permute(0, 3, 1, 2) / 127.5 - 1  # (F, 3, H, W)
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        back = ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        psnrs.append(psnr(back, video))
        for name, v in (("rendered", video), ("vae", back)):
            r = check_video(v, parse_caption(params.caption))
            rows[name].append((r.colour_right, r.background_right, r.shape_right))
    for name, values in rows.items():
        colour, background, shape = np.mean(values, axis=0)
        print(f"{name}: colour {colour:.1%} background {background:.1%} shape {shape:.1%}")
    print(f"{size}x{size}: PSNR of the round trip {np.mean(psnrs):.1f} dB")


def right_per_frame(video: np.ndarray, words: dict[str, str]) -> np.ndarray:
    """(F, 3) booleans: each frame's background, object colour and shape read as ``words``
    say."""
    from streamingt2v.metrics.world_checks import read_frame

    return np.array(
        [
            (
                r.background == words["background"],
                r.colour == words["colour"],
                r.shape == words["shape"],
            )
            for r in map(read_frame, video)
        ]
    )


def x0_error(vae_dir: Path, unet_dir: Path, schedule: str, prediction: str | None) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel

    from streamingt2v.models.unet import unet_forward
    from streamingt2v.models.vae import video_latents
    from streamingt2v.models.weights import load_diffusers
    from streamingt2v.training.common import SCHEDULES, minilm
    from streamingt2v.world.dataset import WorldClips, clip_batch

    vae = load_diffusers(AutoencoderKL, vae_dir).eval()
    unet = load_diffusers(UNet3DConditionModel, unet_dir).eval()
    config = SCHEDULES[schedule] | ({"prediction_type": prediction} if prediction else {})
    noise = DDPMScheduler.from_config(config)
    batch = clip_batch(WorldClips(16, 32, 600, seed=99), 5, 2)
    with torch.no_grad():
        z0 = video_latents(vae, batch["video"])  # (B, C, F, h, w)
        context = minilm()(batch["caption"])
        generator = torch.Generator().manual_seed(0)
        print(f"latent variance {z0.var().item():.3f}; prediction {noise.config.prediction_type}")
        for step in (50, 200, 500, 800, 950, 999):
            eps = torch.randn(z0.shape, generator=generator)
            t = torch.full((2,), step)
            x = noise.add_noise(z0, eps, t)
            out = unet_forward(unet, x, t, context)
            a = noise.alphas_cumprod[step]
            if noise.config.prediction_type == "v_prediction":
                x0 = a.sqrt() * x - (1 - a).sqrt() * out
                target = noise.get_velocity(z0, eps, t)
            else:
                x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
                target = eps
            print(
                f"t={step}: prediction error {((out - target) ** 2).mean().item():.4f}, "
                f"implied x0 error {((x0 - z0) ** 2).mean().item():.4f}"
            )


def conditioning_frames(pipe, z0: torch.Tensor) -> torch.Tensor:
    """The first ``cond_frames`` of each clip's latents as generated frames look: through the
    VAE's decoder, as in training. (B, C, F, h, w) -> (B, 3, F_cond, H, W)."""
    fc = pipe.config.stream.cond_frames
    return torch.cat([pipe.decode_latents(z0[i : i + 1, :, :fc]) for i in range(len(z0))])


def cam_use(model_dir: Path) -> None:
    """Does the streaming model use its conditioning frames? Its v-prediction error on
    rendered clips with the clip's own conditioning frames, with another clip's, and with
    the CAM left out; over all 16 positions and over the 8 new ones."""
    from diffusers import DDPMScheduler

    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.models.vae import video_latents
    from streamingt2v.sampling import stream_model
    from streamingt2v.world.dataset import WorldClips, clip_batch

    pipe = StreamingT2VPipeline.from_pretrained(model_dir)
    noise = DDPMScheduler.from_config(pipe.scheduler_config)
    batch = clip_batch(WorldClips(16, 32, 600, seed=99), 5, 6)
    video = batch["video"]  # (B, 3, 16, H, W) in [-1, 1]
    fc = pipe.config.stream.cond_frames
    with torch.no_grad():
        z0 = video_latents(pipe.vae, video)  # (B, C, F, h, w)
        cond = conditioning_frames(pipe, z0)
        context = pipe.text_encoder(batch["caption"])
        embeds = pipe.image_encoder(batch["anchor"])
        generator = torch.Generator().manual_seed(0)
        print(f"{len(video)} clips; v-prediction error: all 16 positions / the 8 new ones")
        for step in (200, 500, 800, 950):
            eps = torch.randn(z0.shape, generator=generator)
            t = torch.full((len(video),), step)
            x = noise.add_noise(z0, eps, t)
            target = noise.get_velocity(z0, eps, t)
            cases = {
                "own frames": (pipe.cam, cond),
                "another clip's": (pipe.cam, cond.roll(1, dims=0)),
                "no CAM": (None, None),
            }
            parts = []
            for name, (cam, frames_in) in cases.items():
                features = cam.embed_frames(frames_in) if cam is not None else None
                model = stream_model(pipe.stream_unet, cam, pipe.apm, context, embeds, features)
                err = (model(x, t) - target) ** 2
                parts.append(f"{name} {err.mean():.4f}/{err[:, :, fc:].mean():.4f}")
            print(f"t={step}: " + ", ".join(parts))


OPPOSITE = {
    "moving left": "moving right",
    "moving right": "moving left",
    "moving up": "moving down",
    "moving down": "moving up",
    "bouncing": "circling",
    "circling": "bouncing",
}


def swapped(caption: str, word: str) -> str:
    """``caption`` with its ``word`` (colour, shape, motion, background) changed: the next
    value of the vocabulary that keeps object and background apart, the opposite motion."""
    from streamingt2v.world.render import (
        BACKGROUNDS,
        COLOURS,
        SHAPES,
        caption_of,
        parse_caption,
    )

    w = parse_caption(caption)
    if word == "motion":
        w["motion"] = OPPOSITE[w["motion"]]
    else:
        values = list({"colour": COLOURS, "shape": SHAPES, "background": BACKGROUNDS}[word])
        start = values.index(w[word])
        w[word] = next(
            v
            for v in values[start + 1 :] + values[:start]
            if v != (w["background"] if word == "colour" else w["colour"])
        )
    return caption_of(**w)


def word_use(model_dir: Path, stream: bool, clips: int = 24) -> None:
    """With ``stream``, the streaming UNet given the clip's own conditioning frames (CAM) and
    anchor (APM), over the 8 new positions; else the base UNet over all 16."""
    from diffusers import DDPMScheduler

    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.models.unet import unet_forward
    from streamingt2v.models.vae import video_latents
    from streamingt2v.sampling import stream_model
    from streamingt2v.training.augment import object_cells
    from streamingt2v.world.dataset import WorldClips, clip_batch

    pipe = StreamingT2VPipeline.from_pretrained(model_dir)
    noise = DDPMScheduler.from_config(pipe.scheduler_config)
    batch = clip_batch(WorldClips(16, 32, 600, seed=99), 0, clips)
    video, captions = batch["video"], batch["caption"]
    cases = {"true": captions, "none": [""] * clips}
    cases |= {
        w: [swapped(c, w) for c in captions] for w in ("colour", "shape", "motion", "background")
    }
    with torch.no_grad():
        z0 = video_latents(pipe.vae, video)  # (B, C, F, h, w)
        cells = object_cells(video, z0.shape[-2:]).bool()  # (B, 1, F, h, w)
        contexts = {name: pipe.text_encoder(c) for name, c in cases.items()}
        if stream:
            features = pipe.cam.embed_frames(conditioning_frames(pipe, z0))
            embeds = pipe.image_encoder(batch["anchor"])
            cells[:, :, : pipe.config.stream.cond_frames] = False
        generator = torch.Generator().manual_seed(0)
        print(
            f"{clips} clips, {'streaming' if stream else 'base'} UNet; v-prediction error on "
            "the object's latent cells, true caption, and with each word swapped (change "
            "against the true caption)"
        )
        for step in (200, 500, 800, 950):
            eps = torch.randn(z0.shape, generator=generator)
            t = torch.full((clips,), step)
            x = noise.add_noise(z0, eps, t)
            target = noise.get_velocity(z0, eps, t)
            errors = {}
            for name, context in contexts.items():
                if stream:
                    model = stream_model(
                        pipe.stream_unet, pipe.cam, pipe.apm, context, embeds, features
                    )
                    pred = model(x, t)
                else:
                    pred = unet_forward(pipe.unet, x, t, context)
                err = ((pred - target) ** 2).mean(1, True)
                errors[name] = err[cells].mean().item()
            base = errors.pop("true")
            parts = [f"{n} {e:.4f} ({(e / base - 1) * 100:+.0f}%)" for n, e in errors.items()]
            print(f"t={step}: true {base:.4f}; " + ", ".join(parts))


def readme_prompt(
    model_dir: Path,
    guidance: float | None = None,
    stream_guidance: float | None = None,
    frames: int = 48,
) -> None:
    """The shipping test's figures (tests/test_default_model.py: the README's prompt, seed 0,
    24 frames) for any model folder, and each chunk's background and colour; ``guidance``
    and ``stream_guidance`` (None: the model's) override its sampling defaults."""
    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.metrics.world_checks import check_video
    from streamingt2v.world.render import parse_caption

    prompt = "a red circle moving right on a black background"
    pipe = StreamingT2VPipeline.from_pretrained(model_dir)
    video = pipe(prompt, frames, seed=0, guidance=guidance, stream_guidance=stream_guidance).frames
    report = check_video(video[:24], parse_caption(prompt))
    print(
        f"first 24 frames: background right {report.background_right:.1%} (test: >= 90%), "
        f"colour right {report.colour_right:.1%} (test: >= 80%)"
    )
    right = right_per_frame(video, parse_caption(prompt))
    for start, stop in ((0, 16), *((s, s + 8) for s in range(16, frames, 8))):
        backgrounds, colours, _ = right[start:stop].sum(0)
        print(
            f"frames {start}-{stop - 1}: black background {backgrounds}/{stop - start}, "
            f"red object {colours}/{stop - start}"
        )


def chunk_quality(
    model_dir: Path, prompts: int = 8, frames: int = 48, shape: str | None = None
) -> None:
    """Is the first chunk (the base) or the streaming stage the weak part? Background,
    colour and shape right in the first chunk and in the streaming frames, over the first
    ``prompts`` evaluation prompts (benchmarks/paper/world_eval.py's, seed 0 each), or the first
    ``prompts`` of them with objects of ``shape``."""
    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.protocol import eval_prompts
    from streamingt2v.world.render import parse_caption

    pipe = StreamingT2VPipeline.from_pretrained(model_dir)
    chosen = [
        p for p in eval_prompts(50 * prompts, 0) if shape in (None, parse_caption(p)["shape"])
    ][:prompts]
    first = np.zeros(3)
    later = np.zeros(3)
    for prompt in chosen:
        right = right_per_frame(pipe(prompt, frames, seed=0).frames, parse_caption(prompt))
        first += right[:16].sum(0)
        later += right[16:].sum(0)
        print(
            f"{prompt}: first chunk bg/colour/shape {right[:16].mean(0)}, "
            f"later {right[16:].mean(0)}",
            flush=True,
        )
    first /= 16 * len(chosen)
    later /= (frames - 16) * len(chosen)
    print(
        f"first chunk: background {first[0]:.1%}, colour {first[1]:.1%}, shape {first[2]:.1%}; "
        f"streaming frames: background {later[0]:.1%}, colour {later[1]:.1%}, "
        f"shape {later[2]:.1%}"
    )


def save_rows(rows: list[np.ndarray], out: Path) -> None:
    """Stack rows of frames (each (H, W * n, 3) uint8) into one PNG, every pixel 4x4."""
    from PIL import Image

    picture = np.concatenate(rows, 0)
    height, width = picture.shape[:2]
    Image.fromarray(picture).resize((width * 4, height * 4), Image.NEAREST).save(out)


def continuation(
    model_dir: Path,
    out: Path | None,
    stream_guidance: float | None = None,
    videos: int = 8,
    replace_overlap: bool = False,
    against: bool = False,
) -> None:
    """Does the streaming stage continue a video it is handed? For ``videos`` evaluation
    prompts (seed 0 each), render 16 frames, generate chunk 1 from the first 8 (conditioning
    frames) and frame 0 (anchor) with the model's sampling defaults (``stream_guidance``,
    ``replace_overlap`` if given), and read the 8 new frames against rendered frames 8-15:
    background, colour and shape right, the distance between the object's centroids (in
    frame widths), and for the straight motions the direction of travel from the last
    conditioning frame to the last new frame. ``against``: the rendered videos of straight
    motions move the opposite way to the prompt's (does the text or the frames decide?).
    With ``out``: a picture, each rendered video above its continuation."""
    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.metrics.world_checks import STRAIGHT, check_video, read_frame
    from streamingt2v.protocol import eval_prompts
    from streamingt2v.streaming import regenerate_chunk
    from streamingt2v.world.render import parse_caption, render, rng_for, sample_params

    pipe = StreamingT2VPipeline.from_pretrained(model_dir)
    stream = pipe.config.stream
    fc = stream.cond_frames
    rng = rng_for("continuation", 0)
    right, distances, rows, headings = np.zeros(3), [], [], []
    for prompt in eval_prompts(videos, 0):
        words = parse_caption(prompt)
        shown = dict(words)
        if against and words["motion"] in STRAIGHT:
            shown["motion"] = OPPOSITE[words["motion"]]
        truth = render(sample_params(rng, **shown), stream.chunk_frames, size=pipe.frame_size[0])
        two_chunks = stream.chunk_frames + stream.new_frames
        request = pipe.request(
            prompt, two_chunks, stream_guidance=stream_guidance, replace_overlap=replace_overlap
        )
        new = regenerate_chunk(pipe.chunk_models(), request, 1, truth[:fc], truth[0])
        if words["motion"] in STRAIGHT:  # one window: the last conditioning frame, the new ones
            travel = np.stack([truth[fc - 1], *new])
            ways = check_video(travel, words, window=len(travel)).directions
            headings += [(way == words["motion"], way == shown["motion"]) for way in ways]
        for made, expected in zip(new, truth[fc:], strict=True):
            got, want = read_frame(made), read_frame(expected)
            right += [
                got.background == words["background"],
                got.colour == words["colour"],
                got.shape == words["shape"],
            ]
            if got.centroid is not None and want.centroid is not None:
                distances.append(float(np.hypot(*np.subtract(got.centroid, want.centroid))))
        rows += [np.concatenate(list(truth), 1), np.concatenate([*truth[:fc], *new], 1)]
    n = videos * stream.new_frames
    print(
        f"stream guidance {request.sample.chunk_guidance}, replace_overlap "
        f"{request.sample.replace_overlap}: "
        f"{videos} rendered videos continued by {stream.new_frames} frames: "
        f"background {right[0] / n:.1%}, colour {right[1] / n:.1%}, shape {right[2] / n:.1%}; "
        f"object found in {len(distances)}/{n}, median distance to the rendered track "
        f"{np.median(distances) if distances else float('nan'):.3f} frame widths; "
        f"of {len(headings)} straight motions, travelling the prompt's way "
        f"{sum(h[0] for h in headings)}, the conditioning frames' way {sum(h[1] for h in headings)}"
    )
    if out is not None:
        save_rows(rows, out)
        print(f"wrote {out}: rendered video above its continuation (from frame {fc} on)")


def windows(eval_json: Path) -> None:
    """Per 8-frame window of a world_eval.json's straight-motion videos: how often the object
    travels the prompt's way, and the way of the video's first window (the first chunk's)."""
    from streamingt2v.world.render import STRAIGHT, parse_caption

    videos = json.loads(eval_json.read_text())["videos"]
    rows = []
    for v in videos:
        motion = parse_caption(v["prompt"])["motion"]
        if motion in STRAIGHT and v["directions"]:
            rows.append((v["directions"], motion))
    print(f"{len(rows)} straight-motion videos of {len(videos)}; per window: right / as window 0")
    for k in range(max(len(d) for d, _ in rows)):
        here = [(d[k] == motion, d[k] == d[0]) for d, motion in rows if len(d) > k]
        right, same = np.mean(here, axis=0)
        print(f"window {k} (frames {8 * k}-{8 * k + 7}): {right:.0%} / {same:.0%} of {len(here)}")


def side_by_side(model_dir: Path, out: Path, prompts: int = 4, frames: int = 32) -> None:
    """A picture: for the first ``prompts`` evaluation prompts, every 4th frame of a
    generated video (seed 0) above a rendered video of the same caption (start position and
    speed differ: the caption does not fix them), each frame scaled 4x."""
    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.protocol import eval_prompts
    from streamingt2v.world.render import parse_caption, render, rng_for, sample_params

    pipe = StreamingT2VPipeline.from_pretrained(model_dir)
    rng = rng_for("side-by-side", 0)
    rows = []
    for prompt in eval_prompts(prompts, 0):
        video = pipe(prompt, frames, seed=0).frames[::4]
        truth = render(sample_params(rng, **parse_caption(prompt)), frames, size=video.shape[1])
        truth = truth[::4]
        rows += [np.concatenate(list(video), 1), np.concatenate(list(truth), 1)]
    save_rows(rows, out)
    print(f"wrote {out}: rows alternate generated / rendered, prompts {eval_prompts(prompts, 0)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        choices=[
            "scuts",
            "vae",
            "x0",
            "cam",
            "words",
            "readme",
            "chunks",
            "continuation",
            "side-by-side",
            "windows",
        ],
    )
    parser.add_argument("--model", type=Path, default=Path("src/streamingt2v/default_model"))
    parser.add_argument("--vae", type=Path, default=Path("runs/default/vae_sharp/final"))
    parser.add_argument("--unet", type=Path, default=Path("runs/default/base/final"))
    parser.add_argument("--schedule", default="world", choices=["world", "modelscope"])
    parser.add_argument(
        "--prediction", choices=["epsilon", "v_prediction"], help="what the UNet predicts"
    )
    parser.add_argument("--out", type=Path, help="side-by-side, continuation: a PNG")
    parser.add_argument("--stream", action="store_true", help="words: the streaming UNet")
    parser.add_argument("--guidance", type=float, help="readme: instead of the model's")
    parser.add_argument(
        "--stream-guidance", type=float, help="readme, continuation: the streaming chunks'"
    )
    parser.add_argument(
        "--replace-overlap", action="store_true", help="continuation: SampleConfig's"
    )
    parser.add_argument("--eval", type=Path, help="windows: a world_eval.json")
    parser.add_argument("--frames", type=int, default=48, help="chunks: the videos' length")
    parser.add_argument("--shape", help="chunks: only prompts with objects of this shape")
    parser.add_argument("--size", type=int, default=32, help="vae: the frames' size")
    parser.add_argument("--videos", type=int, default=8, help="continuation: how many")
    parser.add_argument(
        "--against", action="store_true", help="continuation: frames move against the prompt"
    )
    args = parser.parse_args()
    if args.what == "scuts":
        scuts()
    elif args.what == "vae":
        vae_round_trip(args.vae, args.size)
    elif args.what == "cam":
        cam_use(args.model)
    elif args.what == "words":
        word_use(args.model, args.stream)
    elif args.what == "readme":
        readme_prompt(args.model, args.guidance, args.stream_guidance)
    elif args.what == "chunks":
        chunk_quality(args.model, frames=args.frames, shape=args.shape)
    elif args.what == "continuation":
        continuation(
            args.model,
            args.out,
            args.stream_guidance,
            args.videos,
            args.replace_overlap,
            args.against,
        )
    elif args.what == "windows":
        windows(args.eval)
    elif args.what == "side-by-side":
        side_by_side(args.model, args.out or Path("side_by_side.png"))
    else:
        x0_error(args.vae, args.unet, args.schedule, args.prediction)


if __name__ == "__main__":
    main()
