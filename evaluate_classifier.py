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

With --samples (a sample script's .pt), the images are those samples instead, grouped
by the oracle's reading of each (evaluate_composition.py's cells, unrecognisable ones a
group of their own, with no exact posterior). On a guided composition this shows
whether guidance found images the classifier reads like the target cells without being
them: for (1, 2), misses with an off-diagonal mass as high as the 4s' and 5s'.

    python evaluate_classifier.py                          # the 3-way joint classifier, MN1-MN3
    python evaluate_classifier.py --classifier-ckpt checkpoints/classifier_ckpt_200.pth --models M1 M2
    python evaluate_classifier.py --classifier-ckpt checkpoints/subdigits_classifier_ckpt_200.pth \
        --samples results/cpu/composition_1_2_y1-1_y2-2_g20.pt
    python evaluate_classifier.py --classifier-ckpt checkpoints/classifier_ckpt_200.pth --models M1 M2 --trajectories 32

With --trajectories N, the images are instead the states of N trajectories of each base model (the cpu recipe's
sampler, the checkpoints in GEN_CKPT_DIR), and at every noise level the classifier is compared with the exact
posterior of the finite datasets (models/exact.py): the mean |Q - exact| of its joint table and, for each label
pair, its guidance gradient grad_x log Q(y1, y2 | x_t) against the exact one (cosine, its mean weighted by the exact norm; ratio of mean norms):
what the sampler actually uses.
Prints a table; writes <OUT_DIR>/<checkpoint stem>_calibration.json, with --samples
<OUT_DIR>/<checkpoint stem>_on_<samples stem>.json, with --trajectories <OUT_DIR>/<checkpoint stem>_trajectories.json.
"""
import json
from collections import Counter
from pathlib import Path

import torch

from sculpting.artefacts import (ORACLE_CHECKPOINT, REFERENCE_EPOCH, THREE_WAY_CLASSIFIER, base_model_path,
                                 reference_classifier_checkpoint)
from sculpting.checkpoints import (check_provenance, ensure_writable_dir, holds_label_head, load_classifier,
                                   load_labelled_model, load_oracle, load_score_model)
from sculpting.classifier_training import sample_trajectories
from sculpting.exact import exact_ingredients
from sculpting.recipes import CPU_SAMPLER
from sculpting.cli import configure, run_main
from custom_datasets import BASE_DATASETS, DATA_ROOT, cell_name, colour_images, dataset_spec, load_mnist
from sculpting.errors import UserError
from sculpting.evaluation import load_samples, read_meta, row_name, sample_cells
from models.classifier_model import JointYClassifier, ThreeWayJointYClassifier, marginal_log_probs
from models.joint_diffusion import MarginalProductClassifier
from models.oracle import predict
from samplers.pc_sampler import SAMPLING_EPS
from sculpting.sde import VESDE
from sculpting.targets import model_posteriors, validate_composition

CLASSIFIER_CKPT = reference_classifier_checkpoint(THREE_WAY_CLASSIFIER)
MODELS = []  # empty: MN1 MN2 MN3, or with SAMPLES the models in the .json beside them
IMAGES_PER_CELL = 200
SAMPLES = None  # a sample script's .pt: judge the classifier on those samples, grouped by the oracle
ORACLE = ORACLE_CHECKPOINT
TIME = SAMPLING_EPS
TRAJECTORIES = 0  # > 0: compare with the exact posterior along this many trajectories of each base model

# ---- engineering settings: how and where it runs, not what it samples ----
OUT_DIR = "outputs"
DEVICE = "cpu"
THREADS = 0
FORCE = False  # judge a classifier against models other than those it was trained on (the .json records it)
GEN_CKPT_DIR = "checkpoints"  # the base models whose trajectories --trajectories follows
SEED = 0

CLASSIFIERS = {2: (JointYClassifier, "train_classifier.py"), 3: (ThreeWayJointYClassifier, "train_3way_classifier.py")}


def real_image_groups(models, images_per_cell, root=DATA_ROOT) -> list:
    """(cell name, IMAGES_PER_CELL test images coloured like it, exact posterior) for every cell of the datasets."""
    channels = validate_composition(models, [])
    images, labels = load_mnist(root, train=False)
    return [(cell_name(cell), colour_images(images[labels == cell[0]][:images_per_cell], cell[1], channels).float() / 255.0,
             posterior) for cell, posterior in model_posteriors(models, root).items()]


def sample_groups(samples, models, oracle, root=DATA_ROOT) -> list:
    """(cell name, the samples the oracle reads as that cell, its exact posterior or None), most samples first."""
    posteriors = model_posteriors(models, root)
    cells = sample_cells(predict(oracle, samples))
    return [(row_name(cell), samples[torch.tensor([c == cell for c in cells])].clamp(0.0, 1.0), posteriors.get(cell))
            for cell, _ in Counter(cells).most_common()]


def dataset_head(path, models, device):
    """A joint diffusion model's "which dataset" head (train_joint_diffusion.py --label dataset) as a joint table
    of its marginals, P(y1 | x_t) P(y2 | x_t): its marginal is compared with the exact posterior as a sculpting
    classifier's is, its table with the exact one's (equal at t = 0, where y1 and y2 are independent given x)."""
    model = load_labelled_model(path, VESDE(), device)
    labels = model.head.labels
    if labels["label"] != "dataset" or labels["datasets"] != list(models):
        raise UserError(f"{path} predicts {labels['label']}s of {'+'.join(labels['datasets'])}, not which of "
                        f"{list(models)}: pass a model trained with --gen-idx {' '.join(models)} --label dataset")
    return MarginalProductClassifier(model)


@torch.no_grad()
def calibration(classifier, groups, time) -> list:
    """One row per group of images: the classifier's mean marginal and joint table, and the exact ones if known."""
    rows = []
    for name, x, posterior in groups:
        log_joint = classifier(x, torch.full((len(x),), float(time)))  # [n, m, m]
        joint, marginal = log_joint.exp(), marginal_log_probs(log_joint).exp()
        off_diagonal = joint.sum(dim=(1, 2)) - torch.diagonal(joint, dim1=1, dim2=2).sum(dim=1)
        row = {"cell": name, "images": len(x), "marginal": marginal.mean(dim=0).tolist(),
               "mean_top_marginal": float(marginal.max(dim=1).values.mean()),
               "joint": joint.mean(dim=0).tolist(), "off_diagonal_mass": float(off_diagonal.mean()),
               "exact_marginal": None, "exact_joint": None, "exact_off_diagonal_mass": None}
        if posterior is not None:
            exact = torch.tensor(posterior)
            row.update(exact_marginal=exact.tolist(), exact_joint=(exact[:, None] * exact[None, :]).tolist(),
                       exact_off_diagonal_mass=float(1.0 - (exact ** 2).sum()))
        rows.append(row)
    return rows


def along_trajectories(classifier, models, count, config) -> list:
    """One row per noise level of `count` trajectories of each base model: the classifier against the exact
    posterior (mean |Q - exact| of the joint table) and, per label pair, its guidance gradient against the exact
    one (cosine weighted by the exact norm, ratio of mean norms)."""
    sde, device = VESDE(), config["DEVICE"]
    bases = [load_score_model(base_model_path(config["GEN_CKPT_DIR"], name, REFERENCE_EPOCH), sde, device,
                              input_channels=dataset_spec(name)[0]) for name in models]
    trajectories = sample_trajectories(bases, count, CPU_SAMPLER, lambda grid: torch.ones_like(grid, dtype=torch.bool),
                                       sde, device, torch.Generator(device=device).manual_seed(config["SEED"]))
    _, exact, _ = exact_ingredients(models, device=device)
    pairs = [(y1, y2) for y1 in range(len(models)) for y2 in range(y1, len(models))]
    rows = []
    for time, x in zip(trajectories.times.tolist(), trajectories.states):
        t = torch.full((len(x),), time, device=x.device)
        learned_table, learned_gradients = _table_and_gradients(classifier, x, t, pairs)
        exact_table, exact_gradients = _table_and_gradients(exact, x, t, pairs)
        row = {"t": time, "sigma": float(sde.marginal_prob_std(time)), "states": len(x),
               "mean_abs_error": float((learned_table.exp() - exact_table.exp()).abs().mean())}
        for (y1, y2), learned, wanted in zip(pairs, learned_gradients, exact_gradients):
            cosine = torch.nn.functional.cosine_similarity(learned.flatten(1), wanted.flatten(1), dim=1)
            # Weighted by the exact gradient's norm, and norms over the batch rather than per state: where the exact
            # gradient vanishes (all of a state's posterior on cells alike for the pair) neither says anything.
            norms = wanted.flatten(1).norm(dim=1)
            weights = norms / norms.sum().clamp_min(1e-30)
            ratio = learned.flatten(1).norm(dim=1).mean() / norms.mean().clamp_min(1e-30)
            row[f"y=({y1 + 1},{y2 + 1})"] = {"cosine": float((weights * cosine).sum()), "norm_ratio": float(ratio)}
        rows.append(row)
    return rows


def _table_and_gradients(classifier, x, t, pairs):
    """The classifier's log joint table (detached) and grad_x log Q(y1, y2 | x_t) for each pair."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        table = classifier(x_in, t)
        gradients = [torch.autograd.grad(table[:, y1, y2].sum(), x_in, retain_graph=True)[0] for y1, y2 in pairs]
    return table.detach(), gradients


def print_trajectory_table(rows):
    pairs = [key for key in rows[0] if key.startswith("y=")]
    print(f"{'t':>6} {'sigma':>7} {'|Q-exact|':>9} " + " ".join(f"{pair + ' cos/ratio':>18}" for pair in pairs))
    for row in rows:
        print(f"{row['t']:>6.3f} {row['sigma']:>7.3f} {row['mean_abs_error']:>9.3f} " + " ".join(
            f"{row[pair]['cosine']:>10.2f}/{row[pair]['norm_ratio']:<7.2f}" for pair in pairs))


def print_table(rows, models):
    def vector(values):
        return "[" + " ".join(f"{v:.2f}" for v in values) + "]" if values is not None else "–"

    def number(value, width):
        return f"{value:>{width}.3f}" if value is not None else f"{'–':>{width}}"

    width = 6 * len(models) + 1
    print(f"{'cell':<14} {'n':>4} {'Q(y|x)':>{width}} {'exact':>{width}} {'top':>5} {'off-diag':>8} {'exact':>6}")
    for row in rows:
        print(f"{row['cell']:<14} {row['images']:>4} {vector(row['marginal']):>{width}} "
              f"{vector(row['exact_marginal']):>{width}} {row['mean_top_marginal']:>5.2f} "
              f"{number(row['off_diagonal_mass'], 8)} {number(row['exact_off_diagonal_mass'], 6)}")
    known = [row for row in rows if row["exact_marginal"] is not None]
    if known:
        marginal_error = sum(abs(a - b) for r in known for a, b in zip(r["marginal"], r["exact_marginal"]))
        joint_error = sum(abs(a - b) for r in known for qa, ea in zip(r["joint"], r["exact_joint"])
                          for a, b in zip(qa, ea))
        print(f"mean |Q - exact| over cells with an exact posterior: marginal "
              f"{marginal_error / (len(known) * len(models)):.3f}, joint {joint_error / (len(known) * len(models) ** 2):.3f}")


def main(argv=None):
    config = configure(globals(), argv, choices={"MODELS": tuple(BASE_DATASETS)})  # base models only
    samples_path = config["SAMPLES"]
    if samples_path is None:
        models = [str(name) for name in config["MODELS"] or ["MN1", "MN2", "MN3"]]
    else:
        samples = load_samples(samples_path)
        models = read_meta(samples_path, config["MODELS"], None)["models"]
        channels = validate_composition(models, [])
        if samples.shape[1] != channels:
            raise UserError(f"{samples_path} holds {samples.shape[1]}-channel samples; models {models} draw "
                            f"{channels}: pass the --models that drew them")
    if len(models) not in CLASSIFIERS:
        raise UserError(f"--models: a joint classifier separates 2 or 3 models, got {len(models)}")
    classifier_class, made_by = CLASSIFIERS[len(models)]
    if holds_label_head(config["CLASSIFIER_CKPT"], made_by):  # a joint diffusion model of the datasets' union: its
        # head, which names the datasets it separates
        classifier, mismatch = dataset_head(config["CLASSIFIER_CKPT"], models, config["DEVICE"]), None
    else:
        classifier = load_classifier(config["CLASSIFIER_CKPT"], classifier_class, config["DEVICE"], made_by)
        # By name: the exact posteriors are of the models' datasets, whichever checkpoints drew the samples.
        mismatch = check_provenance(config["CLASSIFIER_CKPT"], [(name, None) for name in models], force=config["FORCE"])
    stem = Path(config["CLASSIFIER_CKPT"]).stem
    if config["TRAJECTORIES"]:
        rows = along_trajectories(classifier, models, config["TRAJECTORIES"], config)
        print(f"{config['CLASSIFIER_CKPT']} against the exact posterior along {config['TRAJECTORIES']} trajectories of "
              f"each of {models}")
        print_trajectory_table(rows)
        out = ensure_writable_dir(config["OUT_DIR"]) / f"{stem}_trajectories.json"
        out.write_text(json.dumps({"settings": config, "models": models, "levels": rows}, indent=2) + "\n")
        print(f"wrote {out}")
        return rows
    if samples_path is None:
        groups, source, out_name = (real_image_groups(models, config["IMAGES_PER_CELL"]), "MNIST test images",
                                    f"{stem}_calibration.json")
    else:
        groups, source, out_name = (sample_groups(samples, models, load_oracle(config["ORACLE"])),
                                    f"the {len(samples)} samples of {samples_path}, grouped by the oracle",
                                    f"{stem}_on_{Path(samples_path).stem}.json")
    rows = calibration(classifier, groups, config["TIME"])
    print(f"{config['CLASSIFIER_CKPT']} at t = {config['TIME']:g} on {source}, models {models}")
    print_table(rows, models)
    out = ensure_writable_dir(config["OUT_DIR"]) / out_name
    out.write_text(json.dumps({"settings": config, "models": models, "cells": rows,
                               **({"forced": True, "provenance_mismatch": mismatch} if mismatch else {})},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    run_main(main)
