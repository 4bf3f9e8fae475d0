"""Annealed MCMC samplers (Du et al. 2023, "Reduce, Reuse, Recycle"): Euler-Maruyama steps of the reverse VE SDE on
the Heun samplers' noise-level grid (samplers/heun_sampler.reverse_sde_grid), with MCMC steps at each grid time
that target the composed density there, prod_i q_i,t for a product.

The sum of noised scores is not the score of the noised product, so the reverse SDE alone drifts away from the
product's marginals; MCMC at every level pulls the samples back. Four kernels, by what the model provides:
  ula   Langevin steps x + eps s + sqrt(2 eps) z                                      score only
  uhmc  leapfrog steps with momentum kept across steps, damped, never rejected          score only
  mala  Langevin proposals with a Metropolis-Hastings test                            energy and score
  hmc   leapfrog trajectories from fresh momentum with a Metropolis test              energy and score
Step sizes follow the noise level: eps = step_size * std(t)^2 (a leapfrog step h = sqrt(2 eps), so that one
leapfrog step from rest is one Langevin step). The Metropolis tests are per sample, with the proposal density
of the proposal actually made, and the kinetic energy of the momentum before and after the trajectory (not of
a tensor updated in place): the defects the issue names in the public code are avoided by construction, and
tests/unit/test_operators.py checks the stationary distribution on an analytic target.

An energy model is one with `energy_and_score(x, t)` -> (E [B], -grad_x E), e.g. EnergyScoreNet or a ScoreSum
of them. Every call of the model counts as one score evaluation (an energy model's includes its energy).
"""
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from models.energy_model import has_energy
from samplers.heun_sampler import reverse_sde_grid, reverse_sde_noise
from samplers.pc_sampler import IMAGE_SIZE

KERNELS = ("ula", "uhmc", "mala", "hmc")
METROPOLIS_KERNELS = ("mala", "hmc")


def _expand(values, x):
    return values.view(-1, *([1] * (x.dim() - 1)))


def _squared_norm(x):
    return x.flatten(1).pow(2).sum(dim=1)


class _CountedModel:
    """Counts the calls made to a model (each on the whole batch: one evaluation per sample)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def score(self, x, t):
        self.calls += 1
        return self.model(x, t)

    def energy_and_score(self, x, t):
        self.calls += 1
        return self.model.energy_and_score(x, t)


@dataclass(frozen=True)
class MCMCKernel:
    """One MCMC kernel's settings (the names of the RRR paper's arguments)."""

    name: str = "ula"
    steps_per_level: int = 2  # MCMC steps at each grid time
    step_size: float = 0.05  # eps / std(t)^2
    leapfrog_steps: int = 3  # uhmc, hmc: leapfrog steps per step
    damping: float = 0.9  # uhmc: the momentum kept per step, p <- damping p + sqrt(1 - damping^2) z

    def __post_init__(self):
        if self.name not in KERNELS:
            raise ValueError(f"unknown MCMC kernel {self.name!r}; choose one of {', '.join(KERNELS)}")
        if self.steps_per_level < 0 or self.leapfrog_steps < 1:
            raise ValueError(f"steps_per_level must be >= 0 and leapfrog_steps >= 1, got {self.steps_per_level} "
                             f"and {self.leapfrog_steps}")
        if not self.step_size > 0 or not 0 <= self.damping < 1:
            raise ValueError(f"step_size must be > 0 and damping in [0, 1), got {self.step_size} and {self.damping}")

    def settings(self) -> dict:
        out = {"kernel": self.name, "steps_per_level": self.steps_per_level, "step_size": self.step_size}
        if self.name in ("uhmc", "hmc"):
            out["leapfrog_steps"] = self.leapfrog_steps
        if self.name == "uhmc":
            out["damping"] = self.damping
        return out


class _Chain:
    """The state of one batch of chains at one noise level: x, its score (and energy), the momentum."""

    def __init__(self, model, kernel, x, t_batch, epsilon, generator):
        self.model, self.kernel, self.t, self.epsilon, self.generator = model, kernel, t_batch, epsilon, generator
        self.metropolis = kernel.name in METROPOLIS_KERNELS
        self.x = x
        self.energy, self.score = self.evaluate(x)
        self.momentum = self.noise() if kernel.name == "uhmc" else None
        self.accepted, self.proposed = 0.0, 0

    def evaluate(self, x):
        if self.metropolis:
            return self.model.energy_and_score(x, self.t)
        return None, self.model.score(x, self.t)

    def noise(self):
        return torch.randn(self.x.shape, generator=self.generator, device=self.x.device, dtype=self.x.dtype)

    def leapfrog(self, x, momentum, score):
        """`leapfrog_steps` steps of size h for H = E + |p|^2 / 2 (grad E = -score); returns new tensors."""
        h = torch.sqrt(2 * self.epsilon)
        energy = None
        momentum = momentum + 0.5 * h * score
        for step in range(self.kernel.leapfrog_steps):
            x = x + h * momentum
            energy, score = self.evaluate(x)
            if step < self.kernel.leapfrog_steps - 1:
                momentum = momentum + h * score
        momentum = momentum + 0.5 * h * score
        return x, momentum, energy, score

    def step(self):
        name, eps = self.kernel.name, self.epsilon
        if name == "ula":
            self.x = self.x + eps * self.score + torch.sqrt(2 * eps) * self.noise()
            self.score = self.evaluate(self.x)[1]
        elif name == "uhmc":
            damping = self.kernel.damping
            momentum = damping * self.momentum + math.sqrt(1 - damping ** 2) * self.noise()
            self.x, self.momentum, _, self.score = self.leapfrog(self.x, momentum, self.score)
        elif name == "mala":
            mean = self.x + eps * self.score
            proposal = mean + torch.sqrt(2 * eps) * self.noise()
            energy, score = self.evaluate(proposal)
            # log q(x' | x) = -|x' - x - eps s(x)|^2 / (4 eps): the variance is 2 eps, as the proposal's noise.
            forward = -_squared_norm(proposal - mean) / (4 * eps.flatten())
            backward = -_squared_norm(self.x - proposal - eps * score) / (4 * eps.flatten())
            self.accept(proposal, energy, score, self.energy - energy + backward - forward)
        else:  # hmc
            momentum = self.noise()
            proposal, new_momentum, energy, score = self.leapfrog(self.x, momentum, self.score)
            log_ratio = (self.energy + 0.5 * _squared_norm(momentum)) - (energy + 0.5 * _squared_norm(new_momentum))
            self.accept(proposal, energy, score, log_ratio)

    def accept(self, proposal, energy, score, log_ratio):
        """Per-sample Metropolis test: accept where log U < log_ratio (NaN ratios reject)."""
        uniform = torch.rand(log_ratio.shape, generator=self.generator, device=log_ratio.device)
        accept = torch.log(uniform) < torch.nan_to_num(log_ratio, nan=-math.inf)
        mask = _expand(accept, self.x)
        self.x = torch.where(mask, proposal, self.x)
        self.score = torch.where(mask, score, self.score)
        self.energy = torch.where(accept, energy, self.energy)
        self.accepted += float(accept.float().sum())
        self.proposed += len(accept)


@torch.no_grad()
def mcmc_steps(model, kernel, x, t_batch, epsilon, generator=None):
    """`kernel.steps_per_level` steps of the kernel at fixed times `t_batch` with step size `epsilon` (a number or
    [B, 1, ...]); returns (x, acceptance rate or None). The kernel alone, for use at one noise level."""
    epsilon = torch.as_tensor(epsilon, dtype=x.dtype, device=x.device)
    epsilon = epsilon.expand(len(x)).reshape(-1, *([1] * (x.dim() - 1))) if epsilon.dim() == 0 else epsilon
    chain = _Chain(_CountedModel(model), kernel, x, t_batch, epsilon, generator)
    for _ in range(kernel.steps_per_level):
        chain.step()
    return chain.x, (chain.accepted / chain.proposed if chain.proposed else None)


@torch.no_grad()
def annealed_mcmc_sampler(model, sde, kernel=MCMCKernel(), batch_size=64, num_steps=50, sigma_min=0.05,
                          rho=7.0, denoise_last_step=True, shape=None, device="cpu", generator=None, progress=True):
    """Reverse-SDE steps with `kernel.steps_per_level` MCMC steps after each; returns (x, stats).

    stats: score evaluations per sample (counted: 1 + (num_steps - 1) (1 + steps_per_level c), c = 1 for ula and
    mala, leapfrog_steps for uhmc and hmc) and, for the Metropolis kernels, the acceptance rate.
    `denoise_last_step` ends with Tweedie's step x + sigma_min^2 s(x, t(sigma_min)), from the score computed there.
    """
    if kernel.name in METROPOLIS_KERNELS and not has_energy(model):
        raise TypeError(f"the {kernel.name} kernel needs an energy model (energy_and_score); "
                        f"use ula or uhmc for a score-only model")
    counted = _CountedModel(model)
    shape = tuple(shape) if shape is not None else (model.input_channels, IMAGE_SIZE, IMAGE_SIZE)
    grid, variance_steps = reverse_sde_grid(sde, num_steps, sigma_min, rho, device)
    x = torch.randn((batch_size, *shape), generator=generator, device=device) * sde.prior_std()
    score = counted.score(x, grid[0].expand(batch_size))
    accepted = proposed = 0
    for i in tqdm(range(num_steps - 1), desc=f"annealed {kernel.name}", disable=not progress, leave=False):
        # Reverse-SDE (Euler-Maruyama) step from grid[i] to grid[i + 1], with the score at (x, grid[i]).
        dv = float(variance_steps[i])
        x = x + dv * score + reverse_sde_noise(x, dv, generator)
        # MCMC at the new level, targeting the composed density at grid[i + 1]; the chain ends holding the score
        # of its last state, which the next reverse step (at the same time) uses.
        t_next = grid[i + 1].expand(batch_size)
        epsilon = kernel.step_size * _expand(sde.marginal_prob_std(t_next).to(x), x) ** 2
        chain = _Chain(counted, kernel, x, t_next, epsilon, generator)
        for _ in range(kernel.steps_per_level):
            chain.step()
        x, score = chain.x, chain.score
        accepted, proposed = accepted + chain.accepted, proposed + chain.proposed
    if denoise_last_step:
        x = x + sde.marginal_prob_std(grid[-1]).to(x) ** 2 * score  # Tweedie's step at the last grid time
    stats = {"score_evaluations_per_sample": counted.calls, **kernel.settings(), "num_steps": num_steps}
    if kernel.name in METROPOLIS_KERNELS:
        stats["acceptance_rate"] = accepted / max(proposed, 1)
    return x, stats
