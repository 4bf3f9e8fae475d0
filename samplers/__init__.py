"""Samplers for score models (anything with `input_channels` mapping (x, t) to a score)."""
from samplers.heun_sampler import heun_evaluations, heun_trajectory_sampler, noise_levels
from samplers.pc_sampler import (IMAGE_SIZE, denoising_step, euler_maruyama_predictor, langevin_corrector, pc_sampler,
                                 pc_trajectory_sampler, time_grid)
from samplers.sampling import SAMPLERS, Sampler, sample_in_batches

__all__ = ["IMAGE_SIZE", "SAMPLERS", "Sampler", "denoising_step", "euler_maruyama_predictor",
           "heun_evaluations", "heun_trajectory_sampler", "langevin_corrector", "noise_levels", "pc_sampler",
           "pc_trajectory_sampler", "sample_in_batches", "time_grid"]
