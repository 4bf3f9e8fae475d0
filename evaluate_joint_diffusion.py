"""Joint diffusion models (train_joint_diffusion.py) against what this project already has: two tables.

accuracy   each head and each separately trained classifier on the test images of the datasets it was trained
           on, clean (t = eps) and with noise of std sigma added (t = the SDE's time of that std). For a "dataset"
           label only images of cells that one dataset alone holds have a true label; the sculpting classifier's
           marginal Q(y1 | x_t) (trained on the base models' trajectories) is scored beside the joint head.
sampling   the joint cell model sampled towards each cell: unguided, by its own head ("input": grad wrt x_t;
           "bottleneck": the representation moved, as the paper; "features": every encoder level moved, as the
           published script) and by the separately trained classifier's guidance of the same score part, all at
           the same sampler and score evaluations; each row's share of samples the oracle reads as the requested
           cell. The dataset model composes: unguided (its target: the mixture of its datasets), and guided by the
           product of its marginals towards y = (1, 2), (1, 1) and (2, 2) at each of COMPOSITION_SCALES (targets:
           the harmonic mean and the contrasts, which sculpting guides with the joint classifier Q(y1, y2 | x_t)).

    python evaluate_joint_diffusion.py                   # both tables: results/joint_diffusion/ and docs/joint_diffusion.md
    python evaluate_joint_diffusion.py --parts accuracy  # the accuracy table only (seconds)
A sampling row's scores are kept (rows/<name>.json, with its 64-sample grid); a rerun reuses every row whose
settings are unchanged.
"""
import dataclasses
import json
import time
from pathlib import Path

import torch

from sculpting.artefacts import JOINT_CLASSIFIER, ORACLE_CHECKPOINT, reference_classifier_checkpoint
from sculpting.checkpoints import atomic_write_text, ensure_writable_dir, load_classifier, load_labelled_model, load_oracle
from sculpting.cli import configure, run_main
from custom_datasets import COLOURS, DATA_ROOT, LabelledImages, dataset_spec
from sculpting.errors import UserError
from sculpting.evaluation import composition_metrics, parse_cell, percent, sample_cells
from sculpting.images import save_image_grid
from models.classifier_model import JointYClassifier, marginal_log_probs
from models.fast_paths import fast_score_model, resolve_precision
from models.joint_diffusion import JointScoreNet, guided_score
from models.oracle import predict
from sculpting.recipes import CPU_SAMPLER
from sculpting.reproduction.report import update_markers
from sculpting.runtime import get_device
from samplers import sample_in_batches
from samplers.pc_sampler import SAMPLING_EPS
from sculpting.sde import VESDE
from sculpting.targets import target_distribution

REPO = Path(__file__).resolve().parent

JOINT_CELL_CKPT = "runs/joint/joint_MN2_cell_ckpt_23.pth"  # joint model of MN2's (digit, colour) cells
CELL_CLASSIFIER_CKPT = "runs/joint/classifier_MN2_cell_ckpt_23.pth"  # the separate classifier of those cells
JOINT_DATASET_CKPT = "runs/joint/joint_M1+M2_dataset_ckpt_23.pth"  # joint model of M1 and M2: which dataset
SCULPTING_CLASSIFIER_CKPT = reference_classifier_checkpoint(JOINT_CLASSIFIER)  # Q(y1, y2 | x_t) of M1 and M2
NOISE_LEVELS = [0.0, 0.5, 1.0, 2.0, 5.0]  # std of the noise added to the test images; 0: clean, at t = eps
INPUT_SCALES = [1.0, 4.0, 16.0]  # alpha of the head's guidance of x_t, and the separate classifier's scale
BOTTLENECK_LRS = [10.0]  # alpha of the bottleneck's move (a 64-sample pilot: 10 best of 1, 10, 100, 1000)
FEATURES_LRS = [10.0]  # alpha of every encoder level's move (pilot: 10 best of 1, 10, 100)
COMPOSITION_SCALES = [1.0, 20.0]  # scales of the dataset model's product-of-marginals guidance
NUM_SAMPLES = 512
NUM_STEPS = CPU_SAMPLER.num_steps  # heun-churn noise levels (the cpu recipe's sampler), denoised last step
ORACLE = ORACLE_CHECKPOINT
SEED = 0

# ---- engineering settings: how and where it runs, not what it samples ----
PARTS = ["accuracy", "sampling"]  # which tables to measure (the others are kept from the last run)
BATCH_SIZE = 128
PRECISION = "auto"
DEVICE = "auto"
THREADS = 0
OUT_DIR = "results/joint_diffusion"
UPDATE_DOCS = True  # write the tables into docs/joint_diffusion.md between their markers


def test_images(data: LabelledImages):
    """(images, labels) of the test set whose label the image determines: for "dataset", the cells one dataset
    alone holds."""
    x, y = data.batch(torch.arange(len(data)))
    if data.label != "dataset":
        return x, y
    keep = torch.ones(len(data), dtype=torch.bool)
    for digit, colour in data.cells:
        if sum((digit, colour) in dataset_spec(name)[1] for name in data.datasets) > 1:  # a shared cell
            keep &= (data.digits != digit) | (data.colours != COLOURS.index(colour))
    return x[keep], y[keep]


@torch.no_grad()
def accuracies(log_probs, x, y, noise_levels, sde, seed, batch_size=1024) -> list:
    """Top-1 accuracy of log_probs(x_t, t) [B, K] at each noise std (0: t = eps), one fixed noise draw per level."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for sigma in noise_levels:
        noisy = x + sigma * torch.randn(x.shape, generator=generator)
        t = float(sde.time_of_std(sigma)) if sigma > 0 else SAMPLING_EPS
        hits = sum(int((log_probs(chunk, torch.full((len(chunk),), t)).argmax(1) == labels).sum())
                   for chunk, labels in zip(noisy.split(batch_size), y.split(batch_size)))
        result.append(hits / len(x))
    return result


def accuracy_table(config, sde) -> list:
    rows = []
    for kind, path in (("joint head", config["JOINT_CELL_CKPT"]), ("separate classifier", config["CELL_CLASSIFIER_CKPT"]),
                       ("joint head", config["JOINT_DATASET_CKPT"])):
        model = load_labelled_model(path, sde, "cpu")
        labels = model.head.labels
        x, y = test_images(LabelledImages(labels["datasets"], labels["label"], labels["multi_label"], DATA_ROOT,
                                          train=False))
        rows.append({"model": Path(path).stem, "kind": kind, "label": labels["label"], "datasets": labels["datasets"],
                     "images": len(x), "accuracy": accuracies(model.log_probs, x, y, config["NOISE_LEVELS"], sde,
                                                              config["SEED"])})
        if labels["label"] == "dataset" and labels["datasets"] == ["M1", "M2"]:
            sculpting = load_classifier(config["SCULPTING_CLASSIFIER_CKPT"], JointYClassifier, "cpu",
                                        "train_classifier.py")
            rows.append({"model": Path(config["SCULPTING_CLASSIFIER_CKPT"]).stem,
                         "kind": "sculpting classifier, marginal Q(y1 \\| x_t)", "label": "dataset",
                         "datasets": labels["datasets"], "images": len(x),
                         "accuracy": accuracies(lambda x_t, t: marginal_log_probs(sculpting(x_t, t)), x, y,
                                                config["NOISE_LEVELS"], sde, config["SEED"])})
    return rows


def sampling_plan(config, cell_classes, dataset_classes) -> list:
    """(row name, settings) of every sampling row: the cell model unguided and towards each cell by every guidance;
    the dataset model of two datasets unguided and guided by the product of its marginals towards (1, 2), (1, 1) and
    (2, 2), the compositions the sculpting rows sample."""
    plan = [("cell/unguided", {"model": "cell", "classes": [], "alpha": 0.0, "guidance": "input"})]
    for cell in cell_classes:
        for guidance, alphas in (("input", config["INPUT_SCALES"]), ("bottleneck", config["BOTTLENECK_LRS"]),
                                 ("features", config["FEATURES_LRS"]), ("classifier", config["INPUT_SCALES"])):
            plan += [(f"cell/{cell.replace(' ', '-')}/{guidance}-a{alpha:g}",
                      {"model": "cell", "classes": [cell], "alpha": alpha, "guidance": guidance}) for alpha in alphas]
    plan.append(("dataset/unguided", {"model": "dataset", "classes": [], "alpha": 0.0, "guidance": "input"}))
    first, second = dataset_classes
    for observed in ([first, second], [first, first], [second, second]):  # the harmonic mean, the two contrasts
        plan += [(f"dataset/{'-'.join(observed)}/input-a{scale:g}",
                  {"model": "dataset", "classes": observed, "alpha": scale, "guidance": "input"})
                 for scale in config["COMPOSITION_SCALES"]]
    return plan


def run_sampling_row(name, how, models, sampler, oracle, device, precision, config, out_dir) -> dict:
    """Sample one row (or reuse its saved result if its settings are unchanged) and score it with the oracle."""
    settings = {**how, "num_samples": config["NUM_SAMPLES"], "batch_size": config["BATCH_SIZE"], "seed": config["SEED"],
                "precision": precision, **sampler.settings(VESDE()), "oracle": config["ORACLE"],
                "checkpoint": config["JOINT_CELL_CKPT" if how["model"] == "cell" else "JOINT_DATASET_CKPT"],
                **({"classifier": config["CELL_CLASSIFIER_CKPT"]} if how["guidance"] == "classifier" else {})}
    row_file = out_dir / "rows" / f"{name.replace('/', '_')}.json"
    if row_file.is_file():
        saved = json.loads(row_file.read_text())
        if saved["settings"] == settings:
            return saved
    joint_model, classifier = models[how["model"]]
    labels = joint_model.head.labels
    observations = [labels["classes"].index(c) for c in how["classes"]] or [0]
    score = guided_score(joint_model, observations, how["alpha"], how["guidance"] if how["guidance"] != "classifier"
                         else "input", classifier if how["guidance"] == "classifier" else None)
    started = time.perf_counter()
    samples = sample_in_batches(fast_score_model(score, [], False, precision), VESDE(), sampler, config["NUM_SAMPLES"],
                                config["BATCH_SIZE"], device, config["SEED"], progress=False)
    seconds = time.perf_counter() - started
    cells = sample_cells(predict(oracle, samples))
    if how["model"] == "cell" and how["classes"]:
        target = {parse_cell(how["classes"][0]): 1.0}
    else:  # unguided: the model's datasets (their mixture); the dataset model guided: their composition
        target = target_distribution(labels["datasets"], [y + 1 for y in observations] if how["alpha"] else [])
    metrics = composition_metrics(cells, target, seed=config["SEED"])
    ensure_writable_dir(row_file.parent)
    save_image_grid(samples[:64], row_file.with_suffix(".png"))
    result = {"name": name, "settings": settings, "seconds_per_sample": seconds / len(samples),
              "support_precision": metrics["support_precision"], "support_precision_ci": metrics["support_precision_ci"],
              "tv_distance": metrics["tv_distance"], "tv_distance_ci": metrics["tv_distance_ci"],
              "unrecognisable_share": metrics["unrecognisable_share"], "cells": metrics["cells"]}
    atomic_write_text(row_file, json.dumps(result, indent=2) + "\n")
    return result


def plot_first_samples(rows, classes, path, per_class=8):
    """One line per guidance setting of the cell model, the first `per_class` samples of each class side by side
    (cropped from the rows' 8x8 grids, whose top row they are)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    lines = {}
    for row in rows:
        parts = row["name"].split("/")
        if parts[0] == "cell" and len(parts) == 3:
            lines.setdefault(parts[2], {})[parts[1].replace("-", " ")] = row
    grid_row = 2 + 28  # make_grid's padding, then one image
    fig, axes = plt.subplots(len(lines), 1, figsize=(per_class * len(classes) * 0.32, len(lines) * 0.45 + 0.4))
    axes = np.atleast_1d(axes)
    for ax, (setting, per_cell) in zip(axes, lines.items()):
        crops = [np.asarray(Image.open(Path(path).parent / "rows" / f"{per_cell[c]['name'].replace('/', '_')}.png"))
                 [:grid_row + 2, :per_class * grid_row + 2] for c in classes]
        ax.imshow(np.concatenate(crops, axis=1))
        ax.set_xticks([(k + 0.5) * crops[0].shape[1] for k in range(len(classes))], classes if ax is axes[0] else [])
        ax.xaxis.tick_top()
        ax.set_yticks([])
        ax.set_ylabel(setting, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_markdown(rows, noise_levels) -> str:
    header = "| model | label | test images | " + " | ".join(
        "clean" if s == 0 else f"σ = {s:g}" for s in noise_levels) + " |"
    lines = [header, "|" + "---|" * (3 + len(noise_levels))]
    for row in rows:
        lines.append(f"| {row['kind']} (`{row['model']}`) | {row['label']} of {'+'.join(row['datasets'])} | "
                     f"{row['images']} | " + " | ".join(percent(a) for a in row["accuracy"]) + " |")
    return "\n".join(lines)


COMPOSITION_NAMES = {False: "harmonic mean", True: "contrast"}


def sampling_markdown(rows, cell_classes, datasets) -> str:
    by_name = {row["name"]: row for row in rows}
    unguided = by_name["cell/unguided"]
    lines = ["| guidance of the MN2 cell model | α | " + " | ".join(cell_classes) + " | mean |",
             "|" + "---|" * (3 + len(cell_classes))]
    shares = {c: next(r["measured"] for r in unguided["cells"] if r["cell"] == c) for c in cell_classes}
    lines.append("| none (unguided) | 0 | " + " | ".join(percent(shares[c]) for c in cell_classes)
                 + f" | {percent(sum(shares.values()) / len(shares))} |")
    methods = {}
    for row in rows:
        parts = row["name"].split("/")
        if parts[0] == "cell" and len(parts) == 3:
            guidance, alpha = parts[2].rsplit("-a", 1)
            methods.setdefault((guidance, alpha), {})[parts[1].replace("-", " ")] = row
    label = {"input": "own head, grad wrt x_t", "bottleneck": "own head, bottleneck moved",
             "features": "own head, every encoder level moved", "classifier": "separate classifier, grad wrt x_t"}
    for (guidance, alpha), per_class in methods.items():
        values = [per_class[c]["support_precision"] for c in cell_classes]
        lines.append(f"| {label[guidance]} | {alpha} | " + " | ".join(
            percent(per_class[c]["support_precision"], per_class[c]["support_precision_ci"]) for c in cell_classes)
                     + f" | {percent(sum(values) / len(values))} |")
    lines += ["", f"| the {'+'.join(datasets)} dataset model | scale | exact target | support precision | TV to target | "
                  f"unrecognisable |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        if row["name"].startswith("dataset/"):
            observed = row["settings"]["classes"]
            how = "unguided" if row["settings"]["alpha"] == 0 else f"P({observed[0]} \\| x_t)²" + " guidance" \
                if observed[0] == observed[1] else " ".join(f"P({name} \\| x_t)" for name in observed) + " guidance"
            target = "their mixture" if row["settings"]["alpha"] == 0 else \
                f"{COMPOSITION_NAMES[observed[0] == observed[1]]} y = ({', '.join(str(1 + datasets.index(c)) for c in observed)})"
            lines.append(f"| {how} | {row['settings']['alpha']:g} | {target} | "
                         f"{percent(row['support_precision'], row['support_precision_ci'])} | "
                         f"{row['tv_distance']:.3f} ({row['tv_distance_ci'][0]:.3f}–{row['tv_distance_ci'][1]:.3f}) | "
                         f"{percent(row['unrecognisable_share'])} |")
    return "\n".join(lines)


def main(argv=None):
    config = configure(globals(), argv)
    unknown = set(config["PARTS"]) - {"accuracy", "sampling"}
    if unknown or not config["PARTS"]:
        raise UserError(f"--parts takes accuracy and/or sampling, got {config['PARTS']}")
    device = get_device(config["DEVICE"])
    sde = VESDE()
    out_dir = ensure_writable_dir(config["OUT_DIR"])
    results_file = out_dir / "joint_diffusion.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    capability = torch.backends.cpu.get_cpu_capability()
    if "accuracy" in config["PARTS"]:
        results["accuracy"] = {"noise_levels": config["NOISE_LEVELS"], "rows": accuracy_table(config, sde)}
        print(accuracy_markdown(results["accuracy"]["rows"], config["NOISE_LEVELS"]))
    if "sampling" in config["PARTS"]:
        precision = resolve_precision(config["PRECISION"], device)
        models = {"cell": (load_labelled_model(config["JOINT_CELL_CKPT"], sde, device),
                           load_labelled_model(config["CELL_CLASSIFIER_CKPT"], sde, device)),
                  "dataset": (load_labelled_model(config["JOINT_DATASET_CKPT"], sde, device), None)}
        for joint_model, _ in models.values():
            if not isinstance(joint_model, JointScoreNet):
                raise UserError("--joint-cell-ckpt and --joint-dataset-ckpt take joint models' checkpoints")
        cell_classes = models["cell"][0].head.labels["classes"]
        sampler = dataclasses.replace(CPU_SAMPLER, num_steps=config["NUM_STEPS"])
        oracle = load_oracle(config["ORACLE"], device)
        plan = sampling_plan(config, cell_classes, models["dataset"][0].head.labels["classes"])
        rows = []
        for name, how in plan:
            rows.append(run_sampling_row(name, how, models, sampler, oracle, device, precision, config, out_dir))
            print(f"{name}: {percent(rows[-1]['support_precision'])} in the target's support, "
                  f"{rows[-1]['seconds_per_sample']:.3f} s/sample")
        results["sampling"] = {"rows": rows, "classes": cell_classes,
                               "datasets": models["dataset"][0].head.labels["datasets"], "score_evaluations_per_sample": sampler.evaluations_per_sample,
                               "precision": precision, "cpu_capability": capability, "device": str(device)}
        print(sampling_markdown(rows, cell_classes, models["dataset"][0].head.labels["datasets"]))
        plot_first_samples(rows, cell_classes, out_dir / "samples.png")
    atomic_write_text(results_file, json.dumps(results, indent=2) + "\n")
    sections = []
    if "accuracy" in results:
        sections.append(("joint_diffusion_accuracy", accuracy_markdown(results["accuracy"]["rows"],
                                                                       results["accuracy"]["noise_levels"])))
    if "sampling" in results:
        sampling = results["sampling"]
        table = sampling_markdown(sampling["rows"], sampling["classes"], sampling["datasets"])
        sections.append(("joint_diffusion_sampling", table +
                         f"\n\n{sampling['score_evaluations_per_sample']} score evaluations per sample, every row; "
                         f"{sampling['precision']} on {sampling['device']} ({sampling['cpu_capability']})."))
    markdown = "\n\n".join(text for _, text in sections)
    (out_dir / "joint_diffusion.md").write_text(markdown + "\n")
    for marker, text in sections if config["UPDATE_DOCS"] else []:
        update_markers(REPO / "docs" / "joint_diffusion.md", marker, text)
    print(f"wrote {results_file} and {out_dir / 'joint_diffusion.md'}")


if __name__ == "__main__":
    run_main(main)
