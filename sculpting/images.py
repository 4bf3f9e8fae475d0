"""Samples as pictures and files: RGB images, PNG grids, and the .png/.pt/.json a sample script writes."""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from sculpting.checkpoints import atomic_save, ensure_writable_dir
from sculpting.errors import UserError, refuse_non_finite

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


SAMPLE_FILES = (".png", ".pt", ".json")  # what save_samples writes for one stem
# What a sample .json records that a run measures or resolves on its machine, not what the user asked for: a
# rerun of the same settings elsewhere may replace the samples.
MEASURED = ("sampling_seconds", "device", "cpu_capability", "precision", "fast_path")


def refuse_other_samples(out_dir, stem: str, meta: dict, overwrite: bool) -> None:
    """Before sampling: a one-line UserError where out_dir already holds <stem>.png/.pt/.json of other settings
    than `meta` (what the new .json will record), unless `overwrite`. The same settings may be sampled again."""
    out_dir = Path(out_dir)
    existing = [out_dir / f"{stem}{suffix}" for suffix in SAMPLE_FILES if (out_dir / f"{stem}{suffix}").exists()]
    if overwrite or not existing:
        return
    instead = "pass --overwrite to replace them, or choose another --out-dir"
    try:
        recorded = json.loads((out_dir / f"{stem}.json").read_text())
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        raise UserError(f"{existing[0]} exists without a readable {stem}.json of its settings; {instead}")
    asked = json.loads(json.dumps(meta))  # as the .json would hold it: tuples as lists
    differing = [key for key in dict.fromkeys([*asked, *recorded])
                 if key not in MEASURED and recorded.get(key, "unset") != asked.get(key, "unset")]
    if differing:
        changes = ", ".join(f"{key} {recorded.get(key, 'unset')} (now {asked.get(key, 'unset')})"
                            for key in differing[:3])
        raise UserError(f"{out_dir / stem}.* hold samples of other settings: {changes}"
                        f"{', ...' if len(differing) > 3 else ''}; {instead}")


def save_samples(samples: torch.Tensor, out_dir, stem: str, meta: dict, palette: str = "rgb") -> Path:
    """Write <stem>.png (8x8 grid of the first samples), <stem>.pt (the [N, C, 28, 28] tensor) and <stem>.json
    (what was sampled); refuses, writing nothing, samples with a value that is not finite."""
    refuse_non_finite(samples, "samples", "nothing was written; try --compile off or --precision float32")
    out_dir = ensure_writable_dir(out_dir)
    save_image_grid(samples[:GRID_SAMPLES], out_dir / f"{stem}.png", palette=palette)
    atomic_save(samples, out_dir / f"{stem}.pt")
    (out_dir / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")  # last: a complete set
    return out_dir / f"{stem}.png"
