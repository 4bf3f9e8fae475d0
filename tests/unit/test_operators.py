"""The related systems' operators and samplers on analytic targets: Composable Diffusion's score sums,
RRR's annealed MCMC, Feynman-Kac SMC and SuperDiff, against closed-form Gaussian products, mixtures and densities.

    python -m pytest -q tests/unit/test_operators.py
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
from sculpting.sde import VESDE
from tests.analytic import (GaussianMixtureBases, GaussianMixtureScore, assert_beyond_standard_errors,
                            assert_within_standard_errors, frequency_standard_error, mean_and_standard_error,
                            variance_and_standard_error)

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


# The samplers' 100 reverse-SDE steps and their Tweedie step at sigma_min leave the moments slightly off the
# product's, the same way for every sampler (over 25 seeds of each: means within 0.021 of mu*, variances within
# 3.4% of v*): allowances for that bias, on top of the standard errors.
MEAN_BIAS, VARIANCE_BIAS = 0.025, 0.04 * PRODUCT_VAR


def experts():
    return [GaussianEnergy(MU_1, STD_1), GaussianEnergy(MU_2, STD_2)]


def assert_product_moments(mean, mean_error, variance, variance_error, what):
    """Per coordinate: the mean and the variance within 5 of their standard errors of the product's, beyond the
    samplers' bias allowances."""
    assert_within_standard_errors(mean, PRODUCT_MEAN, mean_error, bias=MEAN_BIAS, what=f"{what} mean")
    assert_within_standard_errors(variance, PRODUCT_VAR, variance_error, bias=VARIANCE_BIAS, what=f"{what} variance")


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
    samples' variance is about 25% off the product's, at a step count where SMC and MCMC meet it: it misses by
    more than the allowance they are given, by 5 (measured: 12) standard errors."""
    generator = torch.Generator().manual_seed(0)
    x, stats = annealed_mcmc_sampler(product_of_experts(experts()), SDE, MCMCKernel("ula", steps_per_level=0),
                                     batch_size=PARTICLES, num_steps=200, shape=(2,), generator=generator,
                                     progress=False)
    variance, variance_error = variance_and_standard_error(x)  # independent samples: their own spread
    assert_beyond_standard_errors((variance - PRODUCT_VAR).abs(), VARIANCE_BIAS, variance_error,
                                  what="plain sum's variance miss")
    assert stats["score_evaluations_per_sample"] == 200


SMC_RUNS = 25


def test_fkc_smc_reaches_the_closed_form_product():
    """Resampling copies particles, so one run's particles are not independent draws: a few lineages of very
    unequal size carry the population, and a run's mean strays about 0.045 (std / sqrt(n) would say 0.007). Nothing
    inside one run measured that reliably (std / sqrt(distinct ancestors) gave 4 times too small an error; grouping
    by first-step ancestor, 2 times), so the error comes from independent runs: the spread of their moments. With
    25 runs the standard error has 24 degrees of freedom: a correct sampler lands beyond 5 of them with probability
    4e-5 per coordinate."""
    moments = []
    for seed in range(SMC_RUNS):
        x, stats = fkc_product_sampler(experts(), SDE, batch_size=PARTICLES, num_steps=100, shape=(2,),
                                       generator=torch.Generator().manual_seed(seed), progress=False)
        moments.append(torch.cat([x.mean(0), x.var(0)]))
        assert stats["resamplings"] > 0 and stats["score_evaluations_per_sample"] == 100
        assert 1 < stats["distinct_ancestors"] < PARTICLES
    estimate, error = mean_and_standard_error(torch.stack(moments))
    assert_product_moments(estimate[:2], error[:2], estimate[2:], error[2:], f"FKC SMC over {SMC_RUNS} runs")


@pytest.mark.parametrize("kernel", [
    MCMCKernel("mala", steps_per_level=4, step_size=0.5),
    MCMCKernel("hmc", steps_per_level=2, step_size=0.3, leapfrog_steps=3),
    MCMCKernel("uhmc", steps_per_level=2, step_size=0.05, leapfrog_steps=3),
    MCMCKernel("ula", steps_per_level=4, step_size=0.5)])
def test_annealed_mcmc_reaches_the_closed_form_product(kernel):
    generator = torch.Generator().manual_seed(2)
    a, b = experts()
    x, stats = annealed_mcmc_sampler(product_of_experts([a, b]), SDE, kernel, batch_size=PARTICLES, num_steps=100,
                                     shape=(2,), generator=generator, progress=False)
    # Every sample is the end of its own chain: the chains are independent, and their spread is the error.
    assert_product_moments(*mean_and_standard_error(x), *variance_and_standard_error(x), kernel.name)
    per_step = kernel.leapfrog_steps if kernel.name in ("uhmc", "hmc") else 1
    assert stats["score_evaluations_per_sample"] == 1 + 99 * (1 + kernel.steps_per_level * per_step) == a.calls
    if kernel.name in ("mala", "hmc"):
        # A mean of per-chain rates in [0, 1]: sqrt(p (1 - p) / chains) bounds its standard error.
        rate = stats["acceptance_rate"]
        assert_beyond_standard_errors(rate, 0.3, frequency_standard_error(rate, PARTICLES), what="acceptance rate")
        assert rate <= 1


class QuarticEnergy(torch.nn.Module):
    """E(x) = x^4 / 4 in one dimension, at every t: a non-Gaussian target where a biased kernel shows."""

    input_channels = 1

    def energy_and_score(self, x, t):
        return x[:, 0] ** 4 / 4, -x ** 3

    def forward(self, x, t):
        return -x ** 3


QUARTIC_SECOND_MOMENT = 2 * math.gamma(0.75) / math.gamma(0.25)  # E[x^2] under exp(-x^4 / 4)
QUARTIC_TAIL = 1.75
# P(|x| > 1.75) under exp(-x^4 / 4): x^4 / 4 ~ Gamma(1/4, 1), whose upper tail is the regularised incomplete gamma.
QUARTIC_TAIL_MASS = float(torch.special.gammaincc(torch.tensor(0.25, dtype=torch.float64),
                                                  torch.tensor(QUARTIC_TAIL ** 4 / 4, dtype=torch.float64)))


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
    # 40000 independent chains: their own spread is the error.
    second_moment, error = mean_and_standard_error(x ** 2)
    assert_within_standard_errors(second_moment, QUARTIC_SECOND_MOMENT, error, what=f"{name} E[x^2]")
    # The tail mass, a bounded statistic: ULA's explicit step on x^3 now and then throws a chain off to infinity
    # (about 1 in 200000 here), which a moment would follow. ULA puts 2.5 times the target's mass there (measured:
    # 20 standard errors off); a diverged chain (inf or nan) counts as in the tail.
    tail_mass = lambda chains: float((~(chains.abs() <= QUARTIC_TAIL)).double().mean())  # noqa: E731
    kept, drifted = tail_mass(x), tail_mass(biased)
    assert_within_standard_errors(kept, QUARTIC_TAIL_MASS, frequency_standard_error(kept, len(x)),
                                  what=f"{name} P(|x| > {QUARTIC_TAIL})")
    assert_beyond_standard_errors(drifted, QUARTIC_TAIL_MASS, frequency_standard_error(drifted, len(x)),
                                  what=f"ula P(|x| > {QUARTIC_TAIL})")
    assert_beyond_standard_errors(acceptance, 0.5, frequency_standard_error(acceptance, len(x)),
                                  what=f"{name} acceptance rate")
    assert_beyond_standard_errors(acceptance, 1.0, frequency_standard_error(acceptance, len(x)), above=False,
                                  what=f"{name} acceptance rate")


def test_ito_density_estimate_tracks_the_closed_form_log_density():
    """Along a reverse-SDE path of N(mu, s^2) (its own score), the summed Itô increments equal the change of
    the exact log q_t(x_t) to within a few percent of that change (measured: 3%, the bound 5%)."""
    model = GaussianEnergy(MU_1, STD_1)
    grid, variance_steps = reverse_sde_grid(SDE, 1000)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1024, 2, generator=generator) * SDE.prior_std()
    start = model.log_density(x, grid[0].expand(len(x)))
    estimate = torch.zeros(len(x))
    for t, dv in zip(grid[:-1], variance_steps.tolist()):
        score = model(x, t.expand(len(x)))
        dx = dv * score + math.sqrt(dv) * torch.randn(x.shape, generator=generator)
        estimate += ito_log_density_increment([score], dx, dv)[:, 0]
        x = x + dx
    exact = model.log_density(x, grid[-1].expand(len(x))) - start
    # mean |error| < 5% of mean |change|, as a mean over independent paths of |error| - 5% |change| below 0 by 5
    # of its standard errors (measured: about 20).
    excess, error = mean_and_standard_error((estimate - exact).abs() - 0.05 * exact.abs())
    assert_beyond_standard_errors(excess, 0.0, error, above=False, what="mean |Itô error| - 5% of mean |change|")


def mixture_bases():
    """Three well-separated components: model 1 on {A, B}, model 2 on {B, C}. Close to the origin against the
    prior's std (7.0): SuperDiff takes the models' log-densities equal at t = 1, which holds only as far as
    the noised models are alike there (with the components at +-6 it leaves a bias of 0.04 in the shares, here
    0.012: SUPERDIFF_BIAS)."""
    means = torch.tensor([[-3.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    return GaussianMixtureBases(means, [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], 0.3, SDE)


SUPERDIFF_BIAS = 0.015  # measured over 20 seeds: at most 0.012 (standard error 0.002), in component B


def test_superdiff_or_gives_the_mixture():
    bases = mixture_bases()
    generator = torch.Generator().manual_seed(5)
    x, _, evaluations = superdiff_sampler([bases.score_model(0), bases.score_model(1)], SDE, "or",
                                          mixture_weights=[0.25, 0.75], batch_size=PARTICLES, num_steps=200,
                                          shape=(2,), generator=generator, progress=False)
    mixture = 0.25 * bases.weights[0] + 0.75 * bases.weights[1]  # [A, B, C] = [0.125, 0.5, 0.375]
    shares = bases.component_shares(x)  # OR's weights follow each particle's own path: independent samples
    assert_within_standard_errors(shares, mixture, frequency_standard_error(shares, len(x)), bias=SUPERDIFF_BIAS,
                                  what="SuperDiff OR component shares")
    assert evaluations == 200


def test_superdiff_and_lands_on_the_shared_component():
    bases = mixture_bases()
    generator = torch.Generator().manual_seed(6)
    x, log_q, _ = superdiff_sampler([bases.score_model(0), bases.score_model(1)], SDE, "and",
                                    batch_size=1000, num_steps=200, shape=(2,), generator=generator, progress=False)
    # One-sided claims on frequencies that may be exactly 1, which have no standard error of their own: judged at
    # the standard error where the claim would fail (measured: 9.5 and 31 of them).
    shared = float(bases.component_shares(x)[1])
    assert_beyond_standard_errors(shared, 0.9, frequency_standard_error(0.9, len(x)), what="AND's shared share")
    # The densities kept equal: median |log q_1 - log q_2| < 0.5, i.e. more than half of them below 0.5.
    below = float(((log_q[:, 0] - log_q[:, 1]).abs() < 0.5).double().mean())
    assert_beyond_standard_errors(below, 0.5, frequency_standard_error(0.5, len(x)),
                                  what="share of |log q_1 - log q_2| < 0.5")


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
