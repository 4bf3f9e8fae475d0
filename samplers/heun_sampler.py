"""Second-order samplers on a noise-level grid (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithms 1 and 2), for any score model of the VE SDE.

For this SDE d(std(t)^2)/dt = g(t)^2, so in the noise level sigma = std(t) the probability-flow ODE
dx/dt = -1/2 g(t)^2 s(x, t) reads dx/dsigma = -sigma s(x, t(sigma)): the score model is called at
t(sigma) = sde.time_of_std(sigma), and the denoiser is D(x; sigma) = x + sigma^2 s (Tweedie).

The grid: `num_steps` noise levels from sigma_max = std(1) (the prior) down to `sigma_min`, spaced
uniformly in sigma^(1/rho). Between consecutive levels one Heun step (two score evaluations); then,
with `denoise_last_step`, a final Euler step from sigma_min to 0, which is exactly the denoising step
x + sigma_min^2 s (one evaluation). With `churn` > 0 (Algorithm 2), each step first adds fresh noise to
raise the level from sigma to sigma_hat = sigma (1 + gamma), gamma = min(churn / num_steps, sqrt 2 - 1),
for levels within [s_tmin, s_tmax]: a Langevin-like correction that forgets the errors of earlier steps.
"""
import math

import torch
from tqdm.auto import tqdm

from samplers.pc_sampler import IMAGE_SIZE, SAMPLING_EPS


def noise_levels(num_steps, sigma_min, sigma_max, rho=7.0, device=None):
    """The `num_steps` levels sigma_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be in (0, {sigma_max:.3g}), got {sigma_min}")
    ramp = torch.linspace(0.0, 1.0, num_steps, device=device, dtype=torch.float64)
    levels = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return levels.float()


def reverse_sde_grid(sde, num_steps, sigma_min=None, rho=7.0, device=None):
    """(times [N], variance steps [N - 1]) for Euler-Maruyama samplers of the reverse SDE: the noise levels above as
    SDE times, and the variance sigma_i^2 - sigma_(i+1)^2 = integral of g^2 dt each step removes. A step is then
    x + dv s(x, t_i) + sqrt(dv) z, its noise exact for this SDE; unlike the PC sampler's uniform time grid, whose
    last steps remove many times the variance left (module docstring of pc_sampler.py), each step removes a
    bounded share of it, so that a drift of several summed scores stays stable."""
    sigmas = noise_levels(num_steps, sigma_min or default_sigma_min(sde), sde.prior_std(), rho, device)
    times = sde.time_of_std(sigmas.cpu()).to(sigmas)
    return times, sigmas[:-1] ** 2 - sigmas[1:] ** 2


def reverse_sde_noise(x, variance_step, generator=None):
    """The noise of one reverse-SDE step of `reverse_sde_grid`: sqrt(dv) z, z ~ N(0, I) shaped like x."""
    return math.sqrt(variance_step) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def heun_evaluations(num_steps, denoise_last_step):
    """Score evaluations per sample: two per Heun step between levels, one for the final denoising step."""
    return 2 * (num_steps - 1) + int(denoise_last_step)


def default_sigma_min(sde):
    """The noise level of the PC sampler's last grid time, eps = 1e-3."""
    return float(sde.marginal_prob_std(SAMPLING_EPS))


@torch.no_grad()
def heun_trajectory_sampler(score_model, sde, batch_size=64, num_steps=40, sigma_min=None, rho=7.0, churn=0.0,
                            s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, denoise_last_step=True, shape=None,
                            device="cpu", generator=None, progress=True, keep_trajectory=True):
    """Sample with Heun steps on the noise-level grid; returns (final x, trajectory, times).

    The trajectory [num_steps, B, *shape] holds the state at each grid level (the prior draw first); with
    `denoise_last_step` its last entry is the denoised final x, as the PC sampler stores its noise-free
    last step. `times` are the grid levels as SDE times t(sigma_i). Runs under no_grad; compositions
    re-enable grad for their classifier term.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if churn < 0 or s_noise < 0:
        raise ValueError(f"churn and s_noise must be >= 0, got {churn} and {s_noise}")
    shape = tuple(shape) if shape is not None else (score_model.input_channels, IMAGE_SIZE, IMAGE_SIZE)
    sigma_max = sde.prior_std()
    sigmas = noise_levels(num_steps, sigma_min or default_sigma_min(sde), sigma_max, rho, device)
    times = sde.time_of_std(sigmas.cpu()).to(sigmas)
    gamma = min(churn / num_steps, math.sqrt(2) - 1)

    def direction(x, sigma):
        """dx/dsigma = -sigma s(x, t(sigma)) = (x - D(x; sigma)) / sigma."""
        t = sde.time_of_std(torch.tensor(sigma)).to(device).expand(batch_size)
        return -sigma * score_model(x, t)

    # Draw x from the prior N(0, std(1)^2 I): the marginal at the first level.
    x = torch.randn((batch_size, *shape), generator=generator, device=device) * sigma_max
    trajectory = [x] if keep_trajectory else None
    for i in tqdm(range(num_steps - 1), desc="Heun sampling", disable=not progress, leave=False):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Churn: raise the noise level to sigma_hat with fresh noise (never above the prior's level,
        # where the network was never trained).
        sigma_hat = min(sigma * (1 + gamma), sigma_max) if s_tmin <= sigma <= s_tmax else sigma
        if sigma_hat > sigma:
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
            x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * noise
        # Euler step from sigma_hat to sigma_next.
        d = direction(x, sigma_hat)
        x_euler = x + (sigma_next - sigma_hat) * d
        # Second-order correction: average the slopes at both ends (the trapezoidal rule).
        x = x + (sigma_next - sigma_hat) * 0.5 * (d + direction(x_euler, sigma_next))
        if keep_trajectory:
            trajectory.append(x)
    if denoise_last_step:
        # Euler step from sigma_min to 0: the denoiser D(x; sigma_min) = x + sigma_min^2 s.
        sigma = float(sigmas[-1])
        x = x - sigma * direction(x, sigma)
        if keep_trajectory:
            trajectory[-1] = x
    if keep_trajectory:
        trajectory = torch.stack(trajectory)
    return x, trajectory, times
