"""Time-dependent score network for 28x28 images (docs/reference.md §4).

Parameter names and shapes are the checkpoint format shared with the reference
implementation: do not rename layers.
"""
import math

import torch
import torch.nn as nn

DEFAULT_CHANNELS = (64, 128, 256, 256)


def swish(x):
    return x * torch.sigmoid(x)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of the time; `W` is fixed at init but stored in the state_dict."""

    def __init__(self, embed_dim: int, scale: float = 30.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embed_dim // 2) * scale, requires_grad=False)

    def forward(self, t):
        angles = t[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Dense(nn.Module):
    """Linear layer whose output is broadcastable over feature maps: [..., out, 1, 1]."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.dense = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.dense(x)[..., None, None]


class ScoreNet(nn.Module):
    """U-Net score model s(x, t) ~ grad log p_t(x), output divided by the marginal std."""

    def __init__(self, marginal_prob_std, channels=DEFAULT_CHANNELS, embed_dim: int = 256,
                 input_channels: int = 1):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.marginal_prob_std = marginal_prob_std
        self.input_channels = input_channels
        self.channels = tuple(channels)
        self.embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))
        # Encoder: 28 -> 26 -> 12 -> 5 -> 2.
        self.conv1 = nn.Conv2d(input_channels, c0, 3, stride=1, bias=False)
        self.dense1 = Dense(embed_dim, c0)
        self.gnorm1 = nn.GroupNorm(4, num_channels=c0)
        self.conv2 = nn.Conv2d(c0, c1, 3, stride=2, bias=False)
        self.dense2 = Dense(embed_dim, c1)
        self.gnorm2 = nn.GroupNorm(32, num_channels=c1)
        self.conv3 = nn.Conv2d(c1, c2, 3, stride=2, bias=False)
        self.dense3 = Dense(embed_dim, c2)
        self.gnorm3 = nn.GroupNorm(32, num_channels=c2)
        self.conv4 = nn.Conv2d(c2, c3, 3, stride=2, bias=False)
        self.dense4 = Dense(embed_dim, c3)
        self.gnorm4 = nn.GroupNorm(32, num_channels=c3)
        # Decoder with skip connections.
        self.tconv4 = nn.ConvTranspose2d(c3, c2, 3, stride=2, bias=False)
        self.dense5 = Dense(embed_dim, c2)
        self.tgnorm4 = nn.GroupNorm(32, num_channels=c2)
        self.tconv3 = nn.ConvTranspose2d(c2 + c2, c1, 3, stride=2, bias=False, output_padding=1)
        self.dense6 = Dense(embed_dim, c1)
        self.tgnorm3 = nn.GroupNorm(32, num_channels=c1)
        self.tconv2 = nn.ConvTranspose2d(c1 + c1, c0, 3, stride=2, bias=False, output_padding=1)
        self.dense7 = Dense(embed_dim, c0)
        self.tgnorm2 = nn.GroupNorm(32, num_channels=c0)
        self.tconv1 = nn.ConvTranspose2d(c0 + c0, input_channels, 3, stride=1)

    def encode(self, x, t):
        """The time embedding and the encoder's feature maps [h1, h2, h3, h4] (h4: the bottleneck)."""
        embed = swish(self.embed(t))
        h1 = swish(self.gnorm1(self.conv1(x) + self.dense1(embed)))
        h2 = swish(self.gnorm2(self.conv2(h1) + self.dense2(embed)))
        h3 = swish(self.gnorm3(self.conv3(h2) + self.dense3(embed)))
        h4 = swish(self.gnorm4(self.conv4(h3) + self.dense4(embed)))
        return embed, [h1, h2, h3, h4]

    def decode(self, embed, features, t):
        """The score from the encoder's outputs; a joint model's guidance may have moved `features`."""
        h1, h2, h3, h4 = features
        h = swish(self.tgnorm4(self.tconv4(h4) + self.dense5(embed)))
        h = swish(self.tgnorm3(self.tconv3(torch.cat([h, h3], dim=1)) + self.dense6(embed)))
        h = swish(self.tgnorm2(self.tconv2(torch.cat([h, h2], dim=1)) + self.dense7(embed)))
        h = self.tconv1(torch.cat([h, h1], dim=1))
        return h / self.marginal_prob_std(t)[:, None, None, None]

    def forward(self, x, t):
        embed, features = self.encode(x, t)
        return self.decode(embed, features, t)


def scorenet_config_from_state_dict(state_dict) -> dict:
    """Architecture (channels, embed_dim, input_channels) that produced a ScoreNet state_dict."""
    try:
        return {
            "channels": tuple(state_dict[f"conv{k}.weight"].shape[0] for k in range(1, 5)),
            "embed_dim": state_dict["embed.1.weight"].shape[0],
            "input_channels": state_dict["conv1.weight"].shape[1],
        }
    except KeyError as missing:
        raise ValueError(f"not a ScoreNet state_dict (no {missing})") from None
