"""Wall time per sample against the reference's sampling, at matched quality: the 3-way composition.

Samples MN (1,2,3) at λ = (10, 75) from the committed checkpoints twice and evaluates both sets:
  - as the reference samples it: the PC sampler, 500 steps (1,000 score evaluations per sample), eager
    float32, batch 64, the reference's last Euler step. The reference implementation's own code is not
    installed here and is never vendored; its sampler is what samplers/pc_sampler.py reimplements;
  - on this project's fastest path: each of FAST_FLAGS (sample-script flags), of which the faster counts.
Prints each one's wall time per sample (sampling only, from the outputs' .json), its support precision,
the speed ratio and whether the fast path's precision lies inside or above the reference run's 95%
interval, with the CPU's capability; writes OUT_DIR/reference_speed.json.

    python benchmarks/reference_speed.py                   # 128 samples each
    python benchmarks/reference_speed.py --num-samples 64
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sculpting.artefacts import composition_stem, evaluation_report  # noqa: E402
from sculpting.cli import configure, run_main, run_script  # noqa: E402
from sculpting.showcase import SHOWCASE, sample_command  # noqa: E402

NUM_SAMPLES = 128  # of each run
EXPORT_DIR = "checkpoints"  # under the reference file names: the shipped checkpoints, or a reproduce.py EXPORT_DIR
# The reference's sampling, as sample-script flags.
REFERENCE = ["--sampler", "pc", "--num-steps", "500", "--precision", "float32", "--batch-size", "64",
             "--no-denoise-last-step", "--compile", "off"]
FAST_FLAGS = [  # each one's sample-script flags
    "--sampler heun-churn --num-steps 40 --precision float32 --batch-size 128 --denoise-last-step",
    "--sampler heun-churn --num-steps 40 --precision auto --batch-size 128 --denoise-last-step",
    "--sampler heun-churn --num-steps 40 --precision auto --batch-size 128 --denoise-last-step --compile on",
]
SEED = 0
OUT_DIR = "benchmarks/results/reference_speed"

ROW = next(row for row in SHOWCASE if row[2] == [1, 2, 3])


def sample_and_evaluate(config, name, flags):
    script, models, observations, scales = ROW
    out_dir = Path(config["OUT_DIR"]) / name
    command = sample_command(script, models, observations, scales, Path(config["EXPORT_DIR"]), out_dir,
                             config["NUM_SAMPLES"], [*flags, "--seed", str(config["SEED"])])
    stem = out_dir / composition_stem(models, observations, scales, config["SEED"])
    for argv in (command, ["evaluate_composition.py", f"{stem}.pt"]):
        print(f"running {' '.join(argv)}", flush=True)
        run_script(argv)
    settings = json.loads(Path(f"{stem}.json").read_text())
    report = json.loads((stem.parent / evaluation_report(stem.name)).read_text())
    return {"name": name, "flags": flags, "evaluations": settings["score_evaluations_per_sample"],
            "precision": settings["precision"], "fast_path": settings.get("fast_path", {}).get("ran"),
            "seconds_per_sample": settings["sampling_seconds"] / report["num_samples"],
            "support_precision": report["support_precision"], "support_precision_ci": report["support_precision_ci"],
            "unrecognisable": report["unrecognisable_share"]}


def compile_ratio(runs):
    """Seconds per sample compiled over eager, from a run with --compile on (that compiled) and the run whose flags
    are the same without it; None where there is no such pair."""
    for compiled in runs:
        flags = " ".join(compiled["flags"])
        if "--compile on" in flags and compiled["fast_path"] == f"compiled {compiled['precision']}":
            eager = [run for run in runs if " ".join(run["flags"]) == flags.replace(" --compile on", "")]
            if eager:
                return compiled["seconds_per_sample"] / eager[0]["seconds_per_sample"]
    return None


def main(argv=None):
    config = configure(globals(), argv, exclude=["REFERENCE"])
    reference = sample_and_evaluate(config, "reference", REFERENCE)
    fast = [sample_and_evaluate(config, f"fast_{k}", flags.split()) for k, flags in enumerate(config["FAST_FLAGS"])]
    fastest = min(fast, key=lambda run: run["seconds_per_sample"])
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"\nMN (1,2,3) at λ = (10, 75), {config['NUM_SAMPLES']} samples each; CPU capability {capability}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'run':<10} {'evals':>5} {'precision':>9} {'s / sample':>10} {'support precision (95% CI)':>28}")
    for run in [reference, *fast]:
        lo, hi = run["support_precision_ci"]
        print(f"{run['name']:<10} {run['evaluations']:>5} {run['precision']:>9} {run['seconds_per_sample']:>10.3f} "
              f"{run['support_precision']:>10.1%} ({lo:.1%}–{hi:.1%})   {' '.join(run['flags'])}")
    ratio = reference["seconds_per_sample"] / fastest["seconds_per_sample"]
    matched = fastest["support_precision"] >= reference["support_precision_ci"][0]
    print(f"speed-up per sample of {fastest['name']} over the reference's sampling: {ratio:.1f}x; its support "
          f"precision {'is' if matched else 'is NOT'} inside or above the reference run's 95% interval")
    compiled_over_eager = compile_ratio(fast)
    if compiled_over_eager is not None:
        print(f"compiled/eager time per sample (CPU capability {capability}): {compiled_over_eager:.2f}: "
              f"--compile auto keeps {'compiled' if compiled_over_eager < 1 else 'eager'}")
    out = Path(config["OUT_DIR"])
    (out / "reference_speed.json").write_text(json.dumps(
        {"cpu_capability": capability, "compiled_over_eager": compiled_over_eager, "threads": torch.get_num_threads(), "num_samples": config["NUM_SAMPLES"],
         "runs": [reference, *fast], "fastest": fastest["name"], "speedup": ratio, "quality_matched": matched},
        indent=2) + "\n")
    print(f"wrote {out / 'reference_speed.json'}")


if __name__ == "__main__":
    run_main(main)
