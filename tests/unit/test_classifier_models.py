"""Classifier networks (docs/reference.md §4): checkpoint format, normalised log-prob tables, config inference."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sculpting.errors import UserError
from models.classifier_model import (JointYClassifier, ThreeWayConditionalYClassifier, ThreeWayJointYClassifier,
                                     classifier_config_from_state_dict, conditional_log_probs, marginal_log_probs,
                                     pair_index, three_way_joint_log_probs, two_way_joint_log_probs)
from sculpting.checkpoints import load_classifier

LOG2 = math.log(2.0)
SMALL = {"embed_dim": 24, "t_embed_dim": 16, "input_channels": 3, "channels": (4, 6)}


def trunk_shapes(embed_dim, t_embed_dim, input_channels, channels, y_embed_dim=0):
    """Parameter names and shapes of MNISTEncoder / MNISTConditionalEncoder, written out from docs/reference.md §4."""
    c0, c1 = channels
    return {
        "trunk.conv1.weight": (c0, input_channels, 3, 3), "trunk.conv1.bias": (c0,),
        "trunk.conv2.weight": (c1, c0, 3, 3), "trunk.conv2.bias": (c1,),
        "trunk.fc1.weight": (512, 12 * 12 * c1 + t_embed_dim + y_embed_dim), "trunk.fc1.bias": (512,),
        "trunk.fc2.weight": (embed_dim, 512 + y_embed_dim), "trunk.fc2.bias": (embed_dim,),
        "trunk.embed.0.W": (t_embed_dim // 2,),
        "trunk.embed.1.weight": (t_embed_dim, t_embed_dim), "trunk.embed.1.bias": (t_embed_dim,),
    }


def spec_shapes(cls, embed_dim, t_embed_dim, input_channels, channels):
    if cls is JointYClassifier:
        head = {"non_term_head.weight": (2, embed_dim), "non_term_head.bias": (2,)}
        return {**trunk_shapes(embed_dim, t_embed_dim, input_channels, channels), **head}
    if cls is ThreeWayJointYClassifier:
        head = {"head.0.weight": (256, embed_dim), "head.0.bias": (256,), "head.2.weight": (5, 256),
                "head.2.bias": (5,)}
        return {**trunk_shapes(embed_dim, t_embed_dim, input_channels, channels), **head}
    head = {"head.weight": (2, embed_dim), "head.bias": (2,)}
    return {**trunk_shapes(embed_dim, t_embed_dim, input_channels, channels, y_embed_dim=6), **head}


REFERENCE_CONFIGS = [
    (JointYClassifier, {"embed_dim": 256, "t_embed_dim": 128, "input_channels": 1, "channels": (32, 64)}),
    (ThreeWayJointYClassifier, {"embed_dim": 512, "t_embed_dim": 128, "input_channels": 1, "channels": (64, 96)}),
    (ThreeWayConditionalYClassifier, {"embed_dim": 256, "t_embed_dim": 128, "input_channels": 1,
                                      "channels": (64, 64)}),
]
CLASSES = [cls for cls, _ in REFERENCE_CONFIGS]


def classify(model, x, t):
    """Joint table [B, m, m], or the conditional [B, 3] for a fixed spread of label pairs."""
    if isinstance(model, ThreeWayConditionalYClassifier):
        y1 = torch.arange(len(x)) % 3 + 1
        return model(x, t, y1, (y1 + torch.arange(len(x)) // 3) % 3 + 1)
    return model(x, t)


@pytest.mark.parametrize("cls,config", REFERENCE_CONFIGS)
def test_default_parameters_match_spec(cls, config):
    model = cls()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec_shapes(cls, **config)
    assert model.input_channels == 1 and model.num_models == (2 if cls is JointYClassifier else 3)


@pytest.mark.parametrize("cls", CLASSES)
def test_custom_parameters_match_spec_and_spec_state_dict_loads_strictly(cls):
    model = cls(**SMALL)
    state = {name: torch.randn(shape) for name, shape in spec_shapes(cls, **SMALL).items()}
    model.load_state_dict(state, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model.trunk.embed[0].W.requires_grad  # Fourier features are fixed, though stored


@pytest.mark.parametrize("cls", CLASSES)
def test_outputs_are_normalised_log_probs(cls):
    torch.manual_seed(0)
    model = cls(**SMALL).eval()
    log_probs = classify(model, torch.rand(6, 3, 28, 28), torch.rand(6))
    total = torch.logsumexp(log_probs.flatten(1), dim=1)
    assert torch.allclose(total, torch.zeros(6), atol=1e-5)
    if log_probs.dim() == 3:
        assert torch.allclose(log_probs, log_probs.transpose(1, 2))


def test_conditional_classifier_ignores_label_order_but_not_labels():
    torch.manual_seed(0)
    model = ThreeWayConditionalYClassifier(**SMALL).eval()
    x, t = torch.rand(1, 3, 28, 28).expand(3, -1, -1, -1), torch.full((3,), 0.5)
    out = model(x, t, torch.tensor([1, 3, 2]), torch.tensor([3, 1, 2]))
    assert torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])


def test_two_way_parametrisation_matches_reference_formula():
    logits = torch.randn(5, 2)
    l = F.log_softmax(torch.cat([logits, torch.full((5, 1), LOG2)], dim=1), dim=1)
    expected = torch.stack([torch.stack([l[:, 0], l[:, 2] - LOG2], 1), torch.stack([l[:, 2] - LOG2, l[:, 1]], 1)], 1)
    assert torch.allclose(two_way_joint_log_probs(logits), expected, atol=1e-6)


def test_three_way_parametrisation_matches_reference_formula():
    logits = torch.randn(5, 5)
    offsets = torch.tensor([0, 0, 0, LOG2, LOG2, LOG2])
    l = F.log_softmax(torch.cat([logits, torch.zeros(5, 1)], dim=1) + offsets, dim=1)
    out = three_way_joint_log_probs(logits)
    assert torch.allclose(torch.diagonal(out, dim1=1, dim2=2), l[:, :3], atol=1e-6)
    for (a, b), k in {(0, 1): 3, (0, 2): 4, (1, 2): 5}.items():
        assert torch.allclose(out[:, a, b], l[:, k] - LOG2, atol=1e-6)
        assert torch.allclose(out[:, b, a], l[:, k] - LOG2, atol=1e-6)


def test_conditional_and_marginal_log_probs():
    logits = torch.randn(5, 2)
    expected = F.log_softmax(torch.cat([logits, torch.zeros(5, 1)], dim=1), dim=1)
    assert torch.allclose(conditional_log_probs(logits), expected)
    joint = three_way_joint_log_probs(torch.randn(5, 5))
    assert torch.allclose(marginal_log_probs(joint).exp(), joint.exp().sum(2), atol=1e-6)


def test_pair_index_table():
    table = {(1, 1): 0, (2, 2): 1, (3, 3): 2, (1, 2): 3, (1, 3): 4, (2, 3): 5}
    for (y1, y2), index in table.items():
        assert int(pair_index(y1, y2)) == index == int(pair_index(y2, y1))
    y1, y2 = torch.tensor([1, 3, 2]), torch.tensor([2, 3, 3])
    assert pair_index(y1, y2).tolist() == [3, 2, 5]
    for bad in (0, 4):
        with pytest.raises(ValueError, match="1..3"):
            pair_index(bad, 1)


@pytest.mark.parametrize("cls", CLASSES)
def test_config_inference_round_trip(cls, tmp_path):
    torch.manual_seed(0)
    model = cls(**SMALL)
    config = classifier_config_from_state_dict(model.state_dict())
    assert config == SMALL
    path = tmp_path / "classifier.pth"
    torch.save(model.state_dict(), path)
    loaded = load_classifier(path, cls, "cpu", made_by="train_x.py")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x, t = torch.rand(2, 3, 28, 28), torch.rand(2)
    assert torch.allclose(classify(loaded, x, t), classify(model.eval(), x, t))


def test_load_classifier_errors(tmp_path):
    with pytest.raises(UserError, match="train_3way_classifier.py"):
        load_classifier(tmp_path / "missing.pth", ThreeWayJointYClassifier, "cpu", made_by="train_3way_classifier.py")
    path = tmp_path / "joint.pth"
    torch.save(JointYClassifier(**SMALL).state_dict(), path)
    with pytest.raises(UserError, match="does not fit ThreeWayJointYClassifier"):
        load_classifier(path, ThreeWayJointYClassifier, "cpu", made_by="train_3way_classifier.py")
    with pytest.raises(ValueError, match="not a classifier"):
        classifier_config_from_state_dict({"conv1.weight": torch.zeros(1)})


@pytest.mark.parametrize("cls", CLASSES)
def test_channels_last_features_keep_the_function_and_the_checkpoint_format(cls):
    """The fast path's (h, w, c) flatten with fc1's columns permuted: the same log-probs and input gradients in
    either memory format; state_dict() and load_state_dict() keep the reference's column order."""
    torch.manual_seed(0)
    reference = cls(**SMALL).eval()
    reference_state = {k: v.clone() for k, v in reference.state_dict().items()}
    fast = copy.deepcopy(reference)
    fast.trunk.use_channels_last_features()
    fast.trunk.use_channels_last_features()  # a second call changes nothing
    assert not torch.equal(fast.trunk.fc1.weight, reference.trunk.fc1.weight)
    x, t = torch.randn(5, 3, 28, 28), torch.rand(5)

    def log_probs_and_input_gradient(model, x):
        x = x.detach().requires_grad_(True)
        log_probs = classify(model, x, t)
        return log_probs, torch.autograd.grad(log_probs.flatten(1)[:, 0].sum(), x)[0]

    expected = log_probs_and_input_gradient(reference, x)
    for layout in (torch.contiguous_format, torch.channels_last):
        for actual, wanted in zip(log_probs_and_input_gradient(fast.to(memory_format=layout),
                                                               x.contiguous(memory_format=layout)), expected):
            torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6)
    state = fast.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference_state.items())
    fresh = cls(**SMALL)
    fresh.trunk.use_channels_last_features()
    fresh.load_state_dict(reference_state)  # loads into the permuted order, and leaves the dict as it was
    assert fresh.trunk.features_channels_last and torch.equal(fresh.trunk.fc1.weight, fast.trunk.fc1.weight)
    assert all(torch.equal(reference_state[k], v) for k, v in reference.state_dict().items())
    fast.trunk.use_channels_last_features(False)
    assert torch.equal(fast.trunk.fc1.weight, reference.trunk.fc1.weight)
