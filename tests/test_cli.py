"""The CLI end to end on a tiny random model, and every bad input it must refuse."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import streamingt2v.generate
from streamingt2v import StreamingT2VPipeline
from streamingt2v.cli import main
from streamingt2v.video_io import read_video

FAST = ["--steps", "2", "--quiet"]


def run(*args):
    return main([str(a) for a in args])


def test_generate_mp4_with_manifest(tiny_model_dir, tmp_path):
    out = tmp_path / "video.mp4"
    code = run(
        "generate",
        "a red circle moving right",
        "--frames",
        27,
        "--out",
        out,
        "--model",
        tiny_model_dir,
        "--seed",
        4,
        "--fps",
        12,
        *FAST,
    )
    assert code == 0
    frames = read_video(out)
    assert frames.shape == (27, 32, 32, 3)
    manifest = json.loads((tmp_path / "video.mp4.json").read_text())
    assert manifest["frames"] == 27 and manifest["interrupted"] is False
    assert manifest["seed"] == 4 and manifest["fps"] == 12
    assert manifest["sample"]["steps"] == 2 and manifest["sample"]["scheduler"] == "ddim"
    assert [c["frames"] for c in manifest["chunks"]] == [16, 8, 3]
    assert len({c["seed"] for c in manifest["chunks"]}) == 3
    assert all(len(h) == 64 for h in manifest["model"]["files"].values())
    assert "cam/model.safetensors" in manifest["model"]["files"]
    assert not list(tmp_path.glob("*.partial"))


def test_png_frames_are_the_pipeline_output_exactly(tiny_model_dir, tmp_path):
    out = tmp_path / "frames"
    assert (
        run(
            "generate",
            "a blue square",
            "--frames",
            20,
            "--out",
            out,
            "--model",
            tiny_model_dir,
            "--seed",
            2,
            "--scheduler",
            "dpm",
            *FAST,
        )
        == 0
    )
    pipe = StreamingT2VPipeline.from_pretrained(tiny_model_dir)
    expected = pipe("a blue square", 20, seed=2, steps=2, scheduler="dpm").frames
    assert np.array_equal(read_video(out), expected)


def test_gif_output(tiny_model_dir, tmp_path):
    out = tmp_path / "v.gif"
    assert (
        run(
            "generate",
            "a blue square",
            "--frames",
            5,
            "--out",
            out,
            "--model",
            tiny_model_dir,
            *FAST,
        )
        == 0
    )
    assert read_video(out).shape[0] == 5


def test_overwrite_replaces_and_refusal_keeps(tiny_model_dir, tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"precious")
    args = ["generate", "a red circle", "--frames", 3, "--out", out, "--model", tiny_model_dir]
    assert run(*args, *FAST) == 2
    assert out.read_bytes() == b"precious"
    assert run(*args, "--overwrite", *FAST) == 0
    assert read_video(out).shape[0] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["", "--frames", "3"], "prompt"),
        (["p", "--frames", "0"], "frames"),
        (["p", "--frames", "2.5"], "--frames"),
        (["p", "--frames", "ten"], "--frames"),
        (["p", "--steps", "0"], "steps"),
        (["p", "--guidance", "-1"], "guidance"),
        (["p", "--stream-guidance", "-1"], "stream guidance"),
        (["p", "--scheduler", "euler"], "scheduler"),
        (["p", "--model", "/nonexistent/model"], "model folder not found"),
        (["p", "--out", "/nonexistent/dir/v.mp4"], "output folder does not exist"),
        (["p", "--out", "v.avi"], "unsupported output"),
        (["p", "--fps", "0"], "fps"),
        (["p", "--guidance", "inf"], "guidance must be a finite number"),
        (["p", "--guidance", "nan"], "guidance must be a finite number"),
        (["p", "--stream-guidance", "inf"], "stream guidance must be a finite number"),
        (["p", "--steps", "1001"], "steps must be at most 1000"),
        (["p", "--steps", "1001", "--scheduler", "dpm"], "steps must be at most 1000"),
        (["p", "--seed", str(2**70)], "seed must be an integer in [0, 2**63 - 1]"),
        (["p", "--seed", "-1"], "seed must be an integer in [0, 2**63 - 1]"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(tiny_model_dir, tmp_path, capsys, args, message):
    args = list(args)
    if "--model" not in args:
        args += ["--model", str(tiny_model_dir)]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "v.mp4")]
    elif not args[args.index("--out") + 1].startswith("/"):
        args[args.index("--out") + 1] = str(tmp_path / args[args.index("--out") + 1])
    assert run("generate", *FAST, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_corrupt_model_folder_exits_2(tiny_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    assert run("generate", "p", "--model", model, "--out", tmp_path / "v.mp4", *FAST) == 2
    err = capsys.readouterr().err
    assert "unet" in err and "Traceback" not in err


def test_unwritable_output_folder_exits_2(tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run("generate", "p", "--model", tiny_model_dir, "--out", blocker / "v.mp4", *FAST) == 2
    assert "output folder" in capsys.readouterr().err


def test_ctrl_c_keeps_a_playable_video_of_finished_chunks(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    real_stream = streamingt2v.generate.stream  # the chunk loop generate runs

    def stopped_after_two_chunks(*args, **kwargs):
        for i, chunk in enumerate(real_stream(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(streamingt2v.generate, "stream", stopped_after_two_chunks)
    out = tmp_path / "v.mp4"
    assert (
        run(
            "generate",
            "a red circle",
            "--frames",
            80,
            "--out",
            out,
            "--model",
            tiny_model_dir,
            *FAST,
        )
        == 130
    )
    assert read_video(out).shape[0] == 24  # 16 + 8 frames of the two finished chunks
    manifest = json.loads((tmp_path / "v.mp4.json").read_text())
    assert manifest["interrupted"] is True and manifest["frames"] == 24
    assert "stopped early" in capsys.readouterr().out


def test_help_is_accurate():
    out = subprocess.run(
        [sys.executable, "-m", "streamingt2v.cli", "generate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--frames",
        "--out",
        "--seed",
        "--steps",
        "--guidance",
        "--stream-guidance",
        "--negative-prompt",
        "--scheduler",
        "--model",
        "--fps",
        "--overwrite",
    ):
        assert flag in out
    top = subprocess.run(
        [sys.executable, "-m", "streamingt2v.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "generate" in top
    # --help answers at once: the command line loads torch and diffusers only to run a model
    code = "import sys, streamingt2v.cli; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded


def test_missing_embedded_default_is_explained(tmp_path, capsys, monkeypatch):
    import streamingt2v.runtime as runtime

    monkeypatch.setattr(runtime, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    assert run("generate", "p", "--out", tmp_path / "v.mp4", *FAST) == 2
    assert "--model" in capsys.readouterr().err


def test_real_sigint_keeps_a_playable_video(tiny_model_dir, tmp_path):
    """A real Ctrl-C (SIGINT) to the installed command, once the first chunks are written."""
    import os
    import signal
    import time

    out = tmp_path / "v.mp4"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamingt2v.cli",
            "generate",
            "a red circle",
            "--frames",
            "2000",
            "--out",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--steps",
            "2",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a job started in the background inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def partial_written():  # the run's own partial file (v.mp4.PID-TOKEN.partial)
        return any(p.stat().st_size > 0 for p in tmp_path.glob("v.mp4.*.partial"))

    deadline = time.time() + 120
    while time.time() < deadline and not partial_written():
        time.sleep(0.2)
    time.sleep(1.0)  # let a few more chunks land
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    frames = read_video(out)
    manifest = json.loads((tmp_path / "v.mp4.json").read_text())
    assert 0 < len(frames) == manifest["frames"] < 2000
    assert manifest["interrupted"] is True
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.lock"))


def test_unreachable_hub_id_is_a_clear_error(tmp_path, capsys):
    """A hub id is fetched into the cache when there is internet; here there is none."""
    argv = ["generate", "a red circle", "--out", str(tmp_path / "v.mp4")]
    assert main([*argv, "--model", "no-such-org/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no-such-org/no-such-model" in err and "pass a local folder" in err
    assert not (tmp_path / "v.mp4").exists()


def test_readme_lists_every_option_of_every_command():
    """The README's command-line summary matches the parser (documentation = code)."""
    import argparse
    from pathlib import Path

    from streamingt2v.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {option}"
        for name, parser in sub.choices.items()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help",) and option not in readme
    ]
    assert not missing, missing
    assert all(f"streamingt2v {name}" in readme for name in sub.choices)


# Every command's flags and positional arguments as of the structure redesign: the CLI
# keeps them (it may gain new ones).
CLI_FLAGS = {
    "generate": [
        "--device",
        "--dtype",
        "--enhance-size",
        "--enhancer",
        "--fps",
        "--frames",
        "--guidance",
        "--height",
        "--help",
        "--method",
        "--model",
        "--negative-prompt",
        "--no-enhance",
        "--no-replace-overlap",
        "--offload",
        "--out",
        "--overwrite",
        "--plan",
        "--quiet",
        "--replace-overlap",
        "--scheduler",
        "--seed",
        "--steps",
        "--stream-guidance",
        "--width",
        "-h",
    ],
    "enhance": [
        "--chunk",
        "--device",
        "--dtype",
        "--fps",
        "--guidance",
        "--help",
        "--mode",
        "--model",
        "--negative-prompt",
        "--offload",
        "--out",
        "--overlap",
        "--overwrite",
        "--prompt",
        "--quiet",
        "--seed",
        "--size",
        "--steps",
        "--strength",
        "-h",
    ],
    "eval": ["--clip", "--flow", "--fps", "--help", "--json", "--mawe-size", "--prompt", "-h"],
    "train": ["--config", "--help", "--out-dir", "--quiet", "--resume", "--steps", "-h"],
    "convert-official": ["--allow-unknown", "--base", "--dtype", "--help", "--image-encoder", "-h"],
}
CLI_POSITIONALS = {
    "generate": ["prompt"],
    "enhance": ["video"],
    "eval": ["video"],
    "train": ["stage"],
    "convert-official": ["checkpoint", "out"],
}


def test_every_command_keeps_its_flags():
    import argparse

    from streamingt2v.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(CLI_FLAGS) <= set(sub.choices)  # every command stays (new ones may come)
    for name in CLI_FLAGS:
        parser = sub.choices[name]
        flags = sorted(f for action in parser._actions for f in action.option_strings)
        positionals = sorted(a.dest for a in parser._actions if not a.option_strings)
        missing = sorted(set(CLI_FLAGS[name]) - set(flags))  # new flags may come, none go
        assert not missing and positionals == CLI_POSITIONALS[name], (name, missing)
