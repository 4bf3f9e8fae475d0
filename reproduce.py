"""Run the whole pipeline in order at a named scale, skipping what is already done.

    python reproduce.py --scale cpu     # 2-core CPU: narrower networks, trajectory pools, fewer sampler steps
    python reproduce.py --scale paper   # the reference settings (GPU)

Stages: base models (M1, M2, MN1, MN2, MN3, subdigits 1 and 2) -> export under the
reference names -> 2-model classifiers (M1/M2 and 1/2) -> 3-way joint -> 3-way
conditional -> samples of the showcase compositions -> evaluation -> results table.
Training runs write to RUN_DIR; the final checkpoints are exported to EXPORT_DIR
under the reference file names (half precision at the cpu scale), and every later
stage reads them from there, so the results describe exactly the exported files.
A stage whose outputs exist is skipped; an interrupted base-model run resumes.
Stage wall times go to <RUN_DIR>/timings.json; grids and evaluations to results/<scale>/,
summarised in results/<scale>.md.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from cli import UserError, override_globals, run_main
from models.fast_paths import PRECISIONS
from utils import atomic_save, composition_stem, ensure_writable_dir, half_state_dict

SCALE = "cpu"
RUN_DIR = None  # None: runs/<SCALE>
EXPORT_DIR = None  # None: checkpoints (cpu) or checkpoints/paper (paper)
OUT_DIR = None  # None: results/<SCALE> (grids and evaluations are committed; the .pt samples are not)
NUM_SAMPLES = 512
DRY_RUN = False
SUMMARY_ONLY = False  # only rewrite results/<SCALE>.md from the evaluations that exist
PRECISION = "float32"  # of the showcase samples; "bfloat16" (autocast) is faster on CPU, see README before using it
ONLY = None  # a regular expression: run only the stages whose name it matches (e.g. "sample" or "_g1$")

REFERENCE_EPOCH = 195  # downstream scripts load gen_{GEN_IDX}_ckpt_195.pth

SCALES = {
    "cpu": {
        "base_flags": ["--preset", "cpu"], "base_final_epoch": 11, "half_precision": True,
        # Trajectory pools: sampling is ~85% of classifier training on CPU, so one pool serves many steps.
        "classifier_flags": ["--trajectory-steps", "100", "--pool-size", "256", "--pool-reuse", "100",
                             "--batch-size", "64", "--classifier-channels", "16", "32", "--test-samples", "100",
                             "--test-every", "50", "--ckpt-every", "50"],
        # 3-way: every pooled trajectory serves about 12 minibatches (reuse 50 x batch 64 / pool 256). Serving
        # each 87 times over 700 steps (reuse 350) collapsed the joint table onto its diagonal (README).
        "three_way_flags": ["--trajectory-steps", "100", "--pool-size", "256", "--pool-reuse", "50",
                            "--batch-size", "64", "--classifier-channels", "32", "48", "--test-samples", "100",
                            "--test-every", "50", "--ckpt-every", "50"],
        "conditional_flags": ["--trajectory-steps", "100", "--pool-size", "64", "--pool-reuse", "50",
                              "--batch-size", "16", "--classifier-channels", "32", "32", "--test-samples", "32",
                              "--test-every", "25", "--ckpt-every", "25"],
        "classifier_steps": {"3way_classifier": 300, "3way_conditional_classifier": 100},
        # Fewer steps are not an option: M1/M2 (1,1) at λ = 20 scored 3% support precision at 100 steps,
        # 94% at 250 and 98% at 500 (README).
        "sample_flags": ["--num-steps", "500", "--batch-size", "128", "--compile"],
    },
    "paper": {
        "base_flags": [], "base_final_epoch": REFERENCE_EPOCH, "half_precision": False,
        "classifier_flags": [], "three_way_flags": [], "conditional_flags": [], "classifier_steps": {},
        "sample_flags": ["--num-steps", "500", "--batch-size", "128"],
    },
}

# (sample script, models, observations, guidance scales)
SHOWCASE = [  # most important first: an interrupted run has these
    ("sample_composition.py", ["M1", "M2"], [1, 2], [20.0]),
    ("sample_composition.py", ["M1", "M2"], [1, 1], [20.0]),
    ("sample_composition.py", ["M1", "M2"], [2, 2], [20.0]),
    ("sample_composition.py", ["1", "2"], [1, 2], [20.0]),
    ("sample_composition.py", ["M1", "M2"], [1, 2], [1.0]),
    ("sample_composition.py", ["M1", "M2"], [1, 1], [1.0]),
    ("sample_composition.py", ["M1", "M2"], [2, 2], [1.0]),
    ("sample_composition.py", ["1", "2"], [1, 2], [1.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [1, 2, 3], [10.0, 75.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [1, 1, 1], [10.0, 75.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [2, 2, 3], [10.0, 75.0]),
    ("sample_3way_composition.py", ["MN1", "MN2", "MN3"], [3, 3, 3], [10.0, 75.0]),
]

OVERRIDABLE = ["SCALE", "RUN_DIR", "EXPORT_DIR", "OUT_DIR", "NUM_SAMPLES", "DRY_RUN", "SUMMARY_ONLY", "PRECISION",
               "ONLY"]


class Pipeline:
    """Runs stages as subprocesses of this Python, timing each and skipping finished ones."""

    def __init__(self, run_dir: Path, dry_run: bool, only: str = None):
        self.run_dir, self.dry_run, self.only = run_dir, dry_run, only
        self.timings_path = run_dir / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}

    def stage(self, name, outputs, command=None, action=None):
        """Run `command` (argv after the interpreter) or `action()` unless every path in `outputs` exists."""
        if self.only is not None and not re.search(self.only, name):
            return
        if all(Path(p).exists() for p in outputs):
            print(f"[skip] {name}: done ({outputs[0]})", flush=True)
            return
        print(f"[run ] {name}" + (f": {' '.join(command)}" if command else ""), flush=True)
        if self.dry_run:
            return
        start = time.time()
        if command:
            result = subprocess.run([sys.executable, *command])
            if result.returncode != 0:
                raise UserError(f"stage '{name}' failed (exit {result.returncode}); fix it and rerun: finished stages are kept")
        else:
            action()
        # Re-read first: another run of this script (e.g. with another --only) may have added stages meanwhile.
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.timings[name] = round(time.time() - start, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=2) + "\n")
        print(f"[done] {name} in {self.timings[name]:.0f} s", flush=True)


def export_checkpoint(source: Path, target: Path, half: bool):
    state = torch.load(source, map_location="cpu", weights_only=True)
    atomic_save(half_state_dict(state) if half else state, target)


def sample_command(script, models, observations, scales, export_dir, out_dir, num_samples, flags):
    command = [script, "--ckpt-dir", str(export_dir), "--out-dir", str(out_dir), "--num-samples", str(num_samples),
               *flags]
    for k, (model, y) in enumerate(zip(models, observations), start=1):
        command += [f"--gen-idx-{k}", model, f"--y-{k}", str(y)]
    command += ["--guidance", f"{scales[0]:g}"]
    if script == "sample_3way_composition.py":
        command += ["--guidance-3", f"{scales[1]:g}",
                    "--classifier-ckpt", str(export_dir / "3way_classifier_ckpt_700.pth"),
                    "--conditional-classifier-ckpt", str(export_dir / "3way_conditional_classifier_ckpt_200.pth")]
    else:
        name = "subdigits_classifier" if models == ["1", "2"] else "classifier"
        command += ["--classifier-ckpt", str(export_dir / f"{name}_ckpt_200.pth")]
    return command


def write_summary(out_dir: Path, scale: str, timings: dict) -> Path:
    """results/<scale>.md: one evaluation row per showcase composition (pending ones marked), then stage times."""
    rows = ["| composition | λ | n | support precision (95% CI) | TV to exact target (95% CI) | TV of n exact draws | "
            "unrecognisable | grid |", "|---|---|---|---|---|---|---|---|"]
    for _, models, observations, scales in SHOWCASE:
        stem = composition_stem(models, observations, scales)
        name = f"{'/'.join(models)} y={tuple(observations)} | {', '.join(f'{s:g}' for s in scales)}"
        report_path = out_dir / f"{stem}_eval.json"
        if not report_path.exists():
            rows.append(f"| {name} | – | pending | | | | |")
            continue
        report = json.loads(report_path.read_text())
        settings_path = out_dir / f"{stem}.json"
        precision = json.loads(settings_path.read_text()).get("precision", "float32") if settings_path.exists() \
            else "float32"
        if precision != "float32":
            name += f" ({precision})"
        lo, hi = report["support_precision_ci"]
        tv_lo, tv_hi = report["tv_distance_ci"]
        rows.append(f"| {name} | {report['num_samples']} | {report['support_precision']:.1%} ({lo:.1%}–{hi:.1%}) | "
                    f"{report['tv_distance']:.3f} ({tv_lo:.3f}–{tv_hi:.3f}) | "
                    f"{report['tv_of_exact_samples']['mean']:.3f} | {report['unrecognisable_share']:.1%} | "
                    f"[png]({Path(os.path.relpath(out_dir, 'results')) / stem}.png) |")
    times = ["| stage | wall time (s) |", "|---|---|"] + [f"| {name} | {seconds:.0f} |"
                                                       for name, seconds in timings.items() if seconds >= 1]
    path = Path("results") / f"{scale}.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"Produced by `python reproduce.py --scale {scale}`.\n\n" + "\n".join(rows)
                    + "\n\nStage wall times (this machine):\n\n" + "\n".join(times) + "\n")
    # README lives at the root: its grid links start at out_dir, not at results/.
    links = f"]({Path(os.path.relpath(out_dir, 'results'))}/", f"]({Path(os.path.relpath(out_dir))}/"
    update_readme(Path("README.md"), f"results:{scale}", "\n".join(rows).replace(*links))
    update_readme(Path("README.md"), f"times:{scale}", "\n".join(times))
    return path


def update_readme(readme: Path, marker: str, text: str) -> None:
    """Replace what lies between <!-- marker --> and <!-- /marker --> in README, if it has them."""
    if not readme.exists():
        return
    content = readme.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start in content and end in content:
        before, rest = content.split(start, 1)
        after = rest.split(end, 1)[1]
        readme.write_text(f"{before}{start}\n{text}\n{end}{after}")


def main(argv=None):
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv, positive=["NUM_SAMPLES"],
                     choices={"SCALE": list(SCALES), "PRECISION": list(PRECISIONS)})
    scale, settings = config["SCALE"], SCALES[config["SCALE"]]
    run_dir = ensure_writable_dir(config["RUN_DIR"] or f"runs/{scale}")
    export_dir = ensure_writable_dir(config["EXPORT_DIR"] or ("checkpoints" if scale == "cpu" else "checkpoints/paper"))
    out_dir = ensure_writable_dir(config["OUT_DIR"] or f"results/{scale}")
    pipeline = Pipeline(run_dir, config["DRY_RUN"], config["ONLY"])
    if config["SUMMARY_ONLY"]:
        print(write_summary(out_dir, scale, pipeline.timings).read_text())
        return

    def train_base_model(g):
        final = run_dir / f"gen_{g}_ckpt_{settings['base_final_epoch']}.pth"
        exported = export_dir / f"gen_{g}_ckpt_{REFERENCE_EPOCH}.pth"
        resume = ["--resume"] if (run_dir / f"gen_{g}_train_state.pth").exists() else ["--overwrite"]
        pipeline.stage(f"base {g}", [final], ["train_diffusion.py", "--gen-idx", g, "--ckpt-dir", str(run_dir),
                                              *settings["base_flags"], *resume])
        pipeline.stage(f"export {g}", [exported],
                       action=lambda: export_checkpoint(final, exported, settings["half_precision"]))

    def train_classifier(name, classifier_name, reference_steps, command):
        """Train for the scale's number of steps; export under the reference step's file name."""
        steps = settings["classifier_steps"].get(classifier_name, reference_steps)
        trained = run_dir / f"{classifier_name}_ckpt_{steps}.pth"
        exported = export_dir / f"{classifier_name}_ckpt_{reference_steps}.pth"
        pipeline.stage(name, [trained], [*command, "--steps", str(steps), "--gen-ckpt-dir", str(export_dir),
                                         "--ckpt-dir", str(run_dir), "--overwrite"])
        pipeline.stage(f"export {name}", [exported],
                       action=lambda: export_checkpoint(trained, exported, settings["half_precision"]))

    # In dependency order: each group's base models, then the classifiers that need them.
    for g in ["M1", "M2"]:
        train_base_model(g)
    train_classifier("classifier M1/M2", "classifier", 200, ["train_classifier.py", *settings["classifier_flags"]])
    for g in ["MN1", "MN2", "MN3"]:
        train_base_model(g)
    train_classifier("3-way classifier", "3way_classifier", 700,
                     ["train_3way_classifier.py", *settings["three_way_flags"]])
    train_classifier("3-way conditional classifier", "3way_conditional_classifier", 200,
                     ["train_3way_conditional_classifier.py", *settings["conditional_flags"],
                      "--joint-classifier-path", str(export_dir / "3way_classifier_ckpt_700.pth")])
    for g in ["1", "2"]:
        train_base_model(g)
    train_classifier("classifier 1/2", "subdigits_classifier", 200,
                     ["train_classifier.py", "--gen-idx-1", "1", "--gen-idx-2", "2",
                      "--classifier-name", "subdigits_classifier", *settings["classifier_flags"]])

    for script, models, observations, scales in SHOWCASE:
        stem = composition_stem(models, observations, scales)
        pipeline.stage(f"sample {stem}", [out_dir / f"{stem}.pt"],
                       sample_command(script, models, observations, scales, export_dir, out_dir,
                                      config["NUM_SAMPLES"],
                                      [*settings["sample_flags"], "--precision", config["PRECISION"]]))
        pipeline.stage(f"evaluate {stem}", [out_dir / f"{stem}_eval.json"],
                       ["evaluate_composition.py", str(out_dir / f"{stem}.pt")])

    if not config["DRY_RUN"]:
        print(write_summary(out_dir, scale, pipeline.timings).read_text())


if __name__ == "__main__":
    run_main(main)
