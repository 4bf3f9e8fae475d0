"""The exact ingredients of a composition of this project's base models (models/exact.py), built from their
training sets: each cell (a digit in a colour) is the MNIST training images of the digit, coloured."""
from custom_datasets import DATA_ROOT, colour_images, dataset_spec, load_mnist
from models.exact import (DEFAULT_CHUNK, ExactConditionalClassifier, ExactJointClassifier, ExactScore,
                          FiniteDatasets, KernelSums)
from sculpting.errors import UserError
from sculpting.sde import VESDE


def finite_datasets(models, root=DATA_ROOT, device="cpu", chunk=DEFAULT_CHUNK) -> FiniteDatasets:
    """The base models `models` (dataset names) as finite datasets over the union of their cells."""
    specs = [dataset_spec(name) for name in models]
    if len({channels for channels, _ in specs}) > 1:
        raise UserError(f"models {list(models)} mix grey (1-channel) and coloured (3-channel) datasets")
    cells = sorted(set().union(*(cells for _, cells in specs)))
    images, labels = load_mnist(root, train=True)
    channels = specs[0][0]
    cell_images = [colour_images(images[labels == digit], colour, channels).float() / 255.0 for digit, colour in cells]
    kernel_sums = KernelSums(cell_images, VESDE().marginal_prob_std, chunk).to(device)
    return FiniteDatasets(kernel_sums, [[cell in model_cells for cell in cells] for _, model_cells in specs])


def exact_ingredients(models, root=DATA_ROOT, device="cpu", chunk=DEFAULT_CHUNK):
    """(exact base scores, exact joint classifier, exact conditional classifier) of the base models `models`: drop-in
    replacements of the loaded ScoreNets and classifiers, sharing one set of kernel sums."""
    datasets = finite_datasets(models, root, device, chunk)
    return ([ExactScore(datasets, index) for index in range(len(models))], ExactJointClassifier(datasets),
            ExactConditionalClassifier(datasets))
