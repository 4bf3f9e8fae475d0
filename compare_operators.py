"""Compositional Sculpting against the other ways of composing diffusion models, on the same base models and the
same exact targets.

Each row samples one operator with its system's sampler at about the same budget, ~100 evaluations of the
composed score per sample (each evaluates every base model once), and scores the samples with the project's
oracle against the operator's exact target (sculpting/targets.py) or, where it has none, against its intended one:
  sculpting     BinaryDiffusionComposition / ConditionalDiffusionComposition, heun-churn (the cpu recipe)
  composable    Composable Diffusion's score sums (models/operators.py), the same sampler
  rrr-*         Reduce, Reuse, Recycle: the sum sampled with annealed MCMC (samplers/mcmc.py); mala and hmc on
                the energy-parameterised base models (train_diffusion.py --energy)
  fkc-smc       Feynman-Kac correctors: SMC over each batch of particles (samplers/smc.py)
  superdiff-*   SuperDiff OR / AND with the Itô density estimator (samplers/superdiff.py)

    python compare_operators.py                      # every row: results/operators/ (table, grids, bar chart)
    python compare_operators.py --only "M1_M2/.*"    # the rows whose suite/method the expression matches
    python compare_operators.py --plot-only          # redraw the table and chart from the saved rows

Each row runs on the trained base models and, as a second column, on exact ones (INGREDIENTS; models/exact.py:
each base model as its finite training set, with exact scores, energies and log-densities; sculpting then also
with the exact classifiers). On exact bases what is left is the operator's own bias (and its sampler's): the two
columns tell it from the trained models' error.

    python compare_operators.py --ingredients exact       # only the exact column

A row's samples and scores are kept (<suite>_<method>.pt/.json, ..._exact for the exact column); a rerun reuses
every row whose settings are unchanged, so an interrupted run resumes where it stopped.
"""
import json
import re
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sculpting.artefacts import (CONDITIONAL_CLASSIFIER, JOINT_CLASSIFIER, ORACLE_CHECKPOINT, REFERENCE_EPOCH,
                       THREE_WAY_CLASSIFIER, base_model_path, energy_model_name, reference_classifier_checkpoint)
from sculpting.checkpoints import (atomic_save, check_composition_provenance, ensure_writable_dir, load_classifier,
                         load_energy_model, load_oracle, load_score_model)
from sculpting.cli import configure, run_main
from custom_datasets import cell_name, dataset_spec
from sculpting.errors import UserError
from sculpting.evaluation import composition_metrics, percent, sample_cells
from sculpting.exact import exact_ingredients
from sculpting.images import save_image_grid
from models.classifier_model import JointYClassifier, ThreeWayConditionalYClassifier, ThreeWayJointYClassifier
from models.compositions import compose
from models.operators import negation, product_of_experts
from models.oracle import predict
from sculpting.recipes import CPU_SAMPLER
from sculpting.reproduction.report import update_markers
from sculpting.runtime import get_device
from samplers import MCMCKernel, annealed_mcmc_sampler, fkc_product_sampler, superdiff_sampler
from sculpting.sde import VESDE
from sculpting.targets import OPERATOR_TARGETS, operator_target, target_distribution

REPO = Path(__file__).resolve().parent

NUM_SAMPLES = 512
BATCH_SIZE = 128  # also the particle population of fkc-smc
SEED = 0

# Every system at ~100 composed-score evaluations per sample.
HEUN = CPU_SAMPLER  # the cpu recipe's: 79 score evaluations per sample
EM_STEPS = 100  # fkc-smc, superdiff: Euler-Maruyama steps of the reverse SDE, one evaluation each
ULA = MCMCKernel("ula", steps_per_level=2, step_size=0.05)  # 34 levels: 1 + 33 (1 + 2) = 100
UHMC = MCMCKernel("uhmc", steps_per_level=1, step_size=0.05, leapfrog_steps=3, damping=0.9)  # 26 levels: 101
MALA = MCMCKernel("mala", steps_per_level=2, step_size=0.05)
HMC = MCMCKernel("hmc", steps_per_level=1, step_size=0.05, leapfrog_steps=3)
MCMC_LEVELS = {"ula": 34, "mala": 34, "uhmc": 26, "hmc": 26}
GUIDANCE = 20.0  # sculpting's two-model rows, as in README's Results
GUIDANCE_3WAY = [10.0, 75.0]  # sculpting-123: the joint and the conditional classifier's guidance scales
INGREDIENTS = ["learned", "exact"]  # the base models of the two columns: trained checkpoints, or exact
EXACT_NUM_SAMPLES = 128  # per row of the exact column: an exact score sums over every training image
# On exact bases the energy-parameterised rows are their score rows (an exact model has both): not run twice.
EXACT_TWINS = {"composable-and-energy", "rrr-ula-energy"}

# ---- engineering settings: how and where it runs, not what it samples ----
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = REFERENCE_EPOCH
ENERGY_CKPT_DIR = "checkpoints/energy"  # gen_<GEN_IDX>_energy_ckpt_<ENERGY_CKPT_EPOCH>.pth: the rows on energy models
ENERGY_CKPT_EPOCH = 11  # the epoch of those checkpoints (the cpu preset trains 12: 0..11)
ONLY = None
DEVICE = "auto"
THREADS = 0
OUT_DIR = "results/operators"
PLOT_ONLY = False
FORCE = False  # sculpt with classifiers trained on other base models than GEN_CKPT_DIR's (each row's .json records it)

# The rows: suite -> (base models, [(method, operator, what it samples)]). The operator names the target.
SUITES = {
    "M1_M2": (["M1", "M2"], [
        ("sculpting-harmonic", "product", {"sculpt": (1, 2)}),
        ("composable-and", "product", {"sum": "and"}),
        ("rrr-ula", "product", {"mcmc": ULA}),
        ("rrr-uhmc", "product", {"mcmc": UHMC}),
        # The same product on the energy-parameterised models: without and with the Metropolis test, which tells
        # what the parameterisation does from what the correction does.
        ("composable-and-energy", "product", {"sum": "and", "energy": True}),
        ("rrr-ula-energy", "product", {"mcmc": ULA, "energy": True}),
        ("rrr-mala", "product", {"mcmc": MALA, "energy": True}),
        ("rrr-hmc", "product", {"mcmc": HMC, "energy": True}),
        ("fkc-smc", "product", {"smc": True}),
        ("superdiff-and", "product", {"superdiff": "and"}),
        ("sculpting-contrast", "contrast", {"sculpt": (1, 1)}),
        # NOT's weight w in p_1 (p_1 / p_2)^w: a pilot of 16 samples gave 81% in D_1 \ D_2 at w = 0.3, 19% at 0.6
        # and noise at 1 (the extrapolation (1 + w) s_1 - w s_2 leaves the data's range); both ends are rows.
        ("composable-not-w0.3", "negation", {"sum": "not", "weight": 0.3}),
        ("composable-not-w1", "negation", {"sum": "not", "weight": 1.0}),
        ("sculpting-mixture", "mixture", {"sculpt": ()}),
        ("superdiff-or", "mixture", {"superdiff": "or"}),
    ]),
    "MN2_MN3": (["MN2", "MN3"], [
        ("composable-and", "product", {"sum": "and"}),
        ("rrr-ula", "product", {"mcmc": ULA}),
        ("fkc-smc", "product", {"smc": True}),
        ("superdiff-and", "product", {"superdiff": "and"}),
        ("composable-not-w0.3", "negation", {"sum": "not", "weight": 0.3}),
        ("superdiff-or", "mixture", {"superdiff": "or"}),
    ]),
    "MN1_MN2_MN3": (["MN1", "MN2", "MN3"], [
        ("sculpting-123", "product", {"sculpt": (1, 2, 3)}),
        ("composable-and", "product", {"sum": "and"}),
        ("rrr-ula", "product", {"mcmc": ULA}),
        ("fkc-smc", "product", {"smc": True}),
    ]),
}
CLASSIFIERS = {2: [(JOINT_CLASSIFIER, JointYClassifier, "train_classifier.py")],
               3: [(THREE_WAY_CLASSIFIER, ThreeWayJointYClassifier, "train_3way_classifier.py"),
                   (CONDITIONAL_CLASSIFIER, ThreeWayConditionalYClassifier, "train_3way_conditional_classifier.py")]}


def target_of(models, operator, how):
    """The exact target, or the intended one (negation, SuperDiff AND), and which of the two it is."""
    if operator == "contrast":
        return target_distribution(models, how["sculpt"]), "exact: p_1^2 / (p_1 + p_2)"
    kind = OPERATOR_TARGETS[operator]
    if how.get("superdiff") == "and":  # the densities kept equal: it aims at the intersection, has no exact form
        kind = kind.replace("exact", "intended")
    return operator_target(models, operator), kind


def settings_of(how, config) -> dict:
    """What a row's sampler is, as its .json records it (and a rerun compares)."""
    if "sculpt" in how or "sum" in how:
        out = {**HEUN.settings(), **({"energy_models": True} if how.get("energy") else {})}
        if how.get("sum") == "not":
            out["negation_weight"] = how["weight"]
        if "sculpt" in how:
            observations = how["sculpt"]
            out["observations"] = list(observations)
            out["guidance"] = [0.0] if not observations else list(config["GUIDANCE_3WAY"]) \
                if len(observations) == 3 else [config["GUIDANCE"]]
        return out
    if "mcmc" in how:
        return {"sampler": "annealed-mcmc", "num_steps": MCMC_LEVELS[how["mcmc"].name], **how["mcmc"].settings(),
                "energy_models": bool(how.get("energy"))}
    if "smc" in how:
        return {"sampler": "fkc-smc", "num_steps": config["EM_STEPS"], "ess_threshold": 0.5,
                "particles": config["BATCH_SIZE"]}
    return {"sampler": f"superdiff-{how['superdiff']}", "num_steps": config["EM_STEPS"]}


def load_bases(config, models, energy, sde, device, exact_cache):
    """The rows' base models: trained (energy-parameterised where `energy`), or, for the exact column (exact_cache
    a dict), exact ones, built once per suite."""
    if exact_cache is not None:
        if tuple(models) not in exact_cache:
            exact_cache[tuple(models)] = exact_ingredients(models, device=device)
        return exact_cache[tuple(models)][0]
    if energy:
        return [load_energy_model(base_model_path(config["ENERGY_CKPT_DIR"], energy_model_name(name),
                                                  config["ENERGY_CKPT_EPOCH"]), sde, device,
                                  input_channels=dataset_spec(name)[0]) for name in models]
    return [load_score_model(base_model_path(config["GEN_CKPT_DIR"], name, config["GEN_CKPT_EPOCH"]), sde, device,
                             input_channels=dataset_spec(name)[0]) for name in models]


def sculpting_classifiers(count):
    """[(checkpoint, class, script that trains it)] of the classifiers that sculpt `count` models (the reference's)."""
    return [(reference_classifier_checkpoint(name), cls, made_by) for name, cls, made_by in CLASSIFIERS[count]]


def check_sculpting_provenance(models, config):
    """The sculpting classifiers against GEN_CKPT_DIR's base models (check_composition_provenance)."""
    bases = [(name, base_model_path(config["GEN_CKPT_DIR"], name, config["GEN_CKPT_EPOCH"])) for name in models]
    return check_composition_provenance([path for path, _, _ in sculpting_classifiers(len(models))], bases,
                                        config["FORCE"])


def sculpting(bases, observations, device, config, exact_classifiers=None):
    """The composition of README's rows; no observation: the mixture, guidance 0 (the classifier's posterior mix).
    The trained classifiers, or `exact_classifiers` (joint, conditional) for the exact column."""
    classifiers = list(exact_classifiers[:len(bases) - 1]) if exact_classifiers else \
        [load_classifier(path, cls, device, made_by) for path, cls, made_by in sculpting_classifiers(len(bases))]
    y_1, y_2 = observations[:2] if observations else (1, 1)
    scales = config["GUIDANCE_3WAY"] if len(observations) == 3 else [config["GUIDANCE"] if observations else 0.0]
    return compose(bases, classifiers, [y_1, y_2, *observations[2:]], scales)


def sampler_of(how, bases, sde, device, config, exact_classifiers=None):
    """batch (size, generator) -> (samples, composed-score evaluations per sample, extra stats)."""
    if "sculpt" in how or "sum" in how:
        model = sculpting(bases, how["sculpt"], device, config, exact_classifiers) if "sculpt" in how else \
            product_of_experts(bases) if how["sum"] == "and" else negation(bases[0], bases[1], how["weight"])
        return lambda size, generator: (HEUN.sample(model, sde, size, device=device, generator=generator,
                                                    progress=False), HEUN.evaluations_per_sample, {})
    if "mcmc" in how:
        kernel, product = how["mcmc"], product_of_experts(bases)

        def mcmc(size, generator):
            x, stats = annealed_mcmc_sampler(product, sde, kernel, size, MCMC_LEVELS[kernel.name],
                                             device=device, generator=generator, progress=False)
            return x, stats["score_evaluations_per_sample"], {k: v for k, v in stats.items() if k == "acceptance_rate"}
        return mcmc
    if "smc" in how:
        def smc(size, generator):
            x, stats = fkc_product_sampler(bases, sde, batch_size=size, num_steps=config["EM_STEPS"], device=device,
                                           generator=generator, progress=False)
            return x, stats["score_evaluations_per_sample"], {key: stats[key] for key in ("resamplings",
                                                                                       "distinct_ancestors")}
        return smc

    def superdiff(size, generator):
        x, _, evaluations = superdiff_sampler(bases, sde, how["superdiff"], batch_size=size,
                                              num_steps=config["EM_STEPS"],
                                              device=device, generator=generator, progress=False)
        return x, evaluations, {}
    return superdiff


def row_stem(suite, method, ingredients):
    return f"{suite}_{method}" + ("_exact" if ingredients == "exact" else "")


def run_row(config, suite, method, operator, how, oracle, device, out_dir, ingredients="learned", exact_cache=None):
    """Sample and score one row on `ingredients` ("learned" or "exact" base models; exact_cache: the exact
    ingredients built so far), or reuse its saved result when its settings are unchanged."""
    models = SUITES[suite][0]
    stem = row_stem(suite, method, ingredients)
    exact = ingredients == "exact"
    num_samples = config["EXACT_NUM_SAMPLES"] if exact else config["NUM_SAMPLES"]
    settings = {"models": models, "operator": operator, "num_samples": num_samples,
                "batch_size": config["BATCH_SIZE"], "seed": config["SEED"], **settings_of(how, config),
                **({"ingredients": "exact"} if exact else {})}
    saved = out_dir / f"{stem}.json"
    if saved.is_file() and json.loads(saved.read_text())["settings"] == settings:
        return json.loads(saved.read_text())
    sde = VESDE()
    bases = load_bases(config, models, how.get("energy"), sde, device, exact_cache if exact else None)
    draw = sampler_of(how, bases, sde, device, config, exact_cache[tuple(models)][1:] if exact else None)
    mismatch = check_sculpting_provenance(models, config) if "sculpt" in how and not exact else None
    generator = torch.Generator(device=device).manual_seed(config["SEED"])
    batches, extra, started = [], [], time.perf_counter()
    for start in tqdm(range(0, num_samples, config["BATCH_SIZE"]), desc=stem, leave=False):
        x, evaluations, stats = draw(min(config["BATCH_SIZE"], num_samples - start), generator)
        batches.append(x.clamp(0.0, 1.0).cpu())
        extra.append(stats)
    seconds = time.perf_counter() - started
    samples = torch.cat(batches)
    target, kind = target_of(models, operator, how)
    metrics = composition_metrics(sample_cells(predict(oracle, samples)), target, seed=config["SEED"])
    row = {"suite": suite, "method": method, "settings": settings, "target_kind": kind,
           "target": {cell_name(cell): share for cell, share in target.items()},
           "score_evaluations_per_sample": evaluations,
           "seconds_per_sample": seconds / len(samples), "device": str(device),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           **{key: [stats[key] for stats in extra] for key in (extra[0] if extra else {})},
           **{key: metrics[key] for key in ("support_precision", "support_precision_ci", "tv_distance",
                                            "tv_distance_ci", "unrecognisable_share", "tv_of_exact_samples")},
           "cells": metrics["cells"], **({"forced": True, "provenance_mismatch": mismatch} if mismatch else {})}
    atomic_save(samples, out_dir / f"{stem}.pt")
    save_image_grid(samples[:64], out_dir / f"{stem}.png")
    saved.write_text(json.dumps(row, indent=2) + "\n")
    return row


def exact_column(row) -> str:
    """A row of the exact column as one table cell: support precision and TV, each with its 95% CI, and n."""
    if row is None:
        return "–"
    return (f"{percent(row['support_precision'], row['support_precision_ci'])}; TV {row['tv_distance']:.3f} "
            f"({row['tv_distance_ci'][0]:.3f}–{row['tv_distance_ci'][1]:.3f}); n = {row['settings']['num_samples']}")


def table(rows, exact_rows=(), link_prefix=""):
    """The rows as a Markdown table, with their exact-bases twins (`exact_rows`, matched by suite and method) as a
    column; grids linked under `link_prefix`. A row that exists only on exact bases gets a line of its own."""
    exact_of = {(row["suite"], row["method"]): row for row in exact_rows}
    learned = {(row["suite"], row["method"]) for row in rows}
    rows = [*rows, *(row for row in exact_rows if (row["suite"], row["method"]) not in learned)]
    lines = ["| models | method | target | support precision (95% CI) | TV to target (95% CI) | unrecognisable "
             "| score evaluations / sample | seconds / sample | exact bases: support precision; TV | grid |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["settings"].get("ingredients") == "exact":  # no learned twin: only its exact column
            lines.append(f"| {'/'.join(row['settings']['models'])} | {row['method']} | {row['target_kind']} "
                         f"| – | – | – | – | – | {exact_column(row)} | – |")
            continue
        kind = row["target_kind"].replace("|", "\\|")  # a bare | would end the table cell
        note = (f", acceptance {sum(row['acceptance_rate']) / len(row['acceptance_rate']):.2f}"
                if "acceptance_rate" in row else
                f", {sum(row['resamplings']) / len(row['resamplings']):.0f} resamplings, "
                f"{sum(row['distinct_ancestors'])} lineages" if "resamplings" in row else "")
        lines.append(f"| {'/'.join(row['settings']['models'])} | {row['method']}{note} | {kind} "
                     f"| {percent(row['support_precision'], row['support_precision_ci'])} "
                     f"| {row['tv_distance']:.3f} ({row['tv_distance_ci'][0]:.3f}–{row['tv_distance_ci'][1]:.3f}) "
                     f"| {100 * row['unrecognisable_share']:.1f}% | {row['score_evaluations_per_sample']} "
                     f"| {row['seconds_per_sample']:.3f} | {exact_column(exact_of.get((row['suite'], row['method'])))} "
                     f"| [png]({link_prefix}{row['suite']}_{row['method']}.png) |")
    machine = {(row["device"], row["cpu_capability"], row["threads"]) for row in [*rows, *exact_rows]}
    lines.append("")
    lines.append("Measured on " + "; ".join(f"{device} ({capability}, {threads} threads)"
                                            for device, capability, threads in sorted(machine)) + ".")
    return "\n".join(lines)


def plot_bars(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['suite']}\n{row['method']}" + (" (exact)" if row["settings"].get("ingredients") else "")
              for row in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.6 * len(rows)), 7), sharex=True)
    for ax, key, name in ((axes[0], "tv_distance", "TV to target"), (axes[1], "support_precision",
                                                                         "support precision")):
        values = [row[key] for row in rows]
        low = [row[key] - row[f"{key}_ci"][0] for row in rows]
        high = [row[f"{key}_ci"][1] - row[key] for row in rows]
        colours = [("lightcoral" if row["settings"].get("ingredients") else "tab:red")
                   if row["method"].startswith("sculpting") else
                   ("lightsteelblue" if row["settings"].get("ingredients") else "tab:blue") for row in rows]
        ax.bar(range(len(rows)), values, yerr=[low, high], color=colours, capsize=2)
        ax.set_ylabel(name)
    axes[1].set_xticks(range(len(rows)), labels, rotation=90, fontsize=7)
    axes[0].set_title("operators against their targets (red: sculpting; pale: on exact base models; "
                      "bars: 95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def selected_rows(only):
    pattern = re.compile(only) if only else None
    rows = [(suite, method, operator, how) for suite, (_, methods) in SUITES.items()
            for method, operator, how in methods if pattern is None or pattern.fullmatch(f"{suite}/{method}")]
    if not rows:
        raise UserError(f"--only {only!r} matches no row; rows are named suite/method, e.g. M1_M2/fkc-smc")
    return rows


def saved_rows(out_dir, rows, ingredients) -> list:
    """The saved results of `rows` on `ingredients`, those that exist."""
    paths = [out_dir / f"{row_stem(suite, method, ingredients)}.json" for suite, method, _, _ in rows]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def main(argv=None):
    config = configure(globals(), argv, choices={"INGREDIENTS": ("learned", "exact")})
    out_dir = ensure_writable_dir(config["OUT_DIR"])
    rows = selected_rows(config["ONLY"])
    if not config["PLOT_ONLY"]:
        device = get_device(config["DEVICE"])
        oracle, exact_cache = load_oracle(ORACLE_CHECKPOINT, device), {}
        for ingredients in config["INGREDIENTS"]:
            for row in tqdm([row for row in rows if ingredients == "learned" or row[1] not in EXACT_TWINS],
                            desc=f"rows ({ingredients} bases)"):
                run_row(config, *row, oracle, device, out_dir, ingredients, exact_cache)
    # The table holds every row saved so far: a run of one column keeps the other's.
    results, exact_results = saved_rows(out_dir, rows, "learned"), saved_rows(out_dir, rows, "exact")
    if not results and not exact_results:
        raise UserError(f"{out_dir} holds no rows yet; run without --plot-only first")
    (out_dir / "operators.md").write_text(table(results, exact_results) + "\n")
    plot_bars([*results, *exact_results], out_dir / "operators.png")
    if out_dir.resolve() == (REPO / OUT_DIR).resolve() and not config["ONLY"]:  # the committed table: the docs' too
        update_markers(REPO / "docs" / "operators.md", "operators", table(results, exact_results, f"../{OUT_DIR}/"))
    print((out_dir / "operators.md").read_text())


if __name__ == "__main__":
    run_main(main)
