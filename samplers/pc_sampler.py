"""Predictor-corrector sampler for the VE SDE (docs/reference.md §5).

Each step, at grid time t: one Langevin corrector step, then one Euler-Maruyama
predictor step; two score evaluations per step. The sampler is agnostic to the
score model: a base ScoreNet, a composition, or an analytic score function.

Not in the reference, off by default: `denoise_last_step` replaces the last
predictor step by the denoising step x + std(t)^2 s(x, t) (Tweedie's estimate
of x_0). At t = eps the grid spacing dt is 4x (250 steps) or 2x (500 steps)
the marginal variance, so the Euler drift g^2 dt s is that many times the
denoising correction: with an exact score the remaining noise comes back
flipped, tripled at 250 steps, as speckle in the background (docs/results.md, "The denoised last step").
"""
import math

import torch
from tqdm.auto import tqdm

IMAGE_SIZE = 28
SAMPLING_EPS = 1e-3


def _noise_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def langevin_corrector(score_model, x, t_batch, snr, generator=None):
    """One Langevin step with the step size set by the signal-to-noise ratio `snr`."""
    grad = score_model(x, t_batch)
    grad_norm = grad.flatten(1).norm(dim=1).mean()
    noise_norm = math.sqrt(x[0].numel())
    step = 2 * (snr * noise_norm / grad_norm) ** 2
    return x + step * grad + torch.sqrt(2 * step) * _noise_like(x, generator)


def euler_maruyama_predictor(score_model, sde, x, t_batch, dt, generator=None):
    """One reverse-time Euler-Maruyama step; returns (noisy x, its mean)."""
    g = sde.diffusion_coeff(t_batch).to(x).view(-1, *([1] * (x.dim() - 1)))
    x_mean = x + g ** 2 * score_model(x, t_batch) * dt
    return x_mean + g * math.sqrt(dt) * _noise_like(x, generator), x_mean


def denoising_step(score_model, sde, x, t_batch):
    """Tweedie's estimate of E[x_0 | x_t]: x + std(t)^2 s(x, t)."""
    std = sde.marginal_prob_std(t_batch).to(x).view(-1, *([1] * (x.dim() - 1)))
    return x + std ** 2 * score_model(x, t_batch)


def time_grid(num_steps, eps=SAMPLING_EPS, device=None):
    """The reference grid linspace(1, eps, N) and its spacing."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    grid = torch.linspace(1.0, eps, num_steps, device=device)
    return grid, float(grid[0] - grid[1])


@torch.no_grad()
def pc_trajectory_sampler(score_model, sde, batch_size=64, num_steps=500, snr=0.16, eps=SAMPLING_EPS,
                          shape=None, device="cpu", generator=None, progress=True, keep_trajectory=True,
                          denoise_last_step=False):
    """Sample with the PC sampler; returns (x_mean of the last step, trajectory, time grid).

    The trajectory [N, B, *shape] holds each step's state after the predictor
    (the noisy x, as the reference stores it), except the last entry, which is
    the returned noise-free x_mean. `keep_trajectory=False` returns None there.
    Runs under no_grad; compositions re-enable grad for their classifier term.
    `denoise_last_step`: the last step's predictor is `denoising_step` (see module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shape = tuple(shape) if shape is not None else (score_model.input_channels, IMAGE_SIZE, IMAGE_SIZE)
    grid, dt = time_grid(num_steps, eps, device)
    x = torch.randn((batch_size, *shape), generator=generator, device=device) * sde.prior_std()
    trajectory = [] if keep_trajectory else None
    for step, t in enumerate(tqdm(grid, desc="PC sampling", disable=not progress, leave=False)):
        t_batch = t.expand(batch_size)
        x = langevin_corrector(score_model, x, t_batch, snr, generator)
        if denoise_last_step and step == num_steps - 1:
            x = x_mean = denoising_step(score_model, sde, x, t_batch)
        else:
            x, x_mean = euler_maruyama_predictor(score_model, sde, x, t_batch, dt, generator)
        if keep_trajectory:
            trajectory.append(x)
    if keep_trajectory:
        trajectory[-1] = x_mean
        trajectory = torch.stack(trajectory)
    return x_mean, trajectory, grid


def pc_sampler(score_model, sde, batch_size=64, num_steps=500, snr=0.16, eps=SAMPLING_EPS,
               shape=None, device="cpu", generator=None, progress=True, denoise_last_step=False):
    """Sample with the PC sampler and return the final noise-free x_mean."""
    samples, _, _ = pc_trajectory_sampler(score_model, sde, batch_size, num_steps, snr, eps, shape, device,
                                          generator, progress, keep_trajectory=False,
                                          denoise_last_step=denoise_last_step)
    return samples
