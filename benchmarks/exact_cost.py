"""The cost of one exact evaluation (models/exact.py) against a ScoreNet's at the same batch.

For each set of base models: one exact base score (a kernel sum over every training image of their union), one
composed exact score (the exact classifier's guidance and every exact base score, which share one pass over the
images), and one evaluation of the shipped ScoreNet; each the fastest of REPEATS, with the CPU's capability named.

    python benchmarks/exact_cost.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.compositions import compose  # noqa: E402
from models.fast_paths import measure_seconds  # noqa: E402
from sculpting.artefacts import REFERENCE_EPOCH, base_model_path  # noqa: E402
from sculpting.checkpoints import load_score_model  # noqa: E402
from sculpting.cli import configure, run_main  # noqa: E402
from sculpting.exact import exact_ingredients  # noqa: E402
from sculpting.sde import VESDE  # noqa: E402

MODEL_SETS = ["M1+M2", "1+2", "MN1+MN2+MN3"]  # each a composition's base models, joined by +
BATCH_SIZE = 128
TIME = 0.5  # diffusion time of the evaluated batch (the cost does not depend on it)
REPEATS = 3

# ---- engineering settings: how and where it runs, not what it samples ----
GEN_CKPT_DIR = "checkpoints"
THREADS = 0


def fastest(call, repeats):
    """The fastest of `repeats` timed calls, after one warm-up call."""
    call()
    return measure_seconds(call, repeats)


def main(argv=None):
    config = configure(globals(), argv)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"batch {config['BATCH_SIZE']}")
    sde = VESDE()
    for model_set in config["MODEL_SETS"]:
        models = model_set.split("+")
        bases, joint, conditional = exact_ingredients(models)
        kernel_sums = bases[0].kernel_sums
        x = torch.rand(config["BATCH_SIZE"], *kernel_sums.shape)
        t = torch.full((len(x),), config["TIME"])
        network = load_score_model(base_model_path(config["GEN_CKPT_DIR"], models[0], REFERENCE_EPOCH), sde, "cpu",
                                   input_channels=kernel_sums.shape[0])
        composition = compose(bases, [joint, conditional][:len(models) - 1], [1, 2, 3][:len(models)],
                              [1.0] * (len(models) - 1))

        def fresh(call):  # every timed call computes the kernel sums anew, as the next sampler step does
            def run():
                kernel_sums._cached = None
                return call()
            return run

        with torch.no_grad():
            score_net = fastest(lambda: network(x, t), config["REPEATS"])
            exact = fastest(fresh(lambda: bases[0](x, t)), config["REPEATS"])
        composed = fastest(fresh(lambda: composition(x, t)), config["REPEATS"])
        print(f"{model_set}: {len(kernel_sums.images)} images; ScoreNet {score_net * 1000:.0f} ms, exact score "
              f"{exact * 1000:.0f} ms ({exact / score_net:.1f}x), composed exact score {composed * 1000:.0f} ms")


if __name__ == "__main__":
    run_main(main)
