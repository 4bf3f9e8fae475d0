"""Compositions of diffusion models guided by time-dependent classifiers (docs/reference.md §1, §7).

A composition is itself a score model, (x, t) -> score with an `input_channels`
attribute: it can be sampled by the PC sampler and be a base model of a
further composition.

Improvement over the reference: every network passed in (base score models,
classifiers) is switched, in place, to eval mode with requires_grad_(False)
at construction, so dropout is off while classifiers guide sampling; the
reference left dropout active. Base scores are evaluated without grad; the
classifier gets grad locally for its guidance term; outputs are detached.
"""
import torch
import torch.nn as nn

from models import freeze
from models.classifier_model import marginal_log_probs


def _check_label(name: str, label: int, num_models: int) -> int:
    if label != int(label) or not 1 <= int(label) <= num_models:
        raise ValueError(f"{name} must be in 1..{num_models} (1-based model index), got {label}")
    return int(label)


def _check_classifier(classifier, num_models: int, input_channels: int) -> None:
    if classifier.num_models != num_models:
        raise ValueError(f"classifier {type(classifier).__name__} separates {classifier.num_models} models, "
                         f"but {num_models} are composed")
    channels = getattr(classifier, "input_channels", input_channels)
    if channels != input_channels:
        raise ValueError(f"classifier takes {channels} input channels, the score models {input_channels}")


def _log_probs_and_gradient(classifier_fn, x, select):
    """One classifier pass: its log-probs (detached) and grad_x of the selected per-sample log-prob.

    Samplers run under no_grad, so grad is enabled locally; samples of a batch
    are independent, so the gradient of the batch sum is the per-sample gradient.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        log_probs = classifier_fn(x)
        (gradient,) = torch.autograd.grad(select(log_probs).sum(), x)
    return log_probs.detach(), gradient


class _FrozenComposition(nn.Module):
    """A composition has nothing to train: it and its networks stay in eval mode."""

    def __init__(self):
        super().__init__()
        self.training = False

    def train(self, mode: bool = True):
        return super().train(False)


class BinaryDiffusionComposition(_FrozenComposition):
    """p(x | y_1, y_2) for m base models and a joint classifier log Q(y1, y2 | x_t) [B, m, m].

    score = sum_i P(y1 = i | x_t) s_i(x_t) + guidance_scale * grad_x log Q(y_1, y_2 | x_t);
    guidance_scale = 1 is the exact composition. Labels are 1-based.
    """

    def __init__(self, score_models, classifier, y_1, y_2, guidance_scale=1.0):
        super().__init__()
        score_models = list(score_models)
        if not score_models:
            raise ValueError("a composition needs at least one score model")
        channels = [model.input_channels for model in score_models]
        if len(set(channels)) > 1:
            raise ValueError(f"score models take different input channels {channels}; compose models of one kind")
        self.m = len(score_models)
        self.input_channels = channels[0]
        _check_classifier(classifier, self.m, self.input_channels)
        self.y_1 = _check_label("y_1", y_1, self.m)
        self.y_2 = _check_label("y_2", y_2, self.m)
        self.guidance_scale = float(guidance_scale)
        self.score_models = nn.ModuleList(freeze(model) for model in score_models)
        self.classifier = freeze(classifier)

    def forward(self, x, t):
        log_q, guidance = _log_probs_and_gradient(lambda x_in: self.classifier(x_in, t), x,
                                                  lambda table: table[:, self.y_1 - 1, self.y_2 - 1])
        weights = marginal_log_probs(log_q).exp().to(x.dtype)  # P(y1 = i | x_t), [B, m]
        with torch.no_grad():
            mixture = sum(weights[:, i].view(-1, *([1] * (x.dim() - 1))) * model(x, t)
                          for i, model in enumerate(self.score_models))
        return mixture + self.guidance_scale * guidance


class ConditionalDiffusionComposition(_FrozenComposition):
    """p(x | y_1, y_2, y_3): a binary composition plus guidance by log Q3(y_3 | x_t, y_1, y_2) [B, m].

    score = binary_diffusion(x, t) + guidance_scale * grad_x log Q3(y_3 | x_t, y_1, y_2)
    (the chain rule of log Q(y1, y2, y3 | x_t), each term with its own scale).
    """

    def __init__(self, binary_diffusion, conditional_classifier, y_3, guidance_scale=1.0):
        super().__init__()
        if not isinstance(binary_diffusion, BinaryDiffusionComposition):
            raise TypeError(f"binary_diffusion must be a BinaryDiffusionComposition, "
                            f"got {type(binary_diffusion).__name__}")
        self.input_channels = binary_diffusion.input_channels
        _check_classifier(conditional_classifier, binary_diffusion.m, self.input_channels)
        self.y_3 = _check_label("y_3", y_3, binary_diffusion.m)
        self.guidance_scale = float(guidance_scale)
        self.binary_diffusion = freeze(binary_diffusion)
        self.conditional_classifier = freeze(conditional_classifier)

    def forward(self, x, t):
        y_1 = torch.full((x.shape[0],), self.binary_diffusion.y_1, dtype=torch.long, device=x.device)
        y_2 = torch.full_like(y_1, self.binary_diffusion.y_2)
        _, guidance = _log_probs_and_gradient(lambda x_in: self.conditional_classifier(x_in, t, y_1, y_2), x,
                                              lambda log_q3: log_q3[:, self.y_3 - 1])
        with torch.no_grad():
            base = self.binary_diffusion(x, t)
        return base + self.guidance_scale * guidance


def compose(score_models, classifiers, observations, guidance_scales):
    """The composition p(x | y_1, ..., y_n) of two or three observations, as the sample scripts build it: the
    binary composition of (y_1, y_2) guided by classifiers[0] at guidance_scales[0], then, for y_3, the
    conditional classifier classifiers[1]'s guidance at guidance_scales[1]."""
    if len(observations) not in (2, 3) or len(classifiers) != len(observations) - 1 \
            or len(guidance_scales) != len(classifiers):
        raise ValueError(f"compose takes 2 or 3 observations with one classifier and scale for each of y_1 y_2 and "
                         f"y_3; got {len(observations)} observations, {len(classifiers)} classifiers, "
                         f"{len(guidance_scales)} scales")
    composition = BinaryDiffusionComposition(score_models, classifiers[0], *observations[:2], guidance_scales[0])
    if len(observations) == 3:
        composition = ConditionalDiffusionComposition(composition, classifiers[1], observations[2],
                                                      guidance_scales[1])
    return composition
