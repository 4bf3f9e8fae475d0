"""Did a composition produce what it should? Judge saved samples against their exact target.

Reads <stem>.pt (samples [N, C, 28, 28] in [0, 1]) and the <stem>.json beside
it for the base models and observations (--models / --observations override
or supply them), classifies every sample with the oracle (models/oracle.py)
into a (digit, colour) cell, and compares with the exact target of targets.py:
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
import torch

from cli import UserError, override_globals, run_main
from custom_datasets import COLOURS
from models.oracle import CONFIDENCE, ORACLE_COLOURS, ORACLE_PATH, load_oracle, predict
from targets import cell_name, composition_of_cells, target_distribution, validate_composition
from utils import ensure_writable_dir

SAMPLES = None  # path of the samples .pt
MODELS = []  # empty: read "models" from the .json beside the samples
OBSERVATIONS = []  # 1-based labels; empty: read "observations" from the .json (none there = plain mixture)
ORACLE = ORACLE_PATH
CONFIDENCE_THRESHOLD = CONFIDENCE
BOOTSTRAP = 1000
CI_LEVEL = 0.95
SEED = 0
OUT_DIR = None  # None: beside the samples
BASE_EVALUATIONS = []  # the base models' <individual>_eval.json, in model order: adds the plug-in target
DATA_ROOT = "data"

OVERRIDABLE = ["SAMPLES", "MODELS", "OBSERVATIONS", "ORACLE", "CONFIDENCE_THRESHOLD", "BOOTSTRAP", "CI_LEVEL", "SEED",
               "BASE_EVALUATIONS", "OUT_DIR", "DATA_ROOT"]
UNRECOGNISABLE = "unrecognisable"


def sample_cells(prediction) -> list:
    """Each sample's (digit, colour) cell, or UNRECOGNISABLE."""
    return [(int(digit), ORACLE_COLOURS[colour]) if ok else UNRECOGNISABLE
            for digit, colour, ok in zip(prediction.digits, prediction.colours, prediction.recognisable)]


def unrecognisable_reasons(prediction) -> dict:
    """Why samples are unrecognisable: no ink, not one colour channel, or no confident digit."""
    colour_names = [ORACLE_COLOURS[c] for c in prediction.colours]
    uncertain = sum(not ok and name in COLOURS for ok, name in zip(prediction.recognisable, colour_names))
    return {"blank": colour_names.count("blank"), "mixed colour": colour_names.count("mixed"),
            "uncertain digit": uncertain}


def percentile_interval(values, ci_level):
    """Lower and upper bootstrap percentiles along the first axis."""
    tail = (1.0 - ci_level) / 2
    return np.quantile(values, [tail, 1.0 - tail], axis=0)


def composition_metrics(cells, target, bootstrap=BOOTSTRAP, ci_level=CI_LEVEL, seed=SEED) -> dict:
    """Compare sample cells (tuples or UNRECOGNISABLE) with a target {cell: probability}.

    Rows cover the target cells, then observed cells outside the target, then
    UNRECOGNISABLE (target 0). CIs resample the samples `bootstrap` times.
    """
    if not cells:
        raise UserError("there are no samples to evaluate")
    observed_outside = sorted({c for c in cells if c not in target and c != UNRECOGNISABLE},
                              key=lambda c: (-cells.count(c), c))
    keys = list(target) + observed_outside + ([] if UNRECOGNISABLE in target else [UNRECOGNISABLE])
    target_share = np.array([target.get(key, 0.0) for key in keys])
    index = np.array([keys.index(c) for c in cells])
    n, k = len(index), len(keys)
    counts = np.bincount(index, minlength=k)
    measured = counts / n
    in_support = target_share[index] > 0

    rng = np.random.default_rng(seed)
    resampled = index[rng.integers(n, size=(bootstrap, n))]
    # One bincount for all resamples: offset each resample's cell indices by k.
    boot_measured = np.bincount((resampled + k * np.arange(bootstrap)[:, None]).ravel(),
                                minlength=bootstrap * k).reshape(bootstrap, k) / n
    boot_tv = 0.5 * np.abs(boot_measured - target_share).sum(axis=1)
    boot_precision = (target_share[resampled] > 0).mean(axis=1)
    # The noise floor: TV of n exact draws from the target.
    exact_tv = 0.5 * np.abs(rng.multinomial(n, target_share, size=bootstrap) / n - target_share).sum(axis=1)

    cell_ci = percentile_interval(boot_measured, ci_level)
    rows = [{"cell": row_name(key), "target": float(target_share[i]),
             "measured": float(measured[i]), "measured_ci": cell_ci[:, i].tolist(), "count": int(counts[i])}
            for i, key in enumerate(keys)]
    return {"num_samples": n, "ci_level": ci_level, "bootstrap": bootstrap, "seed": seed, "cells": rows,
            "support_precision": float(in_support.mean()),
            "support_precision_ci": percentile_interval(boot_precision, ci_level).tolist(),
            "tv_distance": float(0.5 * np.abs(measured - target_share).sum()),
            "tv_distance_ci": percentile_interval(boot_tv, ci_level).tolist(),
            "tv_of_exact_samples": {"mean": float(exact_tv.mean()), "upper": float(np.quantile(exact_tv, ci_level))},
            "unrecognisable_share": float(measured[-1])}


def row_name(cell) -> str:
    """A report row's name: "grey 4" for (4, "grey"); UNRECOGNISABLE stays itself."""
    return cell if cell == UNRECOGNISABLE else cell_name(cell)


def parse_cell(name):
    """The inverse of row_name: "grey 4" -> (4, "grey"); UNRECOGNISABLE stays itself."""
    if name == UNRECOGNISABLE:
        return name
    colour, digit = name.rsplit(" ", 1)
    return int(digit), colour


def plug_in_target(base_evaluations, models, observations) -> tuple:
    """The composition of the base models as they sample ({cell: probability}, each model's sample count): each
    model's cell shares from its own samples' evaluation, its unrecognisable samples one cell all models share."""
    if len(base_evaluations) != len(models):
        raise UserError(f"--base-evaluations needs one _eval.json per base model ({len(models)}: {models}), "
                        f"got {len(base_evaluations)}")
    shares, sizes = {}, []
    for k, (path, model) in enumerate(zip(base_evaluations, models)):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"base evaluation {path} not found; sample model {model} with sample_individual_model.py "
                            f"and evaluate it with this script")
        try:
            evaluation = json.loads(path.read_text())
            evaluated, rows = evaluation["meta"]["models"], evaluation["cells"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path} is not an _eval.json written by evaluate_composition.py") from None
        if evaluated != [model] or evaluation["meta"].get("observations"):
            raise UserError(f"{path} evaluates samples of {evaluated}, not of base model {k + 1} ({model}) alone")
        for row in rows:
            shares.setdefault(parse_cell(row["cell"]), [0.0] * len(models))[k] = row["measured"]
        sizes.append(evaluation["num_samples"])
    return composition_of_cells(shares, observations), sizes


def load_samples(path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"samples file {path} not found; make it with a sample_*.py script or pass --samples")
    try:
        samples = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file
        raise UserError(f"cannot read samples {path}: {error}") from None
    if not torch.is_tensor(samples) or samples.dim() != 4 or samples.shape[1] not in (1, 3) \
            or tuple(samples.shape[2:]) != (28, 28) or len(samples) == 0:
        shape = list(samples.shape) if torch.is_tensor(samples) else type(samples).__name__
        raise UserError(f"{path} holds {shape}; expected a tensor [N, 1 or 3, 28, 28] with N > 0")
    return samples.float()


def read_meta(samples_path, models, observations):
    """The .json beside the samples, with models/observations from the flags where given."""
    meta_path = Path(samples_path).with_suffix(".json")
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{meta_path} is not valid JSON: {error}") from None
    elif not models:
        raise UserError(f"no {meta_path.name} beside the samples; pass --models (and --observations if any)")
    models = [str(name) for name in (models or meta.get("models", []))]
    labels = observations or meta.get("observations", [])
    try:
        observations = tuple(int(label) for label in labels)
    except (TypeError, ValueError):
        raise UserError(f"observations must be integer labels, got {labels}") from None
    return {**meta, "models": models, "observations": list(observations)}


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
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv, positive=["BOOTSTRAP", "CONFIDENCE_THRESHOLD"],
                     positional=["SAMPLES"])
    if config["SAMPLES"] is None:
        raise UserError("pass the samples PATH.pt written by a sample_*.py script")
    if not 0.0 < config["CI_LEVEL"] < 1.0 or not 0.0 < config["CONFIDENCE_THRESHOLD"] <= 1.0:
        raise UserError("--ci-level must be in (0, 1) and --confidence-threshold in (0, 1]")
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
    (out_dir / f"{stem}_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    title = f"{'+'.join(meta['models'])} y={tuple(meta['observations']) or 'mixture'}"
    if "guidance_scales" in meta:
        title += f" λ={meta['guidance_scales']}"
    plot_cells(metrics, f"{title}\nprecision {metrics['support_precision']:.0%}, TV {metrics['tv_distance']:.2f}",
               out_dir / f"{stem}_eval.png")
    print(f"wrote {out_dir / f'{stem}_eval.json'} and {out_dir / f'{stem}_eval.png'}")
    return report


if __name__ == "__main__":
    run_main(main)
