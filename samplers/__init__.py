"""Samplers for score models (anything with `input_channels` mapping (x, t) to a score)."""
from samplers.heun_sampler import heun_evaluations, heun_trajectory_sampler, noise_levels
from samplers.mcmc import KERNELS, MCMCKernel, annealed_mcmc_sampler, mcmc_steps
from samplers.pc_sampler import (IMAGE_SIZE, denoising_step, euler_maruyama_predictor, langevin_corrector, pc_sampler,
                                 pc_trajectory_sampler, time_grid)
from samplers.sampling import SAMPLERS, Sampler, sample_in_batches
from samplers.smc import effective_sample_size, fkc_product_sampler, systematic_resample
from samplers.superdiff import SUPERDIFF_MODES, superdiff_sampler

__all__ = ["IMAGE_SIZE", "KERNELS", "MCMCKernel", "SAMPLERS", "SUPERDIFF_MODES", "Sampler", "annealed_mcmc_sampler",
           "denoising_step", "effective_sample_size", "euler_maruyama_predictor", "fkc_product_sampler",
           "heun_evaluations", "heun_trajectory_sampler", "langevin_corrector", "mcmc_steps", "noise_levels",
           "pc_sampler", "pc_trajectory_sampler", "sample_in_batches", "superdiff_sampler", "systematic_resample",
           "time_grid"]
