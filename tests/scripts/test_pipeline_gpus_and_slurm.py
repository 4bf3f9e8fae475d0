"""reproduce.py beyond one CPU: a GPU of its own for each running stage, Slurm jobs through submitit (driven here by
submitit's local executor, which runs each job as a process of this machine), and the GPU check with its estimate of
the paper scale's wall time. No test needs a GPU or a cluster: torch's device count is simulated."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reproduce
from sculpting.errors import UserError
from sculpting.reproduction import slurm
from sculpting.reproduction.runner import DEVICES_KEY, GpuLanes, LocalLauncher, Pipeline, Stage
from sculpting.reproduction.schedule import critical_path, wall_time
from sculpting.reproduction.slurm import JOB_SHAPES, SlurmLauncher, job_shapes

from test_reproduce import pipeline_of, three_stages

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.fixture
def dirs(tmp_path):
    return ["--run-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "ckpt"),
            "--out-dir", str(tmp_path / "out")]


def simulate_gpus(monkeypatch, count, visible=None):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def devices_of(capsys, argv):
    """{stage: its CUDA_VISIBLE_DEVICES, or None} of the stages with a command in a dry run's listing."""
    reproduce.main(argv)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[run ]") and ": " in line]
    return {line[7:].split(": ", 1)[0]: (line.split("CUDA_VISIBLE_DEVICES=")[1].split()[0]
                                        if "CUDA_VISIBLE_DEVICES=" in line else None) for line in lines}


def test_a_dry_run_on_four_gpus_shows_one_device_per_stage(monkeypatch, capsys, dirs):
    simulate_gpus(monkeypatch, 4)
    devices = devices_of(capsys, ["--scale", "paper", "--dry-run", "--jobs", "4", *dirs])
    assert len(devices) == 7 + 4 + 2 * 7 + 2 * 12 and set(devices.values()) == {"0", "1", "2", "3"}
    # The first four stages to start, side by side, each on a GPU of its own.
    assert sorted(devices[f"base {g}"] for g in ["MN1", "MN2", "MN3", "M1"]) == ["0", "1", "2", "3"]
    # --gpus chooses among them; under a CUDA_VISIBLE_DEVICES of its own, a stage gets the GPU's name in it.
    assert set(devices_of(capsys, ["--scale", "paper", "--dry-run", "--gpus", "0,2", *dirs]).values()) == {"0", "2"}
    simulate_gpus(monkeypatch, 4, visible="4,5,6,7")
    assert set(devices_of(capsys, ["--scale", "paper", "--dry-run", "--gpus", "1", *dirs]).values()) == {"5"}
    # One job per GPU unless --jobs says otherwise; a CPU-only machine hands out none.
    assert reproduce.main(["--scale", "paper", "--dry-run", *dirs]).jobs == 4
    capsys.readouterr()
    simulate_gpus(monkeypatch, 0)
    assert set(devices_of(capsys, ["--scale", "paper", "--dry-run", "--jobs", "4", *dirs]).values()) == {None}


def test_each_running_stage_gets_a_free_gpu_recorded_in_the_timings(tmp_path):
    pipeline, launcher = pipeline_of(tmp_path, three_stages(tmp_path), gpus=["0", "1"], ticks={"a": 3, "b": 3})
    pipeline.run()
    assert launcher.overlapped("a", "b") and {launcher.gpus["a"], launcher.gpus["b"]} == {"0", "1"}
    devices = json.loads((tmp_path / "timings.json").read_text())[DEVICES_KEY]
    assert devices == {name: f"CUDA_VISIBLE_DEVICES={launcher.gpus[name]}" for name in "abc"}
    # Round-robin over the free GPUs; with more stages running than GPUs, the least loaded.
    lanes = GpuLanes(["0", "1", "2"])
    first, second = lanes.take(), lanes.take()
    lanes.give_back(first)
    assert (first, second, lanes.take(), lanes.take(), lanes.take()) == ("0", "1", "2", "0", "1")
    assert GpuLanes().take() is None


def test_a_local_stage_sees_only_its_gpu(tmp_path):
    seen = tmp_path / "seen"
    stage = Stage("look", [seen], ["-c", f"import os, pathlib; pathlib.Path({str(seen)!r}).write_text("
                                        f"os.environ['CUDA_VISIBLE_DEVICES'])"])
    assert LocalLauncher().start(stage, None, None, "3").process.wait() == 0 and seen.read_text() == "3"


def python_stage(name, folder, code, after=()):
    """A tiny stage whose command is `python -c <code>`, writing folder/<name> when it succeeds."""
    return Stage(name, [folder / name], ["-c", f"import pathlib, sys; {code}; "
                                               f"pathlib.Path({str(folder / name)!r}).write_text('done')"],
                 after=tuple(after), kind="evaluate")


def slurm_pipeline(tmp_path, stages):
    launcher = SlurmLauncher(tmp_path / "run" / "slurm", cluster="local")
    return Pipeline(stages, tmp_path / "run", jobs=len(stages), launcher=launcher, poll_every=0.05), launcher


def test_slurm_jobs_wait_for_their_inputs_a_failure_stops_its_dependants_and_a_rerun_submits_what_is_missing(
        tmp_path, capsys):
    folder = tmp_path / "outputs"
    folder.mkdir()
    needs_a = f"assert pathlib.Path({str(folder / 'a')!r}).exists()"
    stages = [python_stage("a", folder, "pass"), python_stage("b", folder, "sys.exit('b is broken')"),
              python_stage("c", folder, needs_a, after=["a"]), python_stage("d", folder, "pass", after=["b"])]
    pipeline, launcher = slurm_pipeline(tmp_path, stages)
    with pytest.raises(UserError) as caught:
        pipeline.run()
    out = capsys.readouterr().out
    assert (folder / "c").exists() and not (folder / "d").exists()  # c ran after a; d never started
    assert "[job ] a: running as Slurm job" in out and "[run ] d" not in out
    log = Path(str(caught.value).split(", log ")[1].split(")")[0])
    assert str(caught.value).startswith("stage 'b' (Slurm job ") and "1 stages that read from it did not run" in str(
        caught.value)
    assert "b is broken" in log.read_text()
    submitted = json.loads(launcher.jobs_path.read_text())
    assert set(submitted) == {"a", "b", "c"}
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert timings[DEVICES_KEY] == {name: f"Slurm job {submitted[name]}" for name in "ac"}

    # Fixed, the command again: only b and d are submitted.
    stages[1] = python_stage("b", folder, "pass")
    pipeline, launcher = slurm_pipeline(tmp_path, stages)
    pipeline.run()
    out = capsys.readouterr().out
    assert "[skip] a" in out and "[skip] c" in out and (folder / "d").exists()
    resubmitted = json.loads(launcher.jobs_path.read_text())
    assert [name for name in "abcd" if resubmitted[name] != submitted.get(name)] == ["b", "d"]


class RunningSlurmJob:
    """A job of a Slurm cluster that an earlier call submitted: running, then ended well, writing `output`."""
    output = None

    def __init__(self, folder, job_id):
        self.job_id, self.paths, self.polls = job_id, type("Paths", (), {"stdout": Path(folder) / "job.out"}), 0
        self.state = "RUNNING"

    def get_info(self, mode):
        return {"State": self.state}

    def done(self):
        self.polls += 1
        if self.polls > 1:
            self.output.write_text("done")
        return self.polls > 1

    def exception(self):
        return None


def test_a_rerun_watches_the_slurm_jobs_still_running_instead_of_submitting_them_again(tmp_path, monkeypatch, capsys):
    stage = python_stage("a", tmp_path, "pass")
    launcher = SlurmLauncher(tmp_path / "slurm")  # a real cluster's launcher: submitting would need sbatch
    launcher._remember("a", "4242")
    RunningSlurmJob.output = stage.outputs[0]
    monkeypatch.setattr(slurm.submitit, "SlurmJob", RunningSlurmJob)
    Pipeline([stage], tmp_path, launcher=launcher, poll_every=0).run()
    assert "Slurm job 4242, submitted by an earlier call, is still running" in capsys.readouterr().out
    assert launcher.executor is None and stage.outputs[0].exists()


def test_slurm_jobs_ask_for_the_resources_of_their_kind(capsys, dirs):
    reproduce.main(["--scale", "paper", "--dry-run", "--launcher", "slurm", "--slurm-time", "base=2880", "600",
                    "--slurm-partition", "gpu", "evaluate=cpu", "--slurm-gpus", "2", "evaluate=0", *dirs])
    lines = capsys.readouterr().out.splitlines()
    assert "base MN1: Slurm job (base: 2 GPU, 8 CPUs, 2880 min, partition gpu) train_diffusion.py" in lines[0]
    evaluation = next(line for line in lines if line.startswith("[run ] evaluate individual MN1"))
    assert "Slurm job (evaluate: 0 GPU, 4 CPUs, 600 min, partition cpu) evaluate_composition.py" in evaluation
    assert job_shapes()["sample"] == JOB_SHAPES["sample"]
    assert slurm.sbatch_options(["account=proj", "exclusive"]) == {"account": "proj", "exclusive": ""}


@pytest.mark.parametrize("argv, count, message", [
    (["--gpus", "0"], 0, "--gpus 0: this machine has no CUDA device; leave --gpus out to run on the CPU"),
    (["--gpus", "0,4"], 4, r"--gpus 0,4: give distinct device indices separated by commas, each from 0 to 3"),
    (["--gpus", "1,1"], 4, "give distinct device indices"),
    (["--launcher", "slurm", "--gpus", "0"], 4, "a Slurm job gets its GPUs from Slurm: use --slurm-gpus"),
    (["--slurm-time", "60"], 0, "--slurm-time sets Slurm jobs; add --launcher slurm"),
    (["--launcher", "slurm", "--slurm-time", "sample=0"], 0, "--slurm-time sample=0: '0' is not a whole number of"),
    (["--launcher", "slurm", "--slurm-gpus", "train=1"], 0, "--slurm-gpus train=1: no stage kind 'train'"),
    (["--launcher", "slurm", "--slurm-options", "qos:high"], 0, "give sbatch's long options as NAME=VALUE"),
])
def test_bad_launch_flags_are_refused_before_anything_runs(monkeypatch, dirs, argv, count, message):
    simulate_gpus(monkeypatch, count)
    with pytest.raises(UserError, match=message):
        reproduce.main(["--dry-run", *argv, *dirs])


def test_an_unknown_launcher_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "reproduce.py", "--launcher", "kubernetes", "--dry-run", "--run-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "argument --launcher: invalid choice: 'kubernetes' (choose from 'local', 'slurm')" in result.stderr


def test_the_schedule_of_a_stage_graph_on_paper():
    stages = [Stage("a", [], ["a"]), Stage("b", [], ["b"]), Stage("export a", [], after=("a",)),
              Stage("c", [], ["c"], after=("export a", "b"))]
    seconds = {"a": 3.0, "b": 1.0, "c": 2.0}
    assert critical_path(stages, seconds) == (5.0, ["a", "export a", "c"])
    assert [wall_time(stages, seconds, lanes) for lanes in (1, 2, 3)] == [6.0, 5.0, 5.0]


def test_the_gpu_check_estimates_the_paper_scale_from_its_timings():
    timings = {"startup_s": 5.0, "train_step_s": 0.01, "evaluate_s": 0.5, "num_samples": 64,
               "classifier_step_s": {"train_classifier.py": 2.0, "train_3way_classifier.py": 3.0,
                                     "train_3way_conditional_classifier.py": 12.0}}
    estimate = gpu_check.estimate(timings)
    assert estimate["critical_path"][1:3] == ["3-way classifier", "3-way conditional classifier"]
    assert estimate["critical_path"][0] in {"base MN1", "base MN2", "base MN3"}
    hours = estimate["wall_time_h"]
    assert hours["1 GPU"] > hours["4 GPUs"] >= hours["8 GPUs"] >= estimate["critical_path_h"] > 0
    assert estimate["stage_h"]["base MN2"] == pytest.approx((5.0 + 200 * 792 * 0.01) / 3600)  # 25,330 images / 32


def test_the_gpu_check_runs_on_a_cpu(tmp_path):
    """One sample run at --tiny sizes: the check, its evaluation and its report, without a GPU."""
    with pytest.raises(UserError, match="--rows 12: choose from 0 1"):
        gpu_check.main(["--tiny", "--rows", "12"])
    report = gpu_check.main(["--tiny", "--device", "cpu", "--parts", "sample", "--rows", "0", "--samplers",
                             "heun-churn", "--precisions", "float32", "--out-dir", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
    assert report["device"].startswith("cpu") and report["estimate"] is None  # no training timed: nothing to estimate
    (check,) = report["checks"]
    assert check["passed"] and check["fast_path"] == "eager float32" and check["target"] is None
    assert report["samples"][0]["sampler"] == "heun-churn" and 0 <= check["support_precision"] <= 1
