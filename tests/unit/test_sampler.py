"""PC sampler on analytic scores (no trained network needed)."""
import math

import pytest
import torch
import torch.nn as nn

from samplers import Sampler, noise_levels, pc_sampler, pc_trajectory_sampler, time_grid
from sculpting.sde import VESDE
from tests.analytic import (assert_beyond_standard_errors, assert_within_standard_errors, mean_and_standard_error,
                            variance_and_standard_error)


class GaussianScore(nn.Module):
    """Exact score of N(mu, s^2 I) noised by the VE SDE: -(x - mu) / (s^2 + std(t)^2)."""

    def __init__(self, sde, mu, s, dim):
        super().__init__()
        self.sde, self.mu, self.s, self.input_channels = sde, mu, s, dim
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        var = self.s ** 2 + self.sde.marginal_prob_std(t) ** 2
        return -(x - self.mu) / var.view(-1, *([1] * (x.dim() - 1)))


def moments(x):
    """(mean, its standard error, variance, its standard error) of every coordinate of independent samples taken
    together: each coordinate is an independent draw of the same law."""
    return (*mean_and_standard_error(x.reshape(-1)), *variance_and_standard_error(x.reshape(-1)))


def test_pc_sampler_reproduces_gaussian_mean_and_variance():
    sde = VESDE()
    mu, s = 1.5, 0.5
    score = GaussianScore(sde, mu, s, dim=2)
    gen = torch.Generator().manual_seed(0)
    x = pc_sampler(score, sde, batch_size=4000, num_steps=300, shape=(2,), generator=gen, progress=False)
    mean, mean_error, variance, variance_error = moments(x)
    assert_within_standard_errors(mean, mu, mean_error, what="PC mean")
    # 300 PC steps leave the variance about 1% high (over 10 seeds: +1.1%, standard error 0.5%): the allowance.
    assert_within_standard_errors(variance, s ** 2, variance_error, bias=0.02 * s ** 2, what="PC variance")
    assert score.calls == 2 * 300  # corrector + predictor each step


def test_image_shaped_sampling_uses_input_channels():
    sde = VESDE()
    score = GaussianScore(sde, 0.5, 0.2, dim=3)
    gen = torch.Generator().manual_seed(0)
    x = pc_sampler(score, sde, batch_size=3, num_steps=5, generator=gen, progress=False)
    assert x.shape == (3, 3, 28, 28)


def test_same_seed_same_samples_and_trajectory_layout():
    sde = VESDE()
    score = GaussianScore(sde, 0.0, 1.0, dim=2)
    run = lambda: pc_trajectory_sampler(score, sde, batch_size=8, num_steps=10, shape=(2,),
                                        generator=torch.Generator().manual_seed(3), progress=False)
    x1, traj1, grid1 = run()
    x2, traj2, _ = run()
    assert torch.equal(x1, x2) and torch.equal(traj1, traj2)
    assert traj1.shape == (10, 8, 2)
    assert torch.equal(traj1[-1], x1)  # the last entry is the noise-free x_mean
    expected_grid, dt = time_grid(10)
    assert torch.equal(grid1, expected_grid)
    assert grid1[0] == 1.0 and abs(float(grid1[-1]) - 1e-3) < 1e-9 and dt > 0


def test_denoise_last_step_removes_the_last_euler_steps_overshoot():
    # Data almost a point (s well below std(eps) = 0.032, like MNIST's empty background): at 250 steps the
    # reference's last Euler step takes 4x the denoising correction and leaves the noise tripled; the
    # denoising step (a posterior mean) lands within the data's own spread, for the same score evaluations.
    sde = VESDE()
    mu, s, steps = 0.5, 0.01, 250
    spreads = {}
    for denoise in (False, True):
        score = GaussianScore(sde, mu, s, dim=2)
        x = pc_sampler(score, sde, batch_size=4000, num_steps=steps, shape=(2,), progress=False,
                       generator=torch.Generator().manual_seed(0), denoise_last_step=denoise)
        mean, mean_error, variance, variance_error = moments(x)
        spreads[denoise] = variance, variance_error
        assert_within_standard_errors(mean, mu, mean_error, what=f"mean (denoise_last_step={denoise})")
        assert score.calls == 2 * steps
    # Variances against s^2 and (10 s)^2, each cleared by 5 standard errors (measured: 114 and 42).
    (denoised, denoised_error), (reference, reference_error) = spreads[True], spreads[False]
    assert_beyond_standard_errors(denoised, s ** 2, denoised_error, above=False, what="denoised variance")
    assert_beyond_standard_errors(reference, (10 * s) ** 2, reference_error, what="reference variance")


# ---- the noise-level samplers (heun, heun-churn) and the Sampler description ----

def test_time_of_std_inverts_the_marginal_std():
    sde = VESDE()
    t = torch.linspace(1e-5, 1.0, 101, dtype=torch.float64)
    torch.testing.assert_close(sde.time_of_std(sde.marginal_prob_std(t)), t.float(), rtol=1e-5, atol=1e-7)
    sigma = torch.tensor([0.002, 0.05, 1.0, 9.0])
    # (float32: std(t) = sqrt(sigma^(2t) - 1) loses digits to cancellation at small t)
    torch.testing.assert_close(sde.marginal_prob_std(sde.time_of_std(sigma)), sigma, rtol=1e-4, atol=0)


def test_noise_levels_run_from_the_prior_to_sigma_min():
    levels = noise_levels(10, 0.05, 9.85, rho=7.0)
    assert levels.shape == (10,) and float(levels[0]) == pytest.approx(9.85) and float(levels[-1]) == pytest.approx(0.05)
    assert bool((levels[1:] < levels[:-1]).all())
    with pytest.raises(ValueError, match="sigma_min"):
        noise_levels(10, 20.0, 9.85)


@pytest.mark.parametrize("name, num_steps", [("heun", 12), ("heun-churn", 20)])
def test_heun_samplers_reproduce_gaussian_mean_and_variance_in_few_steps(name, num_steps):
    sde = VESDE()
    mu, s = 1.5, 0.5
    score = GaussianScore(sde, mu, s, dim=2)
    sampler = Sampler(name, num_steps, denoise_last_step=True, churn=40.0 if name == "heun-churn" else 0.0)
    x = sampler.sample(score, sde, 4000, shape=(2,), generator=torch.Generator().manual_seed(0), progress=False)
    # The prior N(0, std(1)^2) is centred at 0, not at mu: the exact ODE carries that offset to the end, scaled by
    # s / sqrt(s^2 + std(1)^2); the churn's fresh noise forgets it.
    offset = mu * s / math.sqrt(s ** 2 + sde.prior_std() ** 2) if name == "heun" else 0.0
    mean, mean_error, variance, variance_error = moments(x)
    assert_within_standard_errors(mean, mu - offset, mean_error, what=f"{name} mean")
    # So few steps leave the variance a few percent high (over 10 seeds: heun +6.1%, heun-churn +7.7%, each with a
    # standard error of 0.5%): the allowance.
    bias = {"heun": 0.07, "heun-churn": 0.09}[name] * s ** 2
    assert_within_standard_errors(variance, s ** 2, variance_error, bias=bias, what=f"{name} variance")
    # The PC sampler at the same budget (about 20 evaluations) misses s^2 by a third or more: beyond that
    # allowance by 5 standard errors (measured: 63 and 21).
    pc = Sampler("pc", sampler.evaluations_per_sample // 2).sample(score, sde, 4000, shape=(2,), progress=False,
                                                                  generator=torch.Generator().manual_seed(0))
    *_, pc_variance, pc_variance_error = moments(pc)
    assert_beyond_standard_errors((pc_variance - s ** 2).abs(), bias, pc_variance_error,
                                  what=f"PC variance miss at {name}'s budget")


@pytest.mark.parametrize("sampler", [Sampler("pc", 7), Sampler("pc", 7, denoise_last_step=True), Sampler("heun", 7),
                                     Sampler("heun", 7, denoise_last_step=True),
                                     Sampler("heun-churn", 7, churn=5.0, denoise_last_step=True)])
def test_recorded_evaluation_count_is_the_number_of_score_calls(sampler):
    sde = VESDE()
    score = GaussianScore(sde, 0.0, 1.0, dim=2)  # counts its calls
    sampler.sample(score, sde, 5, shape=(2,), progress=False)
    assert score.calls == sampler.evaluations_per_sample == sampler.settings(sde)["score_evaluations_per_sample"]


def test_heun_trajectory_layout_times_and_seed():
    sde = VESDE()
    score = GaussianScore(sde, 0.0, 1.0, dim=2)
    sampler = Sampler("heun-churn", 8, churn=10.0, sigma_min=0.1, denoise_last_step=True)
    batch = 500  # enough draws to tell the prior's variance from the next level's (32 standard errors away)
    run = lambda: sampler.trajectory(score, sde, batch, shape=(2,), generator=torch.Generator().manual_seed(1),
                                     progress=False)
    (x1, traj1, times1), (x2, traj2, _) = run(), run()
    assert torch.equal(x1, x2) and torch.equal(traj1, traj2)  # same seed, same samples
    assert traj1.shape == (8, batch, 2) and torch.equal(traj1[-1], x1)  # the last entry is the denoised sample
    assert float(times1[0]) == pytest.approx(1.0) and float(times1[-1]) == pytest.approx(float(sde.time_of_std(0.1)))
    *_, variance, variance_error = moments(traj1[0])  # the prior draw comes first
    assert_within_standard_errors(variance, sde.prior_std() ** 2, variance_error, what="first entry's variance")
    other = sampler.trajectory(score, sde, batch, shape=(2,), generator=torch.Generator().manual_seed(2),
                               progress=False)
    assert not torch.equal(other[0], x1)


def test_churn_is_what_makes_heun_stochastic():
    sde = VESDE()
    score = GaussianScore(sde, 0.0, 1.0, dim=2)
    start = lambda: torch.Generator().manual_seed(0)
    ode = [Sampler("heun", 6).sample(score, sde, 4, shape=(2,), generator=start(), progress=False) for _ in range(2)]
    churned = Sampler("heun-churn", 6, churn=10.0).sample(score, sde, 4, shape=(2,), generator=start(), progress=False)
    assert torch.equal(ode[0], ode[1]) and not torch.allclose(ode[0], churned)


@pytest.mark.parametrize("kwargs, message", [({"name": "euler"}, "unknown sampler"), ({"num_steps": 1}, "at least 2"),
                                             ({"snr": float("nan")}, "finite"), ({"name": "heun-churn"}, "churn > 0"),
                                             ({"sigma_min": 0.0}, "sigma_min"), ({"churn": -1.0}, ">= 0")])
def test_impossible_sampler_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampler(**kwargs)
