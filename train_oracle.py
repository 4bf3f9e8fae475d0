"""Train the attribute oracle that judges samples (digit 0-9 and colour; see models/oracle.py).

The network reads digits only; colour is a rule on channel ink, so the network
sees the one channel that carries the digit: a red, green or grey MNIST image
gives it the same input, and training on the MNIST train split covers all
three. Light augmentation (small affine warps, thicker/thinner strokes,
contrast, pixel noise) makes it robust to imperfect diffusion samples; an
11th "junk" class learns blobs and two-digit overlays. At the end, the full
predict() is measured on the test split in grey, red and green, clean and
with noise.
    python train_oracle.py                   # train, save runs/oracle.pth, report its test accuracy
    python train_oracle.py --evaluate-only   # only report the test accuracy of the shipped checkpoints/oracle.pth
    python train_oracle.py --evaluate-only --oracle runs/oracle.pth
"""
import math
import time

import torch
import torch.nn.functional as F

from sculpting.artefacts import ORACLE_CHECKPOINT, ORACLE_FILE, RUN_DIR
from sculpting.checkpoints import atomic_save, ensure_writable_dir, half_state_dict, load_oracle, refuse_shipped
from sculpting.cli import configure, run_main
from custom_datasets import COLOURS, colour_images, load_mnist
from sculpting.errors import UserError
from models.oracle import CONFIDENCE, JUNK_CLASS, ORACLE_COLOURS, OracleNet, predict
from sculpting.runtime import get_device, seed_everything

EPOCHS = 3
BATCH_SIZE = 128
LR = 3e-3
WEIGHT_DECAY = 1e-4  # AdamW's
JUNK_FRACTION = 0.1  # junk images added per batch, as a fraction of the batch
MAX_ROTATION_DEG = 15.0  # augmentation: the largest rotation, in degrees
MAX_SHIFT_PX = 3.0  # augmentation: the largest shift, in pixels
MAX_SCALE_CHANGE = 0.15  # augmentation: the largest relative change of size
MAX_NOISE_STD = 0.15  # augmentation: the largest std of the added pixel noise
TEST_NOISE_STD = 0.1  # the noisy test report adds this much Gaussian noise to every channel
CONFIDENCE_THRESHOLD = CONFIDENCE
SEED = 0

# ---- engineering settings: how and where it runs, not what it samples ----
CKPT_DIR = RUN_DIR  # training writes <CKPT_DIR>/oracle.pth (the shipped checkpoints/oracle.pth is never written)
ORACLE = ORACLE_CHECKPOINT  # the oracle --evaluate-only reports on
DATA_ROOT = "data"
DEVICE = "auto"
THREADS = 0
EVALUATE_ONLY = False  # only report the test accuracy of the saved ORACLE
OVERWRITE = False


def uniform(n, low, high, device):
    return torch.rand(n, device=device) * (high - low) + low


def random_affine(images, config):
    """Rotate, scale and shift each image [N, 1, 28, 28] by its own small random amount."""
    n, device = len(images), images.device
    angle = uniform(n, -1, 1, device) * math.radians(config["MAX_ROTATION_DEG"])
    scale = uniform(n, 1 - config["MAX_SCALE_CHANGE"], 1 + config["MAX_SCALE_CHANGE"], device)
    shift = uniform(2 * n, -1, 1, device).view(n, 2) * config["MAX_SHIFT_PX"] / 14.0  # grid units: 14 px = 1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def augment(images, config):
    """Affine warp, then thicker (dilated) or thinner (eroded) strokes for some, contrast, and pixel noise."""
    n, device = len(images), images.device
    images = random_affine(images, config)
    stroke = torch.rand(n, device=device)[:, None, None, None]
    thicker = F.max_pool2d(images, 3, stride=1, padding=1)
    thinner = -F.max_pool2d(-images, 3, stride=1, padding=1)
    images = torch.where(stroke < 0.15, thicker, torch.where(stroke > 0.93, thinner, images))
    images = images * uniform(n, 0.7, 1.2, device)[:, None, None, None]
    noise_std = uniform(n, 0, config["MAX_NOISE_STD"], device)[:, None, None, None]
    return (images + noise_std * torch.randn_like(images)).clamp(0.0, 1.0)


def junk_images(images, labels, count):
    """`count` images that are no single digit: two different digits overlaid, or smooth blobs of ink."""
    device = images.device
    first = torch.randint(len(images), (count,), device=device)
    second = torch.randint(len(images), (count,), device=device)
    shifted = torch.roll(images[second], shifts=tuple(torch.randint(-4, 5, (2,)).tolist()), dims=(2, 3))
    overlay = torch.maximum(images[first], shifted)
    # Blobs: coarse noise upsampled and squashed, about a quarter of the image lit.
    coarse = F.interpolate(torch.randn(count, 1, 7, 7, device=device), size=28, mode="bilinear", align_corners=False)
    blob = torch.sigmoid(6.0 * (coarse - 0.7))
    use_overlay = (labels[first] != labels[second]) & (torch.rand(count, device=device) < 0.6)
    return torch.where(use_overlay[:, None, None, None], overlay, blob)


def train(config, device, path):
    seed_everything(config["SEED"])
    images, labels = load_mnist(config["DATA_ROOT"], train=True)
    images = (images.float() / 255.0).unsqueeze(1).to(device)
    labels = labels.to(device)
    oracle = OracleNet().to(device)
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=config["LR"], weight_decay=config["WEIGHT_DECAY"])
    steps_per_epoch = math.ceil(len(images) / config["BATCH_SIZE"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config["LR"],
                                                    total_steps=config["EPOCHS"] * steps_per_epoch)
    junk_count = max(1, round(config["JUNK_FRACTION"] * config["BATCH_SIZE"]))
    oracle.train()
    for epoch in range(config["EPOCHS"]):
        start, total_loss, correct = time.time(), 0.0, 0
        for batch in torch.randperm(len(images), device=device).split(config["BATCH_SIZE"]):
            x = torch.cat([images[batch], junk_images(images, labels, junk_count)])
            y = torch.cat([labels[batch], torch.full((junk_count,), JUNK_CLASS, device=device)])
            logits = oracle(augment(x, config))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
            correct += (logits[:len(batch)].argmax(1) == labels[batch]).sum().item()
        print(f"epoch {epoch + 1}/{config['EPOCHS']}: loss {total_loss / len(images):.4f}, "
              f"augmented train accuracy {correct / len(images):.4f} ({time.time() - start:.0f} s)")
    # Half precision keeps the committed file small; load_oracle restores float32.
    atomic_save(half_state_dict(oracle.state_dict()), path)
    print(f"saved {path}")


def test_report(oracle, config, device):
    """Digit and colour accuracy of predict() on the whole test split in every colour, clean and noisy."""
    seed_everything(config["SEED"])
    images, labels = load_mnist(config["DATA_ROOT"], train=False)
    rows = {}
    for colour in COLOURS:
        coloured = colour_images(images, colour, 1 if colour == "grey" else 3).float() / 255.0
        noise = torch.randn(coloured.shape) * config["TEST_NOISE_STD"]
        for name, batch in ((colour, coloured), (f"{colour} +noise", (coloured + noise).clamp(0.0, 1.0))):
            result = predict(oracle, batch.to(device), config["CONFIDENCE_THRESHOLD"])
            right_digit = result.digits == labels
            rows[name] = {"digit_accuracy": right_digit.float().mean().item(),
                          "colour_accuracy": (result.colours == ORACLE_COLOURS.index(colour)).float().mean().item(),
                          "unrecognisable": (~result.recognisable).float().mean().item(),
                          "digit_accuracy_recognised": right_digit[result.recognisable].float().mean().item()}
    print(f"oracle test split ({len(labels)} images per row; noise std {config['TEST_NOISE_STD']}; "
          f"confidence threshold {config['CONFIDENCE_THRESHOLD']}):")
    print(f"{'input':<14}{'digit acc':>11}{'colour acc':>12}{'unrecognisable':>16}{'acc if recognised':>19}")
    for name, row in rows.items():
        print(f"{name:<14}{row['digit_accuracy']:>11.2%}{row['colour_accuracy']:>12.2%}"
              f"{row['unrecognisable']:>16.2%}{row['digit_accuracy_recognised']:>19.2%}")
    grey = images.float().unsqueeze(1) / 255.0
    junk = junk_images(grey, labels, len(labels))
    rows["junk"] = {"unrecognisable": (~predict(oracle, junk.to(device), config["CONFIDENCE_THRESHOLD"]).recognisable)
                    .float().mean().item()}
    print(f"junk (two-digit overlays and blobs made from test images): {rows['junk']['unrecognisable']:.2%} "
          f"unrecognisable")
    return rows


def main(argv=None):
    config = configure(globals(), argv)
    device = get_device(config["DEVICE"])
    oracle = config["ORACLE"]
    if not config["EVALUATE_ONLY"]:
        oracle = ensure_writable_dir(config["CKPT_DIR"]) / ORACLE_FILE
        refuse_shipped([oracle], "choose another --ckpt-dir")
        if oracle.exists() and not config["OVERWRITE"]:
            raise UserError(f"{oracle} exists; pass --overwrite to retrain it, or --evaluate-only --oracle {oracle}")
        train(config, device, oracle)
    test_report(load_oracle(oracle, device), config, device)


if __name__ == "__main__":
    run_main(main)
