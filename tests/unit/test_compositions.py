"""Compositions (docs/reference.md §1, §7) against closed-form Gaussian-mixture targets, plus the sampling scripts."""
import json
import math

import pytest
import torch

import sample_3way_composition
import sample_composition
from sculpting.errors import UserError
from models.classifier_model import JointYClassifier, ThreeWayConditionalYClassifier, ThreeWayJointYClassifier
from models.compositions import BinaryDiffusionComposition, ConditionalDiffusionComposition
from models.score_model import ScoreNet
from samplers import pc_sampler
from sculpting.sde import VESDE
from tests.analytic import GaussianMixtureBases, assert_within_standard_errors, frequency_standard_error

SDE = VESDE()
COMPONENT_STD = 0.3
TINY_SCORENET = {"channels": (32, 32, 32, 32), "embed_dim": 32}
TINY_CLASSIFIER = {"embed_dim": 16, "t_embed_dim": 16, "channels": (4, 4)}


@pytest.fixture(scope="module")
def two_bases():
    """Two models over 4 components; they share components 1 and 2 with different weights."""
    means = [[-4.0, 0.0], [0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]
    return GaussianMixtureBases(means, [[0.5, 0.4, 0.1, 0.0], [0.0, 0.2, 0.3, 0.5]], COMPONENT_STD, SDE)


@pytest.fixture(scope="module")
def three_bases():
    """The MN1/MN2/MN3 layout: components green 0-3, red 0-2 on a ring; MN1 = green 0-3,
    MN2 = red/green 0, 1, MN3 = red/green 0, 2."""
    means = [[5 * math.cos(2 * math.pi * k / 7), 5 * math.sin(2 * math.pi * k / 7)] for k in range(7)]
    weights = [[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 1, 0, 1]]
    return GaussianMixtureBases(means, weights, COMPONENT_STD, SDE)


def base_models(bases):
    return [bases.score_model(i) for i in range(bases.num_models)]


def exact_composition(bases, observations, guidance_scales=(1.0, 1.0)):
    composition = BinaryDiffusionComposition(base_models(bases), bases.joint_classifier(), *observations[:2],
                                             guidance_scales[0])
    if len(observations) == 3:
        composition = ConditionalDiffusionComposition(composition, bases.conditional_classifier(), observations[2],
                                                      guidance_scales[1])
    return composition


def probe_points(num=64, seed=0):
    """Points and times where every component matters to the score (float64 for tight comparisons)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num, 2, generator=generator, dtype=torch.float64) * 3
    t = torch.linspace(0.2, 1.0, num, dtype=torch.float64)
    return x, t


def sampled_shares(composition, bases, num_samples, num_steps=150, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = pc_sampler(composition, SDE, num_samples, num_steps, shape=(2,), generator=generator, progress=False)
    return bases.component_shares(x)


def assert_shares_match(shares, bases, observations, num_samples):
    """Each component's share of independent samples within 5 of its standard errors of the exact composition's
    (no bias allowance: over 6 seeds the shares showed none, at 0.004 or less)."""
    assert_within_standard_errors(shares, bases.composition_weights(observations),
                                  frequency_standard_error(shares, num_samples), what=f"shares of {observations}")


@pytest.mark.parametrize("observations", [(1, 2), (1, 1), (2, 2), (2, 1)])
def test_exact_classifier_makes_the_exact_composition_score(two_bases, observations):
    x, t = probe_points()
    target = two_bases.mixture_score(two_bases.composition_weights(observations))
    assert torch.allclose(exact_composition(two_bases, observations)(x, t), target(x, t), atol=1e-6)


@pytest.mark.parametrize("observations", [(1, 2, 3), (1, 1, 1), (3, 2, 2)])
def test_exact_chain_rule_makes_the_exact_3way_composition_score(three_bases, observations):
    x, t = probe_points()
    target = three_bases.mixture_score(three_bases.composition_weights(observations))
    assert torch.allclose(exact_composition(three_bases, observations)(x, t), target(x, t), atol=1e-6)


@pytest.mark.parametrize("observations", [(1, 2), (1, 1), (2, 2)])
def test_sampled_composition_matches_exact_component_shares(two_bases, observations):
    shares = sampled_shares(exact_composition(two_bases, observations), two_bases, num_samples=3000)
    assert_shares_match(shares, two_bases, observations, 3000)


@pytest.mark.parametrize("observations", [(1, 2, 3), (1, 1, 1)])
def test_sampled_3way_composition_matches_exact_component_shares(three_bases, observations):
    num_samples = 500 if observations == (1, 2, 3) else 2000  # (1, 2, 3) is all green 0: few samples show it
    shares = sampled_shares(exact_composition(three_bases, observations), three_bases, num_samples)
    assert_shares_match(shares, three_bases, observations, num_samples)


def test_zero_guidance_is_the_posterior_weighted_mixture_score(two_bases):
    x, t = probe_points()
    composition = exact_composition(two_bases, (1, 1), guidance_scales=(0.0,))
    mixture = two_bases.mixture_score(two_bases.weights.mean(0))  # the score of p_M = (p1 + p2) / 2
    assert torch.allclose(composition(x, t), mixture(x, t), atol=1e-6)


def test_guidance_term_is_the_gradient_of_log_q(two_bases, three_bases):
    x, t = probe_points()
    for bases, observations in ((two_bases, (1, 2)), (three_bases, (2, 3, 1))):
        guided = exact_composition(bases, observations, guidance_scales=(2.5, 4.0))
        unguided = exact_composition(bases, observations, guidance_scales=(0.0, 0.0))
        x_in = x.clone().requires_grad_(True)
        log_q = bases.joint_classifier()(x_in, t)[:, observations[0] - 1, observations[1] - 1]
        expected = 2.5 * torch.autograd.grad(log_q.sum(), x_in)[0]
        if len(observations) == 3:
            labels = [torch.full((len(x),), y) for y in observations[:2]]
            log_q3 = bases.conditional_classifier()(x_in, t, *labels)[:, observations[2] - 1]
            expected += 4.0 * torch.autograd.grad(log_q3.sum(), x_in)[0]
        assert torch.allclose(guided(x, t) - unguided(x, t), expected, atol=1e-6)


def test_networks_are_frozen_and_one_classifier_pass_serves_weights_and_gradient():
    torch.manual_seed(0)
    models = [ScoreNet(SDE.marginal_prob_std, **TINY_SCORENET, input_channels=3) for _ in range(2)]
    classifier = JointYClassifier(**TINY_CLASSIFIER, input_channels=3)
    calls = []
    classifier.register_forward_hook(lambda *args: calls.append(1))
    composition = BinaryDiffusionComposition(models, classifier, 2, 1, guidance_scale=3.0)
    composition.train()
    assert not any(module.training for module in composition.modules())
    assert not any(p.requires_grad for p in composition.parameters())
    x, t = torch.rand(2, 3, 28, 28), torch.tensor([0.3, 0.8])
    with torch.no_grad():  # as in the sampler
        out = composition(x, t)
    assert len(calls) == 1 and not out.requires_grad
    x_in = x.clone().requires_grad_(True)
    log_q = classifier(x_in, t)
    weights = log_q.logsumexp(2).exp().detach()
    (gradient,) = torch.autograd.grad(log_q[:, 1, 0].sum(), x_in)
    expected = sum(weights[:, i, None, None, None] * models[i](x, t) for i in range(2)) + 3.0 * gradient
    assert torch.allclose(out, expected, atol=1e-5)


def test_3way_composition_of_networks_samples():
    torch.manual_seed(0)
    models = [ScoreNet(SDE.marginal_prob_std, **TINY_SCORENET, input_channels=1) for _ in range(3)]
    binary = BinaryDiffusionComposition(models, ThreeWayJointYClassifier(**TINY_CLASSIFIER), 1, 2, 10.0)
    composition = ConditionalDiffusionComposition(binary, ThreeWayConditionalYClassifier(**TINY_CLASSIFIER), 3, 75.0)
    samples = pc_sampler(composition, SDE, batch_size=2, num_steps=2, progress=False)
    assert samples.shape == (2, 1, 28, 28) and torch.isfinite(samples).all()


def test_nested_composition_is_a_base_model(two_bases):
    """The contrast p(x | 1, 1) of two models, composed again with a third model."""
    inner_observations, outer_observations = (1, 1), (1, 2)
    inner = exact_composition(two_bases, inner_observations)
    third = torch.tensor([0.25, 0.25, 0.25, 0.25])
    outer_bases = GaussianMixtureBases(two_bases.means, torch.stack([two_bases.composition_weights(inner_observations),
                                                                    third]), COMPONENT_STD, SDE)
    outer = BinaryDiffusionComposition([inner, outer_bases.score_model(1)], outer_bases.joint_classifier(),
                                       *outer_observations)
    x, t = probe_points()
    target = outer_bases.mixture_score(outer_bases.composition_weights(outer_observations))
    assert torch.allclose(outer(x, t), target(x, t), atol=1e-6)
    samples = pc_sampler(outer, SDE, batch_size=8, num_steps=5, shape=(2,), progress=False)
    assert torch.isfinite(samples).all()


def test_invalid_compositions_raise_clear_errors(two_bases, three_bases):
    models, classifier = base_models(two_bases), two_bases.joint_classifier()
    for y_1, y_2 in ((0, 1), (1, 3)):
        with pytest.raises(ValueError, match=r"in 1\.\.2"):
            BinaryDiffusionComposition(models, classifier, y_1, y_2)
    image_model = ScoreNet(SDE.marginal_prob_std, **TINY_SCORENET, input_channels=3)
    with pytest.raises(ValueError, match="different input channels"):
        BinaryDiffusionComposition([models[0], image_model], classifier, 1, 2)
    with pytest.raises(ValueError, match="separates 3 models"):
        BinaryDiffusionComposition(models, three_bases.joint_classifier(), 1, 2)
    with pytest.raises(ValueError, match="input channels"):
        BinaryDiffusionComposition([image_model, image_model], JointYClassifier(**TINY_CLASSIFIER), 1, 2)
    binary = BinaryDiffusionComposition(base_models(three_bases), three_bases.joint_classifier(), 1, 2)
    with pytest.raises(ValueError, match=r"y_3 must be in 1\.\.3"):
        ConditionalDiffusionComposition(binary, three_bases.conditional_classifier(), 4)
    with pytest.raises(ValueError, match="separates 3 models"):
        ConditionalDiffusionComposition(BinaryDiffusionComposition(models, classifier, 1, 2),
                                        three_bases.conditional_classifier(), 1)


def save_tiny_checkpoints(folder, names, classifiers):
    torch.manual_seed(0)
    for name in names:
        torch.save(ScoreNet(SDE.marginal_prob_std, **TINY_SCORENET, input_channels=3).state_dict(),
                   folder / f"gen_{name}_ckpt_195.pth")
    paths = []
    for cls in classifiers:
        paths.append(folder / f"{cls.__name__}.pth")
        torch.save(cls(**TINY_CLASSIFIER, input_channels=3).state_dict(), paths[-1])
    return [str(path) for path in paths]


def test_sample_composition_script(tmp_path):
    (classifier,) = save_tiny_checkpoints(tmp_path, ["M1", "M2"], [JointYClassifier])
    common = ["--gen-ckpt-dir", str(tmp_path), "--num-samples", "3", "--batch-size", "2", "--num-steps", "2",
              "--out-dir", str(tmp_path / "out"), "--device", "cpu"]
    sample_composition.main(common + ["--classifier-ckpt", classifier, "--y-2", "2"])
    stem = tmp_path / "out" / "composition_M1_M2_y1-1_y2-2_g20"
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta.pop("sampling_seconds") > 0 and meta.pop("cpu_capability")
    assert meta == {"kind": "composition", "models": ["M1", "M2"], "observations": [1, 2], "guidance_scales": [20.0],
                    "checkpoints": [str(tmp_path / f"gen_{g}_ckpt_195.pth") for g in ("M1", "M2")],
                    "classifier_checkpoints": [classifier], "sampler": "pc", "num_steps": 2, "snr": 0.16, "seed": 0,
                    "precision": "float32", "precision_setting": "float32", "compile": "off", "device": "cpu",
                    "denoise_last_step": False, "score_evaluations_per_sample": 4, "num_samples": 3, "batch_size": 2,
                    "fast_path": {"compile": "off", "precision": "float32", "ran": "eager float32"}}
    assert torch.load(stem.with_suffix(".pt")).shape == (3, 3, 28, 28) and stem.with_suffix(".png").is_file()
    with pytest.raises(UserError, match="train_classifier.py"):
        sample_composition.main(common + ["--classifier-ckpt", str(tmp_path / "missing.pth")])


def test_sample_3way_composition_script(tmp_path):
    joint, conditional = save_tiny_checkpoints(tmp_path, ["MN1", "MN2", "MN3"],
                                               [ThreeWayJointYClassifier, ThreeWayConditionalYClassifier])
    common = ["--gen-ckpt-dir", str(tmp_path), "--num-samples", "2", "--num-steps", "2", "--out-dir",
              str(tmp_path / "out"), "--device", "cpu", "--classifier-ckpt", joint]
    sample_3way_composition.main(common + ["--conditional-classifier-ckpt", conditional, "--denoise-last-step"])
    meta = json.loads((tmp_path / "out" / "composition_MN1_MN2_MN3_y1-1_y2-2_y3-3_g10_g75.json").read_text())
    assert meta["observations"] == [1, 2, 3] and meta["guidance_scales"] == [10.0, 75.0]
    assert meta["denoise_last_step"] is True
    assert meta["classifier_checkpoints"] == [joint, conditional]
    # Another sampler: its settings and its cost are what the .json records (replacing samples of other settings
    # takes --overwrite).
    sample_3way_composition.main(common + ["--conditional-classifier-ckpt", conditional, "--sampler", "heun-churn",
                                           "--num-steps", "3", "--sigma-min", "0.1", "--churn", "5", "--overwrite"])
    meta = json.loads((tmp_path / "out" / "composition_MN1_MN2_MN3_y1-1_y2-2_y3-3_g10_g75.json").read_text())
    assert (meta["sampler"], meta["num_steps"], meta["sigma_min"], meta["churn"]) == ("heun-churn", 3, 0.1, 5.0)
    assert meta["score_evaluations_per_sample"] == 4 and "snr" not in meta
    with pytest.raises(UserError, match="train_3way_conditional_classifier.py"):
        sample_3way_composition.main(common + ["--conditional-classifier-ckpt", str(tmp_path / "missing.pth")])
