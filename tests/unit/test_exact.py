"""The exact ingredients (models/exact.py) on a 2-D point set: four clusters of points as the cells, base models as
unions of cells. Their scores, densities and posteriors against brute force; a composition of them against its
closed-form score and, sampled, against its exact target."""
import math

import pytest
import torch

from analytic import assert_within_standard_errors, frequency_standard_error
from models.compositions import BinaryDiffusionComposition, ConditionalDiffusionComposition
from models.exact import (ExactConditionalClassifier, ExactJointClassifier, ExactScore, FiniteDatasets,
                          KernelSums)
from samplers import Sampler
from sculpting.sde import VESDE

SDE = VESDE()
CENTRES = torch.tensor([[0.2, 0.2], [0.8, 0.2], [0.2, 0.8], [0.8, 0.8]])
SIZES = (30, 20, 25, 15)  # unequal: the models' image weights 1/|D_i| then differ
MEMBERSHIP = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]]  # model i holds cell c


def cells():
    generator = torch.Generator().manual_seed(0)
    return [centre + 0.02 * torch.randn(size, 2, generator=generator) for centre, size in zip(CENTRES, SIZES)]


def datasets(models=3, chunk=7):
    """The first `models` base models over the cells they hold; a chunk smaller than a cell, so that the online
    log-sum-exp across chunks is exercised."""
    held = [c for c in range(len(SIZES)) if any(row[c] for row in MEMBERSHIP[:models])]
    return FiniteDatasets(KernelSums([cells()[c] for c in held], SDE.marginal_prob_std, chunk=chunk),
                          [[row[c] for c in held] for row in MEMBERSHIP[:models]])


def brute_force(x, t, models=3):
    """float64 sums over every point: (log p_i [B, m], P(x_0 = a | x_t) under the mixture [B, N], P(y | a) [N, m],
    the points [N, 2], sigma [B])."""
    points = torch.cat(cells()).double()
    cell_of = torch.cat([torch.full((size,), c) for c, size in enumerate(SIZES)])
    held = torch.tensor(MEMBERSHIP[:models], dtype=torch.bool)[:, cell_of]  # [m, N]
    weight = held.double() / held.sum(1, keepdim=True)  # 1/|D_i| where held
    sigma = SDE.marginal_prob_std(t).double()
    log_kernel = -((x.double()[:, None] - points[None]) ** 2).sum(-1) / (2 * sigma[:, None] ** 2) \
        - math.log(2 * math.pi) - 2 * sigma.log()[:, None]
    log_p = torch.logsumexp(log_kernel[:, None, :] + weight.log()[None], dim=2)
    posterior = torch.softmax(log_kernel + weight.sum(0).log(), dim=1)
    return log_p, posterior, (weight / weight.sum(0)).T, points, sigma


def probes():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, 2, generator=generator) * 1.2 - 0.1
    return x, torch.tensor([0.9, 0.6, 0.4, 0.3, 0.2, 0.15])


def finite_difference_gradient(function, x, step=1e-3):
    """Central differences of a per-sample scalar function [B] in each coordinate of x [B, 2], in float64."""
    columns = []
    for k in range(x.shape[1]):
        offset = torch.zeros_like(x)
        offset[:, k] = step
        columns.append((function(x + offset).double() - function(x - offset).double()) / (2 * step))
    return torch.stack(columns, 1)


def test_the_exact_score_is_the_finite_difference_gradient_of_the_exact_log_density():
    data = datasets()
    x, t = probes()
    for index in range(3):
        model = ExactScore(data, index)
        expected = finite_difference_gradient(lambda points: model.log_density(points, t), x)
        torch.testing.assert_close(model(x, t).double(), expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()))
        assert torch.equal(model.energy(x, t), -model.log_density(x, t))
        energy, score = model.energy_and_score(x, t)  # what the Metropolis-corrected samplers call
        assert torch.equal(energy, model.energy(x, t)) and torch.equal(score, model(x, t))


@pytest.mark.parametrize("entry", [(0, 1), (2, 2)])
def test_the_classifiers_closed_form_gradients_are_their_finite_differences(entry):
    data = datasets()
    x, t = probes()
    joint = ExactJointClassifier(data)
    x_in = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(joint(x_in, t)[:, entry[0], entry[1]].sum(), x_in)
    expected = finite_difference_gradient(lambda points: joint(points, t)[:, entry[0], entry[1]], x)
    torch.testing.assert_close(gradient.double(), expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()))
    conditional = ExactConditionalClassifier(data)
    y1 = y2 = torch.full((len(x),), entry[0] + 1)  # both observe one model: Q(y3 | x_t, y1, y2) varies with x_t
    (gradient,) = torch.autograd.grad(conditional(x_in, t, y1, y2)[:, 0].sum(), x_in)
    expected = finite_difference_gradient(lambda points: conditional(points, t, y1, y2)[:, 0], x)
    torch.testing.assert_close(gradient.double(), expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()))


def test_a_cell_no_model_holds_is_refused():
    with pytest.raises(ValueError, match="every cell held by a model"):
        FiniteDatasets(KernelSums(cells(), SDE.marginal_prob_std), MEMBERSHIP[:2])


def test_log_densities_and_posteriors_match_brute_force_sums():
    data = datasets()
    x, t = probes()
    log_p, posterior, label_given_point, _, _ = brute_force(x, t)
    torch.testing.assert_close(data.model_log_densities(x, t)[0].double(), log_p, rtol=1e-5, atol=1e-4)
    joint = ExactJointClassifier(data)(x, t).exp().double()
    expected = torch.einsum("bn,ni,nj->bij", posterior, label_given_point, label_given_point)
    torch.testing.assert_close(joint, expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(joint.sum((1, 2)), torch.ones(len(x), dtype=torch.float64), atol=1e-5)
    # the marginal of the joint table is the posterior over models p_i / sum_j p_j
    torch.testing.assert_close(joint.sum(2), torch.softmax(log_p, dim=1), rtol=1e-4, atol=1e-6)
    y1, y2 = torch.tensor([1, 2, 3, 1, 2, 3]), torch.tensor([1, 1, 2, 3, 3, 2])
    conditional = ExactConditionalClassifier(data)(x, t, y1, y2).exp().double()
    assert torch.allclose(conditional.sum(1), torch.ones(len(x), dtype=torch.float64), atol=1e-5)
    triple = torch.einsum("bn,nb,nb,nj->bj", posterior, label_given_point[:, y1 - 1], label_given_point[:, y2 - 1],
                          label_given_point)
    torch.testing.assert_close(conditional, triple / triple.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)


def test_posteriors_tend_to_dataset_membership_as_the_noise_vanishes():
    data = datasets()
    points = torch.stack([cell[0] for cell in cells()])  # one training point of each cell
    t = torch.full((len(points),), 1e-4)
    membership = torch.tensor(MEMBERSHIP, dtype=torch.float64).T  # [cell, model]
    expected = (membership / torch.tensor([sum(s for s, held in zip(SIZES, row) if held) for row in MEMBERSHIP]))
    expected = expected / expected.sum(1, keepdim=True)  # P(y = i | x_0) of a point of each cell
    posterior = ExactJointClassifier(data)(points, t).exp().sum(2).double()
    torch.testing.assert_close(posterior, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("observations", [(1, 2), (1, 1), (2, 3, 1)])
def test_exact_bases_and_classifiers_at_guidance_1_give_the_composed_score(observations):
    """sum_i P(y1 = i | x_t) s_i + grad log Q(y | x_t) is the score of p_t(x | y) = sum_a p(a | y) N(x; a, s^2 I),
    p(a | y) ∝ p_M(a) prod_k P(y_k | a) (the composed density noised)."""
    data = datasets()
    x, t = probes()
    bases = [ExactScore(data, index) for index in range(3)]
    composition = BinaryDiffusionComposition(bases, ExactJointClassifier(data), *observations[:2], 1.0)
    if len(observations) == 3:
        composition = ConditionalDiffusionComposition(composition, ExactConditionalClassifier(data),
                                                      observations[2], 1.0)
    _, posterior, label_given_point, points, sigma = brute_force(x, t)
    weight = posterior * torch.stack([label_given_point[:, y - 1] for y in observations]).prod(0)
    weight = weight / weight.sum(1, keepdim=True)
    expected = (weight @ points - x.double()) / sigma[:, None] ** 2
    torch.testing.assert_close(composition(x, t).double(), expected, rtol=2e-3, atol=2e-3 * float(expected.abs().max()))


def test_a_composition_of_exact_ingredients_sampled_reaches_its_exact_target():
    """y = (1, 1) of models 1 and 2: their contrast, on cells 0 and 1 with closed-form shares."""
    data = datasets(models=2)
    composition = BinaryDiffusionComposition([ExactScore(data, 0), ExactScore(data, 1)], ExactJointClassifier(data),
                                             1, 1, 1.0)
    n = 2000
    samples = Sampler("heun-churn", 40, denoise_last_step=True, sigma_min=0.01, churn=40.0).sample(
        composition, SDE, n, shape=(2,), generator=torch.Generator().manual_seed(2), progress=False)
    nearest = torch.cdist(samples, CENTRES).argmin(1)
    shares = torch.bincount(nearest, minlength=4).double() / n
    # p(a | y = (1, 1)) ∝ p_M(a) P(1 | a)^2: a point of cell 0 weighs (1/2)/|D1|, of cell 1 (1/2)(1/|D1| + 1/|D2|)
    # times P(1 | a)^2 = (|D2| / (|D1| + |D2|))^2 (the larger D1 = cells 0, 1 dilutes model 1's weight there)
    d1, d2 = SIZES[0] + SIZES[1], SIZES[1] + SIZES[2]
    cell_weight = torch.tensor([SIZES[0] * 0.5 / d1, SIZES[1] * 0.5 * (1 / d1 + 1 / d2) * (d2 / (d1 + d2)) ** 2, 0, 0],
                               dtype=torch.float64)
    target = cell_weight / cell_weight.sum()
    assert_within_standard_errors(shares, target, frequency_standard_error(target, n).clamp_min(1 / n),
                                  what="cell shares of 2000 exact-ingredient samples")
