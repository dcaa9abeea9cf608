"""What a new user hits in the first hour: concurrent runs on one output, SIGTERM, write
failures, pickled weights, prompts outside the model's world, missing metric packages, the
install's pins and third-party noise. Each checks the message, the exit code, and that
nothing existing changed."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import streamingt2v.generate
from streamingt2v.cli import main
from streamingt2v.video_io import OutputLock, read_video

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--quiet"]


def run(*args):
    return main([str(a) for a in args])


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "streamingt2v.cli", *map(str, args)]


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.1)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".lock")))


# ---------------------------------------------------------------- two runs, one output
def test_second_run_on_a_busy_output_is_refused_naming_the_first(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"precious")
    with OutputLock(out):
        code = run("generate", "a red circle", "--out", out, "--model", tiny_model_dir,
                   "--overwrite", *FAST)  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "another run is writing" in err and f"process {os.getpid()}" in err
    assert "Traceback" not in err
    assert out.read_bytes() == b"precious" and leftovers(tmp_path) == []


def test_two_concurrent_runs_end_with_one_complete_video_and_its_manifest(tiny_model_dir, tmp_path):
    """Real processes on an existing video: the first run writes, the second (started while
    the first holds the output) is refused up front; the old video is only replaced by a
    complete one. (Without an existing video: the in-process test above.)"""
    out = tmp_path / "same.mp4"
    out.write_bytes(b"old video")
    args = ["generate", "a red circle", "--frames", 200, "--out", out,
            "--model", tiny_model_dir, "--overwrite", *FAST]  # fmt: skip
    first = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(tmp_path.glob("same.mp4.*.partial")))
    second = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr
    assert "another run is writing" in second.stderr and f"process {first.pid}" in second.stderr
    assert out.read_bytes() == b"old video"  # untouched while the first run works
    assert first.wait(timeout=300) == 0, first.stderr.read()
    manifest = json.loads((tmp_path / "same.mp4.json").read_text())
    assert len(read_video(out)) == manifest["frames"] == 200
    assert leftovers(tmp_path) == []


def test_sigkill_keeps_the_old_video_and_the_next_run_cleans_up(tiny_model_dir, tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")
    args = ["generate", "a red circle", "--frames", 2000, "--out", out,
            "--model", tiny_model_dir, "--overwrite", *FAST]  # fmt: skip
    proc = subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(p.stat().st_size for p in tmp_path.glob("v.mp4.*.partial")))
    proc.kill()
    proc.wait(timeout=60)
    assert out.read_bytes() == b"old video"
    assert any(tmp_path.glob("v.mp4.*.partial"))  # what a killed run leaves
    assert run("generate", "a red circle", "--frames", 3, "--out", out,
               "--model", tiny_model_dir, "--overwrite", *FAST) == 0  # fmt: skip
    assert len(read_video(out)) == 3
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- SIGTERM
def test_sigterm_keeps_a_playable_video_like_ctrl_c(tiny_model_dir, tmp_path):
    out = tmp_path / "v.mp4"
    proc = subprocess.Popen(
        cli(
            "generate",
            "a red circle",
            "--frames",
            2000,
            "--out",
            out,
            "--model",
            tiny_model_dir,
            *FAST,
        ),  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: any(p.stat().st_size for p in tmp_path.glob("v.mp4.*.partial")))
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "stopped early" in stdout
    manifest = json.loads((tmp_path / "v.mp4.json").read_text())
    assert 0 < len(read_video(out)) == manifest["frames"] < 2000
    assert manifest["interrupted"] is True and manifest["stopped_by"] == "SIGTERM"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- write failures
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("output, method", [("v.mp4", "_write_mp4"), ("frames", "_write_frames"),
                                            ("v.gif", "_close")])  # fmt: skip
def test_full_disk_while_writing_frames_exits_3_and_changes_nothing(
    tiny_model_dir, tmp_path, monkeypatch, capsys, output, method
):
    from streamingt2v.video_io import VideoWriter

    out = tmp_path / output
    if out.suffix:
        out.write_bytes(b"old video")
    else:
        out.mkdir()
        (out / "frame_000000.png").write_bytes(b"old frame")
    (tmp_path / f"{output}.json").write_text('{"old": true}')
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(VideoWriter, method, no_space)
    code = run("generate", "a red circle", "--frames", 20, "--out", out,
               "--model", tiny_model_dir, "--overwrite", *FAST)  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err
    assert f"cannot write {out}: No space left on device" in err and "Traceback" not in err
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_full_disk_at_the_manifest_keeps_the_old_video_and_manifest(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")
    (tmp_path / "v.mp4.json").write_text('{"old": true}')
    write_text = Path.write_text

    def manifest_no_space(self, *args, **kwargs):
        if self.name.startswith("v.mp4.json."):
            no_space()
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", manifest_no_space)
    code = run("generate", "a red circle", "--frames", 3, "--out", out,
               "--model", tiny_model_dir, "--overwrite", *FAST)  # fmt: skip
    assert code == 3
    assert "cannot write" in capsys.readouterr().err
    assert out.read_bytes() == b"old video"
    assert (tmp_path / "v.mp4.json").read_text() == '{"old": true}'
    assert leftovers(tmp_path) == []


def test_a_real_full_disk_exits_3(tiny_model_dir, tmp_path, capsys):
    """A 200 KB tmpfs, where this machine lets the test mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "v.mp4"
        # About 50 KB left: the video fills it after its first frames. (With a single block
        # left, FFmpeg fails hard while writing the container's header.)
        (disk / "filler").write_bytes(b"\0" * 150_000)
        code = run("generate", "a red circle", "--frames", 100, "--out", out,
                   "--model", tiny_model_dir, *FAST)  # fmt: skip
        err = capsys.readouterr().err
        assert code == 3, err
        assert f"cannot write {out}" in err and "No space left on device" in err
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
        with (disk / "filler").open("ab", buffering=0) as filler, contextlib.suppress(OSError):
            filler.write(b"\0" * 100_000)  # now fill it to the last byte
        code = run("generate", "a red circle", "--frames", 20, "--out", out,
                   "--model", tiny_model_dir, *FAST)  # fmt: skip
        err = capsys.readouterr().err
        assert code == 3 and "No space left on device" in err and "Traceback" not in err
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no lock file left
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


# ---------------------------------------------------------------- weights
def test_a_folder_with_only_pickled_weights_is_refused_with_how_to_convert(
    tiny_model_dir, tmp_path, capsys
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(unet), unet.with_suffix(".bin"))
    unet.unlink()
    code = run("generate", "a red circle", "--out", tmp_path / "v.mp4", "--model", model, *FAST)
    assert code == 2
    err = capsys.readouterr().err
    assert "only pickled weights (diffusion_pytorch_model.bin)" in err
    assert "weights_only=True" in err and "Traceback" not in err
    assert not (tmp_path / "v.mp4").exists()


# ---------------------------------------------------------------- prompts
def test_words_outside_the_embedded_world_are_warned_about_and_recorded(tmp_path):
    out = tmp_path / "v.mp4"
    ran = subprocess.run(
        cli(
            "generate", "a dog running on the beach", "--frames", 1, "--steps", 1, "--out", out
        ),  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    warning = [line for line in ran.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1
    assert "'dog', 'running', 'the', 'beach'" in warning[0] and "full-size" in warning[0]
    manifest = json.loads((tmp_path / "v.mp4.json").read_text())
    assert manifest["warnings"] and "'dog'" in manifest["warnings"][0]


def test_a_world_prompt_has_no_warning_and_quiet_silences_them(tmp_path):
    ok = tmp_path / "ok.mp4"
    ran = subprocess.run(
        cli(
            "generate",
            "a red circle moving right on a black background",
            "--frames",
            1,
            "--steps",
            1,
            "--out",
            ok,
        ),  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0 and "warning" not in ran.stderr
    assert json.loads((tmp_path / "ok.mp4.json").read_text())["warnings"] == []
    quiet = subprocess.run(
        cli(
            "generate", "a dog", "--frames", 1, "--steps", 1, "--out", tmp_path / "q.mp4", "--quiet"
        ),  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_prompt_past_the_text_encoder_tokens_is_warned_about():
    from streamingt2v.generate import DEFAULT_MODEL_DIR
    from streamingt2v.pipeline import StreamingT2VPipeline

    pipe = StreamingT2VPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert pipe.prompt_warnings("a red circle moving right on a black background") == []
    long = "a red circle moving right on a black background and a blue square moving left too"
    words, tokens = pipe.prompt_warnings(long)
    assert "never seen the words 'and', 'too'" in words
    assert "16 tokens" in tokens and tokens.endswith("the end is ignored: 'left too'")


# ---------------------------------------------------------------- third-party noise
def test_a_run_prints_no_third_party_bars(tiny_model_dir, tmp_path):
    args = ["generate", "a red circle", "--frames", 3, "--steps", 1, "--model", tiny_model_dir]
    loud = subprocess.run(cli(*args, "--out", tmp_path / "a.mp4"), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert loud.returncode == 0, loud.stderr
    assert "chunk" in loud.stderr  # ours stay
    assert "Loading" not in loud.stderr and "Warning" not in loud.stderr
    # --quiet prints nothing at all: test_a_world_prompt_has_no_warning_and_quiet_silences_them


# ---------------------------------------------------------------- eval and the install
def test_eval_without_its_packages_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else find_spec(name)
    )
    assert run("eval", tmp_path / "any.mp4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["streamingt2v: error: eval needs opencv-python-headless: "
                   "pip install opencv-python-headless"]  # fmt: skip


def test_the_package_pins_no_exact_torch_and_ci_uses_the_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert "==" not in torch_pin
    base = " ".join(project["dependencies"])
    assert "opencv-python-headless" in base and "scenedetect-headless" in base  # eval works
    constraints = (ROOT / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    test_command = next(line for line in ci.splitlines() if "pytest" in line)
    assert "-c constraints.txt" in test_command and test_command.strip() in readme
    assert "download.pytorch.org/whl/cpu" in readme


def test_help_states_the_embedded_defaults_and_its_vocabulary():
    text = subprocess.run(cli("generate", "--help"), capture_output=True, text=True).stdout
    text = " ".join(text.split())
    config = json.loads((ROOT / "src/streamingt2v/default_model/pipeline_config.json").read_text())
    steps, scheduler = config["sample"]["steps"], config["sample"]["scheduler"]
    assert f"{steps} for the embedded default" in text
    assert f"{scheduler} for the embedded default" in text
    assert "circle, square, triangle" in text
    assert 'streamingt2v generate "a red circle moving right on a black background"' in text
    enhance = subprocess.run(cli("enhance", "--help"), capture_output=True, text=True).stdout
    enhance = " ".join(enhance.split())
    assert "2x for the embedded" not in enhance
    assert "required: the embedded default has no enhancer" in enhance


def test_output_folder_removed_mid_run_exits_3_naming_the_path(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):

    folder = tmp_path / "gone"
    folder.mkdir()
    real_stream = streamingt2v.generate.stream  # the chunk loop generate runs

    def folder_disappears(*args, **kwargs):
        for i, chunk in enumerate(real_stream(*args, **kwargs)):
            if i == 1:
                shutil.rmtree(folder)
            yield chunk

    monkeypatch.setattr(streamingt2v.generate, "stream", folder_disappears)
    code = run("generate", "a red circle", "--frames", 40, "--out", folder / "v.mp4",
               "--model", tiny_model_dir, *FAST)  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err
    assert f"cannot write {folder / 'v.mp4'}" in err and "No such file or directory" in err
    assert "Traceback" not in err and not folder.exists()
