"""Exact target distributions of compositions over (digit, colour) cells (docs/reference.md §1, §8).

Each base model i is taken to be its dataset D_i with every image equally
likely: p_i(x) = 1/|D_i| for an image of a cell of D_i, else 0. All images of
a cell share that density, so a cell's share of the composition
p(x | y_1..y_n) ∝ p_M(x) prod_k p(y_k | x) is
    count(cell) · p_M(x) · prod_k p(y_k | x),
with p_M = (1/m) sum_i p_i and p(y = k | x) = p_k(x) / sum_j p_j(x), normalised.
count(cell) is the number of MNIST training images of the cell's digit (each
colour of a digit holds all of them). No observations gives the plain mixture;
one model gives that base model.

The same rule applies to base models as they actually sample (a plug-in
target): if model i puts a share q_i(cell) of its samples in each cell, and
within a cell the models' images are alike, the cell's share of the
composition is (mean_i q_i(cell))^(1-n) prod_k q_{y_k}(cell), normalised; the
exact target is the case q_i(cell) = count(cell) / |D_i|. Cells the models
share by mistake (malformed digits, wrong digits) then get their share too.

A composite (sculpting/composites.py: a composition of two base models used as
a base model, docs/reference.md §9) is uniform within each cell too, so the same
rule chains: its shares q(cell) are its own exact composition's (λ = 1), or, for
the plug-in target, its samples' measured shares.
"""
from functools import lru_cache

import torch

from sculpting.composites import model_channels, parse_model
from sculpting.errors import UserError
from custom_datasets import DATA_ROOT, dataset_spec, load_mnist


@lru_cache(maxsize=None)
def digit_counts(root=DATA_ROOT) -> tuple:
    """Number of MNIST training images of each digit 0..9, counted from the labels."""
    _, labels = load_mnist(root, train=True)
    return tuple(torch.bincount(labels, minlength=10).tolist())


def validate_composition(models, observations) -> int:
    """The samples' channel count of a composition; a UserError for unknown models or labels out of range."""
    if not models:
        raise UserError("no base models given; name them, e.g. --models M1 M2")
    channels = {model_channels(name) for name in models}
    if len(channels) > 1:
        raise UserError(f"models {list(models)} mix grey (1-channel) and coloured (3-channel) datasets")
    for label in observations:
        if not 1 <= label <= len(models):
            raise UserError(f"observation {label} is out of range: labels are 1-based, 1..{len(models)} "
                            f"for models {list(models)}")
    return channels.pop()


def cell_densities(models, root=DATA_ROOT) -> dict:
    """{(digit, colour): [p_i(x) for each model]}: the density 1/|D_i| of one image of the cell under each
    base model (0 where the model lacks the cell), for every cell of the models' datasets, sorted."""
    counts = digit_counts(root)
    model_cells = [set(dataset_spec(str(name))[1]) for name in models]
    image_density = [1.0 / sum(counts[digit] for digit, _ in cells) for cells in model_cells]
    return {cell: [density if cell in cells else 0.0 for density, cells in zip(image_density, model_cells)]
            for cell in sorted(set().union(*model_cells))}


def model_posteriors(models, root=DATA_ROOT) -> dict:
    """{(digit, colour): [p(y = i | x) for each model]} for an image x of each cell (uniform prior over models):
    what a perfect classifier outputs at t = 0."""
    return {cell: [d / sum(densities) for d in densities] for cell, densities in cell_densities(models, root).items()}


def composition_of_cells(shares: dict, observations=()) -> dict:
    """{cell: probability} of p(x | y_1..y_n) from {cell: [q_i(cell) for each model]}, each model's share of its
    mass in the cell, with the models' images alike within a cell: weight (mean_i q_i)^(1-n) prod_k q_{y_k},
    normalised; largest first, no zeros. An empty result (no cell that every observed model draws) is a
    UserError."""
    weights = {}
    for cell, q in shares.items():
        mean = sum(q) / len(q)
        weight = mean ** (1 - len(observations)) if mean > 0 else 0.0
        for label in observations:
            weight *= q[label - 1]
        if weight > 0:
            weights[cell] = weight
    if not weights:
        raise UserError(f"observations {list(observations)} have no common support: the composition is empty")
    norm = sum(weights.values())
    return dict(sorted(((cell, w / norm) for cell, w in weights.items()), key=lambda item: -item[1]))


def model_shares(name, root=DATA_ROOT) -> dict:
    """{cell: share of the model's mass} of a base model (count(cell) / |D_i|), or of a composite (its own exact
    composition's cells)."""
    composite = parse_model(name)
    if composite is not None:
        return target_distribution(composite.pair, composite.observations, root)
    counts = digit_counts(root)
    cells = dataset_spec(name)[1]
    size = sum(counts[digit] for digit, _ in cells)
    return {cell: counts[cell[0]] / size for cell in cells}


def target_distribution(models, observations=(), root=DATA_ROOT) -> dict:
    """{(digit, colour): probability} of p(x | y_1..y_n) over the models' cells (base models or composites);
    largest first, no zeros."""
    models = [str(name) for name in models]
    validate_composition(models, observations)
    per_model = [model_shares(name, root) for name in models]
    shares = {cell: [model.get(cell, 0.0) for model in per_model] for cell in sorted(set().union(*per_model))}
    try:
        return composition_of_cells(shares, observations)
    except UserError:
        raise UserError(f"observations {list(observations)} of models {models} have no common support: "
                        f"the composition is empty") from None


# ---- The related systems' operators ----
# Each operator's density of one image, from the images' densities under the base models: a mixture weighs them,
# a product (any positive powers: Composable Diffusion's AND, RRR, FKC) is uniform on the images every model
# holds, as the harmonic mean is. A negation p_1 / p_2^w and SuperDiff's AND have no normalisable exact target
# here; they are scored against what they aim at: D_1 without the others' images, resp. the intersection.
OPERATOR_TARGETS = {
    "mixture": "exact: omega_i / |D_i| on each D_i",
    "product": "exact: uniform on the intersection of the D_i",
    "negation": "intended: uniform on D_1 without the other D_i",
}


def operator_target(models, operator, mixture_weights=None, root=DATA_ROOT) -> dict:
    """{(digit, colour): probability} of an operator's exact or intended target (OPERATOR_TARGETS); largest first,
    no zeros. `mixture_weights` omega (uniform unless given) apply to "mixture" only."""
    models = [str(name) for name in models]
    validate_composition(models, ())
    if operator not in OPERATOR_TARGETS:
        raise UserError(f"unknown operator {operator!r}; choose one of {', '.join(OPERATOR_TARGETS)}")
    omega = [1.0 / len(models)] * len(models) if mixture_weights is None else [float(w) for w in mixture_weights]
    if len(omega) != len(models) or any(w < 0 for w in omega) or sum(omega) <= 0:
        raise UserError(f"mixture weights need one non-negative weight per model ({len(models)}), got {omega}")
    counts = digit_counts(root)
    image_density = {
        "mixture": lambda d: sum(w * di for w, di in zip(omega, d)),
        "product": lambda d: float(all(d)),
        "negation": lambda d: d[0] * float(not any(d[1:])),
    }[operator]
    weights = {cell: counts[cell[0]] * image_density(densities)
               for cell, densities in cell_densities(models, root).items()}
    norm = sum(weights.values())
    if norm == 0:
        raise UserError(f"the {operator} of models {models} is empty: they share no cell"
                        if operator == "product" else f"the negation of models {models} is empty: "
                        f"{models[0]}'s cells are all in the others")
    return dict(sorted(((cell, w / norm) for cell, w in weights.items() if w > 0), key=lambda item: -item[1]))
