"""The one config mechanism: settings from a script's globals, help from the comment beside each, shared checks."""
import importlib.util
from pathlib import Path

import pytest

from sculpting.cli import KNOWN, commented_globals, configure, flag_name, setting_help
from sculpting.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(path for path in [*REPO.glob("*.py"), *REPO.glob("benchmarks/*.py")]
                 if 'if __name__ == "__main__":' in path.read_text())


def load(path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_every_setting_of_every_script_says_what_it_does(path):
    helps = setting_help(vars(load(path)), exclude=["CONFIG_KEYS", "REFERENCE", "MAX_EVALUATIONS"])
    assert helps, f"{path.name} has no settings"
    for name, text in helps.items():
        assert text and text.lower().replace(" ", "_") != name.lower(), f"{path.name}: {flag_name(name)} has no help"


SCRIPT = '''"""A script."""
STEPS = 3  # optimizer steps of this test
# (a second line of the same comment)
SEED = 0
NAMES = ["a"]
SAMPLER = None
SCALES = [1.0]
THREADS = 0
TABLE = {"not": "a setting"}

# A heading, not a comment of SEED's.
'''


def namespace(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    values = {"__file__": str(path), "__doc__": "A script."}
    exec(compile(SCRIPT, str(path), "exec"), values)
    return values


def test_settings_and_their_help_come_from_the_source(tmp_path):
    values = namespace(tmp_path)
    comment = commented_globals(values["__file__"])["STEPS"]
    assert comment == "optimizer steps of this test (a second line of the same comment)"
    helps = setting_help(values)
    assert list(helps) == ["STEPS", "SEED", "NAMES", "SAMPLER", "SCALES", "THREADS"]  # TABLE is no plain value
    assert helps["SEED"] == KNOWN["SEED"].help  # no comment of its own: the shared help
    assert configure(values, []) == {"STEPS": 3, "SEED": 0, "NAMES": ["a"], "SAMPLER": None, "SCALES": [1.0],
                                     "THREADS": 0}
    assert configure(values, ["--steps", "5", "--names", "b", "c", "--sampler", "heun"])["NAMES"] == ["b", "c"]
    assert "NAMES" not in configure(values, [], exclude=["NAMES"])


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--sampler", "euler"], "invalid choice: 'euler'"),
    (["--scales", "1", "nan"], r"--scales must be a finite number, got \[1.0, nan\]"),
    (["--scales=-inf"], r"--scales must be a finite number, got \[-inf\]"),
    (["--scales", "1e999"], r"--scales must be a finite number, got \[inf\]"),
    (["--threads", "-2"], "--threads must be >= 0, got -2"),
])
def test_a_shared_name_is_checked_alike_in_every_script(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        configure(namespace(tmp_path), argv)


def test_threads_take_effect_when_the_settings_are_read(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        configure(namespace(tmp_path), ["--threads", "2"])
        assert torch.get_num_threads() == 2
        configure(namespace(tmp_path), [])  # 0: torch's default, left as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
