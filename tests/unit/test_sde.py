import math

import pytest
import torch

from sculpting.sde import VESDE


def test_marginal_std_and_diffusion_closed_forms():
    sde = VESDE(25.0)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    expected_std = torch.sqrt((25.0 ** (2 * t) - 1) / (2 * math.log(25.0)))
    assert torch.allclose(sde.marginal_prob_std(t), expected_std)
    assert torch.allclose(sde.diffusion_coeff(t), 25.0 ** t)
    assert sde.marginal_prob_std(torch.tensor(0.0)) == 0.0
    assert sde.prior_std() == pytest.approx(math.sqrt((625 - 1) / (2 * math.log(25))))


def test_marginal_variance_is_integral_of_squared_diffusion():
    # Var(t) = int_0^t g(s)^2 ds for the VE SDE; check with the trapezoid rule.
    sde = VESDE()
    s = torch.linspace(0, 0.8, 20001, dtype=torch.float64)
    integral = torch.trapezoid(25.0 ** (2 * s), s)
    assert float(sde.marginal_prob_std(0.8)) ** 2 == pytest.approx(float(integral), rel=1e-5)


def test_sigma_must_exceed_one():
    with pytest.raises(ValueError):
        VESDE(1.0)
