"""The evaluation of samples that evaluate_composition.py and evaluate_classifier.py share: reading samples and
what sampled them, the oracle's reading of each sample as a (digit, colour) cell, and the metrics of cells
against a target distribution (exact, or the plug-in one of the base models as they sample)."""
import json
from pathlib import Path

import numpy as np
import torch

from custom_datasets import COLOURS, cell_name
from sculpting.errors import UserError, refuse_non_finite, unreadable_torch_file
from models.oracle import ORACLE_COLOURS
from sculpting.targets import composition_of_cells

UNRECOGNISABLE = "unrecognisable"
BOOTSTRAP = 1000  # resamples behind every bootstrap interval
CI_LEVEL = 0.95


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


def composition_metrics(cells, target, bootstrap=BOOTSTRAP, ci_level=CI_LEVEL, seed=0) -> dict:
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


def percent(value, interval=None) -> str:
    """A share as a table cell, e.g. "96.7% (95.1–98.2)" with its interval."""
    return f"{100 * value:.1f}%" + (f" ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})" if interval else "")


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
        try:  # a binary file, other JSON, or an edited report alike
            evaluation = json.loads(path.read_text())
            evaluated, observed = evaluation["meta"]["models"], evaluation["meta"].get("observations")
            measured = {parse_cell(row["cell"]): float(row["measured"]) for row in evaluation["cells"]}
            size = int(evaluation["num_samples"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{path} is not an _eval.json written by evaluate_composition.py") from None
        if evaluated != [model] or observed:
            raise UserError(f"{path} evaluates samples of {evaluated}, not of base model {k + 1} ({model}) alone")
        for cell, share in measured.items():
            shares.setdefault(cell, [0.0] * len(models))[k] = share
        sizes.append(size)
    return composition_of_cells(shares, observations), sizes


def load_samples(path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"samples file {path} not found; make it with a sample_*.py script or pass --samples")
    try:
        samples = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # empty, truncated, or not a torch file
        raise UserError(f"cannot read samples {path}: {unreadable_torch_file(error)}") from None
    if not torch.is_tensor(samples) or samples.dim() != 4 or samples.shape[1] not in (1, 3) \
            or tuple(samples.shape[2:]) != (28, 28) or len(samples) == 0:
        shape = list(samples.shape) if torch.is_tensor(samples) else type(samples).__name__
        raise UserError(f"{path} holds {shape}; expected a tensor [N, 1 or 3, 28, 28] with N > 0")
    refuse_non_finite(samples, f"samples in {path}", "they cannot be scored; sample them again (with --compile off "
                      "--precision float32 if the sampler made them)")
    return samples.float()


def read_meta(samples_path, models, observations):
    """The .json beside the samples, with the models and observations from the flags where given."""
    meta_path = Path(samples_path).with_suffix(".json")
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as error:  # malformed JSON, or not text at all
            raise UserError(f"{meta_path} is not valid JSON: {error}") from None
        if not isinstance(meta, dict):
            raise UserError(f"{meta_path} is not the settings .json a sample_*.py script writes beside its samples")
    elif not models:
        raise UserError(f"no {meta_path.name} beside the samples; pass --models (and --observations if any)")
    models = models or meta.get("models", [])
    if not isinstance(models, list):
        raise UserError(f"{meta_path} lists no models (\"models\": {models!r}); pass --models")
    models = [str(name) for name in models]
    labels = observations or meta.get("observations", [])
    try:
        observations = tuple(int(label) for label in labels)
    except (TypeError, ValueError):
        raise UserError(f"observations must be integer labels, got {labels}") from None
    return {**meta, "models": models, "observations": list(observations)}
