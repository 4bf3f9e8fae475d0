"""Samplers for score models (anything with `input_channels` mapping (x, t) to a score)."""
from samplers.pc_sampler import (IMAGE_SIZE, langevin_corrector, euler_maruyama_predictor, pc_sampler, pc_trajectory_sampler, sample_in_batches,
    time_grid)

__all__ = ["IMAGE_SIZE", "langevin_corrector", "euler_maruyama_predictor", "pc_sampler", "pc_trajectory_sampler",
           "sample_in_batches", "time_grid"]
