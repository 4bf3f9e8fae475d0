"""Exact ingredients of compositions of finite datasets, with the call interfaces of the learned ones.

A base model that has learned its training set D_i perfectly draws each of its images with probability 1/|D_i|.
Under the VE SDE its noised density is then a Gaussian kernel sum,
    p_t^i(x) = (1/|D_i|) sum_{a in D_i} N(x; a, sigma(t)^2 I),
with the score (sum_a w_a a - x) / sigma^2, w = softmax_a(-|x - a|^2 / (2 sigma^2)), and a closed-form log-density.
With a uniform prior over the models, the posteriors the classifiers learn are exact too:
    P(y = i | x_t) = p_t^i(x) / sum_j p_t^j(x),
    Q(y1, y2 | x_t) = E[P(y1 | x_0) P(y2 | x_0) | x_t] over x_0 ~ p(x_0 | x_t) under the mixture,
    Q(y3 | x_t, y1, y2) = E[P(y1 | x_0) P(y2 | x_0) P(y3 | x_0) | x_t] / Q(y1, y2 | x_t).

The datasets are unions of cells (a digit in a colour) that every model either holds whole or lacks, so every one
of these is a function of two statistics per cell c: log sum_{a in c} N(x; a, sigma^2 I) and the kernel-weighted
mean of the cell's images. KernelSums computes them for a batch in chunks of images (the distances by one matrix
product per chunk, float32; an online log-sum-exp across chunks), so memory stays bounded for the ~42,000 images of
the MN datasets' union. One KernelSums serves every exact model built on it and keeps its last batch's statistics:
a composition evaluates its classifier and its base scores on the same x_t, and pays for the kernel sums once.

float32 is exact enough at every noise level the samplers visit: a squared distance |x|^2 - 2 x.a + |a|^2 of
images in [0, 1]^2352 (at most a few hundred) carries an absolute error near 1e-4, which moves a log-weight by
1e-4 / (2 sigma^2), about 5 at the smallest level (sigma = 3e-3) but only between images whose squared distances
lie within 1e-4 of each other; distinct training images differ by tens. (A bfloat16 product would err by ~1 in
the squared distance: wrong below sigma ~ 1.)
"""
import math

import torch
import torch.nn as nn

DEFAULT_CHUNK = 4096  # images per matrix product: [batch, chunk] logits and a [chunk, D] slice at a time


NEGLIGIBLE_LOG_WEIGHT = -80.0  # e^-80 ~ 2e-35 of the largest weight: below every sum's float32 resolution


def negligible_to_minus_infinity(log_weights):
    """Log-weights below NEGLIGIBLE_LOG_WEIGHT set to -inf: their exp is then exactly 0 rather than a denormal
    float, whose arithmetic runs many times slower on x86 and changes no sum."""
    return log_weights.masked_fill(log_weights < NEGLIGIBLE_LOG_WEIGHT, -math.inf)


class KernelSums(nn.Module):
    """Per-cell kernel statistics of a batch x_t.

    `cells`: one tensor of images [n_c, *shape] per cell (values as the data: in [0, 1] for images).
    `marginal_prob_std(t)`: the SDE's sigma(t). Calling it on (x [B, *shape], t [B]) returns
    (log_kernel [B, K]: log sum_{a in c} N(x; a, sigma^2 I), means [B, K, D]: the kernel-weighted mean image of each
    cell, sigma [B]), without autograd: grad_x log_kernel[c] = (means[c] - x) / sigma^2 is known in closed form, and
    the exact classifiers use it (a backward pass through the sums would cost another two matrix products).
    """

    def __init__(self, cells, marginal_prob_std, chunk=DEFAULT_CHUNK):
        super().__init__()
        if not cells:
            raise ValueError("KernelSums needs at least one cell of images")
        self.shape = tuple(cells[0].shape[1:])
        if any(tuple(cell.shape[1:]) != self.shape or len(cell) == 0 for cell in cells):
            raise ValueError("every cell must hold images of one shape, and at least one image")
        self.marginal_prob_std = marginal_prob_std
        self.chunk = int(chunk)
        images = torch.cat([cell.reshape(len(cell), -1).float() for cell in cells])
        self.register_buffer("images", images, persistent=False)
        self.register_buffer("squared_norms", images.pow(2).sum(1), persistent=False)
        self.register_buffer("cell_sizes", torch.tensor([len(cell) for cell in cells], dtype=torch.float64),
                             persistent=False)
        self.bounds = torch.tensor([0, *[len(cell) for cell in cells]]).cumsum(0).tolist()
        self._cached = None  # (x, t, statistics) of the last batch

    @property
    def num_cells(self) -> int:
        return len(self.bounds) - 1

    @property
    def dim(self) -> int:
        return self.images.shape[1]

    @torch.no_grad()
    def forward(self, x, t):
        t = torch.as_tensor(t, device=x.device).expand(len(x))
        cached = self._cached
        if cached is not None and cached[0].shape == x.shape and torch.equal(cached[0], x) and torch.equal(cached[1], t):
            return cached[2]
        statistics = self._compute(x.detach(), t)
        self._cached = (x.detach().clone(), t.clone(), statistics)
        return statistics

    def _compute(self, x, t):
        flat = x.reshape(len(x), -1).float()
        sigma = self.marginal_prob_std(t).to(flat).reshape(-1).expand(len(x))
        inverse_variance = 1.0 / sigma.pow(2)
        x_norms = flat.pow(2).sum(1)
        # log N(x; a, s^2 I) = -(|x|^2 - 2 x.a + |a|^2) / (2 s^2) - D/2 log(2 pi s^2)
        normaliser = -0.5 * self.dim * torch.log(2 * math.pi * sigma.pow(2))
        log_kernels, means = [], []
        for start, end in zip(self.bounds[:-1], self.bounds[1:]):
            running_max = running_sum = running_mean = None
            for lo in range(start, end, self.chunk):
                hi = min(lo + self.chunk, end)
                images = self.images[lo:hi]
                logits = (flat @ images.T * 2.0 - self.squared_norms[lo:hi] - x_norms[:, None]) \
                    * (0.5 * inverse_variance[:, None])
                chunk_max = logits.max(dim=1).values
                weights = torch.exp(negligible_to_minus_infinity(logits - chunk_max[:, None]))
                chunk_sum, chunk_mean = weights.sum(1), weights @ images
                if running_max is None:
                    running_max, running_sum, running_mean = chunk_max, chunk_sum, chunk_mean
                    continue
                new_max = torch.maximum(running_max, chunk_max)
                old_scale = torch.exp(negligible_to_minus_infinity(running_max - new_max))
                new_scale = torch.exp(negligible_to_minus_infinity(chunk_max - new_max))
                running_sum = running_sum * old_scale + chunk_sum * new_scale
                running_mean = running_mean * old_scale[:, None] + chunk_mean * new_scale[:, None]
                running_max = new_max
            log_kernels.append(running_max + torch.log(running_sum) + normaliser)
            means.append(running_mean / running_sum[:, None])
        return torch.stack(log_kernels, 1), torch.stack(means, 1), sigma


class FiniteDatasets:
    """The base models as finite datasets over shared cells: which cells each model holds, and the log-weights
    that follow from them (every image of model i weighs 1/|D_i|; the prior over models is uniform)."""

    def __init__(self, kernel_sums: KernelSums, membership):
        self.kernel_sums = kernel_sums
        membership = torch.as_tensor(membership, dtype=torch.bool)  # [m, K]: model i holds cell c
        if membership.shape[1] != kernel_sums.num_cells or not membership.any(1).all() or not membership.any(0).all():
            raise ValueError(f"membership must be [models, {kernel_sums.num_cells}], every model holding a cell and "
                             f"every cell held by a model")
        self.membership = membership
        sizes = kernel_sums.cell_sizes
        model_sizes = (membership.double() * sizes).sum(1)  # |D_i|
        # log of each cell's image weight under each model: -log|D_i| where held, -inf elsewhere
        self.log_image_weight = torch.where(membership, -model_sizes.log()[:, None], torch.tensor(-math.inf,
                                                                                                   dtype=torch.float64))
        # log P(y = i | x_0 = a) for an image of each cell: [K, m]
        self.log_label_given_cell = torch.log_softmax(self.log_image_weight, dim=0).T

    @property
    def num_models(self) -> int:
        return len(self.membership)

    def model_log_densities(self, x, t):
        """log p_t^i(x) [B, m], and the kernel statistics it came from."""
        log_kernel, means, sigma = self.kernel_sums(x, t)
        weighted = log_kernel[:, None, :] + self.log_image_weight.to(log_kernel)[None]  # [B, m, K]
        return torch.logsumexp(weighted, dim=2), weighted, means, sigma

    def mixture_cell_log_posterior(self, x, t):
        """log P(x_0 in cell c | x_t) under the mixture (1/m) sum_i p_i: [B, K]."""
        _, weighted, _, _ = self.model_log_densities(x, t)
        return torch.log_softmax(torch.logsumexp(weighted, dim=1), dim=1)


class ExactScore(nn.Module):
    """The exact noised score of base model `index` of `datasets`: (x, t) -> score, as a ScoreNet is called; also
    its log-density and its energy (= -log-density) for the operators that use them."""

    def __init__(self, datasets: FiniteDatasets, index: int):
        super().__init__()
        self.datasets, self.index = datasets, int(index)
        self.kernel_sums = datasets.kernel_sums  # a submodule: .to(device) moves the images
        self.input_channels = datasets.kernel_sums.shape[0]

    def forward(self, x, t):
        return self.energy_and_score(x, t)[1]

    def energy_and_score(self, x, t):
        """(E [B] = -log p_t^i(x), score): the interface of an energy model (models/energy_model.py), so that the
        Metropolis-corrected samplers take exact models and sums of them; both from one pass of the kernel sums."""
        log_density, weighted, means, sigma = self.datasets.model_log_densities(x, t)
        cell_weights = torch.softmax(weighted[:, self.index], dim=1)  # [B, K]
        mean = (cell_weights[:, :, None] * means).sum(1)
        score = (mean - x.reshape(len(x), -1).float()) / sigma.pow(2)[:, None]
        return -log_density[:, self.index], score.reshape(x.shape).to(x.dtype)

    def log_density(self, x, t):
        return self.datasets.model_log_densities(x, t)[0][:, self.index]

    def energy(self, x, t):
        return -self.log_density(x, t)


class _ExactLogPosterior(torch.autograd.Function):
    """log Q(e | x_t) = log sum_c P(c | x_t) L(e | c) for a table of label events e (log L [K, E]: each event's log
    probability given a cell), in log space throughout, with its gradient in closed form: grad_x log P(c | x_t) =
    s_c - sum_k P(k | x_t) s_k, where s_c = (means_c - x) / sigma^2 is the gradient of the cell's log kernel sum."""

    @staticmethod
    def forward(ctx, x, log_posterior, means, sigma, log_events):
        log_q = torch.logsumexp(log_posterior[:, :, None] + log_events[None], dim=1)  # [B, E]
        ctx.save_for_backward(x, log_posterior, means, sigma, log_events, log_q)
        return log_q

    @staticmethod
    def backward(ctx, grad_output):
        x, log_posterior, means, sigma, log_events, log_q = ctx.saved_tensors
        # sum_e g_e grad log Q_e = sum_c [sum_e g_e P(c | e, x) - P(c | x) sum_e g_e] s_c; the coefficients sum to
        # zero, so the -x / sigma^2 part of s_c cancels. An event of probability 0 carries no gradient.
        responsibility = torch.exp(log_posterior[:, :, None] + log_events[None] - log_q[:, None, :]).nan_to_num(0.0)
        coefficient = (responsibility * grad_output[:, None, :]).sum(2) \
            - log_posterior.exp() * grad_output.sum(1, keepdim=True)  # [B, K]
        gradient = (coefficient[:, :, None] * means).sum(1) / sigma.pow(2)[:, None]
        return gradient.reshape(x.shape).to(x.dtype), None, None, None, None


def exact_log_posterior(datasets: FiniteDatasets, x, t, log_events):
    """log sum_c P(c | x_t) exp(log_events[c, e]) for each event e, differentiable in x."""
    _, means, sigma = datasets.kernel_sums(x, t)
    return _ExactLogPosterior.apply(x, datasets.mixture_cell_log_posterior(x, t), means, sigma,
                                    log_events.to(means))


class _ExactClassifier(nn.Module):
    """What the exact classifiers share: their datasets (the kernel sums a submodule, so .to(device) moves the images)
    and the attributes a composition checks (num_models, input_channels)."""

    def __init__(self, datasets: FiniteDatasets):
        super().__init__()
        self.datasets = datasets
        self.kernel_sums = datasets.kernel_sums
        self.num_models = datasets.num_models
        self.input_channels = datasets.kernel_sums.shape[0]


class ExactJointClassifier(_ExactClassifier):
    """log Q(y1, y2 | x_t) [B, m, m], the exact joint posterior: what JointYClassifier (m = 2) and
    ThreeWayJointYClassifier (m = 3) learn."""

    def forward(self, x, t):
        labels = self.datasets.log_label_given_cell  # [K, m]
        pairs = (labels[:, :, None] + labels[:, None, :]).reshape(len(labels), -1)  # [K, m * m]
        return exact_log_posterior(self.datasets, x, t, pairs).reshape(len(x), self.num_models, self.num_models)


class ExactConditionalClassifier(_ExactClassifier):
    """log Q(y3 | x_t, y1, y2) [B, m], the exact conditional posterior: what ThreeWayConditionalYClassifier learns.
    y1, y2: 1-based labels [B]."""

    def forward(self, x, t, y1, y2):
        labels = self.datasets.log_label_given_cell  # [K, m]
        # Q(y3 | x, y1, y2) = Q(y1, y2, y3 | x) / Q(y1, y2 | x), from the table of every triple
        m = self.num_models
        triples = (labels[:, :, None, None] + labels[:, None, :, None] + labels[:, None, None, :]).reshape(
            len(labels), -1)  # [K, m^3]
        log_triples = exact_log_posterior(self.datasets, x, t, triples).reshape(len(x), m, m, m)
        rows = torch.arange(len(x), device=x.device)
        log_observed = log_triples[rows, y1.long() - 1, y2.long() - 1]  # [B, m]
        return log_observed - torch.logsumexp(log_observed, dim=1, keepdim=True)
