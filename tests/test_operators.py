"""The related systems' operators and samplers on analytic targets (issue 25): Composable Diffusion's score sums,
RRR's annealed MCMC, Feynman-Kac SMC and SuperDiff, against closed-form Gaussian products, mixtures and densities.

    python -m pytest -q tests/test_operators.py
"""
import math

import pytest
import torch

from models.energy_model import EnergyScoreNet
from models.operators import ScoreSum, negation, product_of_experts
from models.superposition import ito_log_density_increment
from samplers import (MCMCKernel, annealed_mcmc_sampler, effective_sample_size, fkc_product_sampler, mcmc_steps,
                      superdiff_sampler, systematic_resample)
from samplers.heun_sampler import reverse_sde_grid
from sde import VESDE
from tests.analytic import GaussianMixtureBases, GaussianMixtureScore

SDE = VESDE()
PARTICLES = 4000


class GaussianEnergy(torch.nn.Module):
    """N(mean, s^2 I) noised to time t, as an energy model: E = |x - mean|^2 / (2 (s^2 + std(t)^2))."""

    input_channels = 2

    def __init__(self, mean, component_std, sde=SDE):
        super().__init__()
        self.mean, self.component_std, self.sde = torch.as_tensor(mean, dtype=torch.float32), component_std, sde
        self.calls = 0

    def variance(self, t):
        return (self.component_std ** 2 + self.sde.marginal_prob_std(t) ** 2)[:, None]

    def log_density(self, x, t):
        var = self.variance(t)[:, 0]
        return -0.5 * ((x - self.mean) ** 2).sum(1) / var - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)

    def energy_and_score(self, x, t):
        self.calls += 1
        var = self.variance(t)
        return 0.5 * ((x - self.mean) ** 2).sum(1) / var[:, 0], -(x - self.mean) / var

    def forward(self, x, t):
        return self.energy_and_score(x, t)[1]


# Two experts N(mu_1, 1) and N(mu_2, 0.5^2): their product is N(mu*, v*) in closed form.
MU_1, STD_1, MU_2, STD_2 = torch.tensor([-1.0, 0.5]), 1.0, torch.tensor([1.5, -0.5]), 0.5
PRODUCT_VAR = STD_1 ** 2 * STD_2 ** 2 / (STD_1 ** 2 + STD_2 ** 2)
PRODUCT_MEAN = (STD_2 ** 2 * MU_1 + STD_1 ** 2 * MU_2) / (STD_1 ** 2 + STD_2 ** 2)


def experts():
    return [GaussianEnergy(MU_1, STD_1), GaussianEnergy(MU_2, STD_2)]


def moment_errors(x):
    """(largest |mean - mean*|, largest |var / var* - 1|) over the two coordinates."""
    return float((x.mean(0) - PRODUCT_MEAN).abs().max()), float((x.var(0) / PRODUCT_VAR - 1).abs().max())


def test_score_sum_adds_weighted_scores_and_energies():
    a, b = experts()
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    torch.testing.assert_close(product_of_experts([a, b], [2.0, 0.5])(x, t), 2 * a(x, t) + 0.5 * b(x, t))
    torch.testing.assert_close(negation(a, b, 0.7)(x, t), 1.7 * a(x, t) - 0.7 * b(x, t))
    energy, score = product_of_experts([a, b]).energy_and_score(x, t)
    torch.testing.assert_close(energy, a.energy_and_score(x, t)[0] + b.energy_and_score(x, t)[0])
    torch.testing.assert_close(score, a(x, t) + b(x, t))


def test_score_sum_refuses_what_it_cannot_compose():
    a, b = experts()
    with pytest.raises(ValueError, match="one weight per model"):
        ScoreSum([a, b], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        product_of_experts([a, b], [1.0, -1.0])
    grey = GaussianEnergy(MU_1, STD_1)
    grey.input_channels = 1
    with pytest.raises(ValueError, match="input channels"):
        ScoreSum([a, grey], [1.0, 1.0])
    score_only = GaussianMixtureScore(MU_1[None], torch.ones(1), STD_1, SDE)
    with pytest.raises(TypeError, match="no energy"):
        ScoreSum([a, score_only], [1.0, 1.0]).energy_and_score(torch.zeros(1, 2), torch.ones(1))
    with pytest.raises(TypeError, match="needs an energy model"):
        annealed_mcmc_sampler(ScoreSum([score_only], [1.0]), SDE, MCMCKernel("mala"), batch_size=2, num_steps=3,
                              shape=(2,), progress=False)


def test_plain_score_sum_misses_the_product_and_says_by_how_much():
    """The sum of noised scores, run down the reverse SDE, is not the product's sampler (RRR's point): here the
    samples' variance is 20% or more off the product's, at a step count where SMC and MCMC meet it."""
    generator = torch.Generator().manual_seed(0)
    x, stats = annealed_mcmc_sampler(product_of_experts(experts()), SDE, MCMCKernel("ula", steps_per_level=0),
                                     batch_size=PARTICLES, num_steps=200, shape=(2,), generator=generator,
                                     progress=False)
    mean_error, var_error = moment_errors(x)
    assert var_error > 0.2, f"plain sum variance error {var_error:.3f}"
    assert stats["score_evaluations_per_sample"] == 200


def test_fkc_smc_reaches_the_closed_form_product():
    """Resampling leaves few distinct ancestors (here 9 resamplings), so SMC needs more particles than the
    independent samplers for the same error."""
    generator = torch.Generator().manual_seed(1)
    x, stats = fkc_product_sampler(experts(), SDE, batch_size=5 * PARTICLES, num_steps=100, shape=(2,),
                                   generator=generator, progress=False)
    mean_error, var_error = moment_errors(x)
    assert mean_error < 0.05 and var_error < 0.1, (mean_error, var_error)
    assert stats["resamplings"] > 0 and stats["score_evaluations_per_sample"] == 100
    assert 1 < stats["distinct_ancestors"] < 5 * PARTICLES


@pytest.mark.parametrize("kernel, mean_tolerance", [
    (MCMCKernel("mala", steps_per_level=4, step_size=0.5), 0.05),
    (MCMCKernel("hmc", steps_per_level=2, step_size=0.3, leapfrog_steps=3), 0.05),
    (MCMCKernel("uhmc", steps_per_level=2, step_size=0.05, leapfrog_steps=3), 0.05),
    # ULA's steps shrink with the noise level (eps = step_size std(t)^2): late in sampling it barely moves, and the
    # mean it still has to travel is left partly untravelled.
    (MCMCKernel("ula", steps_per_level=4, step_size=0.5), 0.1)])
def test_annealed_mcmc_reaches_the_closed_form_product(kernel, mean_tolerance):
    generator = torch.Generator().manual_seed(2)
    a, b = experts()
    x, stats = annealed_mcmc_sampler(product_of_experts([a, b]), SDE, kernel, batch_size=PARTICLES, num_steps=100,
                                     shape=(2,), generator=generator, progress=False)
    mean_error, var_error = moment_errors(x)
    assert mean_error < mean_tolerance and var_error < 0.1, (kernel.name, mean_error, var_error)
    per_step = kernel.leapfrog_steps if kernel.name in ("uhmc", "hmc") else 1
    assert stats["score_evaluations_per_sample"] == 1 + 99 * (1 + kernel.steps_per_level * per_step) == a.calls
    if kernel.name in ("mala", "hmc"):
        assert 0.3 < stats["acceptance_rate"] <= 1


class QuarticEnergy(torch.nn.Module):
    """E(x) = x^4 / 4 in one dimension, at every t: a non-Gaussian target where a biased kernel shows."""

    input_channels = 1

    def energy_and_score(self, x, t):
        return x[:, 0] ** 4 / 4, -x ** 3

    def forward(self, x, t):
        return -x ** 3


QUARTIC_SECOND_MOMENT = 2 * math.gamma(0.75) / math.gamma(0.25)  # E[x^2] under exp(-x^4 / 4)


@pytest.mark.parametrize("name", ["mala", "hmc"])
def test_metropolis_kernels_keep_the_target_where_langevin_is_biased(name):
    """Chains started from exp(-E) itself stay there under MALA and HMC at a step size where ULA drifts off."""
    torch.manual_seed(3)
    # x^4 / 4 ~ Gamma(1/4, 1) under exp(-x^4 / 4): exact draws, with a random sign.
    magnitude = (4 * torch.distributions.Gamma(0.25, 1.0).sample((40000, 1))) ** 0.25
    start = magnitude * torch.sign(torch.rand(40000, 1) - 0.5)
    t, epsilon = torch.zeros(len(start)), 0.15
    generator = torch.Generator().manual_seed(3)
    x, acceptance = mcmc_steps(QuarticEnergy(), MCMCKernel(name, steps_per_level=30), start, t, epsilon, generator)
    biased, _ = mcmc_steps(QuarticEnergy(), MCMCKernel("ula", steps_per_level=30), start, t, epsilon, generator)
    assert abs(float((x ** 2).mean()) / QUARTIC_SECOND_MOMENT - 1) < 0.02
    assert float((biased ** 2).mean()) / QUARTIC_SECOND_MOMENT - 1 > 0.03
    assert 0.5 < acceptance < 1


def test_ito_density_estimate_tracks_the_closed_form_log_density():
    """Along a reverse-SDE path of N(mu, s^2) (its own score), the summed Itô increments equal the change of
    the exact log q_t(x_t) to within a few percent of that change."""
    model = GaussianEnergy(MU_1, STD_1)
    grid, variance_steps = reverse_sde_grid(SDE, 1000)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(256, 2, generator=generator) * SDE.prior_std()
    start = model.log_density(x, grid[0].expand(len(x)))
    estimate = torch.zeros(len(x))
    for t, dv in zip(grid[:-1], variance_steps.tolist()):
        score = model(x, t.expand(len(x)))
        dx = dv * score + math.sqrt(dv) * torch.randn(x.shape, generator=generator)
        estimate += ito_log_density_increment([score], dx, dv)[:, 0]
        x = x + dx
    exact = model.log_density(x, grid[-1].expand(len(x))) - start
    assert float((estimate - exact).abs().mean()) < 0.05 * float(exact.abs().mean())


def mixture_bases():
    """Three well-separated components: model 1 on {A, B}, model 2 on {B, C}. Close to the origin against the
    prior's std (7.0): SuperDiff takes the models' log-densities equal at t = 1, which holds only as far as
    the noised models are alike there (with the components at +-6 it leaves a bias of 0.04 in the shares)."""
    means = torch.tensor([[-3.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    return GaussianMixtureBases(means, [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], 0.3, SDE)


def test_superdiff_or_gives_the_mixture():
    bases = mixture_bases()
    generator = torch.Generator().manual_seed(5)
    x, _, evaluations = superdiff_sampler([bases.score_model(0), bases.score_model(1)], SDE, "or",
                                          mixture_weights=[0.25, 0.75], batch_size=PARTICLES, num_steps=200,
                                          shape=(2,), generator=generator, progress=False)
    mixture = 0.25 * bases.weights[0] + 0.75 * bases.weights[1]  # [A, B, C] = [0.125, 0.5, 0.375]
    assert float((bases.component_shares(x) - mixture).abs().max()) < 0.025
    assert evaluations == 200


def test_superdiff_and_lands_on_the_shared_component():
    bases = mixture_bases()
    generator = torch.Generator().manual_seed(6)
    x, log_q, _ = superdiff_sampler([bases.score_model(0), bases.score_model(1)], SDE, "and",
                                    batch_size=1000, num_steps=200, shape=(2,), generator=generator, progress=False)
    assert float(bases.component_shares(x)[1]) > 0.9
    assert float((log_q[:, 0] - log_q[:, 1]).abs().median()) < 0.5  # the densities kept equal


def test_resampling_helpers():
    assert effective_sample_size(torch.zeros(10, dtype=torch.float64)) == pytest.approx(10)
    one_hot = torch.full((6,), -1e9, dtype=torch.float64)
    one_hot[4] = 0.0
    assert effective_sample_size(one_hot) == pytest.approx(1)
    assert systematic_resample(one_hot).tolist() == [4] * 6
    index = systematic_resample(torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)),
                                torch.Generator().manual_seed(0))
    assert sorted(torch.bincount(index, minlength=3).tolist()) in ([0, 1, 2], [1, 1, 1])  # 1.5, 0.75, 0.75 copies


def test_energy_model_score_is_minus_the_energy_gradient():
    torch.manual_seed(0)
    model = EnergyScoreNet(SDE.marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=32, input_channels=1).eval()
    x, t = torch.randn(2, 1, 28, 28, dtype=torch.float64), torch.tensor([0.2, 0.7], dtype=torch.float64)
    model = model.double()
    energy, score = model.energy_and_score(x, t)
    direction = torch.randn_like(x)
    h = 1e-4
    numeric = (model.energy(x + h * direction, t) - model.energy(x - h * direction, t)) / (2 * h)
    torch.testing.assert_close(numeric, -(score * direction).flatten(1).sum(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model(x, t), score)
