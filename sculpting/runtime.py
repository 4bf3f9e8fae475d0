"""Where and how reproducibly a script runs: the device it computes on, its threads, the seeds of every generator."""
import os
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


def visible_gpus(requested: str = None) -> list:
    """The GPUs of this machine a launcher may hand out, as CUDA_VISIBLE_DEVICES names them to a child process:
    `requested` ("0,2": device indices as torch numbers them here) or, None, every one torch sees."""
    count = torch.cuda.device_count()
    if requested is None:
        indices = list(range(count))
    else:
        if count == 0:
            raise UserError(f"--gpus {requested}: this machine has no CUDA device; leave --gpus out to run on the CPU")
        try:
            indices = [int(index) for index in requested.split(",")]
        except ValueError:
            indices = []
        if not indices or len(set(indices)) < len(indices) or not all(0 <= index < count for index in indices):
            raise UserError(f"--gpus {requested}: give distinct device indices separated by commas, each from 0 to "
                            f"{count - 1} (this machine has {count} CUDA device(s))")
    # Under a CUDA_VISIBLE_DEVICES of its own, torch's index k is that list's k-th entry: the child needs the entry.
    inherited = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return [inherited[index] if len(inherited) >= count else str(index) for index in indices]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_threads(threads: int) -> None:
    """torch's CPU threads for this process; 0 leaves torch's default (one per core, or OMP_NUM_THREADS)."""
    if threads:
        torch.set_num_threads(threads)
