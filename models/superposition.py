"""SuperDiff's operators (Skreta et al. 2025, "The Superposition of Diffusion Models Using the Itô Density
Estimator"): mix the scores of m models with weights kappa [B, m] read from each model's log-density
log q_i(x_t), tracked along the sampled trajectory from the scores alone (samplers/superdiff.py runs it).

Why the estimate needs no divergence: for the VE SDE the forward density obeys d/dt q = 1/2 g^2 Lap q, so
along any path x, stepping back in time by dt, Itô's formula gives
    d log q_i = <s_i, dx> + 1/2 g^2 Lap log q_i dt - 1/2 g^2 (Lap log q_i + |s_i|^2) dt
              = <s_i, dx> - 1/2 g^2 |s_i|^2 dt,
with g^2 dt the variance dv the step removes (samplers/heun_sampler.reverse_sde_grid).
OR: kappa = softmax(log q + log omega) makes sum_i kappa_i s_i the exact score of the mixture
sum_i omega_i q_i. AND (two models): kappa is chosen so that the step leaves log q_1 - log q_2 at zero.
"""
import torch


def _per_sample_dot(a, b):
    return (a * b).flatten(1).sum(dim=1)


def ito_log_density_increment(scores, dx, variance_step):
    """[B, m]: d log q_i = <s_i, dx> - 1/2 dv |s_i|^2 for each model's score s_i at the step's start (dv = g^2 dt)."""
    return torch.stack([_per_sample_dot(s, dx) - 0.5 * variance_step * _per_sample_dot(s, s) for s in scores], dim=1)


def or_weights(log_densities, log_mixture_weights):
    """kappa [B, m] of the mixture sum_i omega_i q_i: the posterior over models given x_t."""
    return torch.softmax(log_densities + log_mixture_weights.to(log_densities), dim=1)


def and_weights(log_densities, scores, variance_step, noise):
    """kappa [B, 2] for which the Euler-Maruyama step dx = dv (sum_i kappa_i s_i) + noise (noise ~ N(0, dv I))
    brings log q_1 - log q_2 to zero (its first-order change solved for kappa_1, kappa_2 = 1 - kappa_1).
    kappa may leave [0, 1] (the paper's rule does not clip); where s_1 = s_2 it is 1/2."""
    if len(scores) != 2:
        raise ValueError(f"SuperDiff AND is defined here for two models, got {len(scores)}")
    s_1, s_2 = scores
    difference = s_1 - s_2
    # d(log q_1 - log q_2) = dv <diff, s_2> + kappa_1 dv |diff|^2 + <diff, noise> - 1/2 dv (|s_1|^2 - |s_2|^2)
    constant = (variance_step * _per_sample_dot(difference, s_2) + _per_sample_dot(difference, noise)
                - 0.5 * variance_step * (_per_sample_dot(s_1, s_1) - _per_sample_dot(s_2, s_2)))
    slope = variance_step * _per_sample_dot(difference, difference)
    gap = log_densities[:, 0] - log_densities[:, 1]
    kappa_1 = torch.where(slope > 0, (-gap - constant) / slope.clamp_min(1e-30), torch.full_like(slope, 0.5))
    return torch.stack([kappa_1, 1.0 - kappa_1], dim=1)
