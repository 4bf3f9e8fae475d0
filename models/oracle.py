"""Attribute oracle for 28x28 samples: which digit, which colour, and whether to trust it.

Colour is a rule on channel ink mass, not learned: a coloured-MNIST image is
exactly one lit channel, so counting ink per channel is exact on real data and
easy to reason about on samples. Ink = pixel values >= INK_LEVEL, so faint
background noise of a diffusion sample does not count.
  - 1-channel input: "grey".
  - 3-channel input: "red" / "green" when channel 0 / 1 holds at least
    DOMINANT_SHARE of the ink; otherwise "mixed" (e.g. both R and G lit, or
    ink in the always-empty channel 2).
  - "blank" when the total ink is below MIN_INK_MASS (the faintest MNIST
    training digit has about 19).
The digit is read by a small CNN from the channel with the most ink, so one
network serves grey, red and green. It has an 11th "junk" class, trained on
blobs of smoothed noise and overlays of two different digits, which soaks up
probability on images that are no single digit. A sample is recognisable
when its colour is grey/red/green and the softmax probability (over all 11
classes) of its top digit is at least the confidence threshold.
"""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# The colours of coloured MNIST as custom_datasets.COLOURS lists them (the same indices; tests/unit/test_oracle.py
# checks), then the two readings of an image that is no one colour.
ORACLE_COLOURS = ("grey", "red", "green", "mixed", "blank")
NUM_DIGITS = 10
JUNK_CLASS = NUM_DIGITS  # the 11th output
INK_LEVEL = 0.3
MIN_INK_MASS = 10.0
DOMINANT_SHARE = 0.8
CONFIDENCE = 0.8


class OracleNet(nn.Module):
    """Digit classifier on one-channel 28x28 images in [0, 1]; 10 digit logits then a junk logit."""

    def __init__(self, channels=(16, 32, 64), hidden=128):
        super().__init__()
        c0, c1, c2 = channels

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        # 28x28 -> 14x14 -> 7x7; only one narrow layer at full resolution keeps CPU training to minutes.
        self.features = nn.Sequential(*block(1, c0), nn.MaxPool2d(2), *block(c0, c1), *block(c1, c1),
                                      nn.MaxPool2d(2), *block(c1, c2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(),
                                  nn.Linear(hidden, NUM_DIGITS + 1))

    def forward(self, x):
        return self.head(self.features(x))


class OraclePrediction(NamedTuple):
    digits: torch.Tensor  # long [N], the most probable digit 0..9
    colours: torch.Tensor  # long [N], index into ORACLE_COLOURS
    recognisable: torch.Tensor  # bool [N]
    confidence: torch.Tensor  # float [N], softmax probability of `digits`


def read_colour(images: torch.Tensor):
    """(colour index into ORACLE_COLOURS [N], index of the channel with the most ink [N]) by the ink rule."""
    ink = (images * (images >= INK_LEVEL)).flatten(2).sum(dim=2)  # [N, C]
    total = ink.sum(dim=1)
    dominant_mass, dominant_channel = ink.max(dim=1)
    if images.shape[1] == 1:
        colours = torch.full_like(dominant_channel, ORACLE_COLOURS.index("grey"))
    else:
        # Channel 0 -> red, 1 -> green; a dominant channel 2 is no coloured-MNIST colour.
        channel_colour = torch.tensor([ORACLE_COLOURS.index(c) for c in ("red", "green", "mixed")])
        colours = channel_colour[dominant_channel.clamp(max=2).cpu()].to(images.device)
        colours[dominant_mass < DOMINANT_SHARE * total] = ORACLE_COLOURS.index("mixed")
    colours[total < MIN_INK_MASS] = ORACLE_COLOURS.index("blank")
    return colours, dominant_channel


def digit_channel(images: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """The one-channel image [N, 1, 28, 28] of each sample's chosen channel."""
    return images[torch.arange(len(images), device=images.device), channel].unsqueeze(1)


@torch.no_grad()
def predict(oracle: OracleNet, images: torch.Tensor, confidence: float = CONFIDENCE, batch_size: int = 1024):
    """Judge samples [N, C, 28, 28] (C = 1 or 3, values in [0, 1]; clamped here)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[2:] != (28, 28):
        raise ValueError(f"expected images [N, 1 or 3, 28, 28], got {list(images.shape)}")
    device = next(oracle.parameters()).device
    images = images.detach().float().clamp(0.0, 1.0).to(device)
    colours, channel = read_colour(images)
    probabilities = torch.cat([F.softmax(oracle(chunk), dim=1)
                               for chunk in digit_channel(images, channel).split(batch_size)])
    top_probability, digits = probabilities[:, :NUM_DIGITS].max(dim=1)
    recognisable = (top_probability >= confidence) & (colours <= ORACLE_COLOURS.index("green"))
    return OraclePrediction(digits.cpu(), colours.cpu(), recognisable.cpu(), top_probability.cpu())
