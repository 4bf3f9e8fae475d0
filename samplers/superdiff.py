"""SuperDiff's sampler (Skreta et al. 2025): Euler-Maruyama steps of the reverse VE SDE on the Heun samplers'
noise-level grid (samplers/heun_sampler.reverse_sde_grid), each driven by the mixed score sum_i kappa_i s_i,
with every model's log-density tracked by the Itô estimator (models/superposition.py). The weights depend on
the path so far: this is a sampler, not a score model.
"""
import torch
from tqdm.auto import tqdm

from models.superposition import and_weights, ito_log_density_increment, or_weights
from samplers.heun_sampler import reverse_sde_grid, reverse_sde_noise
from samplers.pc_sampler import IMAGE_SIZE

SUPERDIFF_MODES = ("or", "and")


@torch.no_grad()
def superdiff_sampler(score_models, sde, mode="or", mixture_weights=None, batch_size=64, num_steps=100,
                      sigma_min=0.05, rho=7.0, denoise_last_step=True, shape=None, device="cpu", generator=None,
                      progress=True):
    """Sample the superposition of `score_models`; returns (x, log-densities [B, m], score evaluations per sample).

    mode "or": the mixture sum_i omega_i q_i (`mixture_weights` omega, uniform unless given); "and": two models
    whose densities are kept equal. Every step evaluates each model once (one evaluation of the superposition);
    `denoise_last_step` ends at sigma_min with x + sigma_min^2 sum_i kappa_i s_i (Tweedie's step).
    """
    if mode not in SUPERDIFF_MODES:
        raise ValueError(f"unknown SuperDiff mode {mode!r}; choose one of {', '.join(SUPERDIFF_MODES)}")
    score_models = list(score_models)
    omega = torch.full((len(score_models),), 1.0 / len(score_models)) if mixture_weights is None \
        else torch.as_tensor(mixture_weights, dtype=torch.float32)
    if len(omega) != len(score_models) or (omega <= 0).any():
        raise ValueError(f"mixture_weights needs one positive weight per model, got {omega.tolist()}")
    log_omega = (omega / omega.sum()).log().to(device)
    shape = tuple(shape) if shape is not None else (score_models[0].input_channels, IMAGE_SIZE, IMAGE_SIZE)
    times, variance_steps = reverse_sde_grid(sde, num_steps, sigma_min, rho, device)
    # Every model shares the prior at t = 1, so the log-densities start equal (at zero: only differences matter).
    x = torch.randn((batch_size, *shape), generator=generator, device=device) * sde.prior_std()
    log_q = torch.zeros(batch_size, len(score_models), device=device)
    for step in tqdm(range(num_steps), desc=f"SuperDiff {mode.upper()}", disable=not progress, leave=False):
        t_batch = times[step].expand(batch_size)
        scores = [model(x, t_batch) for model in score_models]
        last = step == num_steps - 1
        dv = float(variance_steps[step]) if not last else 0.0
        noise = reverse_sde_noise(x, dv, generator)  # drawn first: AND's weights depend on it
        kappa = or_weights(log_q, log_omega) if mode == "or" else and_weights(log_q, scores, dv, noise)
        mixed = sum(kappa[:, i].view(-1, *([1] * (x.dim() - 1))) * s for i, s in enumerate(scores))
        if last:
            if denoise_last_step:  # Tweedie's step at sigma_min, as the other samplers' last step
                x = x + sde.marginal_prob_std(times[-1]).to(x) ** 2 * mixed
            break
        dx = dv * mixed + noise
        log_q = log_q + ito_log_density_increment(scores, dx, dv)
        x = x + dx
    return x, log_q, num_steps
