"""The variance-exploding SDE dx = sigma^t dw on t in [0, 1] (docs/reference.md §3).

One home for the SDE: every model, sampler and training script takes its
marginal std and diffusion coefficient from here.
"""
import math

import torch

SIGMA = 25.0


class VESDE:
    """Variance-exploding SDE with closed-form marginals."""

    def __init__(self, sigma: float = SIGMA):
        if sigma <= 1.0:
            raise ValueError(f"sigma must be > 1, got {sigma}")
        self.sigma = float(sigma)

    def marginal_prob_std(self, t):
        """std of x_t given x_0: sqrt((sigma^(2t) - 1) / (2 ln sigma))."""
        t = torch.as_tensor(t, dtype=torch.get_default_dtype())
        return torch.sqrt((self.sigma ** (2 * t) - 1.0) / (2.0 * math.log(self.sigma)))

    def time_of_std(self, std):
        """The inverse of marginal_prob_std: t = ln(1 + 2 ln(sigma) std^2) / (2 ln sigma)."""
        std = torch.as_tensor(std, dtype=torch.get_default_dtype())
        log_sigma = math.log(self.sigma)
        return torch.log1p(2.0 * log_sigma * std ** 2) / (2.0 * log_sigma)

    def diffusion_coeff(self, t):
        """g(t) = sigma^t."""
        t = torch.as_tensor(t, dtype=torch.get_default_dtype())
        return self.sigma ** t

    def prior_std(self) -> float:
        """std of the sampling prior, i.e. the marginal std at t = 1."""
        return float(self.marginal_prob_std(1.0))

    def __repr__(self):
        return f"VESDE(sigma={self.sigma})"
