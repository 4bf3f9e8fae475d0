"""Sampling cost: composed sampling against the bare cost of its network evaluations.

For a single model, the 2-model composition and the 3-way composition, at the
given channels, batch, steps and device, this measures in one run:
  - composed: PC sampling of the composition (eager float32);
  - bare: the same network evaluations alone, written out plainly (base-model
    forwards without grad, each classifier's forward and its input gradient);
  - compiled: the composition with every network compiled in place (torch.compile),
    still float32; the largest score difference to eager is reported.
Networks are randomly initialised (cost does not depend on the weights) with the
CPU-scale widths by default. Table on stdout, JSON in OUT.

    python benchmarks/sampling_benchmark.py                  # CPU scale, batch 64, 20 steps
    python benchmarks/sampling_benchmark.py --channels 64 128 256 256 --batch-size 128
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cli import override_globals, run_main  # noqa: E402
from models.classifier_model import (JointYClassifier, ThreeWayConditionalYClassifier,  # noqa: E402
                                     ThreeWayJointYClassifier)
from models.compositions import BinaryDiffusionComposition, ConditionalDiffusionComposition  # noqa: E402
from models.score_model import ScoreNet  # noqa: E402
from samplers import pc_sampler  # noqa: E402
from sde import VESDE  # noqa: E402
from utils import get_device  # noqa: E402

CHANNELS = [32, 64, 128, 128]
JOINT_CHANNELS = [16, 32]
THREE_WAY_CHANNELS = [32, 48]
CONDITIONAL_CHANNELS = [32, 32]
BATCH_SIZE = 64
NUM_STEPS = 20
CASES = ["single", "binary", "three_way"]
COMPILE = True
REPEATS = 3  # each time is the fastest of this many runs
THREADS = 0  # 0 = torch's default
SEED = 0
DEVICE = "auto"
OUT = "benchmarks/results/sampling.json"

OVERRIDABLE = ["CHANNELS", "JOINT_CHANNELS", "THREE_WAY_CHANNELS", "CONDITIONAL_CHANNELS", "BATCH_SIZE", "NUM_STEPS",
               "CASES", "COMPILE", "REPEATS", "THREADS", "SEED", "DEVICE", "OUT"]


def build_case(case, config, sde, device):
    """(score model to sample, base models, [(classifier, extra args)]) of one benchmark case."""
    num_models = {"single": 1, "binary": 2, "three_way": 3}[case]
    models = [ScoreNet(sde.marginal_prob_std, config["CHANNELS"], input_channels=3).to(device).eval()
              for _ in range(num_models)]
    if case == "single":
        return models[0], models, []
    if case == "binary":
        joint = JointYClassifier(input_channels=3, channels=config["JOINT_CHANNELS"]).to(device)
        return BinaryDiffusionComposition(models, joint, 1, 2, 20.0), models, [(joint, ())]
    joint = ThreeWayJointYClassifier(input_channels=3, channels=config["THREE_WAY_CHANNELS"]).to(device)
    conditional = ThreeWayConditionalYClassifier(input_channels=3, channels=config["CONDITIONAL_CHANNELS"]).to(device)
    labels = (torch.ones(config["BATCH_SIZE"], dtype=torch.long, device=device),
              torch.full((config["BATCH_SIZE"],), 2, dtype=torch.long, device=device))
    binary = BinaryDiffusionComposition(models, joint, 1, 2, 10.0)
    return ConditionalDiffusionComposition(binary, conditional, 3, 75.0), models, [(joint, ()), (conditional, labels)]


def bare_score_evaluations(models, classifiers, x, t):
    """The network work of one composed score call, without the composition around it."""
    with torch.no_grad():
        for model in models:
            model(x, t)
    for classifier, extra in classifiers:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            torch.autograd.grad(classifier(x_in, t, *extra).logsumexp(-1).sum(), x_in)


def timed(fn, device, repeats):
    """Fastest of `repeats` runs: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def benchmark_case(case, config, sde, device):
    score_model, models, classifiers = build_case(case, config, sde, device)
    batch, steps = config["BATCH_SIZE"], config["NUM_STEPS"]
    x = torch.randn(batch, 3, 28, 28, device=device) * 5
    t = torch.full((batch,), 0.5, device=device)

    def sample():
        pc_sampler(score_model, sde, batch, steps, device=device,
                   generator=torch.Generator(device).manual_seed(config["SEED"]), progress=False)

    def bare():
        for _ in range(2 * steps):  # corrector + predictor: two score calls per step
            bare_score_evaluations(models, classifiers, x, t)

    sample(), bare()  # warm-up (allocator, oneDNN primitive caches)
    result = {"case": case, "networks_per_score_call": len(models) + len(classifiers)}
    result["bare_s"] = timed(bare, device, config["REPEATS"])
    result["composed_s"] = timed(sample, device, config["REPEATS"])
    evaluations = 2 * steps * batch * result["networks_per_score_call"]
    result["overhead_ratio"] = result["composed_s"] / result["bare_s"]
    result["images_per_s"] = batch / result["composed_s"]
    result["network_evals_per_s"] = evaluations / result["composed_s"]
    if config["COMPILE"]:
        eager_score = score_model(x, t).detach()
        for network in [*models, *(classifier for classifier, _ in classifiers)]:
            network.compile()  # in place: same module, same state_dict keys
        start = time.perf_counter()
        sample()  # compiles
        result["compile_s"] = time.perf_counter() - start
        result["compiled_s"] = timed(sample, device, config["REPEATS"])
        result["compiled_speedup_vs_bare"] = result["bare_s"] / result["compiled_s"]
        result["compiled_images_per_s"] = batch / result["compiled_s"]
        result["compiled_max_abs_score_diff"] = float((score_model(x, t).detach() - eager_score).abs().max())
        result["score_scale"] = float(eager_score.abs().max())
    return result


def print_table(results, header):
    print(header)
    print(f"{'case':<10} {'nets':>4} {'bare s':>8} {'composed s':>10} {'ratio':>6} {'img/s':>7} {'evals/s':>8}"
          f" {'compiled s':>10} {'vs bare':>8} {'max |diff|':>10}")
    for r in results:
        compiled = (f" {r['compiled_s']:>10.2f} {r['compiled_speedup_vs_bare']:>7.2f}x {r['compiled_max_abs_score_diff']:>10.1e}"
                    if "compiled_s" in r else "")
        print(f"{r['case']:<10} {r['networks_per_score_call']:>4} {r['bare_s']:>8.2f} {r['composed_s']:>10.2f}"
              f" {r['overhead_ratio']:>6.3f} {r['images_per_s']:>7.1f} {r['network_evals_per_s']:>8.0f}{compiled}")


def main(argv=None):
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv, positive=["BATCH_SIZE", "NUM_STEPS", "CHANNELS", "REPEATS"],
                     choices={"CASES": ["single", "binary", "three_way"]})
    if config["THREADS"]:
        torch.set_num_threads(config["THREADS"])
    torch.manual_seed(config["SEED"])
    device = get_device(config["DEVICE"])
    sde = VESDE()
    results = [benchmark_case(case, config, sde, device) for case in config["CASES"]]
    header = (f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, channels "
              f"{config['CHANNELS']}, batch {config['BATCH_SIZE']}, {config['NUM_STEPS']} PC steps; "
              f"ratio = composed / bare (eager float32), vs bare = bare / compiled")
    print_table(results, header)
    out = Path(config["OUT"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {k: config[k] for k in OVERRIDABLE}, "device": str(device),
                               "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
