"""Classifier training cost: one training step against its bare network work, and pool against fresh trajectories.

Part "step": one optimizer step of the joint classifier (CPU-scale widths, random
weights and trajectories: cost does not depend on values) against the bare cost of
the same network work (the classifier's forward and backward on the same images,
the bootstrap target's forward on the terminal states), eager float32; ratio =
step / bare. Part "convergence": train_classifier.py on the committed M1/M2
checkpoints, once with fresh trajectories for every step (the reference: pool =
batch, reuse 1) and once per trajectory-pool setting in POOLS, recording after
every test the score-network evaluations spent on training trajectories, the
training wall time (tests excluded) and the test accuracies; then the cost of
reaching TERMINAL_TARGET (mean terminal accuracy) and NOISY_TARGET (mean accuracy
over the test steps with t <= 0.7). Classifier work per step is the same in every
setting (same batch and step selection), so the settings differ in sampling.
Table on stdout, JSON in OUT. Like every script, it lets malloc keep freed tensor memory
(models.fast_paths.keep_freed_memory) unless --no-keep-freed-memory is given.

    python benchmarks/classifier_benchmark.py                       # both parts
    python benchmarks/classifier_benchmark.py --parts step
"""
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sculpting.artefacts import JOINT_CLASSIFIER, test_history  # noqa: E402
from sculpting.classifier_training import Trajectories, frozen_copy, joint_training_loss  # noqa: E402
from sculpting.cli import configure, run_main, run_script  # noqa: E402
from sculpting.losses import JOINT_STEP_FRACTION, NON_TERMINAL_MAX_TIME, select_steps  # noqa: E402
from models.classifier_model import JointYClassifier, ThreeWayJointYClassifier  # noqa: E402
from models.fast_paths import malloc_setting  # noqa: E402
from samplers import time_grid  # noqa: E402

PARTS = ["step", "convergence"]  # the parts to measure

# Part "step".
STEP_CASES = {"joint 2-model": (JointYClassifier, 2, [16, 32]), "joint 3-way": (ThreeWayJointYClassifier, 3, [32, 48])}
STEP_BATCH_SIZE = 64  # trajectories per model
REPEATS = 5  # each time is the fastest of this many

# Part "convergence": train_classifier.py's settings for every pool setting.
GEN_CKPT_DIR = "checkpoints"
TRAJECTORY_STEPS = 100
BATCH_SIZE = 32  # trajectories per model in each optimizer step
STEPS = 60
WARMUP_STEPS = 20
TEST_EVERY = 10
TEST_SAMPLES = 100
CLASSIFIER_CHANNELS = [16, 32]
POOLS = [[32, 1], [256, 50], [128, 20]]  # [pool size, reuse] per model; the first is the reference's fresh sampling
TERMINAL_TARGET = 0.78  # the mean terminal test accuracy whose cost is reported
NOISY_TARGET = 0.80  # the mean test accuracy over the steps with t <= 0.7 whose cost is reported
REANALYSE = False  # only recompute "reached" in OUT for the current targets (no training)
KEEP_FREED_MEMORY = True  # as every script: malloc keeps freed memory (False: glibc's default)
SEED = 0
DEVICE = "cpu"
OUT = "benchmarks/results/classifier_training.json"


def fastest(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def step_cost(name, config):
    """One joint-classifier training step (non-terminal phase) against its bare network work."""
    classifier_class, num_models, channels = STEP_CASES[name]
    torch.manual_seed(config["SEED"])
    classifier = classifier_class(input_channels=3, channels=channels)
    target = frozen_copy(classifier)
    optimizer = torch.optim.Adadelta(classifier.parameters(), lr=1.0)
    grid, _ = time_grid(config["TRAJECTORY_STEPS"])
    times = grid[grid <= NON_TERMINAL_MAX_TIME]
    batch = config["STEP_BATCH_SIZE"]
    trajectories = Trajectories(torch.randn(len(times), batch * num_models, 3, 28, 28), times,
                                torch.arange(num_models).repeat_interleave(batch), config["TRAJECTORY_STEPS"])
    samples = torch.arange(batch * num_models)

    def step():
        loss, _ = joint_training_loss(classifier, target, trajectories, samples, non_terminal=True,
                                      generator=torch.Generator().manual_seed(config["SEED"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # The same steps joint_training_loss selects with this seed: the terminal state plus ~10% of the rest.
    steps = select_steps(times, JOINT_STEP_FRACTION, include_last=False,
                         generator=torch.Generator().manual_seed(config["SEED"]))
    x_t = trajectories.states[steps].flatten(0, 1)
    t_t = times[steps].repeat_interleave(len(samples))
    x_0, t_0 = trajectories.states[-1], times[-1].repeat(len(samples))

    def bare():
        with torch.no_grad():
            target(x_0, t_0)
        (classifier(x_0, t_0).sum() + classifier(x_t, t_t).sum()).backward()

    step(), bare()  # warm-up
    images = len(samples) * (len(steps) + 1)
    result = {"case": name, "images_per_step": images, "step_s": fastest(step, config["REPEATS"]),
              "bare_s": fastest(bare, config["REPEATS"])}
    result["ratio"] = result["step_s"] / result["bare_s"]
    result["images_per_s"] = images / result["step_s"]
    return result


def first_reaching(history, key, target):
    """The first history entry whose `key` is >= target, or None."""
    return next((entry for entry in history if entry[key] >= target), None)


def convergence(pool_size, reuse, config):
    """Train the M1/M2 classifier (train_classifier.py, a subprocess) with one pool setting; the cost and
    accuracy after every test."""
    with tempfile.TemporaryDirectory() as ckpt_dir:
        run_script([
            "train_classifier.py", "--gen-ckpt-dir", config["GEN_CKPT_DIR"], "--ckpt-dir", ckpt_dir, "--overwrite",
            "--trajectory-steps", str(config["TRAJECTORY_STEPS"]), "--batch-size", str(config["BATCH_SIZE"]),
            "--pool-size", str(pool_size), "--pool-reuse", str(reuse), "--steps", str(config["STEPS"]),
            "--warmup-steps", str(config["WARMUP_STEPS"]), "--test-every", str(config["TEST_EVERY"]),
            "--ckpt-every", str(config["STEPS"]), "--test-samples", str(config["TEST_SAMPLES"]),
            "--classifier-channels", *map(str, config["CLASSIFIER_CHANNELS"]), "--seed", str(config["SEED"]),
            "--device", config["DEVICE"]])
        history = json.loads((Path(ckpt_dir) / test_history(JOINT_CLASSIFIER)).read_text())
    evaluations_per_refresh = pool_size * 2 * config["TRAJECTORY_STEPS"] * 2  # 2 models, 2 score calls per step
    rows = []
    for entry in history:
        times, accuracy = torch.tensor(entry["times"]), torch.tensor(entry["accuracy"])
        noisy = (times <= NON_TERMINAL_MAX_TIME) & (times > times[-1])
        rows.append({"step": entry["step"], "train_seconds": entry["train_seconds"],
                     "score_evaluations": entry["pool_refreshes"] * evaluations_per_refresh,
                     "terminal_accuracy": float(accuracy[-1].mean()),
                     "noisy_accuracy": float(accuracy[noisy].mean())})
    return {"pool_size": pool_size, "reuse": reuse, "history": rows, "reached": reached(rows, config)}


def reached(history, config):
    """The cost (step, training seconds, score evaluations) at which each accuracy target was first met."""
    hits = {}
    for key, target in (("terminal_accuracy", config["TERMINAL_TARGET"]), ("noisy_accuracy", config["NOISY_TARGET"])):
        hit = first_reaching(history, key, target)
        hits[key] = None if hit is None else {k: hit[k] for k in ("step", "train_seconds", "score_evaluations")}
    return hits


def print_step_table(results):
    print(f"{'classifier step':<16} {'images':>7} {'step s':>7} {'bare s':>7} {'ratio':>6} {'images/s':>9}")
    for r in results:
        print(f"{r['case']:<16} {r['images_per_step']:>7} {r['step_s']:>7.3f} {r['bare_s']:>7.3f} {r['ratio']:>6.3f}"
              f" {r['images_per_s']:>9.0f}")


def print_convergence_table(results, config):
    print(f"\nreaching terminal accuracy {config['TERMINAL_TARGET']:.2f} / accuracy at t <= 0.7 "
          f"{config['NOISY_TARGET']:.2f} (steps, score-network evaluations, training seconds)")
    print(f"{'pool, reuse':<12} {'terminal':>28} {'t <= 0.7':>28} {'final terminal':>15} {'final t<=0.7':>13}")

    def cell(hit):
        return "not reached" if hit is None else \
            f"{hit['step']} / {hit['score_evaluations'] / 1e6:.2f}M / {hit['train_seconds']:.0f} s"

    for r in results:
        last = r["history"][-1]
        print(f"{r['pool_size']:>4}, {r['reuse']:<6} {cell(r['reached']['terminal_accuracy']):>28}"
              f" {cell(r['reached']['noisy_accuracy']):>28} {last['terminal_accuracy']:>15.3f}"
              f" {last['noisy_accuracy']:>13.3f}")


def main(argv=None):
    config = configure(globals(), argv, choices={"PARTS": PARTS})
    torch.manual_seed(config["SEED"])
    allocator = malloc_setting(config["KEEP_FREED_MEMORY"])
    out = Path(config["OUT"])
    if config["REANALYSE"]:
        report = json.loads(out.read_text())
        report["settings"].update(TERMINAL_TARGET=config["TERMINAL_TARGET"], NOISY_TARGET=config["NOISY_TARGET"])
        for run in report.get("convergence", []):
            run["reached"] = reached(run["history"], config)
        config = {**config, **report["settings"], "PARTS": [p for p in PARTS if p in report], "REANALYSE": True}
    else:
        report = {"settings": config, "threads": torch.get_num_threads(),
                  "malloc": allocator, "torch": torch.__version__}
    if "convergence" in config["PARTS"] and not config["REANALYSE"]:
        report["convergence"] = [convergence(size, reuse, config) for size, reuse in POOLS]
    if "step" in config["PARTS"] and not config["REANALYSE"]:
        report["step"] = [step_cost(name, config) for name in STEP_CASES]
    print(f"\ndevice {config['DEVICE']} ({report['threads']} threads, malloc {report.get('malloc', 'default')}), "
          f"torch {report['torch']}")
    if "step" in report:
        print_step_table(report["step"])
    if "convergence" in report:
        print_convergence_table(report["convergence"], config)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main, keep_freed_memory=False)  # main decides (KEEP_FREED_MEMORY)
