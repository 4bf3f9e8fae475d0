"""One config mechanism for every script (after nanoGPT's configurator).

A script's settings are its own UPPER_CASE module globals whose values are plain (None, bool, int, float,
str, or a list of those); each becomes a flag (GEN_IDX -> --gen-idx) whose default is the global's value,
so editing the global and passing the flag agree. A flag's --help is the comment beside its global (and
the comment lines right below it). A name means one thing in every script: KNOWN gives each shared name
its constraint and, where the script has no comment of its own, its help.
"""
import argparse
import ast
import io
import math
import os
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from custom_datasets import BASE_DATASETS
from sculpting.composites import is_model_name
from sculpting.errors import UserError
from sculpting.images import PALETTES
from models import fast_paths
from models.fast_paths import COMPILE_CHOICES, PRECISION_CHOICES
from sculpting.recipes import PRESETS, SCALES
from sculpting.runtime import use_threads
from samplers import SAMPLERS

REPO = Path(__file__).resolve().parents[1]
SETTING_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
PLAIN_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Check:
    holds: Callable
    requirement: str


POSITIVE = Check(lambda value: value > 0, "positive")
NON_NEGATIVE = Check(lambda value: value >= 0, ">= 0")
UP_TO_ONE = Check(lambda value: 0 < value <= 1, "in (0, 1]")
BELOW_ONE = Check(lambda value: 0 < value < 1, "in (0, 1)")
FRACTION = Check(lambda value: 0 <= value < 1, "in [0, 1)")
GRID_STEPS = Check(lambda value: value >= 2, "at least 2 steps (a grid from the prior to the data)")


def _compiles(pattern) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


REGEX = Check(_compiles, "a regular expression")


@dataclass(frozen=True)
class Known:
    help: str = ""
    check: Check = None
    choices: tuple = None
    type: type = None  # of a setting whose default is None (unset); else the default's type
    const: str = None  # the value of the flag given alone (--compile = --compile on)


# A script whose GEN_IDX must be a base dataset (it trains one, or times one) passes configure(choices=BASE_ONLY).
BASE_ONLY = {"GEN_IDX": tuple(BASE_DATASETS)}

# The names several scripts share (a numbered name such as GEN_IDX_2 or GUIDANCE_3 is its base name's), and the
# checks of a few names of one script.
KNOWN = {
    # what is sampled, and from which checkpoints
    "GEN_IDX": Known("base model, by the name of its dataset; where a model is sampled or classified, also a composite "
                     "of two (MN2xMN3: their harmonic mean; MN2-MN3: MN2 without MN3; sculpting/composites.py)",
                     Check(is_model_name, "a base model or a composite")),
    "GEN_CKPT_DIR": Known("folder the base models' checkpoints gen_<GEN_IDX>_ckpt_<GEN_CKPT_EPOCH>.pth are read from"),
    "GEN_CKPT_EPOCH": Known("epoch of the base-model checkpoints that are read (0: after the first epoch)",
                            NON_NEGATIVE),
    "GEN_CKPT_PATH": Known("a full path of the base model's checkpoint; overrides GEN_CKPT_DIR and GEN_CKPT_EPOCH"),
    "COMPOSITE_GUIDANCE": Known("guidance scale inside a composite model (MN2xMN3, MN2-MN3): of its pair's joint "
                                "classifier; the reference's composites use 20", NON_NEGATIVE),
    "COMPOSITE_CLASSIFIER_DIR": Known("folder a composite's pair classifier <name>_ckpt_200.pth is read from "
                                      "(classifier_<b>_<c>; M1/M2 and 1/2: the shipped names); unset: GEN_CKPT_DIR",
                                      type=str),
    "CLASSIFIER_CKPT": Known("checkpoint of the joint classifier Q(y1, y2 | x_t) that guides the composition"),
    "CONDITIONAL_CLASSIFIER_CKPT": Known("checkpoint of the conditional classifier Q(y3 | x_t, y1, y2)"),
    "Y": Known("observation: 1-based index of the base model the label names", POSITIVE),
    "GUIDANCE": Known("scale of the classifier's guidance term; 1 is the exact composition", NON_NEGATIVE),
    "MODELS": Known("base models, by the names of their datasets, or composites of two (MN2xMN3)",
                    Check(is_model_name, "base models or composites")),
    "OBSERVATIONS": Known("1-based observed labels y_1, y_2, ..."),
    # the sampler
    "SAMPLER": Known("pc: the reference's predictor-corrector; heun: the probability-flow ODE; heun-churn: "
                     "the stochastic Heun sampler (both need far fewer steps)", choices=SAMPLERS),
    "NUM_STEPS": Known("sampler steps (pc: grid times; heun, heun-churn: noise levels)", GRID_STEPS, type=int),
    "TRAJECTORY_STEPS": Known("sampler steps of each trajectory (pc: grid times; heun*: noise levels)", GRID_STEPS),
    "EM_STEPS": Known("Euler-Maruyama steps of the reverse SDE", GRID_STEPS),
    "SNR": Known("pc: the Langevin corrector's signal-to-noise ratio", POSITIVE),
    "SIGMA_MIN": Known("heun, heun-churn: the last noise level of the grid"),
    "CHURN": Known("heun-churn: the noise each step adds back (EDM's S_churn)"),
    "DENOISE_LAST_STEP": Known("end with a denoising step instead of the reference's last Euler step", type=bool),
    "NUM_SAMPLES": Known("samples to draw", POSITIVE),
    "BATCH_SIZE": Known("samples or images per batch", POSITIVE),
    "PRECISION": Known("float32; bfloat16: autocast; auto: bfloat16 only where the device computes it natively",
                       choices=tuple(PRECISION_CHOICES)),
    "COMPILE": Known("torch.compile the score networks: on, off, or auto (time both ways on the first call, keep "
                     "the faster); --compile alone is on", choices=COMPILE_CHOICES, const="on"),
    "PALETTE": Known("rgb, or the reference figures' colour-blind palette", choices=PALETTES),
    # training
    "EPOCHS": Known("training epochs", POSITIVE),
    "STEPS": Known("optimizer steps", POSITIVE),
    "LR": Known("learning rate", POSITIVE),
    "LR_END": Known("learning rate at the end of the schedule", POSITIVE),
    "LR_DECAY": Known("StepLR gamma per optimizer step; 1 = constant", UP_TO_ONE),
    "LR_SCHEDULE": Known("exponential: per-epoch decay LR -> LR_END (reference); onecycle: per step",
                         choices=("exponential", "onecycle")),
    "CHANNELS": Known("the score network's channels per resolution", POSITIVE),
    "EMBED_DIM": Known("width of the time embedding", POSITIVE),
    "T_EMBED_DIM": Known("width of the classifier's time embedding", POSITIVE),
    "CLASSIFIER_CHANNELS": Known("the classifier trunk's two convolution widths", POSITIVE),
    "SAVE_EVERY": Known("write a checkpoint every this many epochs", POSITIVE),
    "WARMUP_STEPS": Known("terminal loss only for these first steps", NON_NEGATIVE),
    "STEP_FRACTION": Known("share of the steps with t <= 0.7 the non-terminal loss trains on per optimizer step",
                           UP_TO_ONE),
    "POOL_SIZE": Known("trajectories per source sampled at once (reference: = BATCH_SIZE)", POSITIVE),
    "POOL_REUSE": Known("optimizer steps served by one pool before it is resampled (reference: 1)", POSITIVE),
    "TARGET_UPDATE_EVERY": Known("copy the bootstrap target before every this many steps", POSITIVE),
    "TERMINAL_LOSS_SCALE": Known("weight of the terminal cross-entropy", NON_NEGATIVE),
    "TEST_EVERY": Known("test every this many steps", POSITIVE),
    "TEST_SAMPLES": Known("test trajectories per source, sampled once at the start", POSITIVE),
    "TEST_STEP_STRIDE": Known("the test scores every this many grid steps and the terminal state", POSITIVE),
    "CKPT_EVERY": Known("write a checkpoint every this many steps", POSITIVE),
    "CKPT_DIR": Known("folder the checkpoints this script trains are written to"),
    "CLASSIFIER_NAME": Known("checkpoints are <CLASSIFIER_NAME>_ckpt_<step>.pth"),
    "RESUME": Known("continue the run in CKPT_DIR from its training state"),
    "OVERWRITE": Known("replace an earlier run's files instead of refusing"),
    "PRESET": Known("a named set of these settings (recipes.PRESETS); explicit flags still win",
                    choices=tuple(PRESETS)),
    "TRAIN_SUBSET": Known("train on this many randomly chosen images; 0 = the whole dataset", NON_NEGATIVE),
    # the oracle's training (train_oracle.py; its comments give the help)
    "WEIGHT_DECAY": Known(check=NON_NEGATIVE),
    "JUNK_FRACTION": Known(check=NON_NEGATIVE),
    "MAX_ROTATION_DEG": Known(check=NON_NEGATIVE),
    "MAX_SHIFT_PX": Known(check=NON_NEGATIVE),
    "MAX_SCALE_CHANGE": Known(check=FRACTION),
    "MAX_NOISE_STD": Known(check=NON_NEGATIVE),
    "TEST_NOISE_STD": Known(check=NON_NEGATIVE),
    # evaluation
    "SAMPLES": Known("samples .pt written by a sample_*.py script"),
    "ORACLE": Known("checkpoint of the oracle that reads each sample's digit and colour"),
    "CONFIDENCE_THRESHOLD": Known("a sample is recognisable when its top digit has at least this probability",
                                  UP_TO_ONE),
    "BOOTSTRAP": Known("resamples of the bootstrap intervals", POSITIVE),
    "CI_LEVEL": Known("level of the bootstrap intervals", BELOW_ONE),
    "IMAGES_PER_CELL": Known("images per (digit, colour) cell", POSITIVE),
    "TIME": Known("diffusion time t at which the classifier is read", UP_TO_ONE),
    # the run
    "SCALE": Known("the named scale of every stage's settings (recipes.SCALES)", choices=tuple(SCALES)),
    "JOBS": Known("stages run in parallel, each with cpu_count // JOBS threads; none: the scale's", POSITIVE, type=int),
    "ONLY": Known("a regular expression: run only what its name matches", REGEX),
    "SEED": Known("seed of every random generator: the same seed gives the same outputs", NON_NEGATIVE),
    "DEVICE": Known("auto: cuda, then mps, then cpu; or a torch device such as cpu or cuda:1"),
    "DATA_ROOT": Known("folder MNIST is read from (and written to if missing)"),
    "OUT_DIR": Known("folder the outputs are written to"),
    "PLOT_ONLY": Known("redraw the outputs from the results already in OUT_DIR, without measuring"),
    "REPEATS": Known("each time is the fastest of this many runs", POSITIVE),
    # joint diffusion (train_joint_diffusion.py, sample_joint_diffusion.py)
    "CLASSIFIER_LOSS_SCALING": Known("weight of the joint model's classification loss", NON_NEGATIVE),
    "SAMPLING_LR": Known("step size alpha of the guidance by a joint model's head; 0 = unguided", NON_NEGATIVE),
    "THREADS": Known("torch's CPU threads; 0 = torch's default, one per core (1 where another job shares a 2-core "
                     "machine: docs/performance.md)", NON_NEGATIVE),
    "TRAIN_BATCH": Known("images per training step", POSITIVE),
    "SAMPLE_BATCH": Known("samples per sampling batch", POSITIVE),
    "SAMPLE_STEPS": Known("sampler steps timed", POSITIVE),
    "STEP_BATCH_SIZE": Known("trajectories per model in a timed classifier step", POSITIVE),
    "NUM_IMAGES": Known("images to measure", POSITIVE),
    "TAIL_STEPS": Known("the last sampler steps that are measured", POSITIVE),
    "OUT": Known("file the JSON report is written to"),
    "KEEP_FREED_MEMORY": Known("as every script: malloc keeps freed memory (False: glibc's default)"),
}


def known(name: str) -> Known:
    """KNOWN's entry for a name or, for a numbered one (GEN_IDX_2), its base name's; an empty one if none."""
    return KNOWN.get(name) or KNOWN.get(re.sub(r"_\d+$", "", name)) or Known()


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written (its example commands one per line), each flag's default after its help."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see --help)")


def flag_name(global_name: str) -> str:
    return "--" + global_name.lower().replace("_", "-")


def is_plain(value) -> bool:
    """A value a flag can give: None, bool, int, float, str, or a list or tuple of those."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, PLAIN_TYPES) for item in value)
    return value is None or isinstance(value, PLAIN_TYPES)


def commented_globals(path) -> dict:
    """{name: comment} of the UPPER_CASE globals assigned at the top level of a module's source, in order. The
    comment is the one on the assignment's lines, with the comment-only lines right below it; "" if none."""
    source = Path(path).read_text()
    comments, comment_only = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line = token.start[0]
            comments[line] = token.string.lstrip("#").strip()
            if not token.line[:token.start[1]].strip():
                comment_only.add(line)
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and SETTING_NAME.fullmatch(node.targets[0].id):
            lines = [comments[line] for line in range(node.lineno, node.end_lineno + 1) if line in comments]
            below = node.end_lineno + 1
            while lines and below in comment_only:
                lines.append(comments[below])
                below += 1
            found[node.targets[0].id] = " ".join(lines)
    return found


ENGINEERING_SEPARATOR = re.compile(r"#\s*-{2,}\s*engineering settings")


def engineering_settings(path) -> set:
    """The UPPER_CASE globals a module assigns below its separator line `# ---- engineering settings ... ----`:
    how and where a script runs, apart from the paper's settings above it. Empty without the line."""
    source = Path(path).read_text()
    separator = next((number for number, line in enumerate(source.splitlines(), start=1)
                      if ENGINEERING_SEPARATOR.match(line.strip())), None)
    if separator is None:
        return set()
    return {node.targets[0].id for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and node.lineno > separator and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name) and SETTING_NAME.fullmatch(node.targets[0].id)}


def setting_help(namespace, exclude=()) -> dict:
    """{name: help} of a script's settings (`namespace` is its globals()), in the order of its source."""
    return {name: comment or known(name).help
            for name, comment in commented_globals(namespace["__file__"]).items()
            if name not in exclude and is_plain(namespace[name])}


def configure(namespace, argv=None, exclude=(), positional=(), defaults=None, choices=None) -> dict:
    """The script's settings, overridden from argv and checked: {name: value}, in the order of its source.

    `namespace` is the script's globals(); `exclude` names globals that are no settings. `defaults` replaces
    some globals' values first (a preset); names in `positional` may also be given as an optional positional
    argument. `choices` gives the allowed values of names of this script alone (KNOWN has the shared ones').
    A setting's type follows its default (or KNOWN's type where the default is None): bool ->
    --x/--no-x, list/tuple -> one or more values of the first element's type, str or None -> a string, where
    "none" gives None. Every float must be finite. A THREADS setting takes effect here (runtime.use_threads).
    """
    helps = setting_help(namespace, exclude)
    values = {name: namespace[name] for name in helps}
    values.update(defaults or {})
    parser = _OneLineParser(description=namespace["__doc__"], formatter_class=_HelpFormatter)
    engineering = engineering_settings(namespace["__file__"])
    groups = {False: parser.add_argument_group("the paper's settings" if engineering else "settings"),
              True: parser.add_argument_group("engineering settings: how and where it runs")}
    for name, text in helps.items():
        rule, default = known(name), values[name]
        kwargs = {"default": default, "dest": name, "help": text.replace("%", "%%")}
        if isinstance(default, bool) or (default is None and rule.type is bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_list(default):
            kwargs.update(nargs="+", type=type(default[0]) if default else rule.type or str)
        elif default is None:
            kwargs["type"] = _none_or(rule.type or str)
        else:
            kwargs["type"] = type(default)
        if rule.const is not None:
            kwargs.update(nargs="?", const=rule.const)
        allowed = (choices or {}).get(name, rule.choices)
        if allowed is not None:
            kwargs["choices"] = [*allowed, *([None] if default is None else [])]
        groups[name in engineering].add_argument(flag_name(name), **kwargs)
    for name in positional:
        parser.add_argument(f"{name.lower()}_positional", nargs="?", metavar=name.lower(),
                            help=f"same as {flag_name(name)}")
    args = parser.parse_args(argv)
    config = {}
    for name in helps:
        value = getattr(args, name)
        if name in positional and getattr(args, f"{name.lower()}_positional") is not None:
            value = getattr(args, f"{name.lower()}_positional")
        if isinstance(values[name], tuple) and isinstance(value, list):
            value = tuple(value)
        items = value if _is_list(value) else [value]
        # argparse's float() takes "nan" and "inf" (and 1e999 overflows to inf): no setting means either
        if any(isinstance(item, float) and not math.isfinite(item) for item in items):
            raise UserError(f"{flag_name(name)} must be a finite number, got {value}")
        check = known(name).check
        if check is not None and value is not None and not all(check.holds(item) for item in items):
            raise UserError(f"{flag_name(name)} must be {check.requirement}, got {value}")
        config[name] = value
    if "THREADS" in config:
        use_threads(config["THREADS"])
    return config


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple))


def _none_or(kind):
    def parse(text):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__  # argparse names it in its error messages ("invalid int value")
    return parse


def run_main(main, keep_freed_memory=True):
    """Call `main()`, turning a UserError into a one-line message on stderr and exit status 2; first let
    malloc keep freed tensor memory (models.fast_paths.keep_freed_memory) unless asked not to."""
    if keep_freed_memory:
        fast_paths.keep_freed_memory()
    try:
        main()
    except UserError as error:
        print(f"{sys.argv[0]}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader stopped early (| head): what is left to print is unwanted, and flushing it at exit would fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def run_script(argv):
    """Run `python <argv>` from the repository root, quietly; a failure is a UserError with its last line."""
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{argv[0]} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
