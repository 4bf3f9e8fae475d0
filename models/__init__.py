"""Networks: the score model, the time-dependent classifiers, the compositions and the oracle."""


def freeze(network):
    """Eval mode, no parameter gradients: for every network that guides, judges or acts as a target."""
    return network.eval().requires_grad_(False)
