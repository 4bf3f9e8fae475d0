"""Analytic base distributions for composition tests: Gaussian mixtures on shared 2-D components.

Model i is p_i = sum_c w[i, c] N(mu_c, s^2 I) over one shared set of
components c. The observation y depends on x_0 only through its component:
p(y = i | c) = a[i, c] = w[i, c] / sum_j w[j, c] (exactly the paper's
p(y | x_0) when components are far apart). Under the VE SDE a component noises
to N(mu_c, (s^2 + std(t)^2) I), so the posterior over components given x_t is
closed-form, and so are:
  - each noised base score,
  - the joint Q(y1, y2 | x_t) = sum_c P(c | x_t) a[y1, c] a[y2, c]
    (observations independent given x_0, not given x_t),
  - the conditional Q(y3 | x_t, y1, y2),
  - every composition p(x_0 | y_1..y_n): the same components with weights
    P(c | y) ∝ p_M(c) prod_k a[y_k, c].
"""
import math

import torch
import torch.nn as nn

DATA_DIM = 2
LOG_ZERO = -1e4  # stands in for log 0: exp() of it is exactly 0, yet logsumexp keeps finite gradients


def _log(p: torch.Tensor) -> torch.Tensor:
    return p.log().clamp_min(LOG_ZERO)


def _component_log_densities(x, t, means, component_std, sde):
    """log N(x_t; mu_c, (s^2 + std(t)^2) I) -> [B, C]."""
    var = (component_std ** 2 + sde.marginal_prob_std(t).to(x) ** 2)[:, None]
    sq_dist = ((x[:, None, :] - means.to(x)[None]) ** 2).sum(-1)
    return -0.5 * sq_dist / var - 0.5 * DATA_DIM * torch.log(2 * math.pi * var)


class GaussianMixtureScore(nn.Module):
    """Exact score of sum_c weights[c] N(mu_c, s^2 I) noised to time t: (x [B, 2], t [B]) -> [B, 2]."""

    input_channels = DATA_DIM

    def __init__(self, means, weights, component_std, sde):
        super().__init__()
        self.register_buffer("means", means)
        self.register_buffer("log_weights", _log(weights))
        self.component_std, self.sde = component_std, sde

    def forward(self, x, t):
        log_dens = _component_log_densities(x, t, self.means, self.component_std, self.sde)
        responsibilities = torch.softmax(self.log_weights.to(x) + log_dens, dim=1)  # [B, C]
        var = self.component_std ** 2 + self.sde.marginal_prob_std(t).to(x) ** 2
        return (responsibilities @ self.means.to(x) - x) / var[:, None]


class _ExactClassifier(nn.Module):
    """Shared state of the exact classifiers: P(c | x_t) under the uniform mixture, and a[y, c]."""

    input_channels = DATA_DIM

    def __init__(self, bases):
        super().__init__()
        self.num_models = bases.num_models
        self.register_buffer("means", bases.means)
        self.register_buffer("log_mixture", _log(bases.weights.mean(0)))
        self.register_buffer("log_label_likelihood", _log(bases.label_likelihoods()))  # [m, C]
        self.component_std, self.sde = bases.component_std, bases.sde

    def component_log_posterior(self, x, t):
        """log P(c | x_t) [B, C] under p_M = mean_i p_i."""
        log_dens = _component_log_densities(x, t, self.means, self.component_std, self.sde)
        return torch.log_softmax(self.log_mixture.to(x) + log_dens, dim=1)


class ExactJointClassifier(_ExactClassifier):
    """log Q(y1, y2 | x_t) [B, m, m] = log sum_c P(c | x_t) a[y1, c] a[y2, c]."""

    def forward(self, x, t):
        log_a = self.log_label_likelihood.to(x)
        terms = self.component_log_posterior(x, t)[:, None, None, :] + log_a[None, :, None, :] + log_a[None, None]
        return torch.logsumexp(terms, dim=-1)


class ExactConditionalClassifier(_ExactClassifier):
    """log Q(y3 | x_t, y1, y2) [B, m] for per-sample 1-based labels y1, y2 [B]."""

    def forward(self, x, t, y1, y2):
        log_a = self.log_label_likelihood.to(x)
        given = self.component_log_posterior(x, t) + log_a[y1 - 1] + log_a[y2 - 1]  # [B, C]
        return torch.log_softmax(torch.logsumexp(given[:, None, :] + log_a[None], dim=-1), dim=1)


class GaussianMixtureBases:
    """m base models sharing components `means` [C, 2] with weights [m, C] (rows sum to 1)."""

    def __init__(self, means, weights, component_std, sde):
        self.means = torch.as_tensor(means, dtype=torch.float32)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        if (self.weights.sum(0) == 0).any():
            raise ValueError("every component must belong to at least one model")
        self.weights = self.weights / self.weights.sum(1, keepdim=True)
        self.num_models = len(self.weights)
        self.component_std, self.sde = component_std, sde

    def label_likelihoods(self) -> torch.Tensor:
        """a[y, c] = p(y | x_0 in component c), [m, C]."""
        return self.weights / self.weights.sum(0, keepdim=True)

    def score_model(self, i: int) -> GaussianMixtureScore:
        """Exact noised score of base model i (0-based)."""
        return self.mixture_score(self.weights[i])

    def mixture_score(self, weights) -> GaussianMixtureScore:
        return GaussianMixtureScore(self.means, torch.as_tensor(weights, dtype=torch.float32), self.component_std,
                                    self.sde)

    def joint_classifier(self) -> ExactJointClassifier:
        return ExactJointClassifier(self)

    def conditional_classifier(self) -> ExactConditionalClassifier:
        return ExactConditionalClassifier(self)

    def composition_weights(self, observations) -> torch.Tensor:
        """P(c | y_1..y_n) ∝ p_M(c) prod_k a[y_k, c] for 1-based observations, [C]."""
        weights = self.weights.mean(0) * self.label_likelihoods()[[y - 1 for y in observations]].prod(0)
        return weights / weights.sum()

    def nearest_component(self, x) -> torch.Tensor:
        """Index of the closest component mean for each sample [B, 2] -> [B]."""
        return torch.cdist(x.float(), self.means).argmin(dim=1)

    def component_shares(self, x) -> torch.Tensor:
        """Fraction of samples nearest to each component, [C]."""
        return torch.bincount(self.nearest_component(x), minlength=len(self.means)).float() / len(x)


# ---- Monte Carlo bounds: a stochastic assertion is judged in its own standard errors ----

STANDARD_ERRORS = 5.0
"""K, the standard errors an estimate may stray from its truth. Another CPU's kernels round differently and so give
another sample (another seed, in effect); what they cannot change is how far an estimate strays in its own
standard errors: an unbiased, asymptotically normal estimate lands beyond 5 of them with probability 6e-7 per
coordinate. A fixed tolerance instead passes or fails by where it happens to sit in that spread."""


def _float64(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64)


def mean_and_standard_error(samples):
    """(mean, standard error) per coordinate of independent draws [n, ...]: std / sqrt(n). The draws may be
    independent replicates of a whole estimator (one SMC run each), whose spread is then its error."""
    samples = _float64(samples)
    return samples.mean(0), samples.std(0) / math.sqrt(len(samples))


def variance_and_standard_error(samples):
    """(unbiased variance, standard error) per coordinate of independent draws [n, ...]; the error from the
    sample's own fourth central moment, Var(s^2) ~ (m4 - s^4) / n, which assumes no normality."""
    samples = _float64(samples)
    centred = samples - samples.mean(0)
    variance = centred.pow(2).sum(0) / (len(samples) - 1)
    return variance, ((centred.pow(4).mean(0) - variance ** 2).clamp_min(0) / len(samples)).sqrt()


def frequency_standard_error(frequency, n):
    """sqrt(p (1 - p) / n): the standard error of a frequency p of n independent trials."""
    frequency = _float64(frequency)
    return (frequency * (1 - frequency) / n).sqrt()


def _describe(what, estimate, reference_name, reference, standard_error, errors, allowed):
    """The failure message: estimate, truth or threshold, standard error and the distance in standard errors."""
    fmt = lambda values: ", ".join(f"{v:.4g}" for v in values.flatten().tolist())  # noqa: E731
    return (f"{what}: estimate [{fmt(estimate)}], {reference_name} [{fmt(reference)}], standard error "
            f"[{fmt(standard_error)}]: [{fmt(errors)}] standard errors ({allowed})")


def _in_standard_errors(distance, standard_error):
    """distance / SE, where a zero SE counts a zero distance as 0 errors and any other as infinitely many."""
    return torch.where(standard_error > 0, distance / standard_error.clamp_min(1e-300),
                       torch.where(distance > 0, math.inf, 0.0))


def assert_within_standard_errors(estimate, truth, standard_error, k=STANDARD_ERRORS, bias=0.0, what="estimate"):
    """|estimate - truth| <= k SE + bias in every coordinate; `bias` is a stated allowance for a method's known
    deterministic error (a sampler's finitely many steps), not for noise. Returns the largest number of SEs the
    estimate is off (beyond the bias allowance)."""
    estimate, truth, standard_error = torch.broadcast_tensors(_float64(estimate), _float64(truth),
                                                              _float64(standard_error))
    errors = _in_standard_errors(((estimate - truth).abs() - bias).clamp_min(0), standard_error)
    allowed = f"allowed {k:g}" + (f" beyond a bias allowance of {bias:g}" if bias else "")
    message = _describe(what, estimate, "truth", truth, standard_error,
                        _in_standard_errors((estimate - truth).abs(), standard_error), allowed)
    assert bool((errors <= k).all()), message
    return float(errors.max())


def assert_beyond_standard_errors(estimate, threshold, standard_error, k=STANDARD_ERRORS, above=True,
                                  what="estimate"):
    """A one-sided claim held by k standard errors: estimate >= threshold + k SE (above) or <= threshold - k SE
    in every coordinate. Returns the smallest number of SEs by which the estimate clears the threshold."""
    estimate, threshold, standard_error = torch.broadcast_tensors(_float64(estimate), _float64(threshold),
                                                                  _float64(standard_error))
    margin = estimate - threshold if above else threshold - estimate
    cleared = torch.where(margin >= 0, _in_standard_errors(margin, standard_error),
                          -_in_standard_errors(-margin, standard_error))
    message = _describe(what, estimate, "above" if above else "below", threshold, standard_error, cleared,
                        f"must clear it by {k:g}")
    assert bool((cleared >= k).all()), message
    return float(cleared.min())
