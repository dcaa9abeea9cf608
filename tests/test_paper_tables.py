"""The paper-tables benchmark's --quick mode runs every method and a trained baseline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from streamingt2v.random_models import random_pipeline
from streamingt2v.streaming import METHODS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_tables.py"


def test_quick_mode_writes_every_table(tiny_model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    add_cond = tmp_path / "add_cond"
    random_pipeline("tiny", seed=3, cam_merge="add").save_pretrained(add_cond)
    out = tmp_path / "results"
    # the tiny random model's encoders are no CLIP pair (24-d images, 32-d text): no CLIP score
    module.main(
        ["--model", str(tiny_model_dir), "--quick", "--no-clip", "--out", str(out)]
        + ["--trained", f"add-cond={add_cond}"]
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {*METHODS, "add-cond"}
    assert all(len(rows) == 2 for rows in results["videos"].values())
    text = (out / "results.md").read_text()
    assert "Table 1 analogue" in text and "`freenoise`" in text and "`add-cond`" in text
    assert (out / "xt_slices.png").stat().st_size > 0
