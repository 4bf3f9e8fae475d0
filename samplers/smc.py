"""Feynman-Kac correctors (Skreta et al. 2025): the product of experts prod_i q_i^w_i sampled by sequential
Monte Carlo over the batch's particles.

Why a weight: the particles follow the reverse VE SDE driven by the summed score sum_i w_i s_i, which is the
score of the annealed product pi_t ∝ prod_i q_i,t^w_i but not a process whose marginals are pi_t. Comparing
d/dt log pi_t (each q_i,t obeys d/dt q = 1/2 g^2 Lap q) with the density the process transports gives, per step
back in time by dt, the log-weight increment
    1/2 g^2 dt (|sum_i w_i s_i|^2 - sum_i w_i |s_i|^2)      (= g^2 <s_1, s_2> dt for two models, w = 1),
up to a constant shared by all particles; g^2 dt is the variance dv each step of the noise-level grid removes
(samplers/heun_sampler.reverse_sde_grid). When the effective sample size falls below `ess_threshold` times the
particle count, the particles are resampled (systematic resampling) and their weights reset; at the end they are
resampled once more, so that the returned batch is an equally weighted sample.
"""
import torch
from tqdm.auto import tqdm

from samplers.heun_sampler import reverse_sde_grid, reverse_sde_noise
from samplers.pc_sampler import IMAGE_SIZE


def effective_sample_size(log_weights):
    """(sum w)^2 / sum w^2 of unnormalised log-weights [B]."""
    return float(torch.exp(2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0)))


def systematic_resample(log_weights, generator=None):
    """Indices [B] drawn by systematic resampling: one uniform offset, B evenly spaced points on the weights' CDF."""
    count = len(log_weights)
    cumulative = torch.cumsum(torch.softmax(log_weights.double(), 0), 0)
    offset = torch.rand((), generator=generator, device=log_weights.device, dtype=torch.float64)
    points = (offset + torch.arange(count, device=log_weights.device, dtype=torch.float64)) / count
    return torch.searchsorted(cumulative, points).clamp_max(count - 1)


@torch.no_grad()
def fkc_product_sampler(score_models, sde, weights=None, batch_size=64, num_steps=100, ess_threshold=0.5,
                        sigma_min=0.05, rho=7.0, denoise_last_step=True, shape=None, device="cpu", generator=None,
                        progress=True):
    """SMC for prod_i p_i^w_i; returns (x, {"resamplings", "final_ess", "distinct_ancestors",
    "score_evaluations_per_sample"}); distinct_ancestors counts the particles of the first step that still have
    descendants at the end (resampling copies particles: fewer lineages than samples).

    One evaluation of every model per grid time (the last one feeds the final denoising step when
    `denoise_last_step`); the batch is the particle population.
    """
    score_models = list(score_models)
    weights = [1.0] * len(score_models) if weights is None else [float(w) for w in weights]
    if len(weights) != len(score_models) or any(w <= 0 for w in weights):
        raise ValueError(f"weights needs one positive weight per model, got {weights}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    shape = tuple(shape) if shape is not None else (score_models[0].input_channels, IMAGE_SIZE, IMAGE_SIZE)
    times, variance_steps = reverse_sde_grid(sde, num_steps, sigma_min, rho, device)
    x = torch.randn((batch_size, *shape), generator=generator, device=device) * sde.prior_std()
    log_w = torch.zeros(batch_size, device=device, dtype=torch.float64)
    resamplings, ancestors = 0, torch.arange(batch_size, device=device)
    for step in tqdm(range(num_steps), desc="FKC SMC", disable=not progress, leave=False):
        t_batch = times[step].expand(batch_size)
        scores = [w * model(x, t_batch) for w, model in zip(weights, score_models)]  # w_i s_i
        drift = sum(scores)
        if step == num_steps - 1:
            break
        dv = float(variance_steps[step])
        # |sum w_i s_i|^2 - sum w_i |s_i|^2, with (w_i s_i)^2 / w_i = w_i |s_i|^2.
        cross = drift.flatten(1).pow(2).sum(1) - sum(s.flatten(1).pow(2).sum(1) / w for s, w in zip(scores, weights))
        log_w = log_w + (0.5 * dv * cross).double()
        if effective_sample_size(log_w) < ess_threshold * batch_size:
            index = systematic_resample(log_w, generator)
            x, drift, log_w, ancestors = x[index], drift[index], torch.zeros_like(log_w), ancestors[index]
            resamplings += 1
        x = x + dv * drift + reverse_sde_noise(x, dv, generator)
    final_ess = effective_sample_size(log_w)
    index = systematic_resample(log_w, generator)
    x, drift, ancestors = x[index], drift[index], ancestors[index]
    if denoise_last_step:  # Tweedie's step at sigma_min
        x = x + sde.marginal_prob_std(times[-1]).to(x) ** 2 * drift
    return x, {"resamplings": resamplings, "final_ess": final_ess,
               "distinct_ancestors": len(torch.unique(ancestors)), "score_evaluations_per_sample": num_steps}
