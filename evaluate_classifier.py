"""Did a joint classifier learn the right posterior? Compare it with the exact one on real test images.

For every (digit, colour) cell of the base models' datasets, takes IMAGES_PER_CELL
MNIST test images coloured like the cell and compares the classifier at t = TIME
(the sampler's last grid time) with the exact posterior of the data
(targets.model_posteriors: p(y = i | x) ∝ 1/|D_i| where D_i holds the cell):
  - marginal Q(y | x) against p(y | x), averaged over the cell's images;
  - the joint table Q(y1, y2 | x) against p(y1 | x) p(y2 | x) (at t = 0 the two labels
    are independent given x), and its off-diagonal mass against 1 - sum_i p(y = i | x)^2;
  - the mean largest marginal: near 1 on a shared cell means per-sample overconfidence.
A classifier that matches on real images can still differ on samples, where the base
models' own artefacts tell them apart; a collapsed joint table (off-diagonal mass near
0 on shared cells) makes compositions such as (1, 2) pick the wrong cells.

    python evaluate_classifier.py                          # the 3-way joint classifier, MN1-MN3
    python evaluate_classifier.py --classifier-ckpt checkpoints/classifier_ckpt_200.pth --models M1 M2
Prints a table; writes <OUT_DIR>/<checkpoint stem>_calibration.json.
"""
import json
from pathlib import Path

import torch

from cli import UserError, override_globals, run_main
from custom_datasets import BASE_DATASETS, DATA_ROOT, colour_images, load_mnist
from models.classifier_model import JointYClassifier, ThreeWayJointYClassifier, marginal_log_probs
from samplers.pc_sampler import SAMPLING_EPS
from targets import cell_name, model_posteriors, validate_composition
from utils import ensure_writable_dir, load_classifier

CLASSIFIER_CKPT = "checkpoints/3way_classifier_ckpt_700.pth"
MODELS = ["MN1", "MN2", "MN3"]
IMAGES_PER_CELL = 200
TIME = SAMPLING_EPS
OUT_DIR = "outputs"
DEVICE = "cpu"

OVERRIDABLE = ["CLASSIFIER_CKPT", "MODELS", "IMAGES_PER_CELL", "TIME", "OUT_DIR", "DEVICE"]
CLASSIFIERS = {2: (JointYClassifier, "train_classifier.py"), 3: (ThreeWayJointYClassifier, "train_3way_classifier.py")}


@torch.no_grad()
def calibration(classifier, models, images_per_cell, time, root=DATA_ROOT) -> list:
    """One row per cell: the classifier's mean marginal and joint table against the exact ones."""
    channels = validate_composition(models, [])
    images, labels = load_mnist(root, train=False)
    rows = []
    for cell, posterior in model_posteriors(models, root).items():
        digit, colour = cell
        x = colour_images(images[labels == digit][:images_per_cell], colour, channels).float() / 255.0
        log_joint = classifier(x, torch.full((len(x),), float(time)))  # [n, m, m]
        joint, marginal = log_joint.exp(), marginal_log_probs(log_joint).exp()
        exact = torch.tensor(posterior)
        exact_joint = exact[:, None] * exact[None, :]
        off_diagonal = joint.sum(dim=(1, 2)) - torch.diagonal(joint, dim1=1, dim2=2).sum(dim=1)
        rows.append({"cell": cell_name(cell), "images": len(x),
                     "marginal": marginal.mean(dim=0).tolist(), "exact_marginal": exact.tolist(),
                     "mean_top_marginal": float(marginal.max(dim=1).values.mean()),
                     "joint": joint.mean(dim=0).tolist(), "exact_joint": exact_joint.tolist(),
                     "off_diagonal_mass": float(off_diagonal.mean()),
                     "exact_off_diagonal_mass": float(1.0 - (exact ** 2).sum())})
    return rows


def print_table(rows, models):
    def vector(values):
        return "[" + " ".join(f"{v:.2f}" for v in values) + "]"

    width = 6 * len(models) + 1
    print(f"{'cell':<9} {'Q(y|x)':>{width}} {'exact':>{width}} {'top':>5} {'off-diag':>8} {'exact':>6}")
    for row in rows:
        print(f"{row['cell']:<9} {vector(row['marginal']):>{width}} {vector(row['exact_marginal']):>{width}}"
              f" {row['mean_top_marginal']:>5.2f} {row['off_diagonal_mass']:>8.3f} {row['exact_off_diagonal_mass']:>6.3f}")
    marginal_error = sum(abs(a - b) for r in rows for a, b in zip(r["marginal"], r["exact_marginal"]))
    joint_error = sum(abs(a - b) for r in rows for qa, ea in zip(r["joint"], r["exact_joint"]) for a, b in zip(qa, ea))
    print(f"mean |Q - exact|: marginal {marginal_error / (len(rows) * len(models)):.3f}, "
          f"joint {joint_error / (len(rows) * len(models) ** 2):.3f}")


def main(argv=None):
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv, positive=["IMAGES_PER_CELL"],
                     choices={"MODELS": list(BASE_DATASETS)})
    models = [str(name) for name in config["MODELS"]]
    if len(models) not in CLASSIFIERS:
        raise UserError(f"--models: a joint classifier separates 2 or 3 models, got {len(models)}")
    if not 0.0 < config["TIME"] <= 1.0:
        raise UserError(f"--time must be in (0, 1], got {config['TIME']}")
    classifier_class, made_by = CLASSIFIERS[len(models)]
    classifier = load_classifier(config["CLASSIFIER_CKPT"], classifier_class, config["DEVICE"], made_by)
    rows = calibration(classifier, models, config["IMAGES_PER_CELL"], config["TIME"])
    print(f"{config['CLASSIFIER_CKPT']} at t = {config['TIME']:g} on MNIST test images, models {models}")
    print_table(rows, models)
    out = ensure_writable_dir(config["OUT_DIR"]) / f"{Path(config['CLASSIFIER_CKPT']).stem}_calibration.json"
    out.write_text(json.dumps({"settings": {k: config[k] for k in OVERRIDABLE}, "cells": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    run_main(main)
