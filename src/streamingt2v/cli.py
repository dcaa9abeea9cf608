"""Command line: a thin layer over the public Python API.

Exit codes: 0 done; 2 bad input (one message, no traceback, nothing overwritten); 3 the
output could not be written (full disk, lost permission: the message names the path and the
cause, nothing existing changed, no temporary file left); 130 stopped with Ctrl-C and 143
stopped with SIGTERM (the chunks made so far are kept as a playable video).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from . import __version__
from .config import METHODS, MODES, SCHEDULERS, OutputError, UsageError

EXIT_USAGE = 2
EXIT_OUTPUT = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as shells report it
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: same exit code, our format
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _embedded_sample() -> dict:
    """The embedded default's sampling defaults (its pipeline_config.json: plain JSON, so
    ``--help`` stays instant), or {} when the package has none."""
    try:
        return json.loads((DEFAULT_MODEL_DIR / "pipeline_config.json").read_text())["sample"]
    except (OSError, ValueError, KeyError):
        return {}


def _model_default(embedded: object, paper: object) -> str:
    """Help text for a setting that a model folder decides."""
    if embedded is None:
        return f"the model folder's; {paper} for the paper's models"
    return f"the model folder's: {embedded} for the embedded default, {paper} for the paper's"


def _world_epilog() -> str:
    from .world.render import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

    return (
        "The embedded default model (no --model) knows one small world, the shapes world: "
        "prompts of the form 'a COLOUR SHAPE MOTION on a BACKGROUND background', with "
        f"colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; motions "
        f"{', '.join(MOTIONS)}; backgrounds {', '.join(BACKGROUNDS)}. Other words are warned "
        "about (it cannot draw them); full-size models (--model) take any prompt. Example: "
        'streamingt2v generate "a red circle moving right on a black background" --frames 240'
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Device, precision, overwriting and progress: shared by the commands that run models."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weights' precision (default: float16 on CUDA, float32 on CPU; a model folder's "
        "stream_dtype, e.g. float32 for a converted official checkpoint, then keeps the "
        "streaming stage in that precision)",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="keep each UNet in CPU memory until its stage runs (less GPU memory)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or warnings")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="streamingt2v",
        description="Long text-to-video generation (StreamingT2V: CAM + APM, streaming).",
    )
    parser.add_argument("--version", action="version", version=f"streamingt2v {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser(
        "generate",
        help="generate a long video from a text prompt",
        description=(
            "Generate a video of any length: a first 16-frame chunk from the base model, then "
            "chunks of 8 new frames conditioned on the previous 8 (CAM) and on the first frame "
            "(APM). Writes the video and a JSON manifest beside it (OUT.json). Sampling "
            "defaults come from the model folder's pipeline_config.json."
        ),
        epilog=_world_epilog(),
    )
    sample = _embedded_sample()
    gen.add_argument("prompt", help="text prompt")
    gen.add_argument(
        "--frames", type=_int, default=80, help="number of frames, any integer >= 1 (default: 80)"
    )
    gen.add_argument(
        "--out",
        type=Path,
        default=Path("video.mp4"),
        help="output: .mp4 (H.264), .gif, or a folder name for PNG frames (default: video.mp4)",
    )
    gen.add_argument(
        "--seed",
        type=_int,
        default=0,
        help="seed, an integer in [0, 2**63 - 1]; chunk k's noise derives from (seed, k) "
        "(default: 0)",
    )
    gen.add_argument(
        "--steps",
        type=_int,
        default=None,
        help="denoising steps per chunk, at most the schedule's timesteps (default: "
        + _model_default(sample.get("steps"), 50)
        + ")",
    )
    gen.add_argument(
        "--guidance",
        type=_float,
        default=None,
        help="classifier-free guidance scale, finite and >= 0 (default: "
        + _model_default(sample.get("guidance"), 7.5)
        + ")",
    )
    gen.add_argument(
        "--stream-guidance",
        type=_float,
        default=None,
        help="guidance of the streaming chunks >= 0 (default: the model's, else --guidance)",
    )
    gen.add_argument(
        "--replace-overlap",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="streaming chunks: pin the overlap frames' latents to the conditioning frames', "
        "noised to each step (not in the paper; default: the model's setting, else off)",
    )
    gen.add_argument(
        "--negative-prompt", default=None, help="negative prompt for guidance (default: empty)"
    )
    gen.add_argument(
        "--scheduler",
        default=None,
        choices=SCHEDULERS,
        help="ddim (eta 1, the paper's) or dpm (DPM-Solver++) (default: "
        + _model_default(sample.get("scheduler"), "ddim")
        + ")",
    )
    gen.add_argument(
        "--model",
        type=Path,
        default=None,
        help="pipeline or ModelScope folder, or a hub id (default: the embedded default model)",
    )
    gen.add_argument(
        "--fps",
        type=_int,
        default=None,
        help="frames per second of the output (default: the model folder's, 8 for the "
        "embedded default and the paper's)",
    )
    gen.add_argument(
        "--height",
        type=_int,
        default=None,
        help="frame height in pixels, a multiple of the VAE factor (default: the model's)",
    )
    gen.add_argument(
        "--width", type=_int, default=None, help="frame width in pixels (default: the model's)"
    )
    gen.add_argument(
        "--enhancer",
        type=Path,
        default=None,
        help="enhancer folder or diffusers video model (default: the model folder's "
        "enhancer/, if it has one)",
    )
    gen.add_argument(
        "--enhance-size",
        default=None,
        help="HEIGHTxWIDTH of the enhanced video, for an enhancer trained at a fixed size "
        "(e.g. 576x1024; default: the enhancer folder's own factor)",
    )
    gen.add_argument(
        "--method",
        default="streamingt2v",
        choices=list(METHODS),
        help="the method, or a baseline/ablation for comparisons: "
        + "; ".join(f"{k}: {v}" for k, v in METHODS.items()),
    )
    gen.add_argument(
        "--plan",
        action="store_true",
        help="print the predicted time, peak GPU memory and RAM for these settings "
        "(one measured evaluation of each kind) and exit without generating",
    )
    gen.add_argument(
        "--no-enhance",
        action="store_true",
        help="skip the enhancer (default: enhance when the model folder has enhancer/)",
    )
    _add_run_options(gen)

    enh = sub.add_parser(
        "enhance",
        help="enhance a video: 2x resolution, chunk by chunk, without seams",
        description=(
            "Refine a low-resolution video with the enhancer (SDEdit in overlapping chunks: "
            "the video is upsampled, noised to --strength and denoised). Modes: randomized "
            "(shared noise + randomized blending, no seams), shared-noise, independent. "
            "Memory does not grow with the video's length. Writes OUT and OUT.json."
        ),
    )
    enh.add_argument("video", type=Path, help="input video (.mp4, .gif or a PNG folder)")
    enh.add_argument("--prompt", required=True, help="text prompt of the video")
    enh.add_argument(
        "--out", type=Path, required=True, help="output: .mp4, .gif or a folder for PNG frames"
    )
    enh.add_argument(
        "--mode",
        default=None,
        choices=MODES,
        help="chunk blending (default: the enhancer's, randomized)",
    )
    enh.add_argument(
        "--chunk",
        type=_int,
        default=None,
        help="frames per chunk (default: the enhancer's, 24 officially)",
    )
    enh.add_argument(
        "--overlap",
        type=_int,
        default=None,
        help="frames shared by neighbours (default: the enhancer's, 8 officially)",
    )
    enh.add_argument(
        "--strength",
        type=_float,
        default=None,
        help="SDEdit noise level in (0, 1] (default: the enhancer's, 0.6 officially, i.e. "
        "t=600 of 1000)",
    )
    enh.add_argument(
        "--steps",
        type=_int,
        default=None,
        help="sampler steps, at most the schedule's timesteps (default: the enhancer's, 30 "
        "officially)",
    )
    enh.add_argument(
        "--guidance",
        type=_float,
        default=None,
        help="guidance, finite and >= 0 (default: the enhancer's, 7.5 officially)",
    )
    enh.add_argument("--negative-prompt", default="", help="negative prompt (default: empty)")
    enh.add_argument("--seed", type=_int, default=0, help="seed (default: 0)")
    enh.add_argument(
        "--size",
        default=None,
        help="HEIGHTxWIDTH of the output, for an enhancer trained at a fixed size "
        "(default: the enhancer folder's own factor)",
    )
    enh.add_argument(
        "--model",
        type=Path,
        default=None,
        help="pipeline folder with enhancer/, an enhancer folder, or a diffusers video "
        "model ("
        + (
            "default: the embedded default's enhancer"
            if (DEFAULT_MODEL_DIR / "enhancer").is_dir()
            else "required: the embedded default has no enhancer"
        )
        + ")",
    )
    enh.add_argument("--fps", type=_int, default=8, help="output frame rate (default: 8)")
    _add_run_options(enh)

    ev = sub.add_parser(
        "eval",
        help="measure a video: MAWE, SCuts, CLIP score, world checks, curves over time",
        description=(
            "Evaluate one video with the paper's metrics (MAWE with a classical optical flow, "
            "SCuts with PySceneDetect's AdaptiveDetector, CLIP score) and, for shapes-world "
            "prompts, the world checks; per-window curves show late failures."
        ),
    )
    ev.add_argument("video", type=Path, help="video (.mp4, .gif or a PNG folder)")
    ev.add_argument("--prompt", default=None, help="its prompt (CLIP score, world checks)")
    ev.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="pipeline folder whose text and image encoders score CLIP (default: embedded)",
    )
    ev.add_argument("--flow", default="dis", help="optical flow for MAWE: dis or farneback")
    ev.add_argument(
        "--mawe-size", type=_int, default=720, help="frame size for MAWE (official: 720)"
    )
    ev.add_argument("--fps", type=_int, default=8, help="frame rate for SCuts (default: 8)")
    ev.add_argument("--json", action="store_true", help="print the full report as JSON")

    train = sub.add_parser(
        "train",
        help="train one stage of a model (vae, image-encoder, base, stream, enhancer)",
        description=(
            "Train one stage from a JSON config (see configs/default/). Checkpoints go to "
            "OUT_DIR/checkpoint every checkpoint_every steps; --resume continues one exactly. "
            "At the end the EMA weights are exported to OUT_DIR/final with samples. Runs "
            "unchanged under `accelerate launch -m streamingt2v.cli train ...`."
        ),
    )
    train.add_argument("stage", help="vae, image-encoder, base, stream or enhancer")
    train.add_argument("--config", type=Path, required=True, help="training config (JSON)")
    train.add_argument("--resume", action="store_true", help="continue OUT_DIR/checkpoint")
    train.add_argument("--steps", type=_int, default=None, help="override the config's steps")
    train.add_argument("--out-dir", default=None, help="override the config's out_dir")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    conv = sub.add_parser(
        "convert-official",
        help="convert the authors' StreamingT2V checkpoint into a pipeline folder",
        description=(
            "Turn the official ModelScope-variant checkpoint (streaming_t2v.ckpt, a Lightning "
            "file) plus the public models it was trained on into a safetensors pipeline "
            "folder. The checkpoint is read with weights_only=True and memory-mapped; every "
            "key is mapped, skipped for a stated reason or reported (conversion_report.json)."
        ),
    )
    conv.add_argument("checkpoint", type=Path, help="streaming_t2v.ckpt")
    conv.add_argument("out", type=Path, help="new pipeline folder (must not exist)")
    conv.add_argument(
        "--base", type=Path, required=True, help="ModelScope T2V folder (diffusers layout)"
    )
    conv.add_argument(
        "--image-encoder",
        type=Path,
        required=True,
        help="OpenCLIP ViT-H-14, transformers format (CLIPVisionModelWithProjection or CLIPModel)",
    )
    conv.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="precision of the converted weights (default: float16, 12.8 instead of 25.6 GB)",
    )
    conv.add_argument(
        "--allow-unknown", action="store_true", help="convert even if some keys are unknown"
    )
    return parser


def _convert_official(args: argparse.Namespace) -> int:
    import torch

    from .convert import convert_official

    report = convert_official(
        args.checkpoint,
        args.out,
        args.base,
        args.image_encoder,
        dtype=getattr(torch, args.dtype),
        allow_unknown=args.allow_unknown,
    )
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v} tensors" for k, v in report.mapped.items()))
    for reason, count in report.skipped.items():
        print(f"skipped {count} tensors: {reason}")
    if report.unknown:
        print(f"left out {len(report.unknown)} unknown tensors (listed in conversion_report.json)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training.trainer import TrainConfig, train

    config = TrainConfig.load(args.config, steps=args.steps, out_dir=args.out_dir)
    if config.stage != args.stage:
        raise UsageError(
            f"{args.config} is a config for stage {config.stage!r}, not {args.stage!r}"
        )
    summary = train(config, resume=args.resume, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .generate import GenerateConfig, generate

    config = GenerateConfig(
        prompt=args.prompt,
        num_frames=args.frames,
        out=args.out,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        stream_guidance=args.stream_guidance,
        replace_overlap=args.replace_overlap,
        scheduler=args.scheduler,
        negative_prompt=args.negative_prompt,
        model=args.model,
        fps=args.fps,
        overwrite=args.overwrite,
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        progress=not args.quiet,
        enhance=not args.no_enhance,
        height=args.height,
        width=args.width,
        enhancer=args.enhancer,
        enhance_size=args.enhance_size,
        method=args.method,
    )
    if args.plan:
        from .generate import plan_run
        from .plan import format_plan

        print(format_plan(plan_run(config)))
        return 0
    return _report(generate(config))


def _enhance(args: argparse.Namespace) -> int:
    from .generate import EnhanceFileConfig, enhance_file

    config = EnhanceFileConfig(
        video=args.video,
        prompt=args.prompt,
        out=args.out,
        mode=args.mode,
        chunk=args.chunk,
        overlap=args.overlap,
        strength=args.strength,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        model=args.model,
        size=args.size,
        fps=args.fps,
        overwrite=args.overwrite,
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        progress=not args.quiet,
    )
    return _report(enhance_file(config))


EVAL_PACKAGES = {"cv2": "opencv-python-headless", "scenedetect": "scenedetect-headless"}


def _check_eval_packages() -> None:
    """MAWE needs OpenCV and SCuts PySceneDetect: both come with the package; say what to
    install, in one line, where one was removed."""
    import importlib.util

    missing = [pip for module, pip in EVAL_PACKAGES.items() if not importlib.util.find_spec(module)]
    if missing:
        raise UsageError(f"eval needs {' and '.join(missing)}: pip install {' '.join(missing)}")


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import ClipPair, evaluate_video
    from .generate import DEFAULT_MODEL_DIR
    from .video_io import read_video

    _check_eval_packages()
    video = read_video(args.video)
    if len(video) < 2:
        raise UsageError(f"{args.video} has {len(video)} frame; evaluation needs at least 2")
    clip = None
    if args.clip is not None:
        clip = ClipPair.from_pipeline(args.clip)
    elif (DEFAULT_MODEL_DIR / "image_encoder").is_dir():
        clip = ClipPair.from_pipeline(DEFAULT_MODEL_DIR)
    report = evaluate_video(
        video, args.prompt, clip, flow=args.flow, mawe_size=args.mawe_size, fps=args.fps
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["mawe"]
    print(f"frames      {report['frames']}")
    print(f"MAWE        {m['mawe']:.2f}  (flow {m['flow']} at {m['size']}px; lower is better)")
    print(f"SCuts       {report['scuts']}")
    if "clip_score" in report:
        print(f"CLIP score  {report['clip_score']:.2f}")
    world = report["world"]
    if world:
        for key in ("colour_right", "background_right", "shape_right", "direction_right"):
            if world[key] is not None:
                print(f"{key:<18}{world[key]:.1%}")
    return 0


def _report(result) -> int:
    state = "stopped early; kept" if result.interrupted else "wrote"
    print(
        f"{state} {result.frames} frames to {result.video} ({result.seconds:.1f} s); "
        f"manifest {result.manifest}"
    )
    if not result.interrupted:
        return 0
    return EXIT_TERMINATED if result.stopped_by == "SIGTERM" else EXIT_INTERRUPTED


def _stop_on_sigterm():
    """SIGTERM (``timeout``, ``docker stop``, a service manager) stops a run like Ctrl-C: the
    chunks made so far are kept as a playable video. Returns the handler it replaced."""
    from .generate import Stopped

    def stop(signum, frame):
        raise Stopped("SIGTERM")

    return signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    previous_sigterm = None
    try:
        args = build_parser().parse_args(argv)
        commands = {
            "generate": _generate,
            "enhance": _enhance,
            "eval": _eval,
            "train": _train,
            "convert-official": _convert_official,
        }
        if args.command in ("generate", "enhance"):
            previous_sigterm = _stop_on_sigterm()
        return commands[args.command](args)
    except UsageError as err:
        print(f"streamingt2v: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as err:
        print(f"streamingt2v: error: {err}", file=sys.stderr)
        return EXIT_OUTPUT
    except KeyboardInterrupt as stop:
        print("streamingt2v: stopped before any frame was made", file=sys.stderr)
        return EXIT_TERMINATED if str(stop) == "SIGTERM" else EXIT_INTERRUPTED
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
