"""Run the whole pipeline at a named scale, skipping what is already done.

    python reproduce.py --scale cpu     # 2-core CPU: narrower networks, trajectory pools, fast sampling paths
    python reproduce.py --scale paper   # the reference settings (GPU)

Stages: base models (MN1, MN2, MN3, M1, M2, subdigits 1 and 2) -> export under the
reference names -> 3-way joint -> 3-way conditional, and the 2-model classifiers
(M1/M2 and 1/2) -> samples of the showcase compositions -> evaluation -> results table.
Each stage starts as soon as the stages it reads from have finished; JOBS of them
run side by side (the cpu scale: 2, each on one thread; progress lines every minute
show each running stage's latest progress bar, whose full output is in
<RUN_DIR>/logs/). On a machine with GPUs each running stage gets one of its own
(CUDA_VISIBLE_DEVICES, round-robin over the free ones; GPUS chooses them); on a Slurm
cluster, --launcher slurm submits each ready stage as a job (docs/pipeline.md):

    python reproduce.py --scale paper --jobs 4                       # 4 GPUs of this machine
    python reproduce.py --scale paper --launcher slurm --slurm-partition gpu --slurm-options account=myproject
 Training runs write to RUN_DIR; the final checkpoints are exported
to EXPORT_DIR under the reference file names (half precision at the cpu scale), and
every later stage reads them from there, so the results describe exactly the
exported files. A stage whose outputs exist is skipped; an interrupted base-model
run resumes; a stage whose inputs were just remade runs again. Everything a run writes
stays under RUN_DIR (runs/<scale>, gitignored) unless named elsewhere: exports in
<RUN_DIR>/checkpoints, grids and evaluations in <RUN_DIR>/results, summarised in
<RUN_DIR>/results.md; stage wall times and the whole run's in <RUN_DIR>/timings.json.
Another SEED is an independent replicate of the whole run, in a RUN_DIR of its own:

    python reproduce.py --scale cpu --seed 1   # runs/cpu_seed1

--group chains runs the reference's chained compositions instead (docs/chains.md): each of MN1, MN2, MN3 against
the composites of the other two (their harmonic mean, and each without the other), on the base models of
BASE_DIR: the pairs' joint classifiers, 9 chain classifiers, 27 chained rows sampled and evaluated against their
exact and plug-in targets, and the product chains beside the 3-way route's row (COMPARE_DIR):

    python reproduce.py --group chains --base-dir checkpoints --compare-dir results/cpu --out-dir results/chains

The committed set (the checkpoints shipped in checkpoints/, the rows in results/cpu/ and README's table) is
rebuilt only when named: --replace-shipped lets the exports replace the shipped files and rewrites their lines in
checkpoints/MANIFEST.sha256 (without it, a run that would replace one stops before it starts):

    python reproduce.py --scale cpu --export-dir checkpoints --replace-shipped --out-dir results/cpu
    python reproduce.py --summary-only --out-dir results/cpu   # README's table and results/cpu.md from its rows
"""

from pathlib import Path

from sculpting.checkpoints import ensure_writable_dir, refuse_shipped
from sculpting.cli import configure, flag_name, run_main
from custom_datasets import ensure_mnist
from sculpting.recipes import SCALES
from sculpting.reproduction.report import write_chain_summary, write_summary
from sculpting.errors import UserError
from sculpting.reproduction.runner import Pipeline, matches, read_timings
from sculpting.reproduction.slurm import SlurmLauncher, job_shapes, sbatch_options
from sculpting.reproduction.stages import CHAIN_PREFIX, Plan, chain_graph, stage_graph
from sculpting.runtime import visible_gpus

SCALE = "cpu"
NUM_SAMPLES = 512
NUM_STEPS = None  # sampler steps of every sample; None: the scale's for the sampler (recipes.CPU_STEPS, PAPER_STEPS)
SAMPLER = None  # of every sampling stage (showcase rows, base models alone, classifier pools); None: the scale's
# (cpu: heun-churn; paper: pc)
SEED = 0  # of every training and sampling stage: another seed is an independent replicate of the whole run
GROUP = "showcase"  # showcase: base models, classifiers and README's rows; chains: the chained compositions

# ---- engineering settings: how and where it runs, not what it samples ----
RUN_DIR = None  # None: runs/<SCALE> (runs/<SCALE>_seed<SEED> for SEED > 0)
EXPORT_DIR = None  # None: <RUN_DIR>/checkpoints (checkpoints, the shipped set, needs --replace-shipped)
OUT_DIR = None  # None: <RUN_DIR>/results, summarised in <RUN_DIR>/results.md (results/cpu: the committed rows);
# --group chains: <RUN_DIR>/chain_results (results/chains: the committed rows)
BASE_DIR = None  # --group chains: the base models' folder (gen_MN*_ckpt_195.pth); None: EXPORT_DIR
COMPARE_DIR = None  # --group chains: the showcase rows the product chains are set beside; None: <RUN_DIR>/results
PRECISION = None  # of the showcase samples; None: the scale's (float32; at the cpu scale auto: bfloat16 where native)
DENOISE_LAST_STEP = None  # of the showcase samples (sample scripts' --denoise-last-step); None: the scale's
JOBS = None  # stages run in parallel, each with cpu_count // JOBS threads; None: the scale's, or one per GPU where
# GPUS has more (with --launcher slurm: every stage that is ready)
LAUNCHER = "local"  # local: the stages run as processes of this machine; slurm: each ready stage is submitted as a
# Slurm job through submitit (run reproduce.py on the cluster's login node: docs/pipeline.md)
GPUS = None  # the CUDA devices of this machine the stages run on, each running stage on one of its own, as torch
# numbers them (0,2); None: every one torch sees (none on a CPU-only machine)
SLURM_PARTITION = []  # --launcher slurm: the partition of every job (gpu), or of one kind of stage (evaluate=cpu);
# kinds: base, classifier, sample, evaluate; none: the cluster's default
SLURM_TIME = []  # --launcher slurm: the time limit in minutes of every job (600) or of a kind (base=2880); none:
# sculpting/reproduction/slurm.JOB_SHAPES's (a day for training, hours for sampling)
SLURM_GPUS = []  # --launcher slurm: GPUs per job, of every job (1) or of a kind (evaluate=1); none: one, the
# evaluations none
SLURM_OPTIONS = []  # --launcher slurm: more sbatch options of every job, as NAME=VALUE (account=myproject qos=normal)
ONLY = None  # a regular expression: run only the stages whose name it matches (e.g. "sample" or "_g1$")
DRY_RUN = False  # list the stages and their commands (skipped ones marked) without running any
SUMMARY_ONLY = False  # only rewrite <OUT_DIR>.md from the evaluations that exist (and the tables of README and
# docs/ named after OUT_DIR: results/cpu is README's)
REPLACE_SHIPPED = False  # let the exports replace the checkpoints shipped in checkpoints/ (and their manifest lines)


def launch_settings(config, run_dir):
    """(launcher, GPUs of this machine to hand out) of --launcher and its settings, checked before any stage runs."""
    if config["LAUNCHER"] == "slurm":
        if config["GPUS"] is not None:
            raise UserError("--gpus picks GPUs of this machine; a Slurm job gets its GPUs from Slurm: use --slurm-gpus")
        shapes = job_shapes(config["SLURM_PARTITION"], config["SLURM_TIME"], config["SLURM_GPUS"])
        return SlurmLauncher(run_dir / "slurm", shapes, sbatch_options(config["SLURM_OPTIONS"])), []
    given = [name for name in config if name.startswith("SLURM_") and config[name]]
    if given:
        flag = flag_name(given[0])
        raise UserError(f"{flag} sets Slurm jobs; add --launcher slurm, or leave {flag} out to run here")
    return None, visible_gpus(config["GPUS"])


def main(argv=None):
    config = configure(globals(), argv, choices={"LAUNCHER": ("local", "slurm"), "GROUP": ("showcase", "chains")})
    scale, settings = config["SCALE"], SCALES[config["SCALE"]]
    # A replicate (another seed) gets a run dir of its own: in the seed-0 one its finished stages would be skipped.
    replicate = f"{scale}_seed{config['SEED']}" if config["SEED"] else scale
    run_dir = ensure_writable_dir(config["RUN_DIR"] or f"runs/{replicate}")
    launcher, gpus = launch_settings(config, run_dir)
    # Every default lies in the gitignored run dir: checkpoints/ and results/cpu hold the committed set (and
    # results/cpu names README's table), replaced only when named.
    chains = config["GROUP"] == "chains"
    out_dir = ensure_writable_dir(config["OUT_DIR"] or run_dir / ("chain_results" if chains else "results"))

    def summary(timings):
        # timings.json holds every stage the run dir has run: each group's summary gives its own stages' times.
        own = {name: t for name, t in timings.items() if name.startswith(CHAIN_PREFIX) == chains}
        if chains:
            return write_chain_summary(out_dir, Path(config["COMPARE_DIR"] or run_dir / "results"), own,
                                       config["SEED"]).read_text()
        return write_summary(out_dir, scale, own, config["SEED"], config["OUT_DIR"] is not None).read_text()

    export_dir = Path(config["EXPORT_DIR"] or run_dir / "checkpoints")
    base_dir = Path(config["BASE_DIR"] or export_dir)
    denoise = settings["denoise_last_step"] if config["DENOISE_LAST_STEP"] is None else config["DENOISE_LAST_STEP"]
    plan = Plan(settings, run_dir, export_dir, out_dir, config["SEED"], config["SAMPLER"] or settings["sampler"],
                config["PRECISION"] or settings["precision"], denoise, config["NUM_SAMPLES"], config["NUM_STEPS"],
                config["REPLACE_SHIPPED"])
    if config["SUMMARY_ONLY"]:
        # An OUT_DIR named without its RUN_DIR is not the default run's: its summary keeps the times it has
        # rather than taking those of whatever ran in runs/<scale>.
        print(summary(read_timings(run_dir) if config["RUN_DIR"] or not config["OUT_DIR"] else {}))
        return None
    ensure_writable_dir(export_dir)
    stages = chain_graph(plan, base_dir) if chains else stage_graph(plan, lambda name: matches(config["ONLY"], name))
    jobs = config["JOBS"] or (len(stages) if launcher is not None else max(settings["jobs"], len(gpus)))
    pipeline = Pipeline(stages, run_dir, config["DRY_RUN"], config["ONLY"], jobs, launcher, gpus)
    if not config["DRY_RUN"] and not config["REPLACE_SHIPPED"]:  # refused before hours of training, not after
        refuse_shipped([path for stage in pipeline.to_run() for path in stage.outputs],
                       f"pass --export-dir {run_dir / 'checkpoints'} to export beside it")
    if not config["DRY_RUN"]:
        # Fetched once before stages start side by side, so that they don't each download or write MNIST.
        for train in (True, False):
            ensure_mnist(train=train)
    pipeline.run()
    if not config["DRY_RUN"]:
        print(summary(pipeline.timings))
    return pipeline


if __name__ == "__main__":
    run_main(main)
