"""Every script's --help, as a user runs it: it exits 0, shows the docstring's example commands one per line, and
shows the paper's settings apart from the engineering ones where the script's source separates them.

Each script runs as `python <script> --help` from the repository root, all of them once for the whole module, a
few at a time: most of a call is importing torch.
"""
import ast
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import pytest

from sculpting.cli import ENGINEERING_SEPARATOR, commented_globals, engineering_settings, flag_name

REPO = Path(__file__).resolve().parents[2]
TAKES_NO_FLAGS = {"example.py"}
SCRIPTS = sorted(path for path in REPO.glob("*.py")
                 if 'if __name__ == "__main__":' in path.read_text() and path.name not in TAKES_NO_FLAGS)
PAPER_TITLE = "the paper's settings:"
ENGINEERING_TITLE = "engineering settings: how and where it runs:"
HELP_TIMEOUT_S = 60
# A fixed width, so that the help is laid out the same whatever terminal runs the tests.
ENVIRONMENT = {**os.environ, "COLUMNS": "120", "PYTHONIOENCODING": "utf-8"}
OPTION_LINE = re.compile(r"^  (--[a-z0-9][a-z0-9-]*)")  # a flag's own line; the lines of its help are indented more


def run_help(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, path.name, "--help"], cwd=REPO, capture_output=True, text=True,
                          encoding="utf-8", timeout=HELP_TIMEOUT_S, env=ENVIRONMENT)


@lru_cache(maxsize=None)
def helps() -> dict:
    """{script name: its --help's completed process}, every script's run once, a few side by side."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip((path.name for path in SCRIPTS), pool.map(run_help, SCRIPTS)))


def help_of(path) -> str:
    result = helps()[path.name]
    assert result.returncode == 0, f"python {path.name} --help exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def example_commands(path) -> list:
    """The docstring's lines that give an example command: 4 spaces, then `python `."""
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    return [line.rstrip() for line in docstring.splitlines() if line.startswith("    python ")]


def has_separator(path) -> bool:
    return any(ENGINEERING_SEPARATOR.match(line.strip()) for line in path.read_text().splitlines())


def flags_under(lines, title) -> set:
    """The flags listed in the help's section `title`, up to the next section (an unindented line)."""
    start = lines.index(title) + 1
    end = next((number for number in range(start, len(lines)) if lines[number] and not lines[number][0].isspace()),
               len(lines))
    return {match.group(1) for line in lines[start:end] if (match := OPTION_LINE.match(line))}


def test_every_script_is_found():
    assert len(SCRIPTS) >= 15 and {"train_diffusion.py", "sample_composition.py", "reproduce.py"} <= \
        {path.name for path in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_help_exits_0(path):
    assert help_of(path).startswith("usage: ")


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_help_shows_each_example_command_on_its_own_line(path):
    lines = [line.rstrip() for line in help_of(path).splitlines()]
    for command in example_commands(path):
        assert command in lines, f"{path.name} --help does not show this docstring line as its own line:\n{command}"


@pytest.mark.parametrize("path", [path for path in SCRIPTS if has_separator(path)], ids=lambda path: path.name)
def test_help_shows_the_engineering_settings_apart(path):
    lines = [line.rstrip() for line in help_of(path).splitlines()]
    assert PAPER_TITLE in lines and ENGINEERING_TITLE in lines, f"{path.name} --help lacks a group's title"
    assert lines.index(PAPER_TITLE) < lines.index(ENGINEERING_TITLE)
    paper, engineering = flags_under(lines, PAPER_TITLE), flags_under(lines, ENGINEERING_TITLE)
    every_flag = {match.group(1) for line in lines if (match := OPTION_LINE.match(line))}
    below = engineering_settings(path)
    assert below, f"{path.name}: no setting below its separator line"
    for name in commented_globals(path):
        flag = flag_name(name)
        if flag not in every_flag:
            continue  # a global that is no flag (its value is not a plain one)
        if name in below:
            assert flag in engineering, f"{path.name}: {flag} is set below the separator but is not listed under " \
                                        f"{ENGINEERING_TITLE!r}"
        else:
            assert flag in paper, f"{path.name}: {flag} is set above the separator but is not listed under " \
                                  f"{PAPER_TITLE!r}"
