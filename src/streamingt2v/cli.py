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
from .config import OutputError, UsageError
from .options import add_options, from_args, parse_int
from .run_config import (
    DEFAULT_MODEL_DIR,
    RUN_FIELDS,
    SAMPLE_FIELDS,
    EnhanceFileConfig,
    GenerateConfig,
)

EXIT_USAGE = 2
EXIT_OUTPUT = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as shells report it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: same exit code, our format
        self.print_usage(sys.stderr)
        raise UsageError(message)


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


def _model_defaults() -> dict[str, str]:
    """The {steps}, {guidance}, {scheduler} of ``GenerateConfig``'s help texts."""
    sample, paper = _embedded_sample(), {"steps": 50, "guidance": 7.5, "scheduler": "ddim"}
    return {name: _model_default(sample.get(name), value) for name, value in paper.items()}


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="streamingt2v",
        description="Long text-to-video generation (StreamingT2V: CAM + APM, streaming).",
    )
    parser.add_argument("--version", action="version", version=f"streamingt2v {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for add in (
        _add_generate,
        _add_extend,
        _add_enhance,
        _add_eval,
        _add_train,
        _add_convert,
        _add_convert_msvid2vid,
        _add_ui,
    ):
        add(sub)
    return parser


def _add_generate(sub) -> None:
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
    add_options(gen, GenerateConfig, **_model_defaults())
    gen.add_argument(
        "--plan",
        action="store_true",
        help="print the predicted time, peak GPU memory and RAM for these settings "
        "(one measured evaluation of each kind) and exit without generating",
    )


def _add_enhance(sub) -> None:
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
    enhancer_default = (
        "default: the embedded default's enhancer"
        if (DEFAULT_MODEL_DIR / "enhancer").is_dir()
        else "required: the embedded default has no enhancer"
    )
    add_options(enh, EnhanceFileConfig, enhancer_default=enhancer_default)


def _add_ui(sub) -> None:
    ui = sub.add_parser(
        "ui",
        help="a local web app: prompt, live preview, stop, runs",
        description=(
            "Start the web app (Gradio) on one loaded model: type a prompt or a prompt "
            "timeline, see the plan, watch each chunk as it is made, stop and download; "
            "resume, extend or branch the runs in --out-dir. One generation at a time, the "
            "others queued. Binds to 127.0.0.1 unless --host says otherwise; on a remote GPU "
            "machine, reach it through an SSH tunnel (ssh -L 7860:127.0.0.1:7860 HOST)."
        ),
    )
    ui.add_argument("--model", type=Path, default=None, help="default: the embedded default")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ui.add_argument("--port", type=parse_int, default=7860, help="default: 7860")
    ui.add_argument(
        "--out-dir", type=Path, default=Path("streamingt2v-runs"),
        help="folder of the videos (default: ./streamingt2v-runs)",
    )  # fmt: skip
    ui.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")


def _ui(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise UsageError("the web app needs Gradio: pip install 'streamingt2v[ui]'")
    from .ui import serve

    print(f"streamingt2v: serving on http://{args.host}:{args.port} (Ctrl-C to stop)")
    serve(args.model, args.out_dir, args.host, args.port, args.device)
    return 0


def _add_extend(sub) -> None:
    ext = sub.add_parser(
        "extend",
        help="continue a video: exactly, for one this model made",
        description=(
            "Continue VIDEO to --frames in all, into --out (VIDEO is not changed). A video "
            "this model made continues exactly as one longer run would (from its saved state, "
            "with the settings of its manifest, VIDEO.json, unless given here); any other "
            "video continues from its last 8 frames and its first frame (--prompt needed). "
            "A new --prompt steers the new chunks while the CAM carries the motion on."
        ),
    )
    ext.add_argument("video", type=Path, help="the video to continue (.mp4, .gif, PNG folder)")
    ext.add_argument(
        "--frames", type=parse_int, required=True, help="frames in all, VIDEO's included"
    )
    ext.add_argument("--out", type=Path, required=True, help="the longer video (a new path)")
    ext.add_argument("--prompt", default=None, help="the new chunks' prompt (default: VIDEO's)")
    ext.add_argument("--seed", type=parse_int, default=None, help="default: VIDEO's")
    ext.add_argument("--model", type=Path, default=None, help="default: VIDEO's model")
    add_options(ext, GenerateConfig, only=(*SAMPLE_FIELDS, *RUN_FIELDS), **_model_defaults())


def _extend(args: argparse.Namespace) -> int:
    from .generate import generate

    given = {name: getattr(args, name) for name in (*SAMPLE_FIELDS, *RUN_FIELDS)}
    config = GenerateConfig.extending(
        args.video, args.frames, args.out, prompt=args.prompt, seed=args.seed, model=args.model,
        enhance=False, **given,
    )  # fmt: skip
    return _report(generate(config))


def _add_eval(sub) -> None:
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
        "--mawe-size", type=parse_int, default=720, help="frame size for MAWE (official: 720)"
    )
    ev.add_argument("--fps", type=parse_int, default=8, help="frame rate for SCuts (default: 8)")
    ev.add_argument("--json", action="store_true", help="print the full report as JSON")


def _add_train(sub) -> None:
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
    train.add_argument("--steps", type=parse_int, default=None, help="override the config's steps")
    train.add_argument("--out-dir", default=None, help="override the config's out_dir")
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_weights_dtype(parser, why: str) -> None:
    """A converter's ``--dtype``: the precision it writes (float16 unless told)."""
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help=f"precision of the converted weights (default: float16, {why})",
    )


def _add_convert(sub) -> None:
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
    _add_weights_dtype(conv, "12.8 instead of 25.6 GB")
    conv.add_argument(
        "--allow-unknown", action="store_true", help="convert even if some keys are unknown"
    )


def _add_convert_msvid2vid(sub) -> None:
    conv = sub.add_parser(
        "convert-msvid2vid",
        help="convert the paper's enhancer (MS-Vid2Vid-XL) into an enhancer folder",
        description=(
            "Turn MS-Vid2Vid-XL's released files (its UNet, Stable Diffusion 2.1's checkpoint "
            "for the VAE, OpenCLIP ViT-H-14 for the text tower) into a safetensors enhancer "
            "folder with the authors' inference settings as its defaults (frames fit into "
            "720x1280 and padded, SDEdit from t=599, DPM-Solver++ 2M SDE 30 steps, guidance "
            "7.5 with rescale 0.2, chunks of 24 overlapping by 8). Every file is read with "
            "weights_only=True. Use it with `streamingt2v enhance --model OUT` or place it as "
            "enhancer/ in a pipeline folder."
        ),
    )
    conv.add_argument("unet", type=Path, help="non_ema_0035000.pth")
    conv.add_argument("out", type=Path, help="new enhancer folder (must not exist)")
    conv.add_argument(
        "--vae", type=Path, required=True, help="v2-1_512-ema-pruned.ckpt (Stable Diffusion 2.1)"
    )
    conv.add_argument(
        "--text-encoder", type=Path, required=True, help="open_clip_pytorch_model.bin"
    )
    conv.add_argument(
        "--tokenizer",
        type=Path,
        required=True,
        help="a CLIP tokenizer folder with OpenCLIP's vocabulary, e.g. a ModelScope T2V "
        "folder's tokenizer/",
    )
    _add_weights_dtype(conv, "as the authors run it")


def _convert_msvid2vid(args: argparse.Namespace) -> int:
    import torch

    from .convert_enhancer import convert_msvid2vid

    counts = convert_msvid2vid(
        args.unet,
        args.vae,
        args.text_encoder,
        args.tokenizer,
        args.out,
        dtype=getattr(torch, args.dtype),
    )
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v} tensors" for k, v in counts.items()))
    return 0


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
    config = from_args(GenerateConfig, args)
    if config.prompts is not None:
        if args.plan:
            raise UsageError("--plan measures one video: give a prompt instead of --prompts")
        from .batch import generate_batch

        codes = [_report(result) for result in generate_batch(config)]
        return max(codes, default=0)
    if args.plan:
        from .generate import plan_run
        from .plan import format_plan

        print(format_plan(plan_run(config)))
        return 0
    from .generate import generate

    return _report(generate(config))


def _enhance(args: argparse.Namespace) -> int:
    from .enhance_file import enhance_file

    return _report(enhance_file(from_args(EnhanceFileConfig, args)))


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
            "convert-msvid2vid": _convert_msvid2vid,
            "extend": _extend,
            "ui": _ui,
        }
        if args.command in ("generate", "extend", "enhance"):
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
