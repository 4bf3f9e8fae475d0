"""PC sampler on analytic scores (no trained network needed)."""
import torch
import torch.nn as nn

from samplers import pc_sampler, pc_trajectory_sampler, time_grid
from sde import VESDE


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


def test_pc_sampler_reproduces_gaussian_mean_and_variance():
    sde = VESDE()
    mu, s = 1.5, 0.5
    score = GaussianScore(sde, mu, s, dim=2)
    gen = torch.Generator().manual_seed(0)
    x = pc_sampler(score, sde, batch_size=4000, num_steps=300, shape=(2,), generator=gen, progress=False)
    assert abs(float(x.mean()) - mu) < 0.03
    assert abs(float(x.std()) - s) / s < 0.05
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
        assert abs(float(x.mean()) - mu) < 0.01 and score.calls == 2 * steps
        spreads[denoise] = float(x.std())
    assert spreads[True] < s
    assert spreads[False] > 10 * s
