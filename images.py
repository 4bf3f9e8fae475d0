"""Samples as pictures and files: RGB images, PNG grids, and the .png/.pt/.json a sample script writes."""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from checkpoints import atomic_save, ensure_writable_dir
from errors import UserError

# The reference figures' colour-blind palette: the R channel is drawn gold, the G channel teal.
COLORBLIND_PALETTE = torch.tensor([[225, 190, 106], [64, 176, 166]], dtype=torch.float32) / 255.0
PALETTES = ("rgb", "colorblind")
GRID_SAMPLES = 64  # the reference's 8x8 grid: a sample file's PNG shows its first 64 samples


def colorize(samples: torch.Tensor, palette: str = "rgb") -> torch.Tensor:
    """Map [B, C, H, W] samples in [0, 1] to RGB images [B, 3, H, W].

    1-channel samples become grey; 3-channel samples are shown as they are
    ("rgb") or with the reference figures' colour-blind palette ("colorblind").
    """
    samples = samples.detach().float().clamp(0.0, 1.0).cpu()
    if samples.shape[1] == 1:
        return samples.expand(-1, 3, -1, -1)
    if palette == "rgb":
        return samples
    if palette == "colorblind":
        # [B, 2, H, W] x [2, 3] -> [B, 3, H, W]; channel 2 is always empty in coloured MNIST.
        return torch.einsum("bkhw,kc->bchw", samples[:, :2], COLORBLIND_PALETTE).clamp(0.0, 1.0)
    raise UserError(f"unknown palette {palette!r}; use one of {', '.join(PALETTES)}")


def save_image_grid(samples: torch.Tensor, path, palette: str = "rgb", nrow: int = None, padding: int = 2) -> None:
    """Save samples as one PNG grid (nrow images per row, square by default)."""
    images = colorize(samples, palette)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


def save_samples(samples: torch.Tensor, out_dir, stem: str, meta: dict, palette: str = "rgb") -> Path:
    """Write <stem>.png (8x8 grid of the first samples), <stem>.pt (the [N, C, 28, 28] tensor) and <stem>.json
    (what was sampled)."""
    out_dir = ensure_writable_dir(out_dir)
    save_image_grid(samples[:GRID_SAMPLES], out_dir / f"{stem}.png", palette=palette)
    atomic_save(samples, out_dir / f"{stem}.pt")
    (out_dir / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir / f"{stem}.png"
