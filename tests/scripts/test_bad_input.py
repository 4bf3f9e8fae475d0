"""Bad input, tried as a hostile new user would: every row runs a script's `main` in-process as `python <script>
<argv>` would (cli.run_main) and expects exit status 2, one line on stderr that names the bad value, and no file
changed (written, even alike) in the repository or among the row's own files.

A row is (script module, argv, what the message must contain). "{tmp}" in either is a session folder that holds
the files the rows name (the `arena` fixture); SAMPLE, TRAIN, CLASSIFY and the like are tiny settings that keep a
row fast should its check ever be lost. Adding a case is adding a row.
"""
import importlib
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import torch

from sculpting.cli import run_main

REPO = Path(__file__).resolve().parents[2]
WRITTEN_BY_SCRIPTS = ["checkpoints", "outputs", "runs", "results"]  # besides the tracked files

SAMPLE = ["--device", "cpu", "--out-dir", "{tmp}/out", "--num-samples", "2", "--num-steps", "3", "--sampler",
          "heun-churn"]
TINY_MODELS = ["--gen-ckpt-dir", "{tmp}/ckpt"]  # tiny M2 (3 channels) and MN1 (1 channel: the wrong architecture)
TRAIN = ["--device", "cpu", "--ckpt-dir", "{tmp}/run", "--epochs", "1", "--train-subset", "32", "--channels", "32",
         "32", "32", "32", "--embed-dim", "16"]
CLASSIFY = ["--device", "cpu", "--ckpt-dir", "{tmp}/run", "--steps", "1", "--batch-size", "2", "--pool-size", "2",
            "--trajectory-steps", "3", "--test-samples", "2", "--sampler", "heun-churn"]
SAMPLES = ["{tmp}/samples.pt", "--out-dir", "{tmp}/out"]  # 4 valid M1/M2 samples, y = (1, 2)
ORACLE = ["--device", "cpu", "--oracle", "{tmp}/out/oracle.pth"]
JUDGE = ["--out-dir", "{tmp}/out"]  # evaluate_classifier
OPERATORS = ["--device", "cpu", "--out-dir", "{tmp}/out", "--num-samples", "2", "--only", "M1_M2/fkc-smc"]
JOINT = ["--joint-ckpt", "{tmp}/joint_MN2_cell.pth"]  # a tiny joint model of MN2's cells (sample_joint_diffusion)
JOINT_TABLES = ["--device", "cpu", "--out-dir", "{tmp}/out", "--num-samples", "2", "--batch-size", "2",
                "--no-update-docs"]  # evaluate_joint_diffusion: never the docs, whatever the row
SHIPPED = "is shipped with the repository (listed in checkpoints/MANIFEST.sha256) and is never replaced or removed"

CASES = [
    # unknown names and choices
    ("sample_individual_model", [*SAMPLE, "--gen-idx", "X"], "unknown model 'X'"),
    ("sample_composition", [*SAMPLE, "--gen-idx-2", "M9"], "unknown model 'M9'"),
    ("train_3way_classifier", [*CLASSIFY, "--gen-idx-3", "MN4"], "unknown model 'MN4'"),
    ("sample_composition", [*SAMPLE, "--gen-idx-2", "MN2xMN9"], "composite 'MN2xMN9' names unknown model 'MN9'"),
    ("train_classifier", [*CLASSIFY, "--gen-idx-2", "MN2+MN3"], "unknown model 'MN2+MN3'"),
    ("sample_individual_model", [*SAMPLE, "--gen-idx", "MN2-MN3", "--composite-classifier-dir", "{tmp}"],
     "needs the joint classifier of MN2 and MN3"),
    ("train_diffusion", [*TRAIN, "--gen-idx", "MN2xMN3"], "invalid choice: 'MN2xMN3'"),
    ("evaluate_composition", [*SAMPLES, "--models", "X", "M2"], "unknown model 'X'"),
    ("sample_individual_model", [*SAMPLE, "--palette", "x"], "invalid choice: 'x'"),
    ("sample_individual_model", [*SAMPLE, "--sampler", "euler"], "invalid choice: 'euler'"),
    ("sample_composition", [*SAMPLE, "--precision", "float16"], "invalid choice: 'float16'"),
    ("train_diffusion", [*TRAIN, "--preset", "x"], "invalid choice: 'x'"),
    ("reproduce", ["--dry-run", "--scale", "huge"], "invalid choice: 'huge'"),
    ("sample_individual_model", [*SAMPLE, "--num-steps", "abc"], "invalid int value: 'abc'"),
    ("sample_individual_model", [*SAMPLE, "--num-samples", "1e9"], "invalid int value: '1e9'"),
    ("reproduce", ["--dry-run", "--only", "("], "--only must be a regular expression, got ("),
    ("train_joint_diffusion", [*TRAIN, "--label", "x"], "invalid choice: 'x'"),
    ("train_joint_diffusion", [*TRAIN, "--model", "x"], "invalid choice: 'x'"),
    ("train_joint_diffusion", [*TRAIN, "--head-features", "x"], "invalid choice: 'x'"),
    ("sample_joint_diffusion", [*SAMPLE, *JOINT, "--guidance-variant", "x"], "invalid choice: 'x'"),
    ("sample_composition", [*SAMPLE, "--compile", "sometimes"], "invalid choice: 'sometimes'"),
    ("train_diffusion", [*TRAIN, "--compile", "auto"], "invalid choice: 'auto'"),  # training: on or off
    ("evaluate_joint_diffusion", [*JOINT_TABLES, "--parts", "x"], "--parts takes accuracy and/or sampling, got ['x']"),
    ("compare_operators", [*OPERATORS, "--only", "(("], "--only must be a regular expression, got (("),
    ("compare_operators", [*OPERATORS, "--only", "no-such-row"], "--only 'no-such-row' matches no row"),
    # labels out of range
    ("sample_composition", [*SAMPLE, "--y-1", "3"], "observation 3 is out of range"),
    ("sample_composition", [*SAMPLE, "--y-2", "0"], "--y-2 must be positive, got 0"),
    ("sample_3way_composition", [*SAMPLE, "--y-3", "4"], "observation 4 is out of range"),
    ("evaluate_composition", [*SAMPLES, "--observations", "5", "1"], "observation 5 is out of range"),
    ("evaluate_composition", [*SAMPLES, "--observations", "x"], "got ['x']"),
    ("sample_joint_diffusion", [*SAMPLE, *JOINT, "--classes", "blue 7"],
     "--classes ['blue 7']: this model's head predicts cells ['red 0', 'green 0', 'red 1', 'green 1']"),
    # base models and labels that make no classifier: one model twice, one dataset, grey and coloured mixed
    ("train_classifier", [*CLASSIFY, "--gen-idx-1", "M1", "--gen-idx-2", "M1"],
     "--gen-idx-1 and --gen-idx-2 name the same model M1; a classifier separates different models"),
    ("train_3way_classifier", [*CLASSIFY, "--gen-idx-3", "MN1"], "--gen-idx-1 and --gen-idx-3 name the same model MN1"),
    ("train_3way_conditional_classifier", [*CLASSIFY, "--gen-idx-2", "MN3"],
     "--gen-idx-2 and --gen-idx-3 name the same model MN3"),
    ("train_joint_diffusion", [*TRAIN, "--gen-idx", "M1", "M1"], "--gen-idx names a dataset twice: ['M1', 'M1']"),
    ("train_joint_diffusion", [*TRAIN, "--gen-idx", "M1", "--label", "dataset"],
     "--label dataset needs two or more datasets"),
    ("train_joint_diffusion", [*TRAIN, "--gen-idx", "1", "M1"], "datasets ['1', 'M1'] mix grey and coloured images"),
    ("train_joint_diffusion", [*TRAIN, "--label", "colour", "--multi-label-classifier"],
     "a multi-label classifier predicts a cell's digit and colour: use it with --label cell"),
    # non-positive and impossible sizes
    ("sample_individual_model", [*SAMPLE, "--num-samples", "0"], "--num-samples must be positive, got 0"),
    ("sample_individual_model", [*SAMPLE, "--batch-size", "-4"], "--batch-size must be positive, got -4"),
    ("sample_individual_model", [*SAMPLE, "--num-steps", "1"], "--num-steps must be at least 2 steps"),
    ("sample_individual_model", [*SAMPLE, "--seed", "-1"], "--seed must be >= 0, got -1"),
    ("sample_individual_model", [*SAMPLE, "--gen-ckpt-epoch", "-1"], "--gen-ckpt-epoch must be >= 0, got -1"),
    ("sample_individual_model", [*SAMPLE, "--threads", "-1"], "--threads must be >= 0, got -1"),
    ("train_diffusion", [*TRAIN, "--epochs", "0"], "--epochs must be positive, got 0"),
    ("train_diffusion", [*TRAIN, "--train-subset", "-1"], "--train-subset must be >= 0, got -1"),
    ("train_diffusion", [*TRAIN, "--channels", "33"], "got [33]"),
    ("train_diffusion", [*TRAIN, "--channels", "30", "64", "96", "128"], "got [30, 64, 96, 128]"),
    ("train_classifier", [*CLASSIFY, "--steps", "0"], "--steps must be positive, got 0"),
    ("train_classifier", [*CLASSIFY, "--trajectory-steps", "1"], "--trajectory-steps must be at least 2 steps"),
    ("train_classifier", [*CLASSIFY, "--classifier-channels", "0", "64"], "got [0, 64]"),
    ("train_3way_classifier", [*CLASSIFY, "--pool-size", "0"], "--pool-size must be positive, got 0"),
    ("train_oracle", [*ORACLE, "--epochs", "0"], "--epochs must be positive, got 0"),
    ("train_oracle", [*ORACLE, "--junk-fraction", "-1"], "--junk-fraction must be >= 0, got -1.0"),
    ("evaluate_classifier", [*JUDGE, "--images-per-cell", "0"], "--images-per-cell must be positive, got 0"),
    ("reproduce", ["--dry-run", "--jobs", "0"], "--jobs must be positive, got 0"),
    ("reproduce", ["--dry-run", "--num-steps", "1"], "--num-steps must be at least 2 steps"),
    ("compare_operators", [*OPERATORS, "--em-steps", "1"], "--em-steps must be at least 2 steps"),
    # numbers out of range, and non-finite ones
    ("sample_composition", [*SAMPLE, "--guidance", "-1"], "--guidance must be >= 0, got -1.0"),
    ("sample_composition", [*SAMPLE, "--guidance", "nan"], "--guidance must be a finite number, got nan"),
    ("sample_composition", [*SAMPLE, "--guidance", "inf"], "--guidance must be a finite number, got inf"),
    ("sample_3way_composition", [*SAMPLE, "--guidance-3", "1e999"], "--guidance-3 must be a finite number, got inf"),
    ("sample_individual_model", [*SAMPLE, "--churn", "-1"], "churn must be a finite number >= 0, got -1.0"),
    ("sample_individual_model", [*SAMPLE, "--churn", "nan"], "--churn must be a finite number, got nan"),
    ("sample_individual_model", [*SAMPLE, "--sigma-min", "100"], "sigma_min must be below the prior's noise level"),
    ("sample_individual_model", [*SAMPLE, "--sigma-min", "0"], "sigma_min must be > 0, got 0.0"),
    ("sample_individual_model", [*SAMPLE, "--sampler", "pc", "--snr", "0"], "--snr must be positive, got 0.0"),
    ("train_diffusion", [*TRAIN, "--lr", "inf"], "--lr must be a finite number, got inf"),
    ("train_classifier", [*CLASSIFY, "--lr-decay", "0"], "--lr-decay must be in (0, 1], got 0.0"),
    ("train_classifier", [*CLASSIFY, "--step-fraction", "2"], "--step-fraction must be in (0, 1], got 2.0"),
    ("train_classifier", [*CLASSIFY, "--terminal-loss-scale", "nan"], "--terminal-loss-scale must be a finite number"),
    ("train_classifier", [*CLASSIFY, "--sigma-min", "50"], "sigma_min must be below the prior's noise level"),
    ("train_3way_conditional_classifier", [*CLASSIFY, "--guidance", "nan"], "--guidance must be a finite number"),
    ("train_oracle", [*ORACLE, "--max-rotation-deg", "nan"], "--max-rotation-deg must be a finite number"),
    ("evaluate_composition", [*SAMPLES, "--ci-level", "1"], "--ci-level must be in (0, 1), got 1.0"),
    ("evaluate_composition", [*SAMPLES, "--bootstrap", "0"], "--bootstrap must be positive, got 0"),
    ("evaluate_composition", [*SAMPLES, "--confidence-threshold", "0"], "--confidence-threshold must be in (0, 1]"),
    ("evaluate_classifier", [*JUDGE, "--time", "0"], "--time must be in (0, 1], got 0.0"),
    ("evaluate_classifier", [*JUDGE, "--time", "nan"], "--time must be a finite number, got nan"),
    ("train_joint_diffusion", [*TRAIN, "--classifier-loss-scaling", "nan"],
     "--classifier-loss-scaling must be a finite number, got nan"),
    ("train_joint_diffusion", [*TRAIN, "--classifier-loss-scaling", "-1"],
     "--classifier-loss-scaling must be >= 0, got -1.0"),
    ("sample_joint_diffusion", [*SAMPLE, *JOINT, "--sampling-lr", "-1"], "--sampling-lr must be >= 0, got -1.0"),
    # devices
    ("sample_individual_model", [*SAMPLE, "--device", "tpu9"], "unknown device 'tpu9'"),
    ("sample_individual_model", [*SAMPLE, "--device", "meta"], "unknown device 'meta'"),
    ("sample_composition", [*SAMPLE, "--device", "cuda:99"], "--device cuda:99"),
    ("train_diffusion", [*TRAIN, "--device", "cuda:99"], "--device cuda:99"),
    # checkpoints: missing, empty, truncated, not torch, not a state_dict, another architecture or kind
    ("sample_individual_model", [*SAMPLE, "--gen-ckpt-dir", "{tmp}/nowhere"], "nowhere/gen_MN1_ckpt_195.pth not found"),
    ("sample_individual_model", [*SAMPLE, "--gen-ckpt-path", "{tmp}/empty.pt"], "empty.pt: empty file"),
    ("sample_individual_model", [*SAMPLE, "--gen-ckpt-path", "{tmp}/truncated.pt"],
     "truncated.pt: not a complete file written by torch.save"),
    ("sample_individual_model", [*SAMPLE, "--gen-ckpt-path", "{tmp}/text.pt"],
     "text.pt: not a complete file written by torch.save"),
    ("sample_individual_model", [*SAMPLE, "--gen-ckpt-path", "{tmp}/list.pth"], "list.pth is not a state_dict"),
    ("sample_individual_model", [*SAMPLE, *TINY_MODELS, "--gen-idx", "MN1"], "input_channels 1, expected 3"),
    ("sample_composition", [*SAMPLE, "--classifier-ckpt", "checkpoints/3way_classifier_ckpt_700.pth"],
     "3way_classifier_ckpt_700.pth does not fit JointYClassifier"),
    ("sample_composition", [*SAMPLE, "--classifier-ckpt", "checkpoints/gen_M1_ckpt_195.pth"],
     "gen_M1_ckpt_195.pth: not a classifier state_dict"),
    ("sample_3way_composition", [*SAMPLE, "--conditional-classifier-ckpt", "checkpoints/classifier_ckpt_200.pth"],
     "classifier_ckpt_200.pth does not fit ThreeWayConditionalYClassifier"),
    ("train_3way_conditional_classifier", [*CLASSIFY, "--classifier-ckpt", "checkpoints/classifier_ckpt_200.pth"],
     "classifier_ckpt_200.pth does not fit ThreeWayJointYClassifier"),
    ("train_3way_conditional_classifier", [*CLASSIFY, "--classifier-ckpt", "{tmp}/text.pt"], "text.pt"),
    ("train_classifier", [*CLASSIFY, "--gen-ckpt-dir", "{tmp}/nowhere"], "nowhere/gen_M1_ckpt_195.pth not found"),
    ("evaluate_classifier", [*JUDGE, "--classifier-ckpt", "{tmp}/nowhere.pth"], "nowhere.pth not found"),
    ("evaluate_classifier", [*JUDGE, "--classifier-ckpt", "checkpoints/gen_M1_ckpt_195.pth"],
     "gen_M1_ckpt_195.pth: not a classifier state_dict"),
    ("evaluate_classifier", [*JUDGE, "--models", "M1", "M2"], "does not fit JointYClassifier"),
    ("evaluate_classifier", [*JUDGE, "--models", "M1"], "got 1"),
    ("evaluate_composition", [*SAMPLES, "--oracle", "{tmp}/text.pt"], "text.pt: not a complete file"),
    ("train_oracle", [*ORACLE, "--evaluate-only", "--oracle", "{tmp}/nowhere.pth"], "nowhere.pth not found"),
    ("train_diffusion", [*TRAIN, "--ckpt-dir", "{tmp}/empty_run", "--resume"], "nothing to resume"),
    ("train_joint_diffusion", [*TRAIN, "--ckpt-dir", "{tmp}/empty_run", "--resume"],
     "nothing to resume: {tmp}/empty_run/joint_MN2_cell_train_state.pth does not exist"),
    ("sample_joint_diffusion", [*SAMPLE, "--joint-ckpt", "{tmp}/empty.pt"], "empty.pt: empty file"),
    ("sample_joint_diffusion", [*SAMPLE, "--joint-ckpt", "checkpoints/gen_M1_ckpt_195.pth"],
     "checkpoints/gen_M1_ckpt_195.pth: no classifier head"),
    ("evaluate_joint_diffusion", [*JOINT_TABLES, "--parts", "accuracy", "--joint-cell-ckpt", "{tmp}/text.pt"],
     "text.pt: not a complete file written by torch.save"),
    # shipped checkpoints: never replaced, and paired only with the base models they were trained on
    ("train_diffusion", [*TRAIN, "--gen-idx", "MN1", "--ckpt-dir", "checkpoints"],
     f"checkpoints/gen_MN1_ckpt_195.pth {SHIPPED}; choose another --ckpt-dir"),
    ("train_diffusion", [*TRAIN, "--gen-idx", "MN1", "--ckpt-dir", "checkpoints", "--overwrite"],
     f"checkpoints/gen_MN1_ckpt_195.pth {SHIPPED}; choose another --ckpt-dir"),
    ("train_classifier", [*CLASSIFY, "--ckpt-dir", "checkpoints"],
     f"checkpoints/classifier_ckpt_200.pth {SHIPPED}; choose another --ckpt-dir"),
    ("train_oracle", [*ORACLE, "--ckpt-dir", "checkpoints"],
     f"checkpoints/oracle.pth {SHIPPED}; choose another --ckpt-dir"),
    # no dry run: the refusal comes before the first stage (its run dir is the arena's, not runs/cpu)
    ("reproduce", ["--scale", "cpu", "--export-dir", "checkpoints", "--run-dir", "{tmp}/reproduce_run", "--out-dir",
                   "{tmp}/out"],
     f"checkpoints/gen_MN1_ckpt_195.pth {SHIPPED}; pass --export-dir {{tmp}}/reproduce_run/checkpoints to export "
     "beside it"),
    ("sample_composition", [*SAMPLE, "--gen-idx-1", "MN1", "--gen-idx-2", "MN2"],
     "checkpoints/classifier_ckpt_200.pth was trained on M1, M2, not MN1, MN2; pass the classifier trained on them, "
     "or --force to use it anyway"),
    ("sample_composition", [*SAMPLE, "--gen-idx-1", "M2", "--gen-idx-2", "M1"],
     "checkpoints/classifier_ckpt_200.pth was trained on M1, M2, not M2, M1"),
    ("evaluate_classifier", [*JUDGE, "--classifier-ckpt", "checkpoints/classifier_ckpt_200.pth", "--models", "MN1",
                             "MN2"], "checkpoints/classifier_ckpt_200.pth was trained on M1, M2, not MN1, MN2"),
    ("sample_composition", [*SAMPLE, "--gen-ckpt-path-2", "{tmp}/gen_M2_retrained.pth"],
     "not {tmp}/gen_M2_retrained.pth (SHA-256 "),  # a retrained M2: the classifier was trained on the shipped one
    # output folders that cannot be written (a file where a folder should be), outputs of other settings
    ("sample_individual_model", [*SAMPLE, "--out-dir", "{tmp}/text.pt/out"], "text.pt/out: Not a directory"),
    ("sample_composition", [*SAMPLE, "--out-dir", "{tmp}/text.pt"], "text.pt: File exists"),
    ("train_diffusion", [*TRAIN, "--ckpt-dir", "{tmp}/text.pt/run"], "text.pt/run: Not a directory"),
    ("train_diffusion", [*TRAIN, "--data-root", "README.md"], "README.md is a file, not a folder"),
    ("train_oracle", [*ORACLE, "--data-root", "{tmp}/text.pt/data"], "text.pt is a file, not a folder"),
    ("train_classifier", [*CLASSIFY, "--ckpt-dir", "{tmp}/text.pt/run"], "text.pt/run: Not a directory"),
    ("evaluate_composition", [*SAMPLES, "--out-dir", "{tmp}/text.pt/out"], "text.pt/out: Not a directory"),
    ("reproduce", ["--dry-run", "--run-dir", "{tmp}/text.pt/run"], "cannot write to output folder {tmp}/text.pt/run"),
    ("sample_individual_model", [*SAMPLE, *TINY_MODELS, "--gen-idx", "M2", "--out-dir", "{tmp}/taken"],
     "num_steps 500 (now 3)"),
    ("sample_individual_model", [*SAMPLE, *TINY_MODELS, "--gen-idx", "M2", "--out-dir", "{tmp}/orphan"],
     "individual_M2.png exists without a readable individual_M2.json"),
    # samples and their .json, malformed
    ("evaluate_composition", [], "pass the samples PATH.pt"),
    ("evaluate_composition", ["{tmp}/nowhere.pt"], "nowhere.pt not found"),
    ("evaluate_composition", ["{tmp}/empty.pt"], "empty.pt: not a complete file written by torch.save"),
    ("evaluate_composition", ["{tmp}/truncated.pt"], "truncated.pt: not a complete file written by torch.save"),
    ("evaluate_composition", ["{tmp}/text.pt"], "text.pt: not a complete file written by torch.save"),
    ("evaluate_composition", ["{tmp}/flat.pt"], "flat.pt holds [4, 28, 28]"),
    ("evaluate_composition", ["{tmp}/none.pt"], "none.pt holds [0, 3, 28, 28]"),
    ("evaluate_composition", ["{tmp}/grey.pt"], "samples have 1 channel(s) but models ['M1', 'M2'] make 3"),
    ("evaluate_composition", ["{tmp}/nan.pt"], "2 of 4 samples in {tmp}/nan.pt contain NaN or Inf"),
    ("evaluate_classifier", [*JUDGE, "--samples", "{tmp}/nan.pt"], "2 of 4 samples in {tmp}/nan.pt contain NaN"),
    ("evaluate_composition", ["{tmp}/unsettled.pt"], "no unsettled.json beside the samples"),
    ("evaluate_composition", ["{tmp}/broken.pt"], "broken.json is not valid JSON"),
    ("evaluate_composition", ["{tmp}/listed.pt"], "listed.json is not the settings .json"),
    ("evaluate_composition", ["{tmp}/modelless.pt"], "modelless.json lists no models"),
    ("evaluate_composition", [*SAMPLES, "--base-evaluations", "{tmp}/samples.json"], "got 1"),
    ("evaluate_composition", [*SAMPLES, "--base-evaluations", "{tmp}/samples.pt", "{tmp}/samples.pt"],
     "samples.pt is not an _eval.json"),
    ("evaluate_composition", [*SAMPLES, "--base-evaluations", "{tmp}/samples.json", "{tmp}/samples.json"],
     "samples.json is not an _eval.json"),
    ("evaluate_classifier", [*JUDGE, "--samples", "{tmp}/text.pt"], "text.pt: not a complete file"),
]


def tiny_score_model_state(input_channels):
    from models.score_model import ScoreNet
    from sculpting.sde import VESDE

    return ScoreNet(VESDE().marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=16,
                    input_channels=input_channels).state_dict()


def tiny_joint_model_state():
    from models.joint_diffusion import JointScoreNet
    from sculpting.sde import VESDE

    cells = {"label": "cell", "classes": ["red 0", "green 0", "red 1", "green 1"], "datasets": ["MN2"],
             "multi_label": False}
    return JointScoreNet(VESDE().marginal_prob_std, cells, "all", (32, 32, 32, 32), 16, 3).state_dict()


def retrained_copy(path):
    """A shipped base model's state_dict with one tensor changed: the same name and architecture, other content (a
    retrained model), which the shipped classifiers' provenance tells apart by its SHA-256."""
    state = torch.load(path)
    first = next(iter(state))
    state[first] = state[first] + 1
    return state


def save_samples_with_settings(folder, name, samples, settings):
    torch.save(samples, folder / f"{name}.pt")
    if settings is not None:
        (folder / f"{name}.json").write_text(settings if isinstance(settings, str) else json.dumps(settings))


@pytest.fixture(scope="session")
def arena(tmp_path_factory):
    """The files the rows name: broken checkpoints and samples, tiny base models, earlier outputs."""
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "text.pt").write_text("not a torch file\n")
    (tmp / "empty.pt").write_bytes(b"")
    buffer = io.BytesIO()
    torch.save(torch.zeros(3, 28, 28), buffer)
    (tmp / "truncated.pt").write_bytes(buffer.getvalue()[:200])
    torch.save([1, 2], tmp / "list.pth")
    (tmp / "ckpt").mkdir()
    torch.save(tiny_score_model_state(3), tmp / "ckpt" / "gen_M2_ckpt_195.pth")
    torch.save(tiny_score_model_state(1), tmp / "ckpt" / "gen_MN1_ckpt_195.pth")
    torch.save(tiny_joint_model_state(), tmp / "joint_MN2_cell.pth")
    torch.save(retrained_copy(REPO / "checkpoints" / "gen_M2_ckpt_195.pth"), tmp / "gen_M2_retrained.pth")
    (tmp / "empty_run").mkdir()
    pair = {"models": ["M1", "M2"], "observations": [1, 2]}
    for name, samples, settings in [("samples", torch.rand(4, 3, 28, 28), pair),
                                    ("flat", torch.rand(4, 28, 28), pair),
                                    ("none", torch.rand(0, 3, 28, 28), pair),
                                    ("grey", torch.rand(4, 1, 28, 28), pair),
                                    ("nan", torch.rand(4, 3, 28, 28).index_fill(0, torch.tensor([1, 3]), float("nan")),
                                     pair),
                                    ("unsettled", torch.rand(4, 3, 28, 28), None),
                                    ("broken", torch.rand(4, 3, 28, 28), "{oops"),
                                    ("listed", torch.rand(4, 3, 28, 28), "[1, 2]"),
                                    ("modelless", torch.rand(4, 3, 28, 28), {"models": 5})]:
        save_samples_with_settings(tmp, name, samples, settings)
    (tmp / "taken").mkdir()
    earlier = {"kind": "individual", "models": ["M2"], "checkpoints": [str(tmp / "ckpt" / "gen_M2_ckpt_195.pth")],
               "sampler": "heun-churn", "num_steps": 500}  # the tiny M2 at 500 steps
    save_samples_with_settings(tmp / "taken", "individual_M2", torch.rand(2, 3, 28, 28), earlier)
    (tmp / "orphan").mkdir()
    (tmp / "orphan" / "individual_M2.png").write_bytes(b"")
    return tmp


@pytest.fixture(scope="session")
def file_states(arena):
    """A function giving {path: (size, modification time in ns)} of every file no row may change: the tracked
    ones (listed once per session), those under the folders the scripts write by default, and the arena's. A
    write changes the time even where it leaves the content as it was."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True).stdout
    tracked = {REPO / name for name in listed.split("\0") if name}

    def states():
        paths = set(tracked)
        for folder in [*(REPO / name for name in WRITTEN_BY_SCRIPTS), arena]:
            paths.update(path for path in folder.rglob("*") if path.is_file())
        return {path: (stat.st_size, stat.st_mtime_ns) for path in paths if (stat := _stat(path))}
    return states


def _stat(path):
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def run_as_script(module_name, argv):
    """`python <module>.py <argv>` in-process: the exit status and what went to stderr."""
    module = importlib.import_module(module_name)
    stderr = io.StringIO()
    with mock.patch.object(sys, "argv", [f"{module_name}.py", *argv]), redirect_stderr(stderr), \
            redirect_stdout(io.StringIO()):
        try:
            run_main(module.main, keep_freed_memory=False)
        except SystemExit as exit:
            return exit.code, stderr.getvalue()
    return 0, stderr.getvalue()


@pytest.mark.parametrize("module_name, argv, message", [
    pytest.param(module_name, argv, message, id=f"{module_name} {' '.join(argv[-2:])}")
    for module_name, argv, message in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(module_name, argv, message, arena, file_states):
    argv = [arg.replace("{tmp}", str(arena)) for arg in argv]
    before = file_states()
    code, stderr = run_as_script(module_name, argv)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"{module_name}.py: error: ") and message.replace("{tmp}", str(arena)) in lines[0], \
        lines[0]
    assert file_states() == before


def test_the_table_covers_every_script():
    scripts = {"sample_individual_model", "sample_composition", "sample_3way_composition", "evaluate_composition",
               "evaluate_classifier", "train_diffusion", "train_classifier", "train_3way_classifier",
               "train_3way_conditional_classifier", "train_oracle", "reproduce", "compare_operators",
               "train_joint_diffusion", "sample_joint_diffusion", "evaluate_joint_diffusion"}
    assert scripts <= {module_name for module_name, _, _ in CASES}


def test_samples_of_other_settings_are_kept_unless_overwrite(arena, tmp_path):
    """Another seed is another file; the same settings may be sampled again; other settings under the same name
    are refused (the rows above) until --overwrite replaces them."""
    import sample_individual_model

    sample = ["--gen-idx", "M2", "--gen-ckpt-dir", str(arena / "ckpt"), "--out-dir", str(tmp_path), "--device", "cpu",
              "--num-samples", "2", "--num-steps", "3"]
    for argv in (sample, sample, [*sample, "--seed", "3"], [*sample, "--num-steps", "4", "--overwrite"]):
        sample_individual_model.main(argv)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"individual_M2{seed}{suffix}" for seed in ("", "_s3") for suffix in (".json", ".png", ".pt")]
    assert json.loads((tmp_path / "individual_M2.json").read_text())["num_steps"] == 4
    assert json.loads((tmp_path / "individual_M2_s3.json").read_text())["num_steps"] == 3
