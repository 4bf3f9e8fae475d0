"""Wall time per sample against the reference's sampling, at matched quality: the 3-way composition.

Samples MN (1,2,3) at λ = (10, 75) from the committed checkpoints twice and evaluates both sets:
  - as the reference samples it: the PC sampler, 500 steps (1,000 score evaluations per sample), eager
    float32, batch 64, the reference's last Euler step. The reference implementation's own code is not
    installed here and is never vendored; its sampler is what samplers/pc_sampler.py reimplements;
  - on this project's fastest path: each of FAST_PATHS (sample-script flags), of which the faster counts.
Prints each one's wall time per sample (sampling only, from the outputs' .json), its support precision,
the speed ratio and whether the fast path's precision lies inside or above the reference run's 95%
interval, with the CPU's capability; writes OUT_DIR/reference_speed.json.

    python benchmarks/reference_speed.py                   # 128 samples each (about 6 minutes on 2 cores)
    python benchmarks/reference_speed.py --num-samples 64
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cli import UserError, override_globals, run_main  # noqa: E402
from showcase import SHOWCASE, sample_command  # noqa: E402
from utils import composition_stem  # noqa: E402

NUM_SAMPLES = 128
CKPT_DIR = "checkpoints"
REFERENCE = ["--sampler", "pc", "--num-steps", "500", "--precision", "float32", "--batch-size", "64",
             "--no-denoise-last-step", "--no-compile"]
FAST_PATHS = [
    "--sampler heun-churn --num-steps 40 --precision auto --batch-size 128 --denoise-last-step",
    "--sampler heun-churn --num-steps 40 --precision auto --batch-size 128 --denoise-last-step --compile",
]
SEED = 0
OUT_DIR = "benchmarks/results/reference_speed"

OVERRIDABLE = ["NUM_SAMPLES", "CKPT_DIR", "FAST_PATHS", "SEED", "OUT_DIR"]
ROW = next(row for row in SHOWCASE if row[2] == [1, 2, 3])


def sample_and_evaluate(config, name, flags):
    script, models, observations, scales = ROW
    out_dir = Path(config["OUT_DIR"]) / name
    command = sample_command(script, models, observations, scales, Path(config["CKPT_DIR"]), out_dir,
                             config["NUM_SAMPLES"], [*flags, "--seed", str(config["SEED"])])
    stem = out_dir / composition_stem(models, observations, scales)
    for argv in (command, ["evaluate_composition.py", f"{stem}.pt"]):
        print(f"running {' '.join(argv)}", flush=True)
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"{argv[0]} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    settings = json.loads(Path(f"{stem}.json").read_text())
    report = json.loads(Path(f"{stem}_eval.json").read_text())
    return {"name": name, "flags": flags, "evaluations": settings["score_evaluations_per_sample"],
            "precision": settings["precision"], "seconds_per_sample": settings["sampling_seconds"] / report["num_samples"],
            "support_precision": report["support_precision"], "support_precision_ci": report["support_precision_ci"],
            "unrecognisable": report["unrecognisable_share"]}


def main(argv=None):
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv, positive=["NUM_SAMPLES"])
    reference = sample_and_evaluate(config, "reference", REFERENCE)
    fast = [sample_and_evaluate(config, f"fast_{k}", flags.split()) for k, flags in enumerate(config["FAST_PATHS"])]
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
    out = Path(config["OUT_DIR"])
    (out / "reference_speed.json").write_text(json.dumps(
        {"cpu_capability": capability, "threads": torch.get_num_threads(), "num_samples": config["NUM_SAMPLES"],
         "runs": [reference, *fast], "fastest": fastest["name"], "speedup": ratio, "quality_matched": matched},
        indent=2) + "\n")
    print(f"wrote {out / 'reference_speed.json'}")


if __name__ == "__main__":
    run_main(main)
