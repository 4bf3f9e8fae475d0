"""Where a row's gap comes from: each showcase row composed from learned or exact ingredients, sampled, scored.

Every row of the results table (sculpting.showcase.SHOWCASE) is composed four ways, {learned, exact} base scores
× {learned, exact} classifiers (models/exact.py: each base model as its finite training set, its noised density a
Gaussian kernel sum), and sampled with each of SAMPLERS ("pc": the row's committed PC steps; "heun-churn": the cpu
recipe's 40 levels). With exact bases and exact classifiers at λ = 1 the composition is exact, so what is left is
the sampler's own error; swapping in one learned part at a time shows which part carries a row's gap. Each cell
(row, ingredients, sampler) draws NUM_SAMPLES samples (PC_SAMPLES for PC with exact bases), scores them against the
row's exact target with the project's oracle, and writes <OUT_DIR>/<row>/<bases>_<classifiers>_<sampler>.json; a
rerun skips the cells that exist, so an interrupted run continues where it stopped. Prints and writes the table
(attribution.md) and a plot (attribution.png) of what exists.

    python benchmarks/attribution.py                                   # every cell, cheapest first
    python benchmarks/attribution.py --only "g1$" --samplers heun-churn  # the λ = 1 rows, heun-churn only
    python benchmarks/attribution.py --only "g1$" --samplers pc pc-denoised --ingredients exact_exact
    python benchmarks/attribution.py --plot-only                       # the table and plot of the finished cells
"""
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from custom_datasets import dataset_spec  # noqa: E402
from models.classifier_model import JointYClassifier, ThreeWayConditionalYClassifier, ThreeWayJointYClassifier  # noqa: E402,E501
from models.compositions import compose  # noqa: E402
from models.oracle import predict  # noqa: E402
from samplers import Sampler, sample_in_batches  # noqa: E402
from sculpting.artefacts import REFERENCE_EPOCH, base_model_path, composition_stem  # noqa: E402
from sculpting.checkpoints import load_classifier, load_oracle, load_score_model  # noqa: E402
from sculpting.cli import configure, run_main  # noqa: E402
from sculpting.evaluation import composition_metrics, sample_cells  # noqa: E402
from sculpting.exact import exact_ingredients  # noqa: E402
from sculpting.recipes import CPU_SAMPLER  # noqa: E402
from sculpting.runtime import get_device  # noqa: E402
from sculpting.sde import VESDE  # noqa: E402
from sculpting.showcase import SHOWCASE, classifier_checkpoints  # noqa: E402
from sculpting.targets import target_distribution  # noqa: E402

SAMPLERS = ["heun-churn", "pc"]  # heun-churn: the cpu recipe's 40 levels; pc: the row's committed steps
# (pc-denoised: the same PC grid ending with the denoising step in place of the last Euler step)
_EVERY_SAMPLER = ("heun-churn", "pc", "pc-denoised")
_EVERY_INGREDIENTS = ("exact_exact", "learned_learned", "exact_learned", "learned_exact")
INGREDIENTS = list(_EVERY_INGREDIENTS)  # the cells' ingredients, each <bases>_<classifiers>: exact or learned
NUM_SAMPLES = 512
PC_SAMPLES = 256  # PC with exact bases: a kernel sum over every training image at each of its 500-1,000 evaluations
SEED = 0

# ---- engineering settings: how and where it runs, not what it samples ----
BATCH_SIZE = 128
ONLY = ""  # regular expression over the rows' stems (e.g. "M1_M2", "g1$"); empty: every row
GEN_CKPT_DIR = "checkpoints"
BASELINE_DIR = "results/cpu"  # the committed rows' .json: their PC steps
DEVICE = "auto"
THREADS = 0
PLOT_ONLY = False  # only the table and plot of the cells that exist
OUT_DIR = "benchmarks/results/attribution"


def learned_ingredients(models, ckpt_dir, device, sde):
    """(base score models, classifiers) as the row's sample script loads them."""
    bases = [load_score_model(base_model_path(ckpt_dir, name, REFERENCE_EPOCH), sde, device,
                              input_channels=dataset_spec(name)[0]) for name in models]
    joint_path, conditional_path = classifier_checkpoints(models, ckpt_dir)
    joint_class = ThreeWayJointYClassifier if len(models) == 3 else JointYClassifier
    classifiers = [load_classifier(joint_path, joint_class, device, "a classifier-training script")]
    if conditional_path:
        classifiers.append(load_classifier(conditional_path, ThreeWayConditionalYClassifier, device,
                                           "train_3way_conditional_classifier.py"))
    return bases, classifiers


def composition_of(models, observations, scales, ingredients, config, device, sde, cache):
    """The row's composition from the ingredients named "<bases>_<classifiers>" (each "exact" or "learned")."""
    key = tuple(models)
    if key not in cache:  # the exact ones share one set of kernel sums; build each kind once per set of models
        exact_bases, exact_joint, exact_conditional = exact_ingredients(models, device=device)
        cache[key] = {"exact": (exact_bases, [exact_joint, exact_conditional][:len(models) - 1]),
                      "learned": learned_ingredients(models, config["GEN_CKPT_DIR"], device, sde)}
    base_kind, classifier_kind = ingredients.split("_")
    bases, classifiers = cache[key][base_kind][0], cache[key][classifier_kind][1]
    return compose(bases, classifiers, observations, scales)


def sampler_for(name, stem, base_kind, config):
    """(sampler, sample count) of a cell: the cpu recipe's heun-churn, or PC at the committed row's steps (and
    last step, or, for pc-denoised, the denoising one)."""
    if name == "heun-churn":
        return CPU_SAMPLER, config["NUM_SAMPLES"]
    committed = json.loads((Path(config["BASELINE_DIR"]) / f"{stem}.json").read_text())
    denoise = committed.get("denoise_last_step", False) or name == "pc-denoised"
    return Sampler("pc", committed["num_steps"], denoise), \
        config["PC_SAMPLES"] if base_kind == "exact" else config["NUM_SAMPLES"]


def run_cell(row, ingredients, sampler_name, config, device, sde, cache, oracle):
    _, models, observations, scales = row
    stem = composition_stem(models, observations, scales)
    sampler, num_samples = sampler_for(sampler_name, stem, ingredients.split("_")[0], config)
    composition = composition_of(models, observations, scales, ingredients, config, device, sde, cache)
    started = time.perf_counter()
    samples = sample_in_batches(composition, sde, sampler, num_samples, config["BATCH_SIZE"], device,
                                config["SEED"], progress=False)
    seconds = time.perf_counter() - started
    metrics = composition_metrics(sample_cells(predict(oracle, samples)), target_distribution(models, observations))
    return {"row": stem, "ingredients": ingredients, **sampler.settings(sde), "num_samples": num_samples,
            "seed": config["SEED"], "sampling_seconds": round(seconds, 1), "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{key: metrics[key] for key in ("support_precision", "support_precision_ci", "tv_distance",
                                             "tv_distance_ci", "tv_of_exact_samples", "unrecognisable_share")}}


def cells_to_run(config):
    pattern = re.compile(config["ONLY"]) if config["ONLY"] else None
    rows = [row for row in SHOWCASE if not pattern or pattern.search(composition_stem(*row[1:]))]
    # cheapest first: the λ = 1 rows (the exact composition), heun-churn before PC, two models before three
    rows.sort(key=lambda row: (row[3][0] != 1.0, len(row[1])))
    return [(row, ingredients, sampler) for sampler in config["SAMPLERS"] for row in rows
            for ingredients in config["INGREDIENTS"]]


def cell_path(out, row, ingredients, sampler):
    return out / composition_stem(*row[1:]) / f"{ingredients}_{sampler}.json"


def sampler_label(cell) -> str:
    """A cell's sampler as the table names it: pc:250, pc:250 denoised (its last step), heun-churn:40."""
    denoised = " denoised" if cell["sampler"] == "pc" and cell.get("denoise_last_step") else ""
    return f"{cell['sampler']}:{cell['num_steps']}{denoised}"


def table(results) -> str:
    lines = ["| row | sampler | ingredients (bases, classifiers) | n | support precision (95% CI) | TV (95% CI) | "
             "TV of n exact draws | unrecognisable | s |", "|---|---|---|---|---|---|---|---|---|"]
    for cell in results:
        lo, hi = cell["support_precision_ci"]
        tv_lo, tv_hi = cell["tv_distance_ci"]
        lines.append(f"| {cell['row']} | {sampler_label(cell)} | {cell['ingredients'].replace('_', ', ')}"
                     f" | {cell['num_samples']} | {cell['support_precision']:.1%} ({lo:.1%}–{hi:.1%}) | "
                     f"{cell['tv_distance']:.3f} ({tv_lo:.3f}–{tv_hi:.3f}) | {cell['tv_of_exact_samples']['mean']:.3f} | "
                     f"{cell['unrecognisable_share']:.1%} | {cell['sampling_seconds']:.0f} |")
    machines = sorted({f"{cell['device']} ({cell['cpu_capability']})" for cell in results})
    lines += ["", f"Sampling wall time of these {len(results)} cells: "
                  f"{sum(cell['sampling_seconds'] for cell in results) / 60:.0f} min on {', '.join(machines)}."]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(cell["row"] for cell in results))
    columns = list(dict.fromkeys(f"{cell['ingredients']}\n{sampler_label(cell)}" for cell in results))
    grid = torch.full((len(rows), len(columns)), float("nan"))
    for cell in results:
        grid[rows.index(cell["row"]), columns.index(f"{cell['ingredients']}\n{sampler_label(cell)}")] = \
            cell["tv_distance"]
    figure, axis = plt.subplots(figsize=(1.6 * len(columns) + 3, 0.45 * len(rows) + 1.5))
    image = axis.imshow(grid.numpy(), cmap="viridis_r", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(columns)):
            value = float(grid[i, j])
            if value == value:  # not NaN: the cell exists
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
    axis.set(xticks=range(len(columns)), yticks=range(len(rows)), title="TV to the exact target")
    axis.set_xticklabels(columns, fontsize=7)
    axis.set_yticklabels(rows, fontsize=7)
    figure.colorbar(image)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv=None):
    config = configure(globals(), argv, choices={"SAMPLERS": _EVERY_SAMPLER, "INGREDIENTS": _EVERY_INGREDIENTS})
    out = Path(config["OUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    device, sde, cache = get_device(config["DEVICE"]), VESDE(), {}
    oracle = None
    for row, ingredients, sampler in cells_to_run(config):
        path = cell_path(out, row, ingredients, sampler)
        if config["PLOT_ONLY"] or path.is_file():
            continue
        oracle = oracle or load_oracle(device=device)
        print(f"sampling {path.relative_to(out)}", flush=True)
        cell = run_cell(row, ingredients, sampler, config, device, sde, cache, oracle)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(cell, indent=2) + "\n")
        print(f"  TV {cell['tv_distance']:.3f}, support precision {cell['support_precision']:.1%}, "
              f"{cell['sampling_seconds']:.0f} s", flush=True)
    # The table holds every finished cell of the selected rows, of whichever sampler and ingredients.
    every_cell = cells_to_run({**config, "SAMPLERS": _EVERY_SAMPLER, "INGREDIENTS": _EVERY_INGREDIENTS})
    results = [json.loads(path.read_text()) for row, ingredients, sampler in every_cell
               if (path := cell_path(out, row, ingredients, sampler)).is_file()]
    text = table(results)
    print(text)
    (out / "attribution.md").write_text(text + "\n")
    if results:
        plot(results, out / "attribution.png")
    print(f"wrote {out / 'attribution.md'}" + (f" and {out / 'attribution.png'}" if results else ""))


if __name__ == "__main__":
    run_main(main)
