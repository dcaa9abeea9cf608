"""Tiny seeded CPU models shared by the tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from streamingt2v import plan
from streamingt2v.random_models import random_pipeline, write_modelscope_folder

if "OMP_NUM_THREADS" not in os.environ:  # where set (work beside another job), it wins
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_pipe():
    """A tiny random pipeline with an untrained (zero-initialized) CAM and APM."""
    return random_pipeline("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipe):
    """The tiny pipeline saved as a pipeline folder."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def modelscope_dir(tmp_path_factory):
    """A tiny random base model in ModelScope's diffusers layout."""
    return write_modelscope_folder(tmp_path_factory.mktemp("modelscope"), "tiny", seed=3)


@pytest.fixture
def plans_time_once(monkeypatch):
    """--plan times each evaluation once after its warm-up (not the median of 3): for the
    tests of what a plan counts, not of how well it times."""
    timed = plan._timed
    monkeypatch.setattr(plan, "_timed", lambda run, device: timed(run, device, repeats=1))


def load_script(relative: str):
    """A script of the repository (``benchmarks/``, ``scripts/``: no packages) as a module."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
