"""ScoreNet against the docs/reference.md §4 table: names and shapes are the checkpoint format."""
import torch
import torch.nn.functional as F
import pytest

from models.score_model import ScoreNet, scorenet_config_from_state_dict
from sculpting.sde import VESDE


def spec_shapes(channels, embed_dim, in_ch):
    """Every state_dict entry of ScoreNet as docs/reference.md §4 describes it."""
    c0, c1, c2, c3 = channels
    shapes = {"embed.0.W": [embed_dim // 2], "embed.1.weight": [embed_dim, embed_dim], "embed.1.bias": [embed_dim]}
    convs = {"conv1": [c0, in_ch, 3, 3], "conv2": [c1, c0, 3, 3], "conv3": [c2, c1, 3, 3], "conv4": [c3, c2, 3, 3],
             # ConvTranspose2d weights are [in, out, k, k].
             "tconv4": [c3, c2, 3, 3], "tconv3": [2 * c2, c1, 3, 3], "tconv2": [2 * c1, c0, 3, 3]}
    shapes.update({f"{name}.weight": shape for name, shape in convs.items()})
    shapes.update({"tconv1.weight": [2 * c0, in_ch, 3, 3], "tconv1.bias": [in_ch]})
    for k, c in zip(range(1, 8), [c0, c1, c2, c3, c2, c1, c0]):
        shapes[f"dense{k}.dense.weight"] = [c, embed_dim]
        shapes[f"dense{k}.dense.bias"] = [c]
    for name, c in [("gnorm1", c0), ("gnorm2", c1), ("gnorm3", c2), ("gnorm4", c3),
                    ("tgnorm4", c2), ("tgnorm3", c1), ("tgnorm2", c0)]:
        shapes[f"{name}.weight"] = [c]
        shapes[f"{name}.bias"] = [c]
    return shapes


@pytest.mark.parametrize("channels,embed_dim,in_ch", [((64, 128, 256, 256), 256, 1),
                                                       ((64, 128, 256, 256), 256, 3),
                                                       ((32, 64, 128, 128), 128, 3)])
def test_state_dict_matches_spec_table(channels, embed_dim, in_ch):
    model = ScoreNet(VESDE().marginal_prob_std, channels=channels, embed_dim=embed_dim, input_channels=in_ch)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == spec_shapes(channels, embed_dim, in_ch)
    assert not model.embed[0].W.requires_grad
    assert model.input_channels == in_ch
    assert scorenet_config_from_state_dict(model.state_dict()) == {
        "channels": tuple(channels), "embed_dim": embed_dim, "input_channels": in_ch}


def reference_forward(sd, x, t, std):
    """docs/reference.md §4's forward pass written directly against the state_dict, independent of ScoreNet's code."""
    swish = lambda v: v * torch.sigmoid(v)
    angles = t[:, None] * sd["embed.0.W"][None] * 2 * torch.pi
    e = swish(F.linear(torch.cat([angles.sin(), angles.cos()], 1), sd["embed.1.weight"], sd["embed.1.bias"]))
    dense = lambda k: F.linear(e, sd[f"dense{k}.dense.weight"], sd[f"dense{k}.dense.bias"])[:, :, None, None]
    gn = lambda v, name, groups: F.group_norm(v, groups, sd[f"{name}.weight"], sd[f"{name}.bias"])
    h1 = swish(gn(F.conv2d(x, sd["conv1.weight"]) + dense(1), "gnorm1", 4))
    h2 = swish(gn(F.conv2d(h1, sd["conv2.weight"], stride=2) + dense(2), "gnorm2", 32))
    h3 = swish(gn(F.conv2d(h2, sd["conv3.weight"], stride=2) + dense(3), "gnorm3", 32))
    h4 = swish(gn(F.conv2d(h3, sd["conv4.weight"], stride=2) + dense(4), "gnorm4", 32))
    assert [h1.shape[-1], h2.shape[-1], h3.shape[-1], h4.shape[-1]] == [26, 12, 5, 2]
    h = swish(gn(F.conv_transpose2d(h4, sd["tconv4.weight"], stride=2) + dense(5), "tgnorm4", 32))
    h = swish(gn(F.conv_transpose2d(torch.cat([h, h3], 1), sd["tconv3.weight"], stride=2, output_padding=1)
                 + dense(6), "tgnorm3", 32))
    h = swish(gn(F.conv_transpose2d(torch.cat([h, h2], 1), sd["tconv2.weight"], stride=2, output_padding=1)
                 + dense(7), "tgnorm2", 32))
    h = F.conv_transpose2d(torch.cat([h, h1], 1), sd["tconv1.weight"], sd["tconv1.bias"])
    return h / std[:, None, None, None]


def test_forward_agrees_with_spec_forward_for_loaded_weights():
    sde = VESDE()
    torch.manual_seed(0)
    # A state_dict as another implementation would save it: random tensors under the reference names
    # (docs/reference.md §4).
    foreign = {k: torch.randn(shape) * 0.1 for k, shape in spec_shapes((32, 64, 64, 64), 64, 3).items()}
    model = ScoreNet(sde.marginal_prob_std, channels=(32, 64, 64, 64), embed_dim=64, input_channels=3)
    model.load_state_dict(foreign, strict=True)
    x, t = torch.randn(5, 3, 28, 28), torch.rand(5) * 0.9 + 0.1
    with torch.no_grad():
        ours = model(x, t)
    expected = reference_forward(foreign, x, t, sde.marginal_prob_std(t))
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
