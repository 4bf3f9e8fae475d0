"""Did a composition produce what it should? Judge saved samples against their exact target.

Reads <stem>.pt (samples [N, C, 28, 28] in [0, 1]) and the <stem>.json beside
it for the base models and observations (--models / --observations override
or supply them), classifies every sample with the oracle (models/oracle.py)
into a (digit, colour) cell, and compares with the exact target of sculpting/targets.py:
    python evaluate_composition.py --samples outputs/composition_M1_M2_y1-1_y2-1_g20.pt
Prints a table, and writes <stem>_eval.json and <stem>_eval.png (target vs
measured per cell) beside the samples or in --out-dir. Generates nothing.

Metrics (an unrecognisable sample is a cell of its own with target 0, so it
counts against both):
  support precision  share of samples whose cell has target mass > 0;
  TV distance        1/2 sum over cells |measured - target|;
  bootstrap CIs      percentile intervals from resampling the samples (seeded).
TV of N samples is biased upward even for a perfect sampler, so the report
also gives the TV that N exact draws from the target would show.

The exact target assumes perfect base models. --base-evaluations (the
base models' own samples evaluated by this script, in model order) adds the
plug-in target: the same composition of the base models as they sample
(targets.composition_of_cells), their unrecognisable samples one cell they all
share. Its support precision is what a perfect classifier and sampler could
reach at λ = 1 with these base models (if their malformed digits are alike),
and the samples' TV to it measures the composition machinery alone:
    python evaluate_composition.py results/cpu/composition_1_2_y1-1_y2-2_g1.pt \
        --base-evaluations results/cpu/individual_1_eval.json results/cpu/individual_2_eval.json
"""
import json
from pathlib import Path

import numpy as np

from sculpting import evaluation
from sculpting.artefacts import ORACLE_CHECKPOINT, evaluation_plot, evaluation_report
from sculpting.checkpoints import ensure_writable_dir, load_oracle
from sculpting.cli import configure, run_main
from sculpting.errors import UserError
from sculpting.evaluation import (composition_metrics, load_samples, plug_in_target, read_meta, row_name, sample_cells,
                        unrecognisable_reasons)
from models.oracle import CONFIDENCE, predict
from sculpting.targets import target_distribution, validate_composition

SAMPLES = None  # path of the samples .pt
MODELS = []  # empty: read "models" from the .json beside the samples
OBSERVATIONS = []  # 1-based labels; empty: read "observations" from the .json (none there = plain mixture)
BASE_EVALUATIONS = []  # the base models' <individual>_eval.json, in model order: adds the plug-in target
ORACLE = ORACLE_CHECKPOINT
CONFIDENCE_THRESHOLD = CONFIDENCE
BOOTSTRAP = evaluation.BOOTSTRAP
CI_LEVEL = evaluation.CI_LEVEL
SEED = 0

# ---- engineering settings: how and where it runs, not what it samples ----
OUT_DIR = None  # None: beside the samples
DATA_ROOT = "data"
THREADS = 0


def print_report(samples_path, meta, metrics, reasons):
    level = f"{metrics['ci_level']:.0%}"
    print(f"samples: {samples_path} ({metrics['num_samples']} samples)")
    print(f"models {', '.join(meta['models'])}; observations {tuple(meta['observations']) or 'none (mixture)'}"
          + (f"; guidance scales {meta['guidance_scales']}" if "guidance_scales" in meta else ""))
    print(f"{'cell':<16}{'target':>8}{'measured':>10}  {level + ' CI':<17}{'count':>6}")
    for row in metrics["cells"]:
        low, high = row["measured_ci"]
        print(f"{row['cell']:<16}{row['target']:>8.1%}{row['measured']:>10.1%}  "
              f"{f'[{low:.1%}, {high:.1%}]':<17}{row['count']:>6}")
    low, high = metrics["support_precision_ci"]
    print(f"support precision {metrics['support_precision']:.1%} ({level} CI {low:.1%}-{high:.1%}): "
          f"samples in a cell with target > 0; unrecognisable ones are misses")
    low, high = metrics["tv_distance_ci"]
    floor = metrics["tv_of_exact_samples"]
    print(f"TV distance {metrics['tv_distance']:.3f} ({level} CI {low:.3f}-{high:.3f}); "
          f"{metrics['num_samples']} exact draws from the target give {floor['mean']:.3f} on average, "
          f"{floor['upper']:.3f} at the {level} quantile")
    print(f"unrecognisable {metrics['unrecognisable_share']:.1%} ("
          + ", ".join(f"{reason} {count}" for reason, count in reasons.items()) + ")")


def print_plug_in(plug_in, ci_level):
    low, high = plug_in["tv_distance_ci"]
    print(f"plug-in target (the base models as they sample, {' and '.join(map(str, plug_in['base_samples']))} "
          f"samples; unrecognisable one shared cell): support precision {plug_in['support_precision']:.1%}; "
          f"TV of these samples to it {plug_in['tv_distance']:.3f} ({ci_level:.0%} CI {low:.3f}-{high:.3f}; "
          f"exact draws {plug_in['tv_of_exact_samples']['mean']:.3f})")


def plot_cells(metrics, title, path):
    """Grouped bars per cell: target share and measured share with its bootstrap CI."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics["cells"]
    x = np.arange(len(rows))
    measured = np.array([row["measured"] for row in rows])
    errors = np.abs(np.array([row["measured_ci"] for row in rows]).T - measured)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * len(rows)), 3.8))
    ax.bar(x - 0.2, [row["target"] for row in rows], width=0.4, label="target", color="#9e9e9e")
    ax.bar(x + 0.2, measured, width=0.4, yerr=errors, capsize=3, label="measured", color="#40b0a6")
    ax.set_xticks(x, [row["cell"] for row in rows], rotation=30, ha="right")
    ax.set(ylabel="share of samples", ylim=(0, 1.05), title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    config = configure(globals(), argv, positional=["SAMPLES"])
    if config["SAMPLES"] is None:
        raise UserError("pass the samples PATH.pt written by a sample_*.py script")
    samples_path = Path(config["SAMPLES"])
    samples = load_samples(samples_path)
    meta = read_meta(samples_path, config["MODELS"], config["OBSERVATIONS"])
    channels = validate_composition(meta["models"], meta["observations"])
    if samples.shape[1] != channels:
        raise UserError(f"samples have {samples.shape[1]} channel(s) but models {meta['models']} make {channels}")
    out_dir = ensure_writable_dir(config["OUT_DIR"] or samples_path.parent)

    target = target_distribution(meta["models"], meta["observations"], config["DATA_ROOT"])
    if config["BASE_EVALUATIONS"]:  # read before the oracle runs: bad input fails fast
        plug_in, sizes = plug_in_target(config["BASE_EVALUATIONS"], meta["models"], meta["observations"])
    prediction = predict(load_oracle(config["ORACLE"]), samples, config["CONFIDENCE_THRESHOLD"])
    cells = sample_cells(prediction)

    def metrics_against(distribution):  # the same samples and bootstrap settings for either target
        return composition_metrics(cells, distribution, config["BOOTSTRAP"], config["CI_LEVEL"], config["SEED"])

    metrics = metrics_against(target)
    reasons = unrecognisable_reasons(prediction)
    print_report(samples_path, meta, metrics, reasons)

    report = {"samples": str(samples_path), "meta": meta, "oracle": str(config["ORACLE"]),
              "confidence_threshold": config["CONFIDENCE_THRESHOLD"], **metrics, "unrecognisable_reasons": reasons}
    if config["BASE_EVALUATIONS"]:
        to_plug_in = metrics_against(plug_in)
        report["plug_in_target"] = {
            "base_evaluations": [str(path) for path in config["BASE_EVALUATIONS"]], "base_samples": sizes,
            "cells": {row_name(cell): p for cell, p in plug_in.items()},
            "support_precision": sum(p for cell, p in plug_in.items() if cell in target),
            **{key: to_plug_in[key] for key in ["tv_distance", "tv_distance_ci", "tv_of_exact_samples"]}}
        print_plug_in(report["plug_in_target"], metrics["ci_level"])
    stem = samples_path.stem
    report_path, plot_path = out_dir / evaluation_report(stem), out_dir / evaluation_plot(stem)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    title = f"{'+'.join(meta['models'])} y={tuple(meta['observations']) or 'mixture'}"
    if "guidance_scales" in meta:
        title += f" λ={meta['guidance_scales']}"
    plot_cells(metrics, f"{title}\nprecision {metrics['support_precision']:.0%}, TV {metrics['tv_distance']:.2f}",
               plot_path)
    print(f"wrote {report_path} and {plot_path}")
    return report


if __name__ == "__main__":
    run_main(main)
