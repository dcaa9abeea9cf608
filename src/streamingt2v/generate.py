"""``generate``: prompt -> video file + JSON manifest; the function behind the CLI.

All input is checked before any model is loaded (``run_config.GenerateConfig``); the
output is written as ``outputs`` describes: nothing existing is replaced until the video is
complete, and a stopped run keeps a playable video of the chunks made so far.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import __version__
from .config import UsageError, config_to_dict
from .outputs import (
    GenerateResult,
    Stopped,
    check_output,
    claimed_output,
    file_hashes,
    manifest_path,
    remove_partials,
    resumable_runs,
    state_path,
    write_video,
    writing,
)
from .pipeline import StreamingT2VPipeline, read_pipeline_config
from .plan import Plan, make_plan
from .run_config import GenerateConfig
from .runtime import (
    DEFAULT_MODEL_DIR,
    DTYPES,
    check_enhance_steps,
    load_enhancer,
    resolve_device,
    resolve_model_dir,
)
from .streaming import Request, StreamState, VideoChunk, state_at, stream, stream_timeline
from .video_io import iter_video, partial_path, remove_path, run_token

__all__ = [
    "DEFAULT_MODEL_DIR",
    "GenerateConfig",
    "GenerateResult",
    "Stopped",
    "generate",
    "manifest_path",
    "plan_run",
]


class LoadedModels(NamedTuple):
    """A generate run's models (``load_models``)."""

    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    pipe: StreamingT2VPipeline
    enhancer: Any  # an Enhancer, or None


def generate(
    config: GenerateConfig,
    loaded: LoadedModels | None = None,
    on_chunk: Callable[[VideoChunk], None] | None = None,
) -> GenerateResult:
    """Generate ``config.num_frames`` frames into ``config.out`` chunk by chunk (from
    ``config.prompt``, or its prompt timeline). ``loaded``: the run's models, already loaded
    (``load_models(config)``), for several runs in one process. ``on_chunk``: called with
    each chunk once its frames are written (and its state saved); a ``Stopped`` it raises
    stops the run there, keeping the frames written, as Ctrl-C does.

    Memory does not grow with the video's length (mp4 and PNG outputs; a gif keeps its
    palette frames until the end), also for a run that starts from an existing video
    (``--resume``, ``--branch``, ``--extend``: its frames are read as they are written).
    Raises UsageError for bad input before any work is done, and OutputError when the output
    cannot be written.
    """
    if config.prompts is not None:
        raise UsageError("a prompts file makes several videos: use generate_batch")
    replacing = config.overwrite or config.resume  # a resumed run replaces its own video
    check_output(config.out, replacing)
    with claimed_output(config.out, replacing, keep_partials=config.resume):
        model_dir, device, dtype, pipe, enhancer = loaded or load_models(config)
        request = _request(config, pipe)
        timeline = config.read_timeline()
        fps = config.fps or pipe.config.fps
        manifest = _manifest_head(config, request, pipe, model_dir, fps, device, dtype)
        manifest["warnings"] = pipe.prompt_warnings(request.prompt)
        if config.progress:
            for warning in manifest["warnings"]:
                print(f"streamingt2v: warning: {warning}", file=sys.stderr)
        record = {"request": request_record(request, pipe), "model": manifest["model"]["files"]}
        if timeline is not None:
            manifest["timeline"] = record["request"]["timeline"] = timeline.to_dict()
        if config.guard() is not None:
            manifest["drift_guard"] = record["request"]["drift_guard"] = asdict(config.guard())
        resume, earlier = _start_point(config, pipe, enhancer, record, manifest)
        if config.resume and resume.made >= request.num_frames:
            raise UsageError(
                f"--resume: {config.out} already has {resume.made} frames; ask for more "
                "with --frames to extend it"
            )
        if resume is not None and resume.made > request.num_frames:
            raise UsageError(
                f"--frames {request.num_frames} ends before frame {resume.made}, where this "
                "run would start: ask for more frames"
            )
        # Without an enhancer, the state after every chunk goes to a temporary file that
        # replaces OUT.state.safetensors once the video is in place (the enhancer reads ahead
        # of what is written, so an enhanced run keeps no state).
        token = run_token()  # names this run's partial video and state alike
        state, state_tmp = state_path(config.out), partial_path(state_path(config.out), token)

        def frames() -> Iterator[np.ndarray]:
            yield from earlier
            models = pipe.chunk_models()
            guard = config.guard()
            if timeline is None:
                chunks = stream(models, request, config.progress, resume, guard)
            else:
                chunks = stream_timeline(models, request, timeline, config.progress, resume, guard)
            for chunk in chunks:
                manifest["chunks"].append(
                    dict(
                        index=chunk.index,
                        start=chunk.start,
                        frames=len(chunk.frames),
                        seed=chunk.seed,
                        seconds=round(chunk.seconds, 3),
                        **({"tries": chunk.tries} if chunk.tries else {}),
                    )
                )
                yield from chunk.frames
                if enhancer is None:  # its frames are written: the state matches the video
                    with writing(state):
                        chunk.state.save(state_tmp, record)
                if on_chunk is not None:
                    on_chunk(chunk)

        output = frames()
        if enhancer is not None:
            settings = replace(enhancer.config.defaults, seed=request.seed)
            size = enhancer.output_size(*request.size)
            manifest["enhance"] = {"size": list(size), **config_to_dict(settings)}
            output = enhancer.enhance(
                output,
                request.num_frames,
                request.prompt,
                settings,
                request.sample.negative_prompt,
                progress=config.progress,
            )
        try:
            result = write_video(output, config.out, fps, manifest, replacing, token)
            with writing(state):
                if state_tmp.exists():
                    os.replace(state_tmp, state)
                elif state.exists():  # an enhanced video replaced one that had a state
                    state.unlink()
        finally:
            remove_path(state_tmp)
        remove_partials(config.out)  # a killed run's, once a resumed run has read them
        return result


def request_record(request: Request, pipe: StreamingT2VPipeline) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (all but the length)."""
    return {
        "prompt": request.prompt,
        "seed": request.seed,
        "size": list(request.size),
        "method": request.method,
        "sample": config_to_dict(request.sample),
        "stream": config_to_dict(pipe.config.stream),
    }


def _start_point(
    config: GenerateConfig, pipe, enhancer, record: dict, manifest: dict
) -> tuple[StreamState | None, Iterator[np.ndarray]]:
    """Where the run starts (``--resume``, ``--branch``, ``--extend``; None: chunk 0) and
    the frames before it (read as they are written), recorded in the manifest."""
    if config.resume:
        resume, source = _resume_point(config, enhancer, record)
        manifest["resumed_from_frame"] = resume.made
        manifest["resumed_from_killed_run"] = source != config.out
        return resume, iter_video(source, limit=resume.made)
    if config.branch is not None:
        resume = state_at(iter_video(config.branch), config.branch_chunk, pipe.config.stream)
        manifest["branched_from"] = {
            "video": str(config.branch),
            "chunk": config.branch_chunk,
            "frame": resume.made,
        }
        return resume, iter_video(config.branch, limit=resume.made)
    if config.extend is not None:
        resume, exact = _extend_point(config.extend, pipe.config.stream)
        manifest["extended_from"] = {
            "video": str(config.extend),
            "frames": resume.made,
            "from_saved_state": exact,
        }
        return resume, iter_video(config.extend)
    return None, iter(())


def _resume_point(config: GenerateConfig, enhancer, record: dict) -> tuple[StreamState, Path]:
    """The newest saved state of ``config.out`` (a stopped run's, or a killed run's beside
    its growing partial video) made with the run's settings, and the video it belongs to; a
    UsageError naming what differs when no state can be continued exactly."""
    if enhancer is not None:
        raise UsageError(
            "--resume continues runs without an enhancer; resume with --no-enhance, then "
            "enhance the finished video (streamingt2v enhance)"
        )
    found = []
    for video, path in resumable_runs(config.out):
        state, saved = StreamState.load(path)
        found.append((state.made, _state_differences(saved, record), state, video))
    if not found:
        raise UsageError(
            f"nothing to resume: no {config.out} with its state "
            f"{state_path(config.out).name}, and no run killed while writing it"
        )
    found.sort(key=lambda run: (not run[1], run[0]), reverse=True)  # same settings, newest
    made, differ, state, video = found[0]
    if differ:
        raise UsageError(f"--resume: {config.out} was made with other settings: {differ}")
    frames = sum(1 for _ in iter_video(video, limit=made))
    if frames < made:
        raise UsageError(f"--resume: {video} has {frames} frames, its state needs {made}")
    return state, video


def _state_differences(saved: dict, record: dict) -> list[str]:
    """What differs between a saved state's record and this run's: settings, then files."""
    differ = _differences(saved.get("request", {}), record["request"])
    model = saved.get("model", {})
    files = sorted(
        name
        for name in set(model) | set(record["model"])
        if model.get(name) != record["model"].get(name)
    )
    return differ + ([f"the model's files: {files}"] if files else [])


def _extend_point(video_path: Path, stream_cfg) -> tuple[StreamState, bool]:
    """Where ``--extend`` starts: the video's saved state when it has one that ends where
    the video does (exact), else its last frames and first frame."""
    resume = StreamState.from_video(iter_video(video_path), stream_cfg)
    saved = state_path(video_path)
    if saved.is_file():
        state, _ = StreamState.load(saved)
        if state.made == resume.made:
            return state, True
    return resume, False


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: saved -> now`` for every setting that differs (nested dicts by dotted key)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def plan_run(config: GenerateConfig) -> Plan:
    """What ``generate(config)`` would cost (time, memory), measured on one evaluation of
    each kind; generates and writes nothing."""
    _, _, _, pipe, enhancer = load_models(config)
    request = _request(config, pipe)
    settings = replace(enhancer.config.defaults, seed=request.seed) if enhancer else None
    return make_plan(pipe, request, enhancer, settings)


def load_models(config: GenerateConfig) -> LoadedModels:
    """The models of a generate run: its model folder, device, dtype, pipeline and
    enhancer (None without one)."""
    model_dir = resolve_model_dir(config.model)
    device, dtype = resolve_device(config.device, config.dtype)
    load_on = torch.device("cpu") if config.offload else device
    stream_dtype = None  # the folder's streaming precision applies unless --dtype is given
    wanted = read_pipeline_config(model_dir).stream_dtype
    if config.dtype == "auto" and wanted and DTYPES[wanted] != dtype:
        stream_dtype = DTYPES[wanted]
    pipe = StreamingT2VPipeline.from_pretrained(
        model_dir, device=load_on, dtype=dtype, stream_dtype=stream_dtype
    )
    if config.offload:
        pipe.enable_offload(device)
    enhancer = None
    if config.enhance and (config.enhancer or (model_dir / "enhancer").is_dir()):
        enhancer = load_enhancer(
            config.enhancer or model_dir, load_on, dtype, pipe, config.enhance_size
        )
        if config.offload:
            enhancer.enable_offload(pipe.offloader)
        check_enhance_steps(enhancer, enhancer.config.defaults.steps)
    return LoadedModels(model_dir, device, dtype, pipe, enhancer)


def _request(config: GenerateConfig, pipe: StreamingT2VPipeline) -> Request:
    """The run's validated request (a timeline's: its first prompt and its length)."""
    return pipe.request(config.first_prompt, config.num_frames, **config.request_settings())


def _manifest_head(config, request, pipe, model_dir, fps, device, dtype) -> dict[str, Any]:
    return {
        "streamingt2v_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompt": request.prompt,
        "negative_prompt": request.sample.negative_prompt,
        "requested_frames": request.num_frames,
        "seed": request.seed,
        "fps": fps,
        "size": list(request.size),
        "method": request.method,
        "sample": config_to_dict(request.sample),
        "stream": config_to_dict(pipe.config.stream),
        "model": {"path": str(model_dir), "files": file_hashes(model_dir)},
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "stream_dtype": str(pipe.stream_dtype).removeprefix("torch."),
        "extra": config.extra,
        "enhance": None,
        "chunks": [],
    }
