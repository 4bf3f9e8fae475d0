"""Training-free operators of the related systems, as score models.

Composable Diffusion (Liu et al. 2022) combines unconditional models by adding their scores: AND is
s = sum_i w_i s_i, the score of the tempered product prod_i p_i^w_i at t = 0, and NOT, with p_1 as the
unconditional model, (1 + w) s_1 - w s_2, the score of p_1 (p_1 / p_2)^w. At t > 0 the sum of the noised
scores is not the score of the noised product: Reduce, Reuse, Recycle (Du et al. 2023) therefore samples the
same sums with annealed MCMC
(samplers/mcmc.py), and Feynman-Kac correctors reweight particles for the gap (samplers/smc.py).

A ScoreSum has the interface of BinaryDiffusionComposition ((x, t) -> score, `input_channels`), so every
sampler takes it; when all its models are energy-parameterised (models/energy_model.py) it also has the
summed energy that the Metropolis-corrected samplers need.
"""
import torch.nn as nn

from models.compositions import _FrozenComposition
from models import freeze
from models.energy_model import has_energy


class ScoreSum(_FrozenComposition):
    """s(x, t) = sum_i w_i s_i(x, t); with energy models also E(x, t) = sum_i w_i E_i(x, t)."""

    def __init__(self, score_models, weights):
        super().__init__()
        score_models, weights = list(score_models), [float(w) for w in weights]
        if not score_models or len(weights) != len(score_models):
            raise ValueError(f"a score sum needs one weight per model: {len(score_models)} models, "
                             f"{len(weights)} weights")
        channels = {model.input_channels for model in score_models}
        if len(channels) > 1:
            raise ValueError(f"score models take different input channels {sorted(channels)}; "
                             f"compose models of one kind")
        self.input_channels = channels.pop()
        self.weights = weights
        self.score_models = nn.ModuleList(freeze(model) for model in score_models)
        self.has_energy = all(has_energy(model) for model in score_models)

    def forward(self, x, t):
        return sum(w * model(x, t) for w, model in zip(self.weights, self.score_models))

    def energy_and_score(self, x, t):
        """(E [B], score): one pass of each energy model."""
        if not self.has_energy:
            raise TypeError("this score sum has no energy: its models are not energy-parameterised "
                            "(train them with train_diffusion.py --energy)")
        energy, score = 0.0, 0.0
        for w, model in zip(self.weights, self.score_models):
            model_energy, model_score = model.energy_and_score(x, t)
            energy, score = energy + w * model_energy, score + w * model_score
        return energy, score


def product_of_experts(score_models, weights=None) -> ScoreSum:
    """Composable Diffusion's AND: prod_i p_i^w_i (all w_i = 1 unless given; each must be > 0)."""
    weights = [1.0] * len(score_models) if weights is None else list(weights)
    if any(w <= 0 for w in weights):
        raise ValueError(f"product weights must be > 0, got {weights}")
    return ScoreSum(score_models, weights)


def negation(score_model, negated_model, weight=1.0) -> ScoreSum:
    """Composable Diffusion's NOT with p_1 as the unconditional model: s_1 + w (s_1 - s_2) = (1 + w) s_1 - w s_2,
    the score of p_1 (p_1 / p_2)^w (w >= 0). Composable Diffusion writes NOT as the unconditional score minus w
    times (s_negated - unconditional); with unconditional base models, p_1 is that unconditional model. The
    exponents then sum to one, so that at high noise the composed score is the prior's; the bare s_1 - w s_2
    (exponents 1 - w) leaves the ODE's noise undecayed (x ~ sigma^(1 - w)): its samples stay noise."""
    if weight < 0:
        raise ValueError(f"the negation weight must be >= 0, got {weight}")
    return ScoreSum([score_model, negated_model], [1.0 + float(weight), -float(weight)])
