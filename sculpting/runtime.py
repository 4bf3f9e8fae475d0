"""Where and how reproducibly a script runs: the device it computes on, its threads, the seeds of every generator."""
import random

import numpy as np
import torch

from sculpting.errors import UserError


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def get_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; or exactly the device asked for, if this machine has it."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # torch knows more (meta, xpu): none samples here
        raise UserError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:<index> or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: this machine has no CUDA device; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not mps_available():
        raise UserError(f"--device {requested}: MPS is not available here; use --device auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_threads(threads: int) -> None:
    """torch's CPU threads for this process; 0 leaves torch's default (one per core, or OMP_NUM_THREADS)."""
    if threads:
        torch.set_num_threads(threads)
