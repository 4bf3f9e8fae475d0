"""Training losses (SPEC §6). The classifier losses live beside the score-matching loss."""
import torch

TRAIN_EPS = 1e-5


def denoising_score_matching_loss(score_model, x, sde, eps=TRAIN_EPS):
    """Batch mean of the per-sample sum over pixels of (s(x_t, t) std(t) + z)^2, t ~ U(eps, 1)."""
    t = torch.rand(x.shape[0], device=x.device) * (1.0 - eps) + eps
    z = torch.randn_like(x)
    std = sde.marginal_prob_std(t).to(x)[:, None, None, None]
    score = score_model(x + z * std, t)
    return ((score * std + z) ** 2).flatten(1).sum(dim=1).mean()
