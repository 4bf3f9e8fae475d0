"""One description of "how to sample" shared by every script: which sampler, its settings, its cost.

`Sampler(name, num_steps, ...)` picks the reference's predictor-corrector sampler ("pc", the default) or a
second-order sampler on a noise-level grid ("heun": the deterministic probability-flow ODE; "heun-churn":
the stochastic one, Karras et al. 2022 Algorithm 2). Each settings field applies to the samplers named
beside it; `settings()` lists exactly those, with the score evaluations per sample, for the outputs' .json.
"""
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from samplers.heun_sampler import default_sigma_min, heun_evaluations, heun_trajectory_sampler
from samplers.pc_sampler import pc_trajectory_sampler

SAMPLERS = ("pc", "heun", "heun-churn")


@dataclass(frozen=True)
class Sampler:
    name: str = "pc"
    num_steps: int = 500  # pc: grid times; heun, heun-churn: noise levels
    denoise_last_step: bool = False  # pc: the last predictor step is a denoising step; heun*: a final one is added
    snr: float = 0.16  # pc: the corrector's signal-to-noise ratio
    sigma_min: float = None  # heun*: the last noise level; None: std(eps), the PC grid's last time
    churn: float = 0.0  # heun-churn: S_churn, the noise added per step (gamma = min(churn / num_steps, sqrt 2 - 1))
    rho: float = 7.0  # heun*: the grid's spacing exponent
    s_tmin: float = 0.0  # heun-churn: churn only at levels in [s_tmin, s_tmax]
    s_tmax: float = math.inf
    s_noise: float = 1.0  # heun-churn: the added noise's scale

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.num_steps < 2:
            raise ValueError(f"the {self.name} sampler needs at least 2 steps, got {self.num_steps}")
        for field in ("snr", "churn", "rho", "s_tmin", "s_tmax", "s_noise") + (("sigma_min",) * (self.sigma_min is not None)):
            value = getattr(self, field)
            if math.isnan(value) or value < 0 or (field != "s_tmax" and math.isinf(value)):
                raise ValueError(f"sampler setting {field} must be a finite number >= 0, got {value}")
        if self.sigma_min is not None and self.sigma_min <= 0:
            raise ValueError(f"sigma_min must be > 0, got {self.sigma_min}")
        if self.name == "pc" and self.snr <= 0:
            raise ValueError(f"the pc sampler's snr must be > 0, got {self.snr}")
        if self.name == "heun-churn" and self.churn <= 0:
            raise ValueError(f"heun-churn needs churn > 0 (churn 0 is the deterministic 'heun'), got {self.churn}")

    def check_fits(self, sde) -> None:
        """A ValueError where the grid cannot be built for `sde`: heun*'s sigma_min must lie below the prior's std."""
        if self.name != "pc" and self.sigma_min is not None and self.sigma_min >= sde.prior_std():
            raise ValueError(f"sigma_min must be below the prior's noise level {sde.prior_std():.3g}, "
                             f"got {self.sigma_min}")

    @property
    def evaluations_per_sample(self) -> int:
        """Score-model calls per sample: PC two per step, Heun two per step between levels (+1 denoising)."""
        if self.name == "pc":
            return 2 * self.num_steps
        return heun_evaluations(self.num_steps, self.denoise_last_step)

    def settings(self, sde=None) -> dict:
        """The settings that apply to this sampler, and its score evaluations per sample (JSON-ready)."""
        out = {"sampler": self.name, "num_steps": self.num_steps, "denoise_last_step": self.denoise_last_step}
        if self.name == "pc":
            out["snr"] = self.snr
        else:
            sigma_min = self.sigma_min or (default_sigma_min(sde) if sde is not None else None)
            out.update(sigma_min=sigma_min, rho=self.rho)
        if self.name == "heun-churn":
            out.update(churn=self.churn, s_tmin=self.s_tmin, s_tmax=self.s_tmax if math.isfinite(self.s_tmax)
                       else "inf", s_noise=self.s_noise)
        out["score_evaluations_per_sample"] = self.evaluations_per_sample
        return out

    def trajectory(self, score_model, sde, batch_size, shape=None, device="cpu", generator=None, progress=True,
                   keep_trajectory=True):
        """(final sample, trajectory [num_steps, B, *shape] or None, the trajectory's SDE times)."""
        if self.name == "pc":
            return pc_trajectory_sampler(score_model, sde, batch_size, self.num_steps, self.snr, shape=shape,
                                         device=device, generator=generator, progress=progress,
                                         keep_trajectory=keep_trajectory, denoise_last_step=self.denoise_last_step)
        return heun_trajectory_sampler(score_model, sde, batch_size, self.num_steps, self.sigma_min, self.rho,
                                       self.churn if self.name == "heun-churn" else 0.0, self.s_tmin, self.s_tmax,
                                       self.s_noise, self.denoise_last_step, shape=shape, device=device,
                                       generator=generator, progress=progress, keep_trajectory=keep_trajectory)

    def sample(self, score_model, sde, batch_size, shape=None, device="cpu", generator=None, progress=True):
        """The final samples only (no trajectory kept)."""
        return self.trajectory(score_model, sde, batch_size, shape, device, generator, progress,
                               keep_trajectory=False)[0]


def sample_in_batches(score_model, sde, sampler: Sampler, num_samples, batch_size=64, device="cpu", seed=0,
                      progress=True):
    """`num_samples` samples drawn `batch_size` at a time from one seeded generator, clamped to [0, 1]."""
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = []
    for start in tqdm(range(0, num_samples, batch_size), desc="batches", disable=not progress):
        size = min(batch_size, num_samples - start)
        batches.append(sampler.sample(score_model, sde, size, device=device, generator=generator,
                                      progress=progress).clamp(0.0, 1.0).cpu())
    return torch.cat(batches)

