"""README's every command runs as written on a fresh clone.

Every line of README's ```bash blocks that runs `python <script>.py ...` runs here, in README order (later commands
read what earlier ones wrote: a checkpoint of runs/, samples in outputs/), in a copy of the repository's files with
data/ linked to the session's MNIST. Only flags of size are appended (TINY_FLAGS: argparse lets the last value win,
so an appended flag overrides a size and nothing else; the few scripts that run for hours at any size get a dry run
or a redraw), so that each finishes in seconds. Each must exit 0, and at the end no file of the copy's repository
may have changed or gone, and none may have appeared that git would not ignore: README's commands never modify what
is committed. A new README command is picked up as it is; a new script needs its row in TINY_FLAGS.

A command runs as `python <script>.py <args>` would (its file run as __main__, sys.argv and sys.path[0] as python
sets them, the clone as the working directory), in a process forked from one that imported torch and the other
heavy libraries once: started afresh, each command would spend most of its time importing them.
"""
import hashlib
import multiprocessing
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repository import repository_files

REPO = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 120
# Imported once by the process every command is forked from; none is a module of the repository, which each command
# imports from the clone.
PRELOADED = ["torch", "torchvision", "numpy", "matplotlib.pyplot", "tqdm"]

SAMPLE = ["--num-samples", "2", "--batch-size", "2", "--num-steps", "2"]
TINY_NETWORK = ["--train-subset", "32", "--batch-size", "32", "--channels", "32", "32", "32", "32", "--embed-dim",
                "16"]
TINY_POOL = ["--pool-size", "2", "--batch-size", "2", "--trajectory-steps", "2", "--test-samples", "2"]
TINY_CLASSIFIER = ["--classifier-channels", "8", "8", "--embed-dim", "16", "--t-embed-dim", "16"]

# Appended to every README command of the script. Where a later command reads a numbered checkpoint that an
# earlier one trains (runs/gen_MN1_ckpt_23.pth, runs/classifier_ckpt_200.pth), the epochs or steps stay those
# README names, on a tiny network and data set: cheaper than faking the file, and the command still writes it.
TINY_FLAGS = {
    "sample_individual_model.py": SAMPLE,
    "sample_composition.py": SAMPLE,
    "sample_3way_composition.py": SAMPLE,
    "sample_joint_diffusion.py": SAMPLE,
    # 24 epochs of one batch: the cpu-24 preset's, whose epoch 23 README samples. --compile off: torch.compile of
    # the preset would take longer than the whole run (it changes the speed, not the result).
    "train_diffusion.py": ["--epochs", "24", *TINY_NETWORK, "--compile", "off"],
    "train_joint_diffusion.py": ["--epochs", "24", *TINY_NETWORK],  # as README's runs: their epoch 23 exists
    # 200 steps: README samples runs/classifier_ckpt_200.pth. One pool serves them all, tested once.
    "train_classifier.py": ["--steps", "200", *TINY_POOL, *TINY_CLASSIFIER, "--pool-reuse", "200",
                            "--test-every", "200", "--ckpt-every", "200"],
    "train_3way_classifier.py": ["--steps", "1", *TINY_POOL],
    "train_3way_conditional_classifier.py": ["--steps", "1", *TINY_POOL],
    "evaluate_composition.py": ["--bootstrap", "10"],
    "evaluate_classifier.py": ["--images-per-cell", "2"],
    # A full run takes hours at any size: the dry run checks every stage's command and that none would replace a
    # shipped file without --replace-shipped.
    "reproduce.py": ["--dry-run"],
    # Both measure for an hour at the committed sizes and, at any other size, would replace the committed results
    # (and their tables in docs/operators.md and docs/performance.md): --plot-only redraws those from the saved rows.
    "compare_operators.py": ["--plot-only"],
    "benchmarks/sampler_quality.py": ["--plot-only"],
    "example.py": [],  # no flags: the demo as README runs it
}

# README's scripts that have no tiny setting, and why none is run here.
# (evaluate_joint_diffusion.py would be one: at any size but the committed ones it replaces docs/joint_diffusion.md's
# tables, and it has no --plot-only; README names it but does not run it.)
NO_TINY_SETTING = {}

# The other lines of README's bash blocks, by how they start, and why none runs here.
NOT_RUN = {
    "make ": "makes the environment this suite already runs in, then runs example.py (run here as its own line) or "
             "this suite",
    "python3 -m venv": "creates the environment this suite already runs in",
    "bash setup.sh": "installs packages (from the network) into the active environment",
    "pip ": "installs packages",
    "conda ": "creates an environment",
    "python3 -m pytest": "the suite itself, this test included",
}


def readme_command_lines(readme: str) -> list:
    """The commands of README's ```bash blocks, in order: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", readme, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def is_script_command(words) -> bool:
    return len(words) >= 2 and words[0] in ("python", "python3") and words[1].endswith(".py")


def files_git_would_add(clone, committed) -> list:
    """Files of the clone that are not committed and that the repository's .gitignore does not ignore."""
    new = sorted({str(Path(folder, name).relative_to(clone)) for folder, _, names in os.walk(clone) for name in names}
                 - set(committed))
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(new),
                             capture_output=True, text=True).stdout.split("\n")
    return sorted(set(new) - set(ignored))


def content_hashes(root, names) -> dict:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() if (root / name).is_file() else None
            for name in names}


def run_as_python(clone, words, log):
    """`python <script> <args>` (words[1:]) in the clone, in this forked process: output to `log`, the exit status
    as python's (SystemExit's code; 1 for an exception, whose traceback goes to the log)."""
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    os.chdir(clone)
    # The clone's modules, not those of the repository this test runs from (its folders, as pytest and conftest put
    # them on the inherited path; a virtual environment inside it stays).
    sys.path[:] = [str((clone / words[1]).parent),
                   *(path for path in sys.path if REPO not in (Path(path).resolve(), Path(path).resolve().parent))]
    sys.argv = words[1:]
    runpy.run_path(words[1], run_name="__main__")


@pytest.fixture
def fresh_clone(tmp_path, data_root):
    clone = tmp_path / "clone"
    for name in repository_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, clone / name)
    (clone / "data").symlink_to(Path(data_root).resolve(), target_is_directory=True)  # nothing downloads
    return clone


def test_every_bash_line_is_a_script_command_or_a_kind_not_run_here():
    for words in readme_command_lines((REPO / "README.md").read_text()):
        line = " ".join(words)
        assert is_script_command(words) or any(line.startswith(kind) for kind in NOT_RUN), \
            f"README runs `{line}`: run it here (a script) or say in NOT_RUN why not"


def test_readme_commands_run_as_written_on_a_fresh_clone(fresh_clone, tmp_path, monkeypatch):
    commands = [words for words in readme_command_lines((REPO / "README.md").read_text()) if is_script_command(words)]
    for words in commands:
        if words[1] in NO_TINY_SETTING:
            print(f"not run: {shlex.join(words)} ({NO_TINY_SETTING[words[1]]})")
    commands = [words for words in commands if words[1] not in NO_TINY_SETTING]
    missing = sorted({words[1] for words in commands} - set(TINY_FLAGS))
    assert not missing, f"README runs {missing}: give each its tiny flags in TINY_FLAGS"
    committed = repository_files()
    before = content_hashes(fresh_clone, committed)
    # One thread per command: the suite shares its machine (docs/performance.md, "At a glance"). The fork server
    # starts with this environment.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    forks = multiprocessing.get_context("forkserver")
    forks.set_forkserver_preload(PRELOADED)
    failed = []  # every command runs, so that one run lists every failure (a later one may follow from an earlier)
    for k, words in enumerate(commands):
        log = tmp_path / f"command_{k}.log"
        started = time.perf_counter()
        command = forks.Process(target=run_as_python, args=(fresh_clone, [*words, *TINY_FLAGS[words[1]]], log))
        command.start()
        command.join(COMMAND_TIMEOUT_S)
        if command.exitcode is None:
            command.kill()
            command.join()
        print(f"{time.perf_counter() - started:5.1f} s  exit {command.exitcode}  {shlex.join(words)}")
        if command.exitcode != 0:
            last_lines = "\n    ".join(log.read_text().strip().splitlines()[-3:])
            failed.append(f"`{shlex.join(words)}` exited {command.exitcode}:\n    {last_lines}")
    changed = [name for name, digest in content_hashes(fresh_clone, committed).items() if digest != before[name]]
    added = files_git_would_add(fresh_clone, committed)
    problems = failed
    if changed:
        problems.append(f"README's commands changed or removed committed files: {changed}")
    if added:
        problems.append(f"README's commands wrote files that git does not ignore: {added}")
    assert not problems, "\n".join(problems)
