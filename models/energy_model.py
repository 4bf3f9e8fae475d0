"""Energy-parameterised score model: score = -grad_x E(x, t) of a scalar energy (for Metropolis-
corrected MCMC; Du et al. 2023, "Reduce, Reuse, Recycle").

E(x, t) = |x - D(x, t)|^2 / (2 std(t)^2), with the denoiser D(x, t) = c_skip x + c_out u(x, t) preconditioned
as in Karras et al. 2022 (c_skip = sd^2 / (std^2 + sd^2), c_out = std sd / sqrt(std^2 + sd^2), sd the data's
std) and u the ScoreNet U-Net's raw output. An untrained u gives E ~ |x|^2 / (2 (std^2 + sd^2)) at large
noise, the Gaussian's energy, and the residual (x - D) / std stays of order one at every noise level, as the
plain ScoreNet's output times std does.

The state_dict holds the U-Net under "network." and the buffer "energy_sigma_data": a plain ScoreNet
refuses it (and the checkpoint loaders say why), and its checkpoints are named gen_<GEN_IDX>_energy_ckpt_*.
"""
import torch
import torch.nn as nn

from models.score_model import DEFAULT_CHANNELS, ScoreNet, scorenet_config_from_state_dict

SIGMA_DATA = 0.5
ENERGY_MARKER = "energy_sigma_data"  # the state_dict key that tells an energy checkpoint apart


def _unit_std(t):
    return torch.ones_like(t)


class EnergyScoreNet(nn.Module):
    """(x, t) -> -grad_x E(x, t); `energy(x, t)` -> [B]. Differentiable in training (create_graph)."""

    def __init__(self, marginal_prob_std, channels=DEFAULT_CHANNELS, embed_dim: int = 256, input_channels: int = 1,
                 sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.marginal_prob_std = marginal_prob_std
        self.input_channels = input_channels
        self.channels = tuple(channels)
        self.network = ScoreNet(_unit_std, channels, embed_dim, input_channels)  # raw output u(x, t)
        self.register_buffer(ENERGY_MARKER, torch.tensor(float(sigma_data)))

    def energy(self, x, t):
        std = self.marginal_prob_std(t).to(x)[:, None, None, None]
        sigma_data = getattr(self, ENERGY_MARKER).to(x)
        c_skip = sigma_data ** 2 / (std ** 2 + sigma_data ** 2)
        c_out = std * sigma_data / torch.sqrt(std ** 2 + sigma_data ** 2)
        residual = (x - c_skip * x - c_out * self.network(x, t)) / std
        return 0.5 * residual.flatten(1).pow(2).sum(dim=1)

    def energy_and_score(self, x, t):
        """(E [B], -grad_x E) in one pass; samples of a batch are independent, so grad of the sum is per sample."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            energy = self.energy(x_in, t)
            (gradient,) = torch.autograd.grad(energy.sum(), x_in, create_graph=self.training)
        if not self.training:
            energy, gradient = energy.detach(), gradient.detach()
        return energy, -gradient

    def forward(self, x, t):
        return self.energy_and_score(x, t)[1]


def has_energy(model) -> bool:
    """Whether `model` provides energy_and_score (an EnergyScoreNet, or a composition of energy models)."""
    return hasattr(model, "energy_and_score") and getattr(model, "has_energy", True)


def is_energy_state_dict(state_dict) -> bool:
    return ENERGY_MARKER in state_dict


def energy_config_from_state_dict(state_dict) -> dict:
    """Architecture (channels, embed_dim, input_channels, sigma_data) of an EnergyScoreNet state_dict."""
    if not is_energy_state_dict(state_dict):
        raise ValueError(f"not an energy-parameterised state_dict (no {ENERGY_MARKER!r})")
    prefix = "network."
    inner = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    config = scorenet_config_from_state_dict(inner)
    return {**config, "sigma_data": float(state_dict[ENERGY_MARKER])}
