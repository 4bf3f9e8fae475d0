"""Training losses (docs/reference.md §6). The classifier losses live beside the score-matching loss."""
import torch

TRAIN_EPS = 1e-5


def perturb(x, sde, eps=TRAIN_EPS):
    """(x_t, t, z, std): t ~ U(eps, 1), x_t = x + std(t) z, std shaped to broadcast over x."""
    t = torch.rand(x.shape[0], device=x.device) * (1.0 - eps) + eps
    z = torch.randn_like(x)
    std = sde.marginal_prob_std(t).to(x)[:, None, None, None]
    return x + z * std, t, z, std


def score_matching_error(score, std, z):
    """Batch mean of the per-sample sum over pixels of (s(x_t, t) std(t) + z)^2."""
    return ((score * std + z) ** 2).flatten(1).sum(dim=1).mean()


def denoising_score_matching_loss(score_model, x, sde, eps=TRAIN_EPS):
    """Batch mean of the per-sample sum over pixels of (s(x_t, t) std(t) + z)^2, t ~ U(eps, 1)."""
    x_t, t, z, std = perturb(x, sde, eps)
    return score_matching_error(score_model(x_t, t), std, z)


def joint_diffusion_loss(model, x, classes, sde, scaling, noised_classifier=True, eps=TRAIN_EPS):
    """(total, score loss, classification loss) of a joint diffusion model (models/joint_diffusion.py; Deja et al.
    2023): total = score loss + scaling * D * head loss on the same batch, D = values per image.

    The score loss is denoising_score_matching_loss's (a sum over the D values); the published code averages
    the same squared error over them, so D * scaling keeps its --classifier_loss_scaling meaning (0.001 there).
    `noised_classifier`: the head classifies x_t, from the score loss's own forward pass; False: it classifies the
    clean image (t = eps), in a second pass of the encoder.
    """
    x_t, t, z, std = perturb(x, sde, eps)
    score, logits = model.score_and_logits(x_t, t)
    score_loss = score_matching_error(score, std, z)
    if not noised_classifier:
        embed, features = model.encode(x, torch.full_like(t, eps))
        logits = model.head_logits(embed, features)
    head_loss = model.head.loss(logits.float(), classes)
    return score_loss + scaling * x[0].numel() * head_loss, score_loss, head_loss


def noised_classifier_loss(classifier, x, classes, sde, eps=TRAIN_EPS):
    """The head loss of a separately trained time-dependent classifier on x_t, t ~ U(eps, 1): classic
    classifier guidance's classifier, trained on the data's own noised images."""
    x_t, t, _, _ = perturb(x, sde, eps)
    return classifier.head.loss(classifier(x_t, t).float(), classes)


# ---- Time-dependent classifier losses (docs/reference.md §6) ----
# Trajectory steps with t > NON_TERMINAL_MAX_TIME are never trained on: the reference finds them too noisy.
NON_TERMINAL_MAX_TIME = 0.7
JOINT_STEP_FRACTION = 0.1  # the joint classifier trains on ~10% of the steps with t <= 0.7 per optimizer step
CONDITIONAL_STEPS_PER_TRAJECTORY = 50  # the conditional one keeps each such step with probability 50 / N


def select_steps(times, keep_prob, include_last, generator=None, max_time=NON_TERMINAL_MAX_TIME):
    """Indices of trajectory steps to train on: each step before the last with t <= max_time is kept
    independently with probability `keep_prob`; the last (terminal) step is always kept if `include_last`,
    never otherwise. `times` are the grid times of the stored steps, the terminal one last."""
    candidates = (times[:-1] <= max_time).cpu()
    drawn = torch.rand(len(candidates), generator=generator) < keep_prob
    steps = torch.nonzero(candidates & drawn).flatten()
    if include_last:
        steps = torch.cat([steps, torch.tensor([len(times) - 1])])
    return steps


def joint_terminal_loss(joint_log_probs, labels):
    """Cross-entropy of the marginal log Q(y = label | x_0); joint_log_probs [B, m, m], labels 0-based [B]."""
    from models.classifier_model import marginal_log_probs

    return torch.nn.functional.nll_loss(marginal_log_probs(joint_log_probs), labels)


def joint_soft_targets(labels, target_marginal_probs):
    """w[a, b] = 1[a = label] * Q_target(y = b | x_0): the source model is y1; y2 is drawn from the frozen
    target's posterior at the trajectory's end. labels 0-based [B], target_marginal_probs [B, m] -> [B, m, m]."""
    num_labels = target_marginal_probs.shape[1]
    source = torch.nn.functional.one_hot(labels, num_labels).to(target_marginal_probs)
    return source[:, :, None] * target_marginal_probs[:, None, :]


def joint_non_terminal_loss(joint_log_probs, soft_targets, samples_per_step, num_steps,
                            max_time=NON_TERMINAL_MAX_TIME, step_fraction=JOINT_STEP_FRACTION):
    """Sum over the selected steps of -mean(w * log Q) (the mean over samples and all m x m label cells,
    as the reference), weighted 1 / (N (1 - max_time) step_fraction).

    joint_log_probs, soft_targets: [steps * samples_per_step, m, m] for the selected steps stacked.
    num_steps: N, the length of the sampling grid the trajectories came from.
    """
    cells = soft_targets.shape[1] * soft_targets.shape[2]
    step_weight = 1.0 / (num_steps * (1.0 - max_time) * step_fraction)
    return -(soft_targets * joint_log_probs).sum() / (samples_per_step * cells) * step_weight


def conditional_keep_prob(num_steps, steps_per_trajectory=CONDITIONAL_STEPS_PER_TRAJECTORY):
    """Probability 50/N of keeping a step, capped at 1 for grids shorter than 50 steps."""
    return min(1.0, steps_per_trajectory / num_steps)


def conditional_classifier_loss(log_probs, soft_targets, samples_per_source, num_sources, num_steps,
                                max_time=NON_TERMINAL_MAX_TIME):
    """-sum(w * log Q3) over the selected steps, weighted 1 / ((1 - max_time) * keep probability), all
    divided by (N * samples per label pair * number of label pairs), as the reference.

    log_probs, soft_targets: [selected samples, m]; soft_targets are the frozen joint classifier's
    marginal Q(y | x_0) at each trajectory's terminal state.
    """
    step_weight = 1.0 / ((1.0 - max_time) * conditional_keep_prob(num_steps))
    total = -(soft_targets * log_probs).sum() * step_weight
    return total / (num_steps * samples_per_source * num_sources)
