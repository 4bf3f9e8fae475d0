"""The committed oracle on a handful of real test digits; images that are no coloured digit are flagged."""
from pathlib import Path

import pytest
import torch

from sculpting.artefacts import ORACLE_CHECKPOINT
from sculpting.checkpoints import load_oracle
from custom_datasets import COLOURS, colour_images, load_mnist
from models.oracle import ORACLE_COLOURS, predict


@pytest.fixture(scope="module")
def oracle():
    return load_oracle(ORACLE_CHECKPOINT)


def test_the_oracle_names_the_datasets_colours_by_their_indices():
    assert ORACLE_COLOURS[:len(COLOURS)] == COLOURS


@pytest.fixture(scope="module")
def digits(data_root):
    """The first two test images of every digit, uint8 [20, 28, 28], and their labels."""
    images, labels = load_mnist(data_root, train=False)
    index = torch.cat([(labels == d).nonzero()[:2, 0] for d in range(10)])
    return images[index], labels[index]


def test_checkpoint_is_small_and_loads_as_float32(oracle):
    assert Path(ORACLE_CHECKPOINT).stat().st_size < 2 * 1024 * 1024
    assert all(p.dtype == torch.float32 for p in oracle.parameters())
    assert not oracle.training


@pytest.mark.parametrize("colour, channels", [("grey", 1), ("red", 3), ("green", 3)])
def test_real_digits_in_every_colour(oracle, digits, colour, channels):
    images, labels = digits
    result = predict(oracle, colour_images(images, colour, channels).float() / 255.0)
    assert result.digits.tolist() == labels.tolist()
    assert [ORACLE_COLOURS[c] for c in result.colours] == [colour] * len(labels)
    assert result.recognisable.float().mean() >= 0.9  # about 1.6% of real test digits fall below the threshold


def test_no_single_coloured_digit_is_flagged(oracle, digits):
    digit = digits[0][:1].float() / 255.0  # one real digit, [1, 28, 28]
    empty = torch.zeros(1, 28, 28)
    cases = {
        "blank": torch.zeros(1, 3, 28, 28),
        "faint": torch.stack([digit * 0.05, empty, empty], dim=1),
        "red and green": torch.stack([digit, digit, empty], dim=1),
        "channel 2": torch.stack([empty, empty, digit], dim=1),
    }
    result = predict(oracle, torch.cat(list(cases.values())))
    assert [ORACLE_COLOURS[c] for c in result.colours] == ["blank", "blank", "mixed", "mixed"]
    assert not result.recognisable.any()
    assert not predict(oracle, torch.zeros(1, 1, 28, 28)).recognisable.any()


def test_wrong_shape_is_rejected(oracle):
    with pytest.raises(ValueError, match="expected images"):
        predict(oracle, torch.zeros(2, 2, 28, 28))
