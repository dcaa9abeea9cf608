"""The paper-tables benchmark's --quick mode runs every method and a trained baseline, and
--resume keeps what an earlier run measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

from streamingt2v import protocol
from streamingt2v.generate import DEFAULT_MODEL_DIR
from streamingt2v.methods import METHODS
from streamingt2v.random_models import random_pipeline

ROOT = Path(__file__).resolve().parents[1]


def paper_tables():
    """benchmarks/paper/paper_tables.py as a module (benchmarks/ is no package)."""
    return load_script("benchmarks/paper/paper_tables.py")


def test_quick_mode_writes_every_table(tiny_model_dir, tmp_path):
    module = paper_tables()
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
    assert {m: len(rows) for m, rows in results["long"].items() if rows} == {
        "streamingt2v": 1, "no-apm": 1}  # fmt: skip
    text = (out / "results.md").read_text()
    assert "Table 1 analogue" in text and "`freenoise`" in text and "`add-cond`" in text
    assert (out / "xt_slices.png").stat().st_size > 0
    assert "2 of 2 prompts x 40 frames made by every method" in text
    assert "| method | MAWE median | videos with a cut |" in text

    args = ["--model", str(tiny_model_dir), "--quick", "--no-clip", "--out", str(out),
            "--trained", f"add-cond={add_cond}"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:  # never replaces an earlier run's results
        module.main(args)
    assert stop.value.code == 2
    with pytest.raises(SystemExit):  # resuming with other settings is refused
        module.main([*args, "--resume", "--seed", "5"])
    module.main([*args, "--resume"])  # everything is there: nothing is made again
    again = json.loads((out / "results.json").read_text())
    assert again["videos"] == results["videos"] and again["long"] == results["long"]


ABLATION_CONFIGS = ROOT / "configs" / "ablation"


@pytest.mark.parametrize(
    ("config", "merge"), [("cam", "attention"), ("add_cond", "add"), ("conc_cond", "concat")]
)
def test_ablation_configs_condition_as_named_on_the_default_base(config, merge):
    # the paper tables' trained baselines (docs/experiments/ablation-models.md) are made by
    # these configs: each conditions by its merge, on the embedded default's frozen base
    import torch

    from streamingt2v.training.stages import build_stage
    from streamingt2v.training.trainer import TrainConfig

    cfg = TrainConfig.load(ABLATION_CONFIGS / f"{config}.json")
    stage = build_stage(cfg, torch.device("cpu"))
    assert stage.module["cam"].config.merge == merge
    assert Path(cfg.inputs["base"]).resolve() == (DEFAULT_MODEL_DIR / "unet").resolve()


def test_long_videos_first_then_the_table_grows(tiny_model_dir, tmp_path):
    # a run of long videos only (--prompts 0), then --resume adds 240-frame-table prompts
    module = paper_tables()
    out = tmp_path / "results"
    args = ["--model", str(tiny_model_dir), "--no-clip", "--out", str(out), "--methods",
            "streamingt2v", "no-apm", "--frames", "24", "--long-frames", "32", "--steps", "2",
            "--mawe-size", "32", "--long-prompts", "1"]  # fmt: skip
    module.main([*args, "--prompts", "0"])
    first = json.loads((out / "results.json").read_text())
    assert [len(first["long"][m]) for m in ("streamingt2v", "no-apm")] == [1, 1]
    text = (out / "results.md").read_text()
    assert "0 of 0 prompts" in text
    assert "| seed | prompt | anchor distance, streamingt2v / no-apm |" in text
    assert f"| 1000 | {first['long']['no-apm'][0]['prompt']} |" in text
    module.main([*args, "--prompts", "1", "--resume"])
    grown = json.loads((out / "results.json").read_text())
    assert grown["long"] == first["long"]  # kept, not made again
    assert [len(grown["videos"][m]) for m in ("streamingt2v", "no-apm")] == [1, 1]
    assert "1 of 1 prompts x 24 frames" in (out / "results.md").read_text()
    module.main([*args, "--prompts", "3", "--tables-only"])  # no model loads, no video is made
    tables = json.loads((out / "results.json").read_text())
    assert tables["videos"] == grown["videos"] and tables["long"] == grown["long"]
    assert "1 of 3 prompts x 24 frames" in (out / "results.md").read_text()
    with pytest.raises(SystemExit) as stop:
        module.main([*args, "--out", str(tmp_path / "none"), "--tables-only"])
    assert stop.value.code == 2 and not (tmp_path / "none").exists()


def test_paired_differences_pair_by_prompt():
    module = protocol  # the logic the paper tables report with
    rows = {
        "streamingt2v": [{"seed": s, "mawe": float(s)} for s in range(6)],
        "always_one_more": [{"seed": s, "mawe": s + 1.0} for s in range(6)],
        "either_way": [{"seed": s, "mawe": s + (-1.0) ** s} for s in range(6)],
        "partly": [{"seed": 0, "mawe": 5.0}, {"seed": 1, "mawe": None}, {"seed": 9, "mawe": 0.0}],
    }
    diffs = module.paired_differences(rows, "streamingt2v", "mawe")
    assert diffs["always_one_more"] == (1.0, 1.0, 1.0, 6)
    mean, low, high, count = diffs["either_way"]
    assert mean == 0.0 and low < 0 < high and count == 6
    assert diffs["partly"] == (5.0, 5.0, 5.0, 1)  # only seed 0 has both figures
    assert "streamingt2v" not in diffs
    lines = module.paired_table({m: rows[m] for m in list(rows)[:3]}, "streamingt2v")
    assert "**+1.00 [+1.00, +1.00]**" in lines[2] and "**" not in lines[3].split("|")[2]


def test_spread_is_the_median_and_the_videos_with_a_cut():
    module = protocol  # the logic the paper tables report with
    rows = [{"mawe": m, "scuts": c} for m, c in ((0.5, 0), (9.0, 4), (1.0, 1), (None, 0))]
    assert module.spread(rows) == {"mawe_median": 1.0, "videos_with_cut": 2}
    assert module.spread([]) == {"mawe_median": None, "videos_with_cut": 0}
    lines = module.table({"a": module.spread(rows)}, ["a"], module.SPREAD)
    assert lines[2] == "| `a` | 1.00 | 2 |"


def test_per_prompt_table_lines_up_methods_by_seed():
    module = protocol  # the logic the paper tables report with
    rows = {
        "a": [{"seed": 7, "prompt": "p7", "colour": 1.0, "anchor_drift_last": 0.5},
              {"seed": 3, "prompt": "p3", "colour": 0.25, "anchor_drift_last": 0.125}],
        "b": [{"seed": 3, "prompt": "p3", "colour": 0.5, "anchor_drift_last": None},
              {"seed": 9, "prompt": "p9", "colour": 0.0, "anchor_drift_last": 0.0}],
    }  # fmt: skip
    keys = (("anchor_drift_last", "anchor"), ("colour", "colour right"))
    lines = module.per_prompt_table(rows, ["a", "b"], keys)
    assert lines[0] == "| seed | prompt | anchor, a / b | colour right, a / b |"
    assert lines[2:] == ["| 3 | p3 | 0.12 / - | 25.0% / 50.0% |"]  # only seed 3 has both


def test_steps_sweep_measures_every_setting(tiny_model_dir, tmp_path, monkeypatch):
    # benchmarks/speed.py --sweep: the steps-versus-quality trade-off, on the tiny model
    speed = load_script("benchmarks/speed.py")
    out = tmp_path / "steps"
    common = ["--model", str(tiny_model_dir), "--frames", "24", "--out", str(out)]
    speed.main([*common, "--sweep", "ddim:2", "dpm:3", "--prompts", "1", "--mawe-size", "32"])
    result = json.loads((out / "sweep.json").read_text())
    assert list(result["summary"]) == ["ddim:2", "dpm:3"]
    assert all(len(rows) == 1 and rows[0]["seconds"] > 0 for rows in result["videos"].values())
    assert "| dpm:3 |" in (out / "sweep.md").read_text()
    with pytest.raises(SystemExit):
        speed.main([*common, "--sweep", "euler:5"])
