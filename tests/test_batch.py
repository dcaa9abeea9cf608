"""generate --prompts FILE --out-dir DIR: one video per line, split over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streamingt2v.cli import main

PROMPTS = ["a red circle moving right", "a blue square moving up", "a green triangle"]


def _args(model, prompts, out_dir) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--out-dir", str(out_dir), "--model",
            str(model), "--frames", "16", "--steps", "2", "--out", "x.gif"]  # fmt: skip


def test_two_processes_split_a_prompts_file_exactly(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out_dir = tmp_path / "videos"
    code = [sys.executable, "-m", "streamingt2v.cli", *_args(tiny_model_dir, prompts, out_dir)]
    procs = [
        subprocess.Popen(
            code,
            env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    videos = sorted(p.name for p in out_dir.glob("*.gif"))
    assert videos == [
        "0001-a-red-circle-moving-right.gif",
        "0002-a-blue-square-moving-up.gif",
        "0003-a-green-triangle.gif",
    ]
    made_by = {}
    for name in videos:
        manifest = json.loads((out_dir / f"{name}.json").read_text())
        made_by[manifest["extra"]["batch"]["line"]] = manifest["extra"]["batch"]["rank"]
        assert manifest["prompt"] == PROMPTS[manifest["extra"]["batch"]["line"] - 1]
    assert made_by == {1: 0, 2: 1, 3: 0}
    # run again alone: every video is already made, none is touched
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    assert main([*_args(tiny_model_dir, prompts, out_dir), "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == before


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\n\nb\n", "line 2 is blank"),
        ("a\nb\na\n", "line 3 repeats line 1"),
        ("", "has no prompts"),
    ],
)
def test_bad_prompts_files_are_refused_by_line(tmp_path, capsys, text, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(text)
    assert main(_args("unused", prompts, tmp_path / "videos")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "videos").exists()


def test_prompts_needs_out_dir_and_no_prompt(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    assert main(["generate", "--prompts", str(prompts)]) == 2
    assert "--prompts needs --out-dir" in capsys.readouterr().err
    assert main(["generate", "a", "--prompts", str(prompts), "--out-dir", "d"]) == 2
    assert "not prompt and prompts" in capsys.readouterr().err
