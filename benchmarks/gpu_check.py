"""The paper scale's CUDA paths, checked in one run of a few minutes on one GPU, with the timings of the estimate
in docs/pipeline.md.

Parts (PARTS):
  train        train_diffusion.py at the paper's width and batch: one whole epoch of GEN_IDX (seconds per training
               step, start-up apart), and one epoch of SUBSET images of every other base model the classifiers read;
  resume       under --precision auto, a run stopped by SIGTERM in its first epoch and continued with --resume ends
               with the uninterrupted run's weights (the generators saved in the training state), judged against the
               distance to another seed's run;
  classifiers  CLASSIFIER_STEPS steps of each classifier at the reference's batch, on fresh 500-step PC
               trajectories of those paper-width models (the conditional classifier's are compositions guided by
               the joint classifier: its input gradients); seconds per step from each run's test history;
  sample       every showcase row from the shipped checkpoints with pc and heun-churn, each under float32 and
               --precision auto, and the COMPILE_ROWS also with --compile on: every output finite, no fast path
               fallen back to eager float32, and each guided row (λ > 1) at a support precision of at least
               min(TARGET_PRECISION, its committed row's in BASELINE_DIR - TARGET_MARGIN).
Prints each check, writes <OUT_DIR>/gpu_check.json (the device, every timing and check, and the paper scale's wall
time on 1, 4 and 8 GPUs estimated from the timings) and exits 1 where a check failed; the runs' own outputs go to
WORK_DIR. The whole check is sized for about 8 minutes of one GPU; --parts, --rows, --samplers and --precisions run
less. --tiny: sizes for a CPU (a smoke test of the script; the targets are not judged).

    python benchmarks/gpu_check.py                                  # on a GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu --out-dir /tmp/gpu_check
"""
import ast
import functools
import json
import math
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from custom_datasets import ColouredMNIST  # noqa: E402
from models.oracle import CONFIDENCE, predict  # noqa: E402
from sculpting.artefacts import (CONDITIONAL_CLASSIFIER, JOINT_CLASSIFIER, THREE_WAY_CLASSIFIER,  # noqa: E402
                                 base_model_checkpoint, classifier_checkpoint, composition_stem, evaluation_report,
                                 test_history)
from sculpting.checkpoints import ensure_writable_dir, load_oracle  # noqa: E402
from models.fast_paths import PRECISION_CHOICES  # noqa: E402
from sculpting.cli import BASE_ONLY, configure, flag_name, run_main, run_script  # noqa: E402
from sculpting.errors import UserError  # noqa: E402
from sculpting.evaluation import composition_metrics, load_samples, read_meta, sample_cells  # noqa: E402
from sculpting.recipes import CPU_STEPS, SCALES  # noqa: E402
from sculpting.reproduction.schedule import critical_path, wall_time  # noqa: E402
from sculpting.reproduction.stages import Plan, stage_graph  # noqa: E402
from sculpting.runtime import get_device  # noqa: E402
from sculpting.showcase import SHOWCASE, sample_command  # noqa: E402
from samplers import SAMPLERS as SAMPLER_NAMES  # noqa: E402
from sculpting.targets import target_distribution  # noqa: E402

PARTS = ["train", "resume", "classifiers", "sample"]  # the parts to run, in this order
GEN_IDX = "MN1"  # the base model whose whole epoch is timed: the critical path's kind (docs/pipeline.md)
SUBSET = 256  # images of each other base model's epoch: checkpoints of the paper's width for the classifiers
RESUME_SUBSET = 1024  # images of the resume check's runs (two epochs)
CLASSIFIER_STEPS = 2  # timed optimizer steps of each classifier
TEST_SAMPLES = 8  # test trajectories per source of each classifier run (the reference's 300 would dominate)
NUM_SAMPLES = 64  # of each showcase sample
NUM_STEPS = None  # of each showcase sample; None: the cpu scale's for its sampler (sculpting/recipes.CPU_STEPS: the
# committed rows' 250 or 500 PC steps, 40 heun-churn levels)
ROWS = list(range(len(SHOWCASE)))  # the showcase rows sampled, by index (sculpting/showcase.SHOWCASE)
SAMPLERS = ["pc", "heun-churn"]  # every row is sampled with each
PRECISIONS = ["float32", "auto"]  # every row is sampled under each, eager
COMPILE_ROWS = [8]  # rows also sampled with --compile on under --precision auto, with each sampler: a 3-way row
# compiles every kind of network a composition evaluates
TARGET_PRECISION = 0.8  # a guided row's support precision must reach this, or its committed row's less TARGET_MARGIN
TARGET_MARGIN = 0.2  # where that is lower: 64 samples' standard error is up to 6 points
BASELINE_DIR = "results/cpu"  # the committed rows (their <stem>_eval.json)
TINY = False  # CPU sizes: narrow networks, a few images, steps and samples, two rows, nothing compiled

# ---- engineering settings: how and where it runs, not what it checks ----
DEVICE = "auto"  # every script's --device
WORK_DIR = None  # folder of every run's outputs; None: a temporary one, removed at the end
OUT_DIR = "benchmarks/results"  # the report is <OUT_DIR>/gpu_check.json

# --tiny's settings, and the flags it adds to each script.
TINY_SETTINGS = {"SUBSET": 64, "RESUME_SUBSET": 64, "TEST_SAMPLES": 2, "NUM_SAMPLES": 4, "NUM_STEPS": 3,
                 "ROWS": [0, 8], "COMPILE_ROWS": []}
TINY_FLAGS = {
    "train": ["--channels", "32", "32", "32", "32", "--embed-dim", "16", "--batch-size", "32"],
    "classifier": ["--trajectory-steps", "3", "--pool-size", "2", "--batch-size", "2", "--classifier-channels", "4",
                   "4", "--embed-dim", "8", "--t-embed-dim", "8"],
}


def script_default(script, name):
    """A script's global, as its source assigns it (a literal): the paper's settings the commands leave to it."""
    for node in ast.parse((REPO / script).read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == name for target in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{script} assigns no literal {name}")


@functools.lru_cache(maxsize=None)
def dataset_size(gen_idx) -> int:
    return len(ColouredMNIST(gen_idx, train=True))


def timed_script(argv):
    started = time.perf_counter()
    print(f"running {' '.join(argv)}", flush=True)
    run_script(argv)
    return time.perf_counter() - started


class Checks:
    """The checks of a run, each a name, a verdict and what it measured; a failed one makes the script exit 1."""

    def __init__(self):
        self.results = []

    def record(self, name, passed, **measured):
        self.results.append({"check": name, "passed": passed, **measured})
        print(f"[{'ok' if passed else 'FAIL':>4}] {name}"
              + "".join(f"; {key} {value}" for key, value in measured.items()), flush=True)

    def run(self, name, action):
        """action() -> {measured}; a UserError (a script that failed, samples not finite) fails the check."""
        try:
            measured = action()
        except UserError as error:
            self.record(name, False, error=str(error))
            return None
        self.record(name, measured.pop("passed", True), **measured)
        return measured


def train_part(config, work, device, check) -> dict:
    """Paper-width checkpoints of GEN_IDX (a whole epoch, timed) and of the other base models the classifiers read
    (SUBSET images); {"train_step_s", "startup_s"}, or {} where a run failed."""
    flags = TINY_FLAGS["train"] if config["TINY"] else []
    seconds = {}
    for gen_idx in ["MN1", "MN2", "MN3", "M1", "M2"]:
        whole = gen_idx == config["GEN_IDX"] and not config["TINY"]
        argv = ["train_diffusion.py", "--gen-idx", gen_idx, "--ckpt-dir", str(work / "base"), "--device", device,
                "--epochs", "1", "--save-every", "1", "--overwrite", *flags,
                *([] if whole else ["--train-subset", str(config["SUBSET"])])]
        measured = check.run(f"train {gen_idx}: one epoch" + ("" if whole else f" of {config['SUBSET']} images"),
                             lambda: {"seconds": round(timed_script(argv), 2)})
        seconds[gen_idx] = measured and measured["seconds"]
    others = [value for name, value in seconds.items() if name != config["GEN_IDX"] and value]
    if not seconds[config["GEN_IDX"]] or not others:
        return {}
    startup = min(others)  # a few steps besides: what every stage spends before its work
    batch = int(flags[flags.index("--batch-size") + 1]) if flags else script_default("train_diffusion.py",
                                                                                     "BATCH_SIZE")
    images = config["SUBSET"] if config["TINY"] else dataset_size(config["GEN_IDX"])
    return {"train_step_s": max(seconds[config["GEN_IDX"]] - startup, 0.0) / math.ceil(images / batch),
            "startup_s": startup}


def stop_after_first_step(argv) -> str:
    """Run `python <argv>` and send it SIGTERM once its progress bar shows; its last error line."""
    process = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    seen = b""
    while b"it/s]" not in seen and process.poll() is None:
        seen += process.stderr.read1(4096)
    process.send_signal(signal.SIGTERM)
    error = process.communicate()[1].decode(errors="replace").strip().splitlines()
    return error[-1] if error else f"exit {process.returncode}"


def resume_part(config, work, device, check):
    flags = [*(TINY_FLAGS["train"] if config["TINY"] else []), "--gen-idx", "M1", "--train-subset",
             str(config["RESUME_SUBSET"]), "--epochs", "2", "--save-every", "1", "--precision", "auto",
             "--device", device]

    def weights(folder):
        return torch.load(folder / base_model_checkpoint("M1", 1), map_location="cpu", weights_only=True)

    def distance(a, b):
        return max(float((a[key].float() - b[key].float()).abs().max()) for key in a)

    def resumed_equals_whole():
        folders = {name: work / "resume" / name for name in ["whole", "stopped", "other_seed"]}
        run_script(["train_diffusion.py", *flags, "--ckpt-dir", str(folders["whole"]), "--overwrite"])
        run_script(["train_diffusion.py", *flags, "--ckpt-dir", str(folders["other_seed"]), "--seed", "1",
                    "--overwrite"])
        stopped = stop_after_first_step(["train_diffusion.py", *flags, "--ckpt-dir", str(folders["stopped"]),
                                         "--overwrite"])
        if "--resume" not in stopped:
            raise UserError(f"the run did not stop on SIGTERM with its state saved: {stopped}")
        run_script(["train_diffusion.py", *flags, "--ckpt-dir", str(folders["stopped"]), "--resume"])
        whole = weights(folders["whole"])
        resumed, other_seed = distance(weights(folders["stopped"]), whole), distance(weights(folders["other_seed"]),
                                                                                    whole)
        # GPU kernels need not add in the same order twice: a resumed run is judged against what a lost generator
        # state would give, another seed's noise.
        return {"passed": resumed <= 0.01 * other_seed, "stopped": stopped, "max_weight_difference": resumed,
                "other_seeds_difference": other_seed}

    check.run("resume: a run stopped by SIGTERM and resumed ends with the uninterrupted run's weights",
              resumed_equals_whole)


def classifier_part(config, work, device, check) -> dict:
    """{script: seconds per optimizer step}, from the last step of each run's test history."""
    steps = config["CLASSIFIER_STEPS"]
    common = ["--steps", str(steps), "--test-samples", str(config["TEST_SAMPLES"]), "--test-every", "1",
              "--gen-ckpt-dir", str(work / "base"), "--gen-ckpt-epoch", "0", "--ckpt-dir", str(work / "classifiers"),
              "--device", device, "--overwrite", *(TINY_FLAGS["classifier"] if config["TINY"] else [])]
    joint_3way = work / "classifiers" / classifier_checkpoint(THREE_WAY_CLASSIFIER, steps)
    runs = [("train_classifier.py", JOINT_CLASSIFIER, ["--warmup-steps", "1"]),
            ("train_3way_classifier.py", THREE_WAY_CLASSIFIER, ["--warmup-steps", "1"]),
            ("train_3way_conditional_classifier.py", CONDITIONAL_CLASSIFIER, ["--classifier-ckpt", str(joint_3way)])]

    def seconds_per_step(script, name, own):
        timed_script([script, *common, *own])
        history = json.loads((work / "classifiers" / test_history(name)).read_text())
        return {"seconds_per_step": round(history[-1]["train_seconds"] - history[-2]["train_seconds"], 3)}

    step_seconds = {}
    for script, name, own in runs:
        measured = check.run(f"{name}: {steps} steps on fresh trajectories", lambda: seconds_per_step(script, name,
                                                                                                      own))
        step_seconds[script] = measured and measured["seconds_per_step"]
    return step_seconds


def support_precision(samples_path, oracle) -> float:
    """evaluate_composition.py's support precision of the samples, refused where they are not finite."""
    samples = load_samples(samples_path)
    if not bool(torch.isfinite(samples).all()):
        raise UserError(f"{samples_path} holds values that are not finite")
    meta = read_meta(samples_path, [], [])
    target = target_distribution(meta["models"], meta["observations"])
    return composition_metrics(sample_cells(predict(oracle, samples, CONFIDENCE)), target)["support_precision"]


def committed_precision(config, stem):
    path = Path(config["BASELINE_DIR"]) / evaluation_report(stem)
    return json.loads(path.read_text())["support_precision"] if path.exists() else None


def sample_and_judge(config, row, sampler, steps, precision, compiled, out_dir, device, oracle, evaluate_seconds):
    """Sample a showcase row with the sample script, evaluate it, and judge its fast path and target."""
    script, models, observations, scales = SHOWCASE[row]
    flags = ["--sampler", sampler, "--num-steps", str(steps), "--precision", precision, "--compile", compiled,
             "--device", device, "--batch-size", str(config["NUM_SAMPLES"]), "--overwrite",
             "--denoise-last-step" if sampler == "heun-churn" else "--no-denoise-last-step"]
    timed_script(sample_command(script, models, observations, scales, Path("checkpoints"), out_dir,
                                config["NUM_SAMPLES"], flags))
    stem = composition_stem(models, observations, scales)
    started = time.perf_counter()
    reached = support_precision(out_dir / f"{stem}.pt", oracle)
    evaluate_seconds.append(time.perf_counter() - started)
    meta = json.loads((out_dir / f"{stem}.json").read_text())
    fast_path = meta.get("fast_path", {})
    judged = max(scales) > 1 and not config["TINY"]  # the guided rows; λ = 1 rows are judged by TV, not 64 samples'
    committed = committed_precision(config, stem)
    target = config["TARGET_PRECISION"] if committed is None else \
        min(config["TARGET_PRECISION"], committed - config["TARGET_MARGIN"])
    return {"passed": not fast_path.get("rejected") and (not judged or reached >= target),
            "support_precision": round(reached, 3), "target": round(target, 3) if judged else None,
            "fast_path": fast_path.get("ran"), "rejected": fast_path.get("rejected") or None,
            "sampling_seconds": meta.get("sampling_seconds"),
            "score_evaluations_per_sample": meta.get("score_evaluations_per_sample")}


def sample_part(config, work, device, check) -> dict:
    """Every row under every setting, checked; {"evaluate_s": seconds of one evaluation, "samples": per run}."""
    settings = [(row, sampler, precision, "off") for row in config["ROWS"] for sampler in config["SAMPLERS"]
                for precision in config["PRECISIONS"]]
    settings += [(row, sampler, "auto", "on") for row in config["COMPILE_ROWS"] for sampler in config["SAMPLERS"]]
    oracle, evaluate_seconds, runs = load_oracle(), [], []
    for row, sampler, precision, compiled in settings:
        _, models, observations, scales = SHOWCASE[row]
        steps = config["NUM_STEPS"] or CPU_STEPS[sampler]["samples"][len(models)]
        out_dir = work / "samples" / f"{sampler}_{precision}_compile-{compiled}"
        measured = check.run(
            f"sample {composition_stem(models, observations, scales)}: {sampler}, {steps} steps, precision "
            f"{precision}, compile {compiled}",
            lambda: sample_and_judge(config, row, sampler, steps, precision, compiled, out_dir, device, oracle,
                                     evaluate_seconds))
        runs.append({"row": row, "sampler": sampler, "precision": precision, "compile": compiled, **(measured or {})})
    return {"evaluate_s": sum(evaluate_seconds) / max(len(evaluate_seconds), 1), "samples": runs}


def paper_stage_seconds(stages, timings) -> dict:
    """Each paper-scale stage's seconds, from this run's timings: a base model's epochs of training steps, a
    classifier's steps (its test trajectories as TEST_SAMPLES / POOL_SIZE steps more), and a sample stage's score
    evaluations at the classifiers' cost per trajectory step (a 2-model row's evaluation as three base models': two,
    and the classifier's gradient), each plus a process's start-up."""
    startup, train_step = timings["startup_s"], timings["train_step_s"]
    step = timings["classifier_step_s"]
    trajectories = script_default("train_classifier.py", "POOL_SIZE") * script_default("train_classifier.py",
                                                                                        "TRAJECTORY_STEPS")
    base_eval = step["train_classifier.py"] / (2 * trajectories)  # per image and PC step
    composed_3way_eval = step["train_3way_conditional_classifier.py"] / (6 * trajectories)  # 6 label pairs
    epochs = script_default("train_diffusion.py", "EPOCHS")
    batch = script_default("train_diffusion.py", "BATCH_SIZE")
    seconds = {}
    for stage in stages:
        if not stage.command:
            continue
        script, argv = stage.command[0], stage.command
        if stage.kind == "base":
            images = dataset_size(argv[argv.index("--gen-idx") + 1])
            work = epochs * math.ceil(images / batch) * train_step
        elif stage.kind == "classifier":
            tests = script_default(script, "TEST_SAMPLES") / script_default(script, "POOL_SIZE")
            work = (int(argv[argv.index("--steps") + 1]) + tests) * step[script]
        elif stage.kind == "sample":
            per_image = int(argv[argv.index("--num-samples") + 1]) * int(argv[argv.index("--num-steps") + 1])
            work = per_image * {"sample_individual_model.py": base_eval, "sample_composition.py": 3 * base_eval,
                                "sample_3way_composition.py": composed_3way_eval}[script]
        else:
            work = timings["evaluate_s"] * 512 / timings["num_samples"]
        seconds[stage.name] = startup + work
    return seconds


def estimate(timings) -> dict:
    """The paper scale's critical path and wall time on 1, 4 and 8 GPUs, in hours."""
    plan = Plan(SCALES["paper"], Path("runs/paper"), Path("runs/paper/checkpoints"), Path("runs/paper/results"), 0,
                "pc", "float32", False, 512)
    stages = stage_graph(plan, lambda name: True)
    seconds = paper_stage_seconds(stages, timings)
    path_seconds, path = critical_path(stages, seconds)
    return {"critical_path": [name for name in path if name in seconds], "critical_path_h": path_seconds / 3600,
            "wall_time_h": {name: wall_time(stages, seconds, gpus) / 3600
                            for name, gpus in [("1 GPU", 1), ("4 GPUs", 4), ("8 GPUs", 8)]},
            "stage_h": {name: value / 3600 for name, value in seconds.items()}}


def device_name(device) -> str:
    chosen = get_device(device)
    if chosen.type == "cuda":
        return torch.cuda.get_device_name(chosen)
    return f"{chosen.type}: {platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})"


def main(argv=None):
    # first pass: --tiny changes the other settings' defaults
    tiny = configure(globals(), argv, choices=BASE_ONLY)["TINY"]
    config = configure(globals(), argv, defaults=TINY_SETTINGS if tiny else None, choices=BASE_ONLY)
    for name in ["ROWS", "COMPILE_ROWS"]:  # integers also where --tiny's empty default left them strings
        config[name] = [int(value) if str(value).isdigit() else value for value in config[name]]
    for name, allowed in [("PARTS", PARTS), ("SAMPLERS", SAMPLER_NAMES), ("PRECISIONS", PRECISION_CHOICES),
                          ("ROWS", range(len(SHOWCASE))), ("COMPILE_ROWS", range(len(SHOWCASE)))]:
        unknown = [str(value) for value in config[name] if value not in allowed]
        if unknown:
            raise UserError(f"{flag_name(name)} {' '.join(unknown)}: choose from {' '.join(map(str, allowed))}")
    if "classifiers" in config["PARTS"] and "train" not in config["PARTS"]:
        raise UserError("--parts classifiers reads the checkpoints the train part makes: add train")
    check, device, started = Checks(), config["DEVICE"], time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        work = ensure_writable_dir(config["WORK_DIR"] or temporary).resolve()  # the scripts run from the repository
        timings, samples = {"num_samples": config["NUM_SAMPLES"]}, []
        if "train" in config["PARTS"]:
            timings.update(train_part(config, work, device, check))
        if "resume" in config["PARTS"]:
            resume_part(config, work, device, check)
        if "classifiers" in config["PARTS"]:
            timings["classifier_step_s"] = classifier_part(config, work, device, check)
        if "sample" in config["PARTS"]:
            sampled = sample_part(config, work, device, check)
            timings["evaluate_s"], samples = sampled["evaluate_s"], sampled["samples"]
    complete = all(key in timings for key in ["train_step_s", "classifier_step_s", "evaluate_s"]) \
        and all(timings["classifier_step_s"].values())
    report = {"device": device_name(device), "torch": torch.__version__, "tiny": config["TINY"],
              "seconds": round(time.perf_counter() - started, 1), "timings": timings,
              "estimate": estimate(timings) if complete else None, "checks": check.results,
              "samples": samples}
    out = ensure_writable_dir(config["OUT_DIR"]) / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [result["check"] for result in check.results if not result["passed"]]
    print(f"\n{report['device']}: {len(check.results) - len(failed)} of {len(check.results)} checks passed in "
          f"{report['seconds']:.0f} s; wrote {out}")
    if report["estimate"]:
        print("paper scale, estimated: " + ", ".join(f"{gpus} {hours:.1f} h" for gpus, hours in
                                                     report["estimate"]["wall_time_h"].items())
              + f"; critical path {report['estimate']['critical_path_h']:.1f} h")
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)
    return report


if __name__ == "__main__":
    run_main(main)
