import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the shared helpers (analytic, repository) for every kind of test
os.chdir(REPO)  # scripts resolve their default folders (data/, checkpoints/) from the repo root
torch.set_num_threads(1)  # the suite is many small ops: one thread is fastest and shares the machine well

DATA_ROOT = REPO / "data"  # MNIST is materialised here once (from the offline copy when there is no internet)


@pytest.fixture(scope="session")
def data_root():
    from custom_datasets import load_mnist

    load_mnist(DATA_ROOT, train=True)
    load_mnist(DATA_ROOT, train=False)
    return DATA_ROOT
