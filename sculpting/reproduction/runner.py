"""The runner of a stage graph: stages start as soon as the stages they read from have finished, up to `jobs`
at a time; finished ones are skipped, and each is timed.

Launching is injected (`launch`): reproduce.py runs each stage's command as a Python subprocess; the tests
pass a fake that finishes stages in an order they control.
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


@dataclass
class Stage:
    name: str
    outputs: list  # the stage is done when all of these exist
    command: list = None  # argv after the interpreter, run as a subprocess
    action: Callable = None  # or a quick function run in this process (exports)
    after: tuple = ()  # names of the stages that must finish first
    inputs: tuple = ()  # files it reads: an output older than one of them is redone (an export over an older file)


def matches(only, name: str) -> bool:
    """Whether a stage of this name runs under --only `only` (a regular expression; None: every stage)."""
    return only is None or re.search(only, name) is not None


def launch_subprocess(command, log, threads):
    """Start `python <command>`: in the foreground without a log, else into the log with `threads` threads."""
    if log is None:
        return subprocess.Popen([sys.executable, *command])
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *command], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def read_timings(run_dir: Path) -> dict:
    path = run_dir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


class Pipeline:
    """Stages in priority order run as soon as the stages they need have finished, up to `jobs` at a time,
    each with cpu_count // jobs threads (on a small CPU two one-thread jobs get more done than one two-thread
    job). `launch(command, log, threads)` starts a stage and returns what Popen does (poll(), returncode)."""

    STATUS_EVERY = 60  # seconds between progress lines while stages run in parallel

    def __init__(self, stages, run_dir: Path, dry_run=False, only=None, jobs=1, launch=launch_subprocess,
                 poll_every=0.5):
        self.stages, self.run_dir, self.dry_run, self.only, self.jobs = list(stages), run_dir, dry_run, only, jobs
        self.launch, self.poll_every = launch, poll_every
        self.timings_path = run_dir / "timings.json"
        self.timings = read_timings(run_dir)

    def _record(self, name, seconds):
        # Re-read first: another run of this script (e.g. with another --only) may have added stages meanwhile.
        self.timings = read_timings(self.run_dir)
        self.timings[name] = round(seconds, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=2) + "\n")

    def run(self):
        """A stage is skipped when its outputs exist and none of the stages it reads from ran in this call
        (outputs made from older inputs are redone)."""
        selected = [s for s in self.stages if matches(self.only, s.name)]
        done = {s.name for s in self.stages if s not in selected}  # outside --only: taken as done
        ran = set()  # the stages that ran in this call
        if self.dry_run:
            runs = self.to_run()
            for s in selected:
                if s in runs:
                    print(f"[run ] {s.name}" + (f": {' '.join(s.command)}" if s.command else ""), flush=True)
                else:
                    print(f"[skip] {s.name}: done ({s.outputs[0]})", flush=True)
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
                running[s.name] = (s, *self._start(s))
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
            time.sleep(self.poll_every if running else 0)
        if ran:
            self._record(WALL_TIME_KEY, time.time() - started)
            print(f"[done] {len(ran)} stages in {self.timings[WALL_TIME_KEY]:.0f} s of wall time", flush=True)

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

    def _start(self, s):
        """Launch a stage; with parallel jobs its output goes to a log file (progress lines show it)."""
        print(f"[run ] {s.name}: {' '.join(s.command)}", flush=True)
        log = threads = None
        if self.jobs > 1:
            threads = max(1, (os.cpu_count() or 1) // self.jobs)
            log = self.run_dir / "logs" / (re.sub(r"[^\w.-]+", "_", s.name) + ".log")
            log.parent.mkdir(exist_ok=True)
        return self.launch(s.command, log, threads), time.time(), log

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
