"""The runner of a stage graph: stages start as soon as the stages they read from have finished, up to `jobs`
at a time; finished ones are skipped, and each is timed.

Launching is injected (a Launcher): reproduce.py runs each stage's command as a Python subprocess on this
machine (LocalLauncher, each running stage on a GPU of its own where the machine has GPUs) or as a Slurm job
(sculpting/reproduction/slurm.py); the tests pass a fake that finishes stages in an order they control.
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

from sculpting.errors import UserError

WALL_TIME_KEY = "whole run (wall time of the last reproduce.py call)"
DEVICES_KEY = "where each stage last ran"  # in timings.json beside the stages' seconds: {stage: GPU or Slurm job}


@dataclass
class Stage:
    name: str
    outputs: list  # the stage is done when all of these exist
    command: list = None  # argv after the interpreter, run as a subprocess
    action: Callable = None  # or a quick function run in this process (exports)
    after: tuple = ()  # names of the stages that must finish first
    inputs: tuple = ()  # files it reads: an output older than one of them is redone (an export over an older file)
    kind: str = None  # base, classifier, sample or evaluate: the resources a Slurm job of it asks for


def matches(only, name: str) -> bool:
    """Whether a stage of this name runs under --only `only` (a regular expression; None: every stage)."""
    return only is None or re.search(only, name) is not None


class Launcher:
    """Starts stages. `start(stage, log, threads, gpu)` returns a started stage (LocalProcess's methods); `gpu` is
    the CUDA_VISIBLE_DEVICES the runner gave it (None: none), `log` its log file (None: the foreground)."""

    poll_every = 0.5  # seconds between two looks at the running stages

    def start(self, stage, log, threads, gpu):
        raise NotImplementedError

    def describe(self, stage, gpu) -> str:
        """What a dry run shows before a stage's command: how it would be started."""
        return f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""


class LocalProcess:
    """A stage running as a process of this machine: poll() is None until it exits, then its exit status."""
    state = None  # a local stage has no states between started and finished to report

    def __init__(self, process, log, gpu):
        self.process, self.log = process, log
        self.where = f"CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else None

    def poll(self):
        return self.process.poll()

    def progress(self) -> str:
        return last_progress(self.log) if self.log is not None else "running"

    def failure(self) -> str:
        return f"exit {self.process.returncode}" + (f", log {self.log}" if self.log else "")


class LocalLauncher(Launcher):
    """`python <command>` as a subprocess: in the foreground without a log, else into the log with `threads`
    threads; on the GPU given, alone (CUDA_VISIBLE_DEVICES)."""

    def start(self, stage, log, threads, gpu):
        environment = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
        if log is None:
            return LocalProcess(subprocess.Popen([sys.executable, *stage.command], env=environment), None, gpu)
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, *stage.command], stdout=out, stderr=subprocess.STDOUT,
                                       env={**environment, "OMP_NUM_THREADS": str(threads)})
        return LocalProcess(process, log, gpu)


class GpuLanes:
    """The GPUs stages run on, by their CUDA_VISIBLE_DEVICES names: a started stage gets the next free GPU after
    the one given last (round-robin); with more stages running than GPUs, the next of the least loaded."""

    def __init__(self, gpus=()):
        self.gpus, self.load, self.last = list(gpus), {gpu: 0 for gpu in gpus}, -1

    def take(self):
        """A GPU for a stage that starts now; None on a machine without GPUs."""
        if not self.gpus:
            return None
        after_last = [self.gpus[(self.last + 1 + k) % len(self.gpus)] for k in range(len(self.gpus))]
        gpu = min(after_last, key=self.load.get)  # the first of the least loaded, counting from after the last
        self.last, self.load[gpu] = self.gpus.index(gpu), self.load[gpu] + 1
        return gpu

    def give_back(self, gpu):
        if gpu is not None:
            self.load[gpu] -= 1


@dataclass
class Started:
    """A stage the runner started: what its launcher returned (LocalProcess's methods), when, on which GPU, and the
    state last reported."""
    stage: Stage
    process: object
    begin: float
    gpu: str = None
    state: str = None


def read_timings(run_dir: Path) -> dict:
    path = run_dir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


class Pipeline:
    """Stages in priority order run as soon as the stages they need have finished, up to `jobs` at a time,
    each with cpu_count // jobs threads (on a small CPU two one-thread jobs get more done than one two-thread
    job) and, where `gpus` names this machine's GPUs, on one of them (GpuLanes). `launcher` starts them."""

    STATUS_EVERY = 60  # seconds between progress lines while stages run in parallel

    def __init__(self, stages, run_dir: Path, dry_run=False, only=None, jobs=1, launcher=None, gpus=(),
                 poll_every=None):
        self.stages, self.run_dir, self.dry_run, self.only, self.jobs = list(stages), run_dir, dry_run, only, jobs
        self.launcher = launcher or LocalLauncher()
        self.poll_every = self.launcher.poll_every if poll_every is None else poll_every
        self.gpus = list(gpus)
        self.timings_path = run_dir / "timings.json"
        self.timings = read_timings(run_dir)

    def _record(self, name, seconds, where=None):
        # Re-read first: another run of this script (e.g. with another --only) may have added stages meanwhile.
        self.timings = read_timings(self.run_dir)
        self.timings[name] = round(seconds, 1)
        if where is not None:
            self.timings.setdefault(DEVICES_KEY, {})[name] = where
        self.timings_path.write_text(json.dumps(self.timings, indent=2) + "\n")

    def run(self):
        """A stage is skipped when its outputs exist and none of the stages it reads from ran in this call
        (outputs made from older inputs are redone). A failed stage stops the stages that read from it; the
        others go on, and the run then ends with an error naming each failure and its log."""
        selected = [s for s in self.stages if matches(self.only, s.name)]
        if self.dry_run:
            self._list(selected)
            return
        done = {s.name for s in self.stages if s not in selected}  # outside --only: taken as done
        ran = set()  # the stages that ran in this call
        lanes = GpuLanes(self.gpus)
        waiting, started, running, last_status = list(selected), time.time(), {}, time.time()
        failed, blocked = {}, set()  # {failed stage: why}; the stages that read from one, however indirectly
        while waiting or running:
            while stopped := [s for s in waiting if any(d in failed or d in blocked for d in s.after)]:
                for s in stopped:
                    waiting.remove(s)
                    blocked.add(s.name)
            # Skips and quick actions first, until none is left: they can make a higher-priority stage
            # ready, which must get the next free lane before the lower-priority ones already ready.
            ready = [s for s in waiting if all(d in done for d in s.after)]
            if waiting and not ready and not running:
                raise UserError(f"stage '{waiting[0].name}' waits for stages that will not run; check --only")
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
                gpu = lanes.take()
                running[s.name] = Started(s, self._start(s, gpu), time.time(), gpu)
            for name, job in list(running.items()):
                status = job.process.poll()
                if status is None:
                    if job.process.state != job.state:  # a Slurm job's queued -> running
                        job.state = job.process.state
                        print(f"[job ] {name}: {job.state}", flush=True)
                    continue
                del running[name]
                lanes.give_back(job.gpu)
                if status != 0:
                    failed[name] = job.process.failure()
                    print(f"[fail] {name}: {failed[name]}", flush=True)
                else:
                    self._finish(job.stage, job.begin, done, ran, job.process.where)
            if running and time.time() - last_status >= self.STATUS_EVERY and self.jobs > 1:
                last_status = time.time()
                print(f"[....] {time.time() - started:.0f} s: " + "; ".join(
                    f"{name}: {job.process.progress()}" for name, job in running.items()), flush=True)
            time.sleep(self.poll_every if running else 0)
        if ran:
            self._record(WALL_TIME_KEY, time.time() - started)
            print(f"[done] {len(ran)} stages in {self.timings[WALL_TIME_KEY]:.0f} s of wall time", flush=True)
        if failed:
            why = ", ".join(f"'{name}' ({failure})" for name, failure in failed.items())
            raise UserError(f"stage {why} failed" + (f"; {len(blocked)} stages that read from it did not run"
                                                     if blocked else "")
                            + "; fix it and rerun: finished stages are kept")

    def _list(self, selected):
        """The dry run: every selected stage, to run or skipped, and how it would be started (on which GPU)."""
        runs = self.to_run()
        gpus = self._gpus_if_equally_long(runs)
        for s in selected:
            if s not in runs:
                print(f"[skip] {s.name}: done ({s.outputs[0]})", flush=True)
            elif s.command is None:
                print(f"[run ] {s.name}", flush=True)
            else:
                print(f"[run ] {s.name}: {self.launcher.describe(s, gpus[s.name])}{' '.join(s.command)}", flush=True)

    def _gpus_if_equally_long(self, runs) -> dict:
        """{stage: the GPU it would get} if every stage took the same time: run() then starts them in waves of
        `jobs`, each wave's after the quick stages its predecessor made ready, the next wave when all have ended."""
        lanes, gpus, waiting = GpuLanes(self.gpus), {}, list(runs)
        done = {s.name for s in self.stages if s not in runs}
        while waiting:
            wave = [s for s in waiting if all(d in done for d in s.after)]
            quick = [s for s in wave if s.command is None]
            wave = quick or wave[:self.jobs]
            if not wave:  # what run() refuses: stages waiting for stages that will not run
                break
            for s in wave:
                gpus[s.name] = None if s.command is None else lanes.take()
            for s in wave:
                lanes.give_back(gpus[s.name])
                done.add(s.name)
                waiting.remove(s)
        return gpus

    def to_run(self) -> list:
        """The stages a run would run (where all succeed): those --only selects that are not up to date."""
        ran = set()
        for s in self.stages:
            if matches(self.only, s.name) and not self._up_to_date(s, ran):
                ran.add(s.name)
        return [s for s in self.stages if s.name in ran]

    @staticmethod
    def _up_to_date(s, ran):
        if not all(p.exists() for p in s.outputs) or any(d in ran for d in s.after):
            return False
        # Outputs that predate an input were not made from it: e.g. the shipped checkpoints in the place of an
        # export of models trained since (--export-dir checkpoints after a run into the default one).
        oldest = min(p.stat().st_mtime_ns for p in s.outputs)
        return all(p.stat().st_mtime_ns <= oldest for p in s.inputs if p.exists())

    def _start(self, s, gpu):
        """Launch a stage; with parallel jobs its output goes to a log file (progress lines show it)."""
        print(f"[run ] {s.name}: {self.launcher.describe(s, gpu)}{' '.join(s.command)}", flush=True)
        log = threads = None
        if self.jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // self.jobs)
            log = self.run_dir / "logs" / (re.sub(r"[^\w.-]+", "_", s.name) + ".log")
            log.parent.mkdir(parents=True, exist_ok=True)
        return self.launcher.start(s, log, threads, gpu)

    def _finish(self, s, begin, done, ran, where=None):
        self._record(s.name, time.time() - begin, where)
        done.add(s.name)
        ran.add(s.name)
        print(f"[done] {s.name} in {self.timings[s.name]:.0f} s" + (f" ({where})" if where else ""), flush=True)


def last_progress(log: Path) -> str:
    """The latest progress line a stage wrote to its log: its outermost tqdm bar where it has nested ones
    (a nested bar's lines carry the cursor-up escape)."""
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 4000))
        lines = [line.strip() for line in re.split(r"[\r\n]", f.read().decode(errors="replace")) if line.strip()]
    outer = [line for line in lines if "\x1b[A" not in line]
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", (outer or lines or ["starting"])[-1])
