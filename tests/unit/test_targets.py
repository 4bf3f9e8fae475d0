"""Exact composition targets (docs/reference.md §8), computed from the MNIST labels."""
import pytest

from sculpting.errors import UserError
from custom_datasets import cell_name
from sculpting.targets import target_distribution


def rounded(target):
    return {cell_name(cell): round(100 * share, 1) for cell, share in target.items()}


@pytest.mark.parametrize("models, observations, expected", [
    (["M1", "M2"], (1, 2), {"green 0": 100.0}),  # harmonic mean
    (["M1", "M2"], (1, 1), {"red 0": 65.9, "green 0": 34.1}),  # contrast p1 ◑ p2
    (["M1", "M2"], (2, 2), {"green 1": 70.2, "green 0": 29.8}),  # contrast p2 ◑ p1
    (["MN1", "MN2", "MN3"], (1, 2, 3), {"green 0": 100.0}),
    (["MN1", "MN2", "MN3"], (1, 1, 1), {"green 3": 61.7, "green 1": 17.4, "green 2": 14.4, "green 0": 6.5}),
    (["1", "2"], (1, 2), {"grey 4": 51.9, "grey 5": 48.1}),
])
def test_spec_values(data_root, models, observations, expected):
    target = target_distribution(models, observations, data_root)
    assert rounded(target) == expected
    assert list(rounded(target)) == list(expected)  # largest share first
    assert sum(target.values()) == pytest.approx(1.0)


def test_no_observation_is_the_mixture_and_one_model_is_its_dataset(data_root):
    assert rounded(target_distribution(["M1", "M2"], (), data_root)) == {"green 0": 48.4, "green 1": 26.6,
                                                                         "red 0": 25.0}
    assert rounded(target_distribution(["MN2"], (), data_root)) == rounded(target_distribution(["MN2"], (1, 1),
                                                                                               data_root))
    assert set(rounded(target_distribution(["MN2"], (), data_root)).values()) == {23.4, 26.6}


@pytest.mark.parametrize("models, observations, message", [
    (["M1", "M2"], (3,), "out of range"),
    (["M1", "M2"], (0, 1), "out of range"),
    (["M1", "M7"], (1,), "unknown model 'M7'"),
    (["1", "M1"], (), "mix grey"),
    ([], (), "no base models"),
])
def test_bad_compositions_are_user_errors(data_root, models, observations, message):
    with pytest.raises(UserError, match=message):
        target_distribution(models, observations, data_root)


@pytest.mark.parametrize("models, operator, weights, expected", [
    (["M1", "M2"], "product", None, {"green 0": 100.0}),  # the harmonic mean's target too
    (["MN2", "MN3"], "product", None, {"green 0": 50.0, "red 0": 50.0}),
    (["MN1", "MN2", "MN3"], "product", None, {"green 0": 100.0}),
    (["M1", "M2"], "negation", None, {"red 0": 100.0}),
    (["MN2", "MN3"], "negation", None, {"green 1": 50.0, "red 1": 50.0}),
    # each dataset's share omega_i spread over its images: red 0 = omega_1 / 2, green 1 = omega_2 n_1 / (n_0 + n_1)
    (["M1", "M2"], "mixture", None, {"green 0": 48.4, "green 1": 26.6, "red 0": 25.0}),
    (["M1", "M2"], "mixture", [0.2, 0.8], {"green 0": 47.4, "green 1": 42.6, "red 0": 10.0}),
])
def test_operator_targets(data_root, models, operator, weights, expected):
    from sculpting.targets import operator_target

    target = operator_target(models, operator, weights, data_root)
    assert rounded(target) == expected and sum(target.values()) == pytest.approx(1.0)


def test_uniform_mixture_and_product_agree_with_the_compositions(data_root):
    """The uniform mixture is the composition with no observation, the product's cells those of y = (1, 2)."""
    from sculpting.targets import operator_target

    assert operator_target(["M1", "M2"], "mixture", root=data_root) == pytest.approx(
        target_distribution(["M1", "M2"], (), data_root))
    assert set(operator_target(["1", "2"], "product", root=data_root)) == set(
        target_distribution(["1", "2"], (1, 2), data_root))


@pytest.mark.parametrize("models, operator, weights, message", [
    (["M1", "M2"], "sum", None, "unknown operator"),
    (["M1", "M2"], "mixture", [1.0], "one non-negative weight per model"),
    (["M1", "M1"], "negation", None, "is empty"),
    (["1", "M1"], "product", None, "mix grey"),
])
def test_bad_operator_targets_are_user_errors(data_root, models, operator, weights, message):
    from sculpting.targets import operator_target

    with pytest.raises(UserError, match=message):
        operator_target(models, operator, weights, data_root)
