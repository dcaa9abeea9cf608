"""The evaluation protocol shared by the benchmarks: its prompt sets, the figures measured on
each video, and the tables they are reported in (``benchmarks/paper/``, ``benchmarks/speed.py``).

Two prompt sets are published: the world evaluation's (``eval_prompts(n, seed)``, key
``"eval"``: the model card's 50 prompts) and the paper tables' (key ``"paper-tables"``).
They are different draws from the same world; each report names its set.
"""

from __future__ import annotations

import statistics

import numpy as np

from .evaluate import ClipPair, evaluate_video
from .world.render import STRAIGHT, rng_for, sample_params


def eval_prompts(count: int, seed: int, key: str = "eval") -> list[str]:
    """``count`` prompts from the world's vocabulary drawn from (``key``, ``seed``); the
    motions cycle so all are present."""
    motions = [*STRAIGHT, "bouncing", "circling"]
    rng = rng_for(key, seed)
    return [sample_params(rng, motion=motions[i % len(motions)]).caption for i in range(count)]


def psnr(video: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 frames against the truth (inf if equal)."""
    mse = np.mean((video.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


COLUMNS = (
    ("mawe", "MAWE (lower better)"),
    ("scuts", "SCuts per video"),
    ("clip", "CLIP score"),
    ("colour", "colour right"),
    ("background", "background right"),
    ("shape", "shape right"),
    ("direction", "direction right"),
    ("speed_kept", "speed last/first 80"),
)


def measure(video: np.ndarray, prompt: str, clip: ClipPair | None, mawe_size: int) -> dict:
    report = evaluate_video(video, prompt, clip, mawe_size=mawe_size)
    world = report["world"] or {}
    speeds = [s for s in report["curves"].get("speed", []) if s is not None]
    first, last = (speeds[:10], speeds[-10:]) if len(speeds) >= 20 else (speeds[:1], speeds[-1:])
    kept = (
        statistics.mean(last) / statistics.mean(first) if first and statistics.mean(first) else None
    )
    drift = report["curves"].get("embedding_drift", [])
    colour_drift = report["curves"].get("colour_drift", [])
    return {
        "mawe": report["mawe"]["mawe"],
        "scuts": report["scuts"],
        "clip": report.get("clip_score"),
        "colour": world.get("colour_right"),
        "background": world.get("background_right"),
        "shape": world.get("shape_right"),
        "direction": world.get("direction_right"),
        "speed_kept": kept,
        "anchor_drift_last": drift[-1] if drift else None,
        "colour_drift_last": colour_drift[-1] if colour_drift else None,
    }


def finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if finite(r.get(key))]
    return statistics.mean(values) if values else None


def spread(rows: list[dict]) -> dict:
    """What a mean hides: the median MAWE (a few videos with huge warp errors move the mean)
    and how many videos have any cut at all (SCuts counts several per video)."""
    mawe = [r["mawe"] for r in rows if finite(r.get("mawe"))]
    return {
        "mawe_median": statistics.median(mawe) if mawe else None,
        "videos_with_cut": sum(1 for r in rows if (r.get("scuts") or 0) > 0),
    }


SPREAD = (("mawe_median", "MAWE median"), ("videos_with_cut", "videos with a cut"))


PERCENT = ("colour", "background", "shape", "direction", "long_colour")


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key in PERCENT:
        return f"{value:.1%}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


def table(summary: dict, methods: list[str], keys: tuple[tuple[str, str], ...]) -> list[str]:
    lines = ["| method | " + " | ".join(label for _, label in keys) + " |"]
    lines.append("|---" * (len(keys) + 1) + "|")
    for m in methods:
        cells = [fmt(summary[m].get(k), k) for k, _ in keys]
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return lines


def per_prompt_table(
    rows: dict[str, list[dict]], methods: list[str], keys: tuple[tuple[str, str], ...]
) -> list[str]:
    """One line per prompt (by seed) with every method's figure side by side, ``a / b``: what
    a mean over a few long videos hides."""
    by_seed = {m: {r["seed"]: r for r in rows[m]} for m in methods}
    names = " / ".join(methods)
    lines = ["| seed | prompt | " + " | ".join(f"{label}, {names}" for _, label in keys) + " |"]
    lines.append("|---" * (len(keys) + 2) + "|")
    for seed in sorted(set.intersection(*(set(s) for s in by_seed.values()))):
        cells = [
            " / ".join(fmt(by_seed[m][seed].get(key), key) for m in methods) for key, _ in keys
        ]
        lines.append(
            f"| {seed} | {by_seed[methods[0]][seed]['prompt']} | " + " | ".join(cells) + " |"
        )
    return lines


PER_PROMPT_LONG = (
    ("anchor_drift_last", "anchor distance"),
    ("colour_drift_last", "colour distance"),
    ("colour", "colour right"),
)


PAIRED = ("mawe", "scuts", "clip", "colour", "background", "shape", "direction")
RESAMPLES = 10_000


def paired_differences(
    rows: dict[str, list[dict]], base: str, key: str, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, tuple[float, float, float, int]]:
    """Each method's mean difference from ``base`` on ``key`` over the prompts both measured
    (paired by seed), with a 95% percentile-bootstrap interval over prompts: name ->
    (mean, low, high, prompts). The same resampling for every method and metric."""
    by_seed = {r["seed"]: r.get(key) for r in rows[base]}
    out = {}
    for method, method_rows in rows.items():
        if method == base:
            continue
        pairs = [(r.get(key), by_seed.get(r["seed"])) for r in method_rows]
        diffs = np.array([a - b for a, b in pairs if finite(a) and finite(b)], dtype=np.float64)
        if not len(diffs):
            continue
        picks = np.random.default_rng(seed).integers(0, len(diffs), (resamples, len(diffs)))
        low, high = np.percentile(diffs[picks].mean(axis=1), [2.5, 97.5])
        out[method] = (float(diffs.mean()), float(low), float(high), len(diffs))
    return out


def paired_table(rows: dict[str, list[dict]], base: str) -> list[str]:
    """Method minus ``base`` per metric, with its 95% interval; bold where it excludes 0."""
    diffs = {key: paired_differences(rows, base, key) for key in PAIRED}
    labels = dict(COLUMNS)
    lines = ["| method | " + " | ".join(labels[k] for k in PAIRED) + " |"]
    lines.append("|---" * (len(PAIRED) + 1) + "|")
    for method in [m for m in rows if m != base]:
        cells = []
        for key in PAIRED:
            if method not in diffs[key]:
                cells.append("-")
                continue
            mean, low, high, _ = diffs[key][method]
            scale, unit, digits = (100, " pt", 1) if key in PERCENT else (1, "", 2)
            low_s, high_s = f"{low * scale:+.{digits}f}", f"{high * scale:+.{digits}f}"
            cell = f"{mean * scale:+.{digits}f}{unit} [{low_s}, {high_s}]"
            cells.append(f"**{cell}**" if low > 0 or high < 0 else cell)
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return lines
