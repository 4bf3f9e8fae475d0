"""reproduce.py --launcher slurm: each ready stage becomes a Slurm job, submitted through submitit, while the runner
(sculpting/reproduction/runner.py) keeps the stage graph, the skips and the resumes as on one machine.

A job runs the stage's command with this interpreter, from this working directory (a cluster shares both with its
login node): `python <script> ...`, its output and errors in one log, <RUN_DIR>/slurm/<job id>/<job id>_0_log.out.
What a job asks for follows the stage's kind (JOB_SHAPES), each field overridable per kind from the command line.
Quick stages (the exports) run in the submitting process. The job ids are recorded in <RUN_DIR>/slurm/jobs.json, so
that a rerun after the submitting process ended watches the jobs still queued or running instead of submitting
them again.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import submitit

from sculpting.errors import UserError
from sculpting.reproduction.runner import Launcher, last_progress


@dataclass(frozen=True)
class JobShape:
    gpus: int
    cpus: int
    minutes: int  # the job's time limit
    partition: str = None  # None: the cluster's default


# The paper scale's stages on one GPU each, but the evaluations (the oracle on 512 images): a base model's 200 epochs
# and a classifier's steps on fresh 500-step trajectories take hours (docs/pipeline.md). A base model stopped at its
# time limit resumes from its last saved state (every epoch's end) when the command is run again; a classifier starts
# over.
JOB_SHAPES = {
    "base": JobShape(gpus=1, cpus=8, minutes=24 * 60),
    "classifier": JobShape(gpus=1, cpus=8, minutes=24 * 60),
    "sample": JobShape(gpus=1, cpus=8, minutes=6 * 60),
    "evaluate": JobShape(gpus=0, cpus=4, minutes=60),
}
# sacct's states of a job that has not started (UNKNOWN: sacct does not know it yet), and of one not ended.
QUEUED_STATES = {"PENDING", "REQUEUED", "CONFIGURING", "UNKNOWN"}
ACTIVE_STATES = {"PENDING", "REQUEUED", "CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "SUSPENDED"}


def job_shapes(partition=(), minutes=(), gpus=()) -> dict:
    """JOB_SHAPES with the command line's overrides: each entry `VALUE` (every kind) or `KIND=VALUE` (one kind,
    over an entry for every kind whatever their order)."""
    shapes = dict(JOB_SHAPES)
    for field, flag, entries, parse in [("partition", "--slurm-partition", partition, str),
                                        ("minutes", "--slurm-time", minutes, _whole(1)),
                                        ("gpus", "--slurm-gpus", gpus, _whole(0))]:
        for entry in sorted(entries, key=lambda entry: "=" in entry):  # per-kind entries after the general ones
            kind, _, value = entry.rpartition("=")
            if kind and kind not in shapes:
                raise UserError(f"{flag} {entry}: no stage kind {kind!r}; use VALUE or KIND=VALUE with a kind of "
                                f"{', '.join(shapes)}")
            try:
                parsed = parse(value)
            except ValueError as error:
                raise UserError(f"{flag} {entry}: {error}") from None
            for name in [kind] if kind else list(shapes):
                shapes[name] = replace(shapes[name], **{field: parsed})
    return shapes


def _whole(least):
    def parse(text):
        if not text.isdigit() or int(text) < least:
            raise ValueError(f"{text!r} is not a whole number of at least {least}")
        return int(text)
    return parse


def sbatch_options(entries) -> dict:
    """--slurm-options NAME=VALUE ... as submitit's slurm_additional_parameters (a bare NAME: a flag)."""
    options = {}
    for entry in entries:
        name, equals, value = entry.partition("=")
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
            raise UserError(f"--slurm-options {entry}: give sbatch's long options as NAME=VALUE without the dashes "
                            f"(account=myproject qos=normal)")
        options[name.replace("-", "_")] = value if equals else ""
    return options


class SlurmStage:
    """A stage submitted as a Slurm job: poll() is None until the job ends, then 0 where the command succeeded."""

    def __init__(self, job):
        self.job, self.log = job, job.paths.stdout
        self.where = f"Slurm job {job.job_id}"

    @property
    def state(self) -> str:
        """Queued or running (asked while the job has not ended)."""
        started = self.job.state not in QUEUED_STATES
        return f"{'running' if started else 'queued'} as Slurm job {self.job.job_id} (log {self.log})"

    def poll(self):
        if not self.job.done():
            return None
        return 0 if self.job.exception() is None else 1

    def progress(self) -> str:
        return last_progress(self.log) if self.log.exists() else self.state.split(" (")[0]

    def failure(self) -> str:
        return f"Slurm job {self.job.job_id} failed, state {self.job.state}, log {self.log}"


class SlurmLauncher(Launcher):
    """Submits stages with submitit's AutoExecutor: `cluster` "slurm", or "local" (jobs as processes of this
    machine, as the tests run it). `shapes` (job_shapes) gives each kind of stage its resources, `options` the
    extra sbatch options of every job."""

    poll_every = 5  # seconds: submitit asks sacct at most once a minute; between, a poll looks for the result file

    def __init__(self, folder: Path, shapes=None, options=None, cluster="slurm"):
        self.folder, self.cluster = Path(folder), cluster
        self.shapes, self.options = shapes or JOB_SHAPES, options or {}
        self.jobs_path = self.folder / "jobs.json"
        self.executor = None  # made at the first submission: a dry run needs no cluster

    def describe(self, stage, gpu) -> str:
        shape = self._shape(stage)
        return (f"Slurm job ({stage.kind}: {shape.gpus} GPU, {shape.cpus} CPUs, {shape.minutes} min"
                + (f", partition {shape.partition}" if shape.partition else "") + ") ")

    def start(self, stage, log, threads, gpu):
        earlier = self._earlier_job(stage.name)
        if earlier is not None:
            print(f"[job ] {stage.name}: Slurm job {earlier.job_id}, submitted by an earlier call, is still "
                  f"{earlier.state.lower()}: watching it instead of submitting the stage again", flush=True)
            return SlurmStage(earlier)
        shape = self._shape(stage)
        executor = self._executor()
        executor.update_parameters(
            name=re.sub(r"[^\w.-]+", "_", stage.name), timeout_min=shape.minutes, gpus_per_node=shape.gpus,
            cpus_per_task=shape.cpus, stderr_to_stdout=True, slurm_partition=shape.partition,
            slurm_additional_parameters=self.options)
        # A standard-library function, so that the job needs nothing of this checkout to unpickle it; `env` adds
        # the thread budget to the environment Slurm gives the job (its GPUs among it).
        job = executor.submit(subprocess.check_call,
                              ["env", f"OMP_NUM_THREADS={shape.cpus}", sys.executable, *stage.command],
                              cwd=str(Path.cwd()))
        self._remember(stage.name, job.job_id)
        return SlurmStage(job)

    def _shape(self, stage) -> JobShape:
        if stage.kind not in self.shapes:
            raise ValueError(f"stage {stage.name!r} has no kind of {list(self.shapes)}: its Slurm job is unknown")
        return self.shapes[stage.kind]

    def _executor(self):
        if self.executor is None:
            if self.cluster == "slurm" and shutil.which("sbatch") is None:
                raise UserError("--launcher slurm: this machine has no sbatch; run reproduce.py on the cluster's "
                                "login node, or leave --launcher out to run the stages here")
            self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        return self.executor

    def _recorded(self) -> dict:
        return json.loads(self.jobs_path.read_text()) if self.jobs_path.exists() else {}

    def _remember(self, name, job_id):
        recorded = {**self._recorded(), name: job_id}
        self.jobs_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.jobs_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(recorded, indent=2) + "\n")
        os.replace(temporary, self.jobs_path)

    def _earlier_job(self, name):
        """The Slurm job an earlier call submitted for this stage, where it is still queued or running; else None.
        Only a Slurm cluster keeps a job's state after its submitter ended."""
        job_id = self._recorded().get(name)
        if self.cluster != "slurm" or job_id is None:
            return None
        job = submitit.SlurmJob(folder=self.folder / "%j", job_id=job_id)
        return job if job.get_info(mode="force").get("State", "UNKNOWN") in ACTIVE_STATES else None
