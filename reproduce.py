"""Run the whole pipeline at a named scale, skipping what is already done.

    python reproduce.py --scale cpu     # 2-core CPU: narrower networks, trajectory pools, fast sampling paths
    python reproduce.py --scale paper   # the reference settings (GPU)

Stages: base models (MN1, MN2, MN3, M1, M2, subdigits 1 and 2) -> export under the
reference names -> 3-way joint -> 3-way conditional, and the 2-model classifiers
(M1/M2 and 1/2) -> samples of the showcase compositions -> evaluation -> results table.
Each stage starts as soon as the stages it reads from have finished; JOBS of them
run side by side (the cpu scale: 2, each on one thread; progress lines every minute
show each running stage's latest progress bar, whose full output is in
<RUN_DIR>/logs/). Training runs write to RUN_DIR; the final checkpoints are exported
to EXPORT_DIR under the reference file names (half precision at the cpu scale), and
every later stage reads them from there, so the results describe exactly the
exported files. A stage whose outputs exist is skipped; an interrupted base-model
run resumes; a stage whose inputs were just remade runs again. Stage wall times and
the whole run's go to <RUN_DIR>/timings.json; grids and evaluations to OUT_DIR
(results/<scale>/), summarised in <OUT_DIR>.md. Another SEED is an independent
replicate of the whole run, in directories of its own:

    python reproduce.py --scale cpu --seed 1   # runs/cpu_seed1, results/cpu_seed1
"""
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import train_diffusion
from cli import UserError, override_globals, run_main
from custom_datasets import ensure_mnist
from models.fast_paths import PRECISION_CHOICES
from samplers import SAMPLERS
from showcase import SHOWCASE, sample_command
from utils import atomic_save, composition_stem, ensure_writable_dir, half_state_dict, update_markers

SCALE = "cpu"
RUN_DIR = None  # None: runs/<SCALE> (runs/<SCALE>_seed<SEED> for SEED > 0)
EXPORT_DIR = None  # None: checkpoints (cpu) or checkpoints/paper (paper); <RUN_DIR>/checkpoints for SEED > 0
OUT_DIR = None  # None: results/<SCALE> (results/<SCALE>_seed<SEED> for SEED > 0; the .pt samples are not committed)
NUM_SAMPLES = 512
NUM_STEPS = 0  # sampler steps of every showcase sample; 0: the scale's for the sampler (CPU_STEPS, PAPER_STEPS)
DRY_RUN = False
SUMMARY_ONLY = False  # only rewrite results/<SCALE>.md from the evaluations that exist
PRECISION = None  # of the showcase samples; None: the scale's (float32; at the cpu scale auto: bfloat16 where native)
SAMPLER = None  # of every sampling stage (showcase rows, base models alone, classifier pools); None: the scale's
# (cpu: heun-churn; paper: pc)
DENOISE_LAST_STEP = None  # of the showcase samples (sample scripts' --denoise-last-step); None: the scale's
SEED = 0  # of every training and sampling stage: another seed is an independent replicate of the whole run
JOBS = 0  # stages run in parallel, each with cpu_count // JOBS threads; 0: the scale's
ONLY = None  # a regular expression: run only the stages whose name it matches (e.g. "sample" or "_g1$")

WALL_TIME_KEY = "whole run (wall time of the last reproduce.py call)"
REFERENCE_EPOCH = 195  # downstream scripts load gen_{GEN_IDX}_ckpt_195.pth

# Classifier trajectory pools at the cpu scale: on the fast sampling path, ending with a denoising step.
POOL_SAMPLING = ["--compile", "--precision", "auto", "--denoise-last-step"]
# Steps of each sampling stage, by sampler: the showcase rows (by number of base models), each base model alone,
# the joint classifiers' pools (base-model samples) and the conditional classifier's (guided compositions).
# PC: the pools of base-model samples are as good at 100 steps as at 250 with the denoised last step, while
# the guided compositions need 250 (on 100-step pools MN (2,2,3) fell to 5%), and the 3-way rows the
# reference's 500 (docs/cpu_recipe_history.md). heun-churn: 40 noise levels (79 score evaluations per sample)
# meet the PC rows (benchmarks/sampler_quality.py; README, "Sampling").
CPU_STEPS = {
    "pc": {"samples": {2: 250, 3: 500}, "individual": 250, "base_pools": 100, "composition_pools": 250},
    "heun-churn": {"samples": {2: 40, 3: 40}, "individual": 40, "base_pools": 40, "composition_pools": 40},
}
CPU_STEPS["heun"] = CPU_STEPS["heun-churn"]
PAPER_STEPS = {sampler: {"samples": {2: 500, 3: 500}, "individual": 500, "base_pools": 500, "composition_pools": 500}
               for sampler in SAMPLERS}

SCALES = {
    "cpu": {
        "base_preset": "cpu-24", "half_precision": True,  # train_diffusion.py --preset of every base model
        # The grey models 1 and 2 train twice the preset's 24 epochs: their malformed digits bounded the subdigits
        # row (24 epochs: 11.7% of model 1's samples unrecognisable, the row at λ = 20 69.7%; 48 epochs: 5.9% and
        # 87.3%; README). The coloured models, read mostly by colour, meet their targets at 24.
        "base_epochs": {"1": 48, "2": 48},
        # Trajectory pools: sampling is most of classifier training on CPU, so one pool serves many steps. 512
        # trajectories per model serving 50 steps each: 4x the distinct trajectories of the 250-step pools
        # (256 serving 100) in about their time (the 1/2 row at λ = 20: 67.8% against 63.1%; README).
        "classifier_flags": ["--pool-size", "512", "--pool-reuse", "50",
                             "--batch-size", "64", "--classifier-channels", "16", "32", "--test-samples", "100",
                             "--test-every", "50", "--ckpt-every", "50"],
        # The 1/2 classifier has to tell digits apart: with the reference's 0.97 decay per step the step size
        # is spent by step 100 and its marginals on test digits were off by 0.24; 0.99 halved that (README).
        "subdigits_classifier_flags": ["--lr-decay", "0.99"],
        # 3-way: every pooled trajectory serves about 12 minibatches (reuse 50 x batch 64 / pool 256). Serving
        # each 87 times over 700 steps (reuse 350) collapsed the joint table onto its diagonal (README). The
        # non-terminal loss trains on the reference's 10% of the steps with t <= 0.7: 7 states per trajectory.
        "three_way_flags": ["--pool-size", "256", "--pool-reuse", "50",
                            "--batch-size", "64", "--classifier-channels", "32", "48", "--test-samples", "100",
                            "--test-every", "50", "--ckpt-every", "50"],
        "conditional_flags": ["--pool-size", "64", "--pool-reuse", "50",
                              "--batch-size", "16", "--classifier-channels", "32", "32", "--test-samples", "32",
                              "--test-every", "25", "--ckpt-every", "25"],
        "classifier_steps": {"3way_classifier": 300, "3way_conditional_classifier": 100},
        "sampler": "heun-churn", "steps": CPU_STEPS, "pool_flags": POOL_SAMPLING,
        "sample_flags": ["--batch-size", "128", "--compile"], "precision": "auto",
        # Each base model alone, for the rows' plug-in targets (evaluate_composition --base-evaluations).
        "individual_samples": 256,
        "denoise_last_step": True,  # the last step denoised: cleaner digits from well-trained models (README)
        "jobs": 2,  # two one-thread stages at a time on a 2-core machine
    },
    "paper": {
        "base_preset": "paper", "half_precision": False, "base_epochs": {},
        "classifier_flags": [], "subdigits_classifier_flags": [], "three_way_flags": [], "conditional_flags": [],
        "classifier_steps": {}, "sampler": "pc", "steps": PAPER_STEPS, "pool_flags": [],
        "sample_flags": ["--batch-size", "128"], "individual_samples": 512,
        "precision": "float32", "denoise_last_step": False, "jobs": 1,
    },
}

OVERRIDABLE = ["SCALE", "RUN_DIR", "EXPORT_DIR", "OUT_DIR", "NUM_SAMPLES", "NUM_STEPS", "DRY_RUN", "SUMMARY_ONLY",
               "PRECISION", "SAMPLER", "DENOISE_LAST_STEP", "SEED", "JOBS", "ONLY"]


@dataclass
class Stage:
    name: str
    outputs: list  # the stage is done when all of these exist
    command: list = None  # argv after the interpreter, run as a subprocess
    action: Callable = None  # or a quick function run in this process (exports)
    after: tuple = ()  # names of the stages that must finish first


class Pipeline:
    """Stages declared in priority order run as soon as the stages they need have finished, up to `jobs`
    subprocesses at a time, each with cpu_count // jobs threads (on a small CPU two one-thread jobs get more
    done than one two-thread job). Each stage is timed; stages whose outputs exist are skipped."""

    STATUS_EVERY = 60  # seconds between progress lines while stages run in parallel

    def __init__(self, run_dir: Path, dry_run: bool, only: str = None, jobs: int = 1):
        self.run_dir, self.dry_run, self.only, self.jobs = run_dir, dry_run, only, jobs
        self.timings_path = run_dir / "timings.json"
        self.timings = self._read_timings()
        self.stages = []

    def _read_timings(self):
        return json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}

    def _record(self, name, seconds):
        # Re-read first: another run of this script (e.g. with another --only) may have added stages meanwhile.
        self.timings = self._read_timings()
        self.timings[name] = round(seconds, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=2) + "\n")

    def stage(self, name, outputs, command=None, action=None, after=()):
        """Declare a stage; returns its name, for the `after` of later stages."""
        self.stages.append(Stage(name, [Path(p) for p in outputs], command, action, tuple(after)))
        return name

    def selects(self, name: str) -> bool:
        """Whether --only lets the stage of this name run."""
        return self.only is None or re.search(self.only, name) is not None

    def run(self):
        """A stage is skipped when its outputs exist and none of the stages it reads from ran in this call
        (outputs made from older inputs are redone)."""
        selected = [s for s in self.stages if self.selects(s.name)]
        done = {s.name for s in self.stages if s not in selected}  # outside --only: taken as done
        ran = set()  # the stages that ran (or would run, in a dry run) in this call
        if self.dry_run:
            for s in selected:
                if self._up_to_date(s, ran):
                    print(f"[skip] {s.name}: done ({s.outputs[0]})", flush=True)
                else:
                    ran.add(s.name)
                    print(f"[run ] {s.name}" + (f": {' '.join(s.command)}" if s.command else ""), flush=True)
            return
        waiting, started, running, failed, last_status = selected, time.time(), {}, [], time.time()
        while waiting or running:
            # Skips and quick actions first, until none is left: they can make a higher-priority stage
            # ready, which must get the next free lane before the lower-priority ones already ready.
            ready = [s for s in waiting if not failed and all(d in done for d in s.after)]
            up_to_date = {s.name for s in ready if self._up_to_date(s, ran)}
            quick = next((s for s in ready if s.action is not None or s.name in up_to_date), None)
            if quick is not None:
                waiting.remove(quick)
                if quick.name in up_to_date:
                    done.add(quick.name)
                    print(f"[skip] {quick.name}: done ({quick.outputs[0]})", flush=True)
                else:
                    print(f"[run ] {quick.name}", flush=True)
                    begin = time.time()
                    quick.action()
                    self._finish(quick, begin, done, ran)
                continue
            for s in ready[:max(0, self.jobs - len(running))]:
                waiting.remove(s)
                running[s.name] = (s, *self._launch(s))
            for name, (s, process, begin, log) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode != 0:
                    failed.append(f"'{name}' (exit {process.returncode}{f', log {log}' if log else ''})")
                    print(f"[fail] {name}", flush=True)
                else:
                    self._finish(s, begin, done, ran)
            if running and time.time() - last_status >= self.STATUS_EVERY and self.jobs > 1:
                last_status = time.time()
                print(f"[....] {time.time() - started:.0f} s: " + "; ".join(
                    f"{name}: {last_progress(log)}" for name, (_, _, _, log) in running.items()), flush=True)
            if failed and not running:
                raise UserError(f"stage {', '.join(failed)} failed; fix it and rerun: finished stages are kept")
            if waiting and not running and not any(all(d in done for d in s.after) for s in waiting):
                raise UserError(f"stage '{waiting[0].name}' waits for stages that will not run; check --only")
            time.sleep(0.5 if running else 0)
        if ran:
            self._record(WALL_TIME_KEY, time.time() - started)
            print(f"[done] {len(ran)} stages in {self.timings[WALL_TIME_KEY]:.0f} s of wall time", flush=True)

    @staticmethod
    def _up_to_date(s, ran):
        return all(p.exists() for p in s.outputs) and not any(d in ran for d in s.after)

    def _launch(self, s):
        """Start a stage's subprocess; with parallel jobs its output goes to a log file (progress lines show it)."""
        print(f"[run ] {s.name}: {' '.join(s.command)}", flush=True)
        if self.jobs == 1:
            return subprocess.Popen([sys.executable, *s.command]), time.time(), None
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        log = self.run_dir / "logs" / (re.sub(r"[^\w.-]+", "_", s.name) + ".log")
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, *s.command], stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, "OMP_NUM_THREADS": threads})
        return process, time.time(), log

    def _finish(self, s, begin, done, ran):
        self._record(s.name, time.time() - begin)
        done.add(s.name)
        ran.add(s.name)
        print(f"[done] {s.name} in {self.timings[s.name]:.0f} s", flush=True)


def last_progress(log: Path) -> str:
    """The latest progress line a stage wrote to its log: its outermost tqdm bar where it has nested ones
    (a nested bar's lines carry the cursor-up escape)."""
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 4000))
        lines = [line.strip() for line in re.split(r"[\r\n]", f.read().decode(errors="replace")) if line.strip()]
    outer = [line for line in lines if "\x1b[A" not in line]
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", (outer or lines or ["starting"])[-1])


def final_epoch(preset: str, epochs: int = None) -> int:
    """The epoch of the base-model checkpoint that is exported: the reference's 195, or the last epoch of a
    shorter run (the preset's epochs unless `epochs` overrides them)."""
    epochs = epochs or train_diffusion.PRESETS[preset].get("EPOCHS", train_diffusion.EPOCHS)
    return min(epochs - 1, REFERENCE_EPOCH)


def export_checkpoint(source: Path, target: Path, half: bool):
    state = torch.load(source, map_location="cpu", weights_only=True)
    atomic_save(half_state_dict(state) if half else state, target)


def write_summary(out_dir: Path, scale: str, timings: dict, seed: int = 0) -> Path:
    """<out_dir>.md beside out_dir (results/<scale>.md by default): one evaluation row per showcase composition
    (pending ones marked), then stage times; also the tables between the markers named after out_dir
    (<!-- results:cpu --> ... <!-- /results:cpu --> for results/cpu) in README and docs/*.md, where they have them."""
    rows = ["| composition | λ | steps | n | support precision (95% CI) | TV to exact target (95% CI) | "
            "TV of n exact draws | unrecognisable | plug-in target's support precision | grid |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for _, models, observations, scales in SHOWCASE:
        stem = composition_stem(models, observations, scales)
        name = f"{'/'.join(models)} y={tuple(observations)} | {', '.join(f'{s:g}' for s in scales)}"
        report_path = out_dir / f"{stem}_eval.json"
        if not report_path.exists():
            rows.append(f"| {name} | – | – | pending | | | | | |")
            continue
        report = json.loads(report_path.read_text())
        settings_path = out_dir / f"{stem}.json"
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        notes = [settings["precision"]] if settings.get("precision", "float32") != "float32" else []
        notes += ["last step denoised"] if settings.get("denoise_last_step") else []
        name += f" ({', '.join(notes)})" if notes else ""
        name += f" | {settings.get('num_steps', '?')}"
        lo, hi = report["support_precision_ci"]
        tv_lo, tv_hi = report["tv_distance_ci"]
        plug_in = f"{report['plug_in_target']['support_precision']:.1%}" if "plug_in_target" in report else "–"
        rows.append(f"| {name} | {report['num_samples']} | {report['support_precision']:.1%} ({lo:.1%}–{hi:.1%}) | "
                    f"{report['tv_distance']:.3f} ({tv_lo:.3f}–{tv_hi:.3f}) | "
                    f"{report['tv_of_exact_samples']['mean']:.3f} | {report['unrecognisable_share']:.1%} | "
                    f"{plug_in} | [png]({out_dir.name}/{stem}.png) |")
    timed = [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items() if seconds >= 1]
    times = "\n".join(["| stage | wall time (s) |", "|---|---|", *timed])
    path = out_dir.parent / f"{out_dir.name}.md"
    heading = "\n\nStage wall times (this machine):\n\n"
    previous = path.read_text() if path.exists() else ""
    times_section = f"{heading}{times}\n" if timed else ""
    if not timed and heading in previous:
        # A run dir without timings (--summary-only over rows sampled elsewhere, or a run dir since deleted)
        # keeps the times an earlier call measured.
        times_section = heading + previous.split(heading, 1)[1]
    command = f"python reproduce.py --scale {scale}" + (f" --seed {seed}" if seed else "")
    path.write_text(f"Written by `{command}` into `{Path(os.path.relpath(out_dir))}/` "
                    f"(README gives the full commands).\n\n" + "\n".join(rows) + (times_section or "\n"))
    for document in [Path("README.md"), *sorted(Path("docs").glob("*.md"))]:
        # A document's grid links start at its own folder (README: the root; docs/: one level down).
        links = f"]({out_dir.name}/", f"]({Path(os.path.relpath(out_dir, document.parent))}/"
        update_markers(document, f"results:{out_dir.name}", "\n".join(rows).replace(*links))
        if timed:
            update_markers(document, f"times:{out_dir.name}", times)
    return path


def main(argv=None):
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv, positive=["NUM_SAMPLES"],
                     choices={"SCALE": list(SCALES), "PRECISION": PRECISION_CHOICES + [None],
                              "SAMPLER": list(SAMPLERS) + [None]},
                     optional_bools=["DENOISE_LAST_STEP"])
    for name in ["JOBS", "NUM_STEPS"]:
        if config[name] < 0:
            raise UserError(f"--{name.lower().replace('_', '-')} must be >= 0 (0: the scale's default), "
                            f"got {config[name]}")
    if config["SEED"] < 0:
        raise UserError(f"--seed must be >= 0, got {config['SEED']}")
    scale, settings = config["SCALE"], SCALES[config["SCALE"]]
    # A replicate (another seed) gets directories of its own: in the default ones the finished seed-0 stages
    # would be skipped, and its checkpoints would replace the committed ones.
    replicate = f"{scale}_seed{config['SEED']}" if config["SEED"] else scale
    run_dir = ensure_writable_dir(config["RUN_DIR"] or f"runs/{replicate}")
    default_export = "checkpoints" if scale == "cpu" else "checkpoints/paper"
    export_dir = ensure_writable_dir(config["EXPORT_DIR"] or (run_dir / "checkpoints" if config["SEED"] else default_export))
    out_dir = ensure_writable_dir(config["OUT_DIR"] or f"results/{replicate}")
    jobs = config["JOBS"] or settings["jobs"]
    precision = config["PRECISION"] or settings["precision"]
    sampler = config["SAMPLER"] or settings["sampler"]
    steps_of = settings["steps"][sampler]

    def pool_flags(pools):
        return ["--sampler", sampler, "--trajectory-steps", str(steps_of[pools]), *settings["pool_flags"]]
    pipeline = Pipeline(run_dir, config["DRY_RUN"], config["ONLY"], jobs)
    seed = ["--seed", str(config["SEED"])]
    if config["SUMMARY_ONLY"]:
        print(write_summary(out_dir, scale, pipeline.timings, config["SEED"]).read_text())
        return

    def train_base_model(g):
        preset, epochs = settings["base_preset"], settings["base_epochs"].get(g)
        final = run_dir / f"gen_{g}_ckpt_{final_epoch(preset, epochs)}.pth"
        exported = export_dir / f"gen_{g}_ckpt_{REFERENCE_EPOCH}.pth"
        resume = ["--resume"] if (run_dir / f"gen_{g}_train_state.pth").exists() else ["--overwrite"]
        trained = pipeline.stage(f"base {g}", [final], ["train_diffusion.py", "--gen-idx", g, "--ckpt-dir",
                                                        str(run_dir), "--preset", preset, *seed, *resume,
                                                        *(["--epochs", str(epochs)] if epochs else [])])
        return pipeline.stage(f"export {g}", [exported], after=[trained],
                              action=lambda: export_checkpoint(final, exported, settings["half_precision"]))

    def train_classifier(name, classifier_name, reference_steps, command, after):
        """Train for the scale's number of steps; export under the reference step's file name."""
        steps = settings["classifier_steps"].get(classifier_name, reference_steps)
        trained = run_dir / f"{classifier_name}_ckpt_{steps}.pth"
        exported = export_dir / f"{classifier_name}_ckpt_{reference_steps}.pth"
        pipeline.stage(name, [trained], [*command, "--steps", str(steps), "--gen-ckpt-dir", str(export_dir),
                                         "--ckpt-dir", str(run_dir), *seed, "--overwrite"], after=after)
        return pipeline.stage(f"export {name}", [exported], after=[name],
                              action=lambda: export_checkpoint(trained, exported, settings["half_precision"]))

    # Declared in priority order, the longest chain (MN base models -> 3-way joint -> conditional) first;
    # each stage starts once the stages it reads from have finished.
    exports = {g: train_base_model(g) for g in ["MN1", "MN2", "MN3"]}
    three_way_bases = list(exports.values())
    three_way = train_classifier("3-way classifier", "3way_classifier", 700,
                                 ["train_3way_classifier.py", *pool_flags("base_pools"), *settings["three_way_flags"]],
                                 after=three_way_bases)
    conditional = train_classifier("3-way conditional classifier", "3way_conditional_classifier", 200,
                                   ["train_3way_conditional_classifier.py", *pool_flags("composition_pools"),
                                    *settings["conditional_flags"],
                                    "--joint-classifier-path", str(export_dir / "3way_classifier_ckpt_700.pth")],
                                   after=[three_way, *three_way_bases])
    exports.update({g: train_base_model(g) for g in ["M1", "M2"]})
    binary = train_classifier("classifier M1/M2", "classifier", 200,
                              ["train_classifier.py", *pool_flags("base_pools"), *settings["classifier_flags"]],
                              after=[exports["M1"], exports["M2"]])
    exports.update({g: train_base_model(g) for g in ["1", "2"]})
    subdigits = train_classifier("classifier 1/2", "subdigits_classifier", 200,
                                 ["train_classifier.py", "--gen-idx-1", "1", "--gen-idx-2", "2",
                                  "--classifier-name", "subdigits_classifier", *pool_flags("base_pools"),
                                  *settings["classifier_flags"],
                                  *settings["subdigits_classifier_flags"]],
                                 after=[exports["1"], exports["2"]])

    denoise = settings["denoise_last_step"] if config["DENOISE_LAST_STEP"] is None else config["DENOISE_LAST_STEP"]
    sample_flags = [*settings["sample_flags"], "--precision", precision, "--sampler", sampler, *seed,
                    "--denoise-last-step" if denoise else "--no-denoise-last-step"]
    # Each base model alone, evaluated: the rows' plug-in targets (what these base models allow).
    base_evaluations = {}
    for g in exports:
        individual = out_dir / f"individual_{g}.pt"
        steps = config["NUM_STEPS"] or steps_of["individual"]
        sampled = pipeline.stage(f"sample individual {g}", [individual], [
            "sample_individual_model.py", "--gen-idx", g, "--ckpt-dir", str(export_dir), "--out-dir", str(out_dir),
            "--num-samples", str(settings["individual_samples"]), *sample_flags, "--num-steps", str(steps)],
            after=[exports[g]])
        base_evaluations[g] = pipeline.stage(f"evaluate individual {g}", [out_dir / f"individual_{g}_eval.json"],
                                             ["evaluate_composition.py", str(individual)], after=[sampled])
    # The 3-way rows, the longest, first: in a parallel run the last stages then end close together.
    for script, models, observations, scales in sorted(SHOWCASE, key=lambda row: len(row[1]) < 3):
        stem = composition_stem(models, observations, scales)
        classifiers = [three_way, conditional] if len(models) == 3 else [subdigits if models == ["1", "2"] else binary]
        steps = config["NUM_STEPS"] or steps_of["samples"][len(models)]
        sampled = pipeline.stage(f"sample {stem}", [out_dir / f"{stem}.pt"],
                                 sample_command(script, models, observations, scales, export_dir, out_dir,
                                                config["NUM_SAMPLES"], [*sample_flags, "--num-steps", str(steps)]),
                                 after=[*(exports[g] for g in models), *classifiers])
        # Against the plug-in target where the base models' own evaluations exist or are made in this call
        # (an --only that leaves them out would otherwise fail here).
        individual_evaluations = [out_dir / f"individual_{g}_eval.json" for g in models]
        plug_in = all(pipeline.selects(base_evaluations[g]) or path.exists()
                      for g, path in zip(models, individual_evaluations))
        pipeline.stage(f"evaluate {stem}", [out_dir / f"{stem}_eval.json"],
                       ["evaluate_composition.py", str(out_dir / f"{stem}.pt"),
                        *(["--base-evaluations", *map(str, individual_evaluations)] if plug_in else [])],
                       after=[sampled, *(base_evaluations[g] for g in models)])

    if not config["DRY_RUN"]:
        # Fetched once before stages start side by side, so that they don't each download or write MNIST.
        for train in (True, False):
            ensure_mnist(train=train)
    pipeline.run()
    if not config["DRY_RUN"]:
        print(write_summary(out_dir, scale, pipeline.timings, config["SEED"]).read_text())
    return pipeline


if __name__ == "__main__":
    run_main(main)
