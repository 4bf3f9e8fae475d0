"""Sampling cost: composed sampling against the bare cost of its network evaluations, and the fast paths.

For a single model, the 2-model composition and the 3-way composition, at the
given channels, batch, steps and device, this measures in one run:
  - bare: the composed score's network evaluations alone, written out plainly
    (base-model forwards without grad, each classifier's forward and its input
    gradient), eager float32, on the very (x, t) of the sampler's score calls
    (recorded in a first run): the floor;
  - composed: PC sampling of the composition, eager float32; ratio = composed / bare;
  - fast paths, each as a speed-up over bare (> 1 is faster) with the largest
    score difference to eager float32 (bare runs on eager copies of the
    networks): channels_last memory format (the classifiers with the matching
    feature order, models/fast_paths.set_layout); bfloat16 autocast with
    channels_last and the weights cast once (what --precision bfloat16 does,
    models/fast_paths.py); the score networks compiled
    in place (torch.compile, float32; what --compile does); compiled +
    bfloat16; every network compiled, classifiers included ("compiled_all",
    float32), and that under bfloat16 ("compiled_all_bfloat16");
  - base models batched: the base models' forwards as one torch.func.vmap call
    over their stacked weights, against the separate calls (bare, base models only);
  - inference_mode: the base models' forwards under inference_mode against no_grad.
Every script lets malloc keep freed tensor memory (models.fast_paths.keep_freed_memory); so does this
benchmark, bare floor included, unless --no-keep-freed-memory (glibc's default allocator) is given.
Every comparison alternates its two sides REPEATS times and keeps the fastest of
each, so a drift in the machine's speed hits both. Networks are randomly
initialised (cost does not depend on the weights) with the CPU-scale widths by
default. Table on stdout, JSON in OUT.

    python benchmarks/sampling_benchmark.py                  # CPU scale, batch 64, 20 steps
    python benchmarks/sampling_benchmark.py --channels 64 128 256 256 --batch-size 128
"""
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sculpting.cli import configure, run_main  # noqa: E402
from models.classifier_model import (JointYClassifier, ThreeWayConditionalYClassifier,  # noqa: E402
                                     ThreeWayJointYClassifier)
from models.compositions import compose  # noqa: E402
from models.fast_paths import apply_fast_path, malloc_setting, resolve_precision, set_layout  # noqa: E402
from models.score_model import ScoreNet  # noqa: E402
from samplers import pc_sampler  # noqa: E402
from sculpting.sde import VESDE  # noqa: E402
from sculpting.runtime import get_device  # noqa: E402

CHANNELS = [32, 64, 128, 128]
JOINT_CHANNELS = [16, 32]  # trunk widths of the 2-model joint classifier
THREE_WAY_CHANNELS = [32, 48]  # of the 3-way joint classifier
CONDITIONAL_CHANNELS = [32, 32]  # of the conditional classifier
BATCH_SIZE = 64
NUM_STEPS = 20
CASES = ["single", "binary", "three_way"]  # the score models timed: one base model, or a composition
FAST_PATHS = [  # the fast paths timed against the eager float32 one
    "channels_last", "bfloat16", "compiled", "compiled_bfloat16", "compiled_all", "compiled_all_bfloat16"]
REPEATS = 5  # each time is the fastest of this many runs, alternated with the bare floor
THREADS = 0  # 0 = torch's default
KEEP_FREED_MEMORY = True  # as every script: malloc keeps freed memory (False: glibc's default)
SEED = 0
DEVICE = "auto"
OUT = "benchmarks/results/sampling.json"


def build_case(case, config, sde, device):
    """(score model to sample, base models, [(classifier, extra args)]) of one benchmark case."""
    num_models = {"single": 1, "binary": 2, "three_way": 3}[case]
    models = [ScoreNet(sde.marginal_prob_std, config["CHANNELS"], input_channels=3).to(device).eval()
              for _ in range(num_models)]
    if case == "single":
        return models[0], models, []
    if case == "binary":
        joint = JointYClassifier(input_channels=3, channels=config["JOINT_CHANNELS"]).to(device)
        return compose(models, [joint], [1, 2], [20.0]), models, [(joint, ())]
    joint = ThreeWayJointYClassifier(input_channels=3, channels=config["THREE_WAY_CHANNELS"]).to(device)
    conditional = ThreeWayConditionalYClassifier(input_channels=3, channels=config["CONDITIONAL_CHANNELS"]).to(device)
    labels = (torch.ones(config["BATCH_SIZE"], dtype=torch.long, device=device),
              torch.full((config["BATCH_SIZE"],), 2, dtype=torch.long, device=device))
    return compose(models, [joint, conditional], [1, 2, 3], [10.0, 75.0]), models, [(joint, ()), (conditional, labels)]


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


def batched_base_models(models):
    """One call evaluating every base model on the same (x, t): torch.func.vmap over their stacked weights."""
    from torch.func import functional_call, stack_module_state

    params, buffers = stack_module_state(models)
    skeleton = models[0]

    def call(p, b, x, t):
        return functional_call(skeleton, (p, b), (x, t))

    return lambda x, t: torch.func.vmap(call, in_dims=(0, 0, None, None))(params, buffers, x, t)


class RecordingScore(torch.nn.Module):
    """Passes score calls through and keeps each call's (x, t): the bare work is timed on the very inputs
    sampling visits (the cost of some kernels depends on the values, e.g. the noise level)."""

    def __init__(self, score_model):
        super().__init__()
        self.score_model, self.input_channels, self.calls = score_model, score_model.input_channels, []

    def forward(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return self.score_model(x, t)


def alternating(first, second, device, repeats):
    """Fastest times of two functions run in turn, `repeats` times each: a drift in the machine's speed
    (other jobs, clocks) then hits both, and their ratio stays fair."""
    first_times, second_times = [], []
    for _ in range(repeats):
        first_times.append(timed(first, device, 1))
        second_times.append(timed(second, device, 1))
    return min(first_times), min(second_times)


def benchmark_case(case, config, sde, device):
    score_model, models, classifiers = build_case(case, config, sde, device)
    classifier_networks = [classifier for classifier, _ in classifiers]
    networks = [*models, *classifier_networks]
    # The floor runs on eager float32 copies, untouched when the fast paths compile the originals in place.
    bare_models, bare_classifiers = copy.deepcopy(models), copy.deepcopy(classifiers)
    batch, steps, repeats = config["BATCH_SIZE"], config["NUM_STEPS"], config["REPEATS"]
    x = torch.randn(batch, 3, 28, 28, device=device) * 5  # where score deviations are measured
    t = torch.full((batch,), 0.5, device=device)

    def sampler(model):
        return lambda: pc_sampler(model, sde, batch, steps, device=device,
                                  generator=torch.Generator(device).manual_seed(config["SEED"]), progress=False)

    recorder = RecordingScore(score_model)
    sampler(recorder)()  # two score calls per PC step (corrector + predictor)

    def bare():
        for x_call, t_call in recorder.calls:
            bare_score_evaluations(bare_models, bare_classifiers, x_call, t_call)

    def separate_calls(x_call, t_call):
        for model in bare_models:
            model(x_call, t_call)

    def base_forwards(grad_mode, evaluate=separate_calls):
        def run():
            for x_call, t_call in recorder.calls:
                with grad_mode():
                    evaluate(x_call, t_call)
        return run

    sample = sampler(score_model)
    sample(), bare()  # warm-up (allocator, oneDNN primitive caches)
    result = {"case": case, "networks_per_score_call": len(networks)}
    result["composed_s"], result["bare_s"] = alternating(sample, bare, device, repeats)
    evaluations = 2 * steps * batch * len(networks)
    result["overhead_ratio"] = result["composed_s"] / result["bare_s"]
    result["images_per_s"] = batch / result["composed_s"]
    result["network_evals_per_s"] = evaluations / result["composed_s"]
    result["base_inference_mode_s"], result["base_no_grad_s"] = alternating(
        base_forwards(torch.inference_mode), base_forwards(torch.no_grad), device, repeats)
    if len(models) > 1:
        vmapped = base_forwards(torch.no_grad, batched_base_models(bare_models))
        vmapped()
        result["base_vmap_s"], result["base_separate_s"] = alternating(vmapped, base_forwards(torch.no_grad),
                                                                      device, repeats)
    eager_score = score_model(x, t).detach()
    result["score_scale"] = float(eager_score.abs().max())
    paths, fast = config["FAST_PATHS"], {}

    float32_weights = [copy.deepcopy(network.state_dict()) for network in networks]

    def measure(path, model):
        fast[path] = measure_fast_path(model, sampler, bare, x, t, eager_score, device, repeats)
        fast[path]["images_per_s"] = batch / fast[path]["s"]
        # The next path starts from float32 weights in the default layout (bfloat16 cast them in place and
        # went channels_last).
        for network, weights in zip(networks, float32_weights):
            network.float().load_state_dict(weights)
            set_layout(network, channels_last=False)

    if "channels_last" in paths:
        for network in networks:
            set_layout(network, channels_last=True)
        measure("channels_last", score_model)
    if "bfloat16" in paths:
        measure("bfloat16", apply_fast_path(score_model, [], precision="bfloat16"))
    # Compiling is in place, so the compiled paths come last, the classifiers' compilation the very last.
    if any(path.startswith("compiled") for path in paths):
        apply_fast_path(score_model, models, compile_networks=True)
    if "compiled" in paths:
        measure("compiled", score_model)
    if "compiled_bfloat16" in paths:
        measure("compiled_bfloat16", apply_fast_path(score_model, [], precision="bfloat16"))
    if "compiled_all" in paths and classifiers:
        measure("compiled_all", apply_fast_path(score_model, classifier_networks, compile_networks=True))
    if "compiled_all_bfloat16" in paths and classifiers:
        measure("compiled_all_bfloat16", apply_fast_path(score_model, classifier_networks,
                                                          compile_networks=True, precision="bfloat16"))
    result["fast_paths"] = fast
    return result


def measure_fast_path(model, sampler, bare, x, t, eager_score, device, repeats):
    """Sampling time of `model` (after a warm-up run that compiles where needed), alternated with the bare
    floor; its speed-up over that floor and its score's deviation from eager float32."""
    start = time.perf_counter()
    sampler(model)()
    warm_up = time.perf_counter() - start
    seconds, bare_seconds = alternating(sampler(model), bare, device, repeats)
    deviation = float((model(x, t).detach().float() - eager_score).abs().max())
    return {"s": seconds, "bare_s": bare_seconds, "speedup_vs_bare": bare_seconds / seconds, "warm_up_s": warm_up,
            "max_abs_score_diff": deviation}


def print_table(results, header):
    print(header)
    print(f"{'case':<10} {'nets':>4} {'bare s':>7} {'composed s':>10} {'ratio':>6} {'img/s':>6} {'evals/s':>7}"
          f" {'vmap/sep':>8} {'inf/nograd':>10}")
    for r in results:
        vmap = f"{r['base_vmap_s'] / r['base_separate_s']:>8.2f}" if "base_vmap_s" in r else f"{'–':>8}"
        print(f"{r['case']:<10} {r['networks_per_score_call']:>4} {r['bare_s']:>7.2f} {r['composed_s']:>10.2f}"
              f" {r['overhead_ratio']:>6.3f} {r['images_per_s']:>6.1f} {r['network_evals_per_s']:>7.0f} {vmap}"
              f" {r['base_inference_mode_s'] / r['base_no_grad_s']:>10.2f}")
    paths = [path for path in FAST_PATHS if any(path in r["fast_paths"] for r in results)]
    if paths:
        print("\nfast paths: speed-up over bare eager float32 (max |score diff| / max |score|)")
        print(f"{'case':<10} " + " ".join(f"{p:>19}" for p in paths))
        for r in results:
            cells = [f"{fast['speedup_vs_bare']:>5.2f}x ({fast['max_abs_score_diff'] / r['score_scale']:.0e})"
                     if fast else "–" for fast in (r["fast_paths"].get(p) for p in paths)]
            print(f"{r['case']:<10} " + " ".join(f"{c:>19}" for c in cells))


def main(argv=None):
    config = configure(globals(), argv, choices={"CASES": CASES, "FAST_PATHS": FAST_PATHS})
    allocator = malloc_setting(config["KEEP_FREED_MEMORY"])
    torch.manual_seed(config["SEED"])
    device = get_device(config["DEVICE"])
    sde = VESDE()
    results = [benchmark_case(case, config, sde, device) for case in config["CASES"]]
    capability = torch.backends.cpu.get_cpu_capability()
    auto = resolve_precision("auto", device)
    header = (f"device {device} ({torch.get_num_threads()} threads, malloc {allocator}, CPU capability {capability}, "
              f"--precision auto: {auto}), torch {torch.__version__}, "
              f"channels {config['CHANNELS']}, batch {config['BATCH_SIZE']}, {config['NUM_STEPS']} PC steps; "
              f"ratio = composed / bare (eager float32); vmap/sep and inf/nograd: base-model forwards only")
    print_table(results, header)
    out = Path(config["OUT"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": config, "device": str(device),
                               "threads": torch.get_num_threads(), "malloc": allocator, "torch": torch.__version__,
                               "cpu_capability": capability, "auto_precision": auto,
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main, keep_freed_memory=False)  # main decides (KEEP_FREED_MEMORY)
