"""reproduce.py and its parts: the stage graph, the runner (with a fake launcher), checkpoint export, the report."""
import json
import os
from pathlib import Path

import pytest
import torch

import reproduce
from sculpting import checkpoints
from sculpting.artefacts import composition_stem, provenance_sidecar
from sculpting.checkpoints import is_shipped, load_classifier, load_score_model, record_shipped
from sculpting.errors import UserError
from models.score_model import ScoreNet
from sculpting.reproduction.report import write_summary
from sculpting.reproduction.runner import WALL_TIME_KEY, Launcher, Pipeline, Stage, last_progress
from sculpting.reproduction.stages import export_checkpoint, final_epoch
from sculpting.sde import VESDE
from sculpting.showcase import SHOWCASE


def stage_lines(capsys, argv):
    reproduce.main(argv)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]


def test_dry_run_lists_stages_after_what_they_need(tmp_path, capsys):
    dirs = ["--run-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "ckpt"), "--out-dir", str(tmp_path / "out")]
    pipeline = reproduce.main(["--dry-run", *dirs])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    names = [stage.name for stage in pipeline.stages]
    assert [line.split(":")[0][7:] for line in lines] == names and all(line.startswith("[run ]") for line in lines)
    for position, stage in enumerate(pipeline.stages):
        assert all(names.index(needed) < position for needed in stage.after), stage.name
    needs = {stage.name: set(stage.after) for stage in pipeline.stages}
    assert needs["3-way conditional classifier"] >= {"export 3-way classifier", "export MN3"}
    assert needs["sample composition_1_2_y1-1_y2-2_g20"] == {"export 1", "export 2", "export classifier 1/2"}
    # Every row is also evaluated against the composition of its base models as they sample (plug-in target).
    assert needs["evaluate composition_1_2_y1-1_y2-2_g20"] == {
        "sample composition_1_2_y1-1_y2-2_g20", "evaluate individual 1", "evaluate individual 2"}
    assert needs["sample individual MN3"] == {"export MN3"}
    assert needs["sample composition_MN1_MN2_MN3_y1-1_y2-2_y3-3_g10_g75"] == {
        "export MN1", "export MN2", "export MN3", "export 3-way classifier", "export 3-way conditional classifier"}
    assert names[0] == "base MN1"  # the longest chain first
    assert sum(n.startswith("evaluate composition") for n in names) == len(SHOWCASE)
    assert sum(n.startswith("evaluate individual") for n in names) == 7
    sample = next(line for line in lines if "sample composition_M1_M2_y1-1_y2-1_g20" in line)
    # The cpu scale samples every row, and every pool, with 40 steps of heun-churn; --num-steps sets every row.
    assert "--num-steps 40" in sample and "--precision auto" in sample and "--sampler heun-churn" in sample
    three_way_sample = next(line for line in lines if "sample composition_MN1_MN2_MN3_y1-1_y2-2_y3-3" in line)
    assert "--num-steps 40" in three_way_sample and "--sampler heun-churn" in three_way_sample
    lines_300 = stage_lines(capsys, ["--dry-run", *dirs, "--num-steps", "300", "--only", "^sample"])
    assert len(lines_300) == len(SHOWCASE) + 7 and all("--num-steps 300" in line for line in lines_300)
    # The cpu scale trains the 3-way classifier for fewer steps and exports it under the reference name.
    three_way = next(line for line in lines if line.startswith("[run ] 3-way classifier"))
    assert "--steps 300" in three_way
    conditional = next(line for line in lines if line.startswith("[run ] 3-way conditional classifier"))
    assert "3way_classifier_ckpt_700.pth" in conditional
    # Every base model trains with the cpu-24 preset (bfloat16 where native); only the 1/2 classifier decays its step
    # size more slowly. Showcase samples and classifier pools end with a denoising step.
    for name in ["base 1", "base MN1"]:
        assert "--preset cpu-24 " in next(line for line in lines if line.startswith(f"[run ] {name}:"))
    assert "--lr-decay 0.99" in next(line for line in lines if line.startswith("[run ] classifier 1/2:"))
    assert "--lr-decay" not in next(line for line in lines if line.startswith("[run ] classifier M1/M2:"))
    assert "--denoise-last-step" in sample and "--denoise-last-step" in three_way and "--denoise-last-step" in conditional
    assert "--sampler heun-churn --trajectory-steps 40 " in three_way
    assert "--sampler heun-churn --trajectory-steps 40 " in conditional
    # With the PC sampler, pools of base-model samples take 100 steps (clean only with that denoising step),
    # the conditional classifier's pools of guided compositions 250, and the 3-way rows the reference's 500.
    pc = stage_lines(capsys, ["--dry-run", *dirs, "--sampler", "pc"])
    assert "--sampler pc --trajectory-steps 100 " in next(line for line in pc if line.startswith("[run ] 3-way classifier"))
    assert "--trajectory-steps 250 " in next(line for line in pc if line.startswith("[run ] 3-way conditional"))
    assert "--num-steps 500" in next(line for line in pc if "sample composition_MN1_MN2_MN3_y1-1_y2-2_y3-3" in line)
    assert "--num-steps 250" in next(line for line in pc if "sample composition_M1_M2_y1-1_y2-1_g20" in line)
    # The exported epoch: the last of a short preset's run, else the reference's 195 (of 200 epochs).
    assert [final_epoch(p) for p in ["cpu", "cpu-24", "paper"]] == [11, 23, 195]
    # The grey models train twice the preset's epochs at the cpu scale; the coloured ones the preset's.
    base = {line.split(":")[0][7:]: line for line in lines if line.startswith("[run ] base ")}
    assert all("--epochs 48" in base[f"base {g}"] for g in ["1", "2"])
    assert not any("--epochs" in base[f"base {g}"] for g in ["M1", "M2", "MN1", "MN2", "MN3"])
    assert needs["export 1"] == {"base 1"} and final_epoch("cpu-24", 48) == 47

    # --no-denoise-last-step restores the reference's last step in the showcase samples (not in the pools).
    lines = stage_lines(capsys, ["--dry-run", *dirs, "--no-denoise-last-step", "--only", "^sample"])
    assert lines and all("--no-denoise-last-step" in line for line in lines)

    # --only runs the matching stages alone; rows whose base models were not sampled alone are evaluated
    # against the exact target only.
    lines = stage_lines(capsys, ["--dry-run", *dirs, "--only", "_g1$"])
    assert lines and all(line.endswith("_g1") or "_g1:" in line or "_g1.pt" in line for line in lines)
    assert not any("--base-evaluations" in line for line in lines)
    lines = stage_lines(capsys, ["--dry-run", *dirs, "--only", "_g1$|individual (1|2)$"])
    assert "--base-evaluations" in next(line for line in lines if line.startswith("[run ] evaluate composition_1_2"))
    assert "--base-evaluations" not in next(line for line in lines if line.startswith("[run ] evaluate composition_M1"))

    # A finished base model is skipped; a half-finished one resumes.
    (tmp_path / "run" / "gen_M1_ckpt_11.pth").write_bytes(b"")  # not the last of the cpu-24 preset's 24 epochs
    (tmp_path / "run" / "gen_1_ckpt_47.pth").write_bytes(b"")
    (tmp_path / "run" / "gen_M2_train_state.pth").write_bytes(b"")
    lines = stage_lines(capsys, ["--dry-run", *dirs])
    assert any(line.startswith("[run ] base M1:") for line in lines)
    assert any(line.startswith("[skip] base 1:") for line in lines)
    assert any(line.startswith("[run ] export 1") for line in lines)  # its export is missing
    assert "--resume" in next(line for line in lines if line.startswith("[run ] base M2"))


def test_another_seed_is_a_replicate_in_its_own_directories(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default directories are relative to the working directory
    lines = stage_lines(capsys, ["--dry-run", "--seed", "2"])
    # Every training and sampling stage: 7 base models, 4 classifiers, each base model alone, the showcase.
    assert sum("--seed 2 " in line for line in lines) == 7 + 4 + 7 + len(SHOWCASE)
    base = next(line for line in lines if line.startswith("[run ] base MN1:"))
    sample = next(line for line in lines if line.startswith("[run ] sample composition_1_2_y1-1_y2-2_g20"))
    # Neither the seed-0 run's finished stages nor the committed checkpoints are touched.
    assert "--ckpt-dir runs/cpu_seed2 " in base
    assert "--gen-ckpt-dir runs/cpu_seed2/checkpoints " in sample and "--out-dir runs/cpu_seed2/results " in sample
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(UserError, match="--seed must be >= 0"):
        reproduce.main(["--dry-run", "--seed", "-1"])


def planned_paths(pipeline):
    """Every file a plan writes or names: the stages' outputs and every path in their commands."""
    paths = [path for stage in pipeline.stages for path in stage.outputs]
    return paths + [Path(arg) for stage in pipeline.stages for arg in stage.command or [] if "/" in arg]


@pytest.mark.parametrize("argv, run_dir", [([], "cpu"), (["--scale", "paper"], "paper"), (["--seed", "1"], "cpu_seed1")])
def test_a_plain_run_writes_only_under_runs(tmp_path, capsys, monkeypatch, argv, run_dir):
    monkeypatch.chdir(tmp_path)  # the default directories are relative to the working directory
    readme = "<!-- results:cpu -->\nthe committed table\n<!-- /results:cpu -->\n"
    (tmp_path / "README.md").write_text(readme)
    paths = planned_paths(reproduce.main(["--dry-run", *argv]))
    assert len(paths) > 100 and all(path.resolve().is_relative_to(tmp_path / "runs") for path in paths)
    # Its summary: <RUN_DIR>/results.md, and no document's table (none is named "results:results").
    reproduce.main(["--summary-only", *argv])
    assert (tmp_path / "runs" / run_dir / "results.md").exists() and (tmp_path / "README.md").read_text() == readme
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md", "runs"]
    repository = Path(reproduce.__file__).parent
    for document in [repository / "README.md", *(repository / "docs").glob("*.md")]:
        assert "results:results" not in document.read_text(), document


def test_the_committed_set_is_rebuilt_only_when_named(shipped_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    committed = ["--export-dir", "checkpoints", "--replace-shipped", "--out-dir", "results/cpu"]
    pipeline = reproduce.main(["--dry-run", *committed])
    exports = [path for stage in pipeline.stages if stage.name.startswith("export") for path in stage.outputs]
    assert len(exports) == 11 and all(path.parent == shipped_folder.relative_to(tmp_path) for path in exports)
    others = [path for path in planned_paths(pipeline) if path not in exports]  # what the stages read from there
    assert all(path.parts[:2] in {("runs", "cpu"), ("results", "cpu")} for path in others)
    # After a plain run has trained MN1 into runs/cpu, the older shipped file is no export of it: the rebuild
    # replaces it (asked to), rather than skipping the export because a file of that name exists.
    ship(shipped_folder, "gen_MN1_ckpt_195.pth", b"shipped")
    trained = tmp_path / "runs" / "cpu" / "gen_MN1_ckpt_23.pth"
    trained.write_bytes(b"trained")
    os.utime(shipped_folder / "gen_MN1_ckpt_195.pth", ns=(trained.stat().st_mtime_ns - 10**9,) * 2)
    lines = stage_lines(capsys, ["--dry-run", *committed])
    assert "[skip] base MN1: done (runs/cpu/gen_MN1_ckpt_23.pth)" in lines and "[run ] export MN1" in lines
    with pytest.raises(UserError, match="gen_MN1_ckpt_195.pth is shipped with the repository"):
        reproduce.main(committed[:2])
    # An export newer than what it was made from is done.
    os.utime(shipped_folder / "gen_MN1_ckpt_195.pth", ns=(trained.stat().st_mtime_ns + 10**9,) * 2)
    lines = stage_lines(capsys, ["--dry-run", *committed])
    assert "[skip] export MN1: done (checkpoints/gen_MN1_ckpt_195.pth)" in lines


class FakeLauncher(Launcher):
    """Launches stages without processes: stage k finishes after ticks[name] polls, writing its outputs, and
    records the events ("start"/"end", name) in order, and the GPU each got; a stage fails where exits[name] says."""

    def __init__(self, stages, ticks=None, exits=None):
        self.outputs = {stage.command[0]: stage.outputs for stage in stages if stage.command}
        self.ticks, self.exits, self.events, self.gpus = ticks or {}, exits or {}, [], {}

    def start(self, stage, log, threads, gpu):
        name = stage.command[0]
        self.events.append(("start", name))
        self.gpus[name] = gpu
        launcher = self

        class Process:
            polls, returncode, state, log = 0, None, None, None
            where = None if gpu is None else f"CUDA_VISIBLE_DEVICES={gpu}"

            def failure(self):
                return f"exit {self.returncode}"

            def poll(self):
                self.polls += 1
                if self.returncode is None and self.polls > launcher.ticks.get(name, 0):
                    self.returncode = launcher.exits.get(name, 0)
                    if self.returncode == 0:
                        for path in launcher.outputs[name]:
                            path.write_text(name)
                    launcher.events.append(("end", name))
                return self.returncode

        return Process()

    def overlapped(self, a, b):
        """Whether a and b were running at the same time."""
        position = {event: k for k, event in enumerate(self.events)}
        return position[("start", a)] < position[("end", b)] and position[("start", b)] < position[("end", a)]


def pipeline_of(tmp_path, stages, jobs=2, gpus=(), **fake):
    launcher = FakeLauncher(stages, **fake)
    return Pipeline(stages, tmp_path, jobs=jobs, launcher=launcher, gpus=gpus, poll_every=0), launcher


def three_stages(tmp_path):
    """a and b are independent; c reads both."""
    return [Stage("a", [tmp_path / "a"], ["a"]), Stage("b", [tmp_path / "b"], ["b"]),
            Stage("c", [tmp_path / "c"], ["c"], after=("a", "b"))]


def test_parallel_pipeline_respects_dependencies_and_overlaps_independent_stages(tmp_path, capsys):
    pipeline, launcher = pipeline_of(tmp_path, three_stages(tmp_path), ticks={"a": 3, "b": 3})
    pipeline.run()
    assert launcher.overlapped("a", "b")  # a and b ran side by side
    assert launcher.events.index(("start", "c")) > max(launcher.events.index(("end", n)) for n in "ab")
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) == {"a", "b", "c", WALL_TIME_KEY}

    # One job at a time: stages run one after another, in their order.
    (tmp_path / "timings.json").unlink()
    for name in "abc":
        (tmp_path / name).unlink()
    pipeline, launcher = pipeline_of(tmp_path, three_stages(tmp_path), jobs=1, ticks={"a": 3, "b": 3})
    pipeline.run()
    assert launcher.events == [(event, name) for name in "abc" for event in ("start", "end")]

    # Finished stages are skipped, unless a stage they read from ran again.
    (tmp_path / "a").unlink()
    capsys.readouterr()
    pipeline, launcher = pipeline_of(tmp_path, three_stages(tmp_path))
    pipeline.run()
    assert "[skip] b" in capsys.readouterr().out and [name for _, name in launcher.events] == ["a", "a", "c", "c"]

    # A failing stage stops what depends on it, keeps what finished, and exits non-zero.
    (tmp_path / "a").unlink()
    stages = [Stage("a", [tmp_path / "a"], ["a"]), Stage("b", [tmp_path / "b"], ["b"]),
              Stage("d", [tmp_path / "d"], ["d"], after=("a",))]
    pipeline, launcher = pipeline_of(tmp_path, stages, exits={"a": 5})
    with pytest.raises(UserError, match="'a' \\(exit 5"):
        pipeline.run()
    assert "[skip] b" in capsys.readouterr().out and ("start", "d") not in launcher.events


def test_a_stage_made_ready_by_a_quick_action_keeps_its_priority(tmp_path):
    export = tmp_path / "export"
    stages = [Stage("train", [tmp_path / "train"], ["train"]),
              Stage("export", [export], action=lambda: export.write_text("exported"), after=("train",)),
              Stage("high", [tmp_path / "high"], ["high"], after=("export",)),
              Stage("low", [tmp_path / "low"], ["low"])]
    pipeline, launcher = pipeline_of(tmp_path, stages, jobs=1)
    pipeline.run()
    assert [name for event, name in launcher.events if event == "start"] == ["train", "high", "low"]


def test_a_stage_runs_its_command_with_the_interpreter_and_logs_in_parallel(tmp_path):
    out = tmp_path / "out"
    stages = [Stage("write", [out], ["-c", f"import pathlib; pathlib.Path({str(out)!r}).write_text('x')"])]
    Pipeline(stages, tmp_path, jobs=2, poll_every=0.01).run()
    assert out.read_text() == "x" and (tmp_path / "logs" / "write.log").exists()


def test_export_halves_storage_and_loading_restores_float32(tmp_path):
    model = ScoreNet(VESDE().marginal_prob_std, (32, 32, 32, 32), embed_dim=32, input_channels=3)
    torch.save(model.state_dict(), tmp_path / "full.pth")
    export_checkpoint(tmp_path / "full.pth", tmp_path / "half.pth", half=True)
    stored = torch.load(tmp_path / "half.pth")
    assert all(v.dtype == torch.float16 for v in stored.values())
    loaded = load_score_model(tmp_path / "half.pth", VESDE())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=2e-3, rtol=1e-3)


@pytest.fixture
def shipped_folder(tmp_path, monkeypatch):
    """tmp_path/checkpoints as a repository's shipped folder, with a manifest of its own; the real one untouched."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setattr(checkpoints, "MANIFEST", folder / "MANIFEST.sha256")
    return folder


def ship(folder, name, content):
    """Write checkpoints/<name> and list it in the manifest."""
    (folder / name).write_bytes(content)
    record_shipped([folder / name])


def test_a_run_that_would_replace_a_shipped_checkpoint_stops_before_it_starts(shipped_folder, tmp_path, capsys):
    ship(shipped_folder, "gen_MN1_ckpt_195.pth", b"shipped")
    dirs = ["--run-dir", str(tmp_path / "run"), "--export-dir", str(shipped_folder), "--out-dir", str(tmp_path / "out")]
    with pytest.raises(UserError) as caught:
        reproduce.main(dirs)
    assert str(caught.value) == (
        f"{shipped_folder / 'gen_MN1_ckpt_195.pth'} is shipped with the repository (listed in "
        f"checkpoints/MANIFEST.sha256) and is never replaced or removed; pass --export-dir {tmp_path / 'run'}/"
        f"checkpoints to export beside it")
    assert not (tmp_path / "run" / "timings.json").exists() and not (tmp_path / "run" / "logs").exists()
    stage_lines(capsys, ["--dry-run", *dirs])  # listing the stages is no write
    assert (shipped_folder / "gen_MN1_ckpt_195.pth").read_bytes() == b"shipped"


def test_export_copies_the_provenance_and_replaces_shipped_files_only_when_asked(shipped_folder, tmp_path):
    from models.classifier_model import JointYClassifier

    trained = tmp_path / "classifier_ckpt_50.pth"
    torch.save(JointYClassifier(embed_dim=8, t_embed_dim=8, input_channels=3, channels=(4, 4)).state_dict(), trained)
    provenance_sidecar(trained).write_text('{"base_models": []}\n')
    exported = shipped_folder / "classifier_ckpt_200.pth"
    ship(shipped_folder, exported.name, b"shipped")
    with pytest.raises(UserError, match="is shipped with the repository"):
        export_checkpoint(trained, exported, half=True)
    assert exported.read_bytes() == b"shipped" and not provenance_sidecar(exported).exists()
    export_checkpoint(trained, exported, half=True, replace_shipped=True)
    assert provenance_sidecar(exported).read_text() == '{"base_models": []}\n'
    # The manifest now lists the new files: they load, and are shipped in turn.
    assert is_shipped(exported) and is_shipped(provenance_sidecar(exported))
    load_classifier(exported, JointYClassifier, "cpu", "train_classifier.py")
    # An export outside the shipped files copies the sidecar too, and leaves the manifest alone.
    manifest = (shipped_folder / "MANIFEST.sha256").read_text()
    export_checkpoint(trained, tmp_path / "elsewhere.pth", half=False)
    assert provenance_sidecar(tmp_path / "elsewhere.pth").is_file()
    assert (shipped_folder / "MANIFEST.sha256").read_text() == manifest


def write_first_row_evaluation(out_dir):
    """An evaluation report for the first showcase row in out_dir, as evaluate_composition.py writes it; its stem."""
    out_dir.mkdir(parents=True)
    _, models, observations, scales = SHOWCASE[0]
    stem = composition_stem(models, observations, scales)
    (out_dir / f"{stem}_eval.json").write_text(json.dumps({
        "num_samples": 512, "support_precision": 0.97, "support_precision_ci": [0.95, 0.98], "tv_distance": 0.05,
        "tv_distance_ci": [0.03, 0.07], "tv_of_exact_samples": {"mean": 0.01}, "unrecognisable_share": 0.02}))
    return stem


def test_summary_marks_pending_rows_and_reports_evaluations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "results" / "cpu"
    stem = write_first_row_evaluation(out_dir)
    _, models, observations, scales = SHOWCASE[1]
    second = composition_stem(models, observations, scales)
    (out_dir / f"{second}_eval.json").write_text((out_dir / f"{stem}_eval.json").read_text())
    (out_dir / f"{second}.json").write_text(json.dumps({"precision": "bfloat16", "num_steps": 250,
                                                        "denoise_last_step": True}))
    (tmp_path / "README.md").write_text("intro\n<!-- results:cpu -->\nold table\n<!-- /results:cpu -->\nrest\n")
    text = write_summary(out_dir, "cpu", {"base M1": 100.4, "export M1": 0.0}).read_text()
    readme = (tmp_path / "README.md").read_text()
    assert "old table" not in readme and readme.startswith("intro\n<!-- results:cpu -->\n| composition |")
    assert f"[png](results/cpu/{stem}.png)" in readme
    assert readme.endswith("|\n<!-- /results:cpu -->\nrest\n") and readme.count("bfloat16") == 1
    assert "| 20 (bfloat16, last step denoised) | 250 | 512 |" in text and text.count("bfloat16") == 1
    assert f"| 20 | ? | 512 | 97.0% (95.0%–98.0%) | 0.050 (0.030–0.070) | 0.010 | 2.0% | – | [png](cpu/{stem}.png) |" \
        in text
    # An evaluation against the base models' own samples adds the plug-in target's support precision.
    report = json.loads((out_dir / f"{second}_eval.json").read_text())
    (out_dir / f"{second}_eval.json").write_text(json.dumps({**report, "plug_in_target": {"support_precision": 0.775}}))
    rewritten = write_summary(out_dir, "cpu", {}).read_text()
    assert "| 2.0% | 77.5% | [png]" in rewritten
    assert text.count("pending") == len(SHOWCASE) - 2
    assert "| base M1 | 100 |" in text and "export M1" not in text
    # A run dir without timings (rows sampled elsewhere, or the run dir since deleted) keeps the times measured
    # before, and a summary that had none gets no empty stage table.
    assert rewritten.endswith("| base M1 | 100 |\n") and rewritten.count("Stage wall times") == 1
    (out_dir.parent / "cpu.md").unlink()
    assert "Stage wall times" not in write_summary(out_dir, "cpu", {}).read_text()


def test_summary_of_another_out_dir_leaves_readme_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = "intro\n<!-- results:cpu -->\nold table\n<!-- /results:cpu -->\n"
    (tmp_path / "README.md").write_text(readme)
    out_dir = tmp_path / "results" / "cpu_fresh"
    out_dir.mkdir(parents=True)
    path = write_summary(out_dir, "cpu", {"base M1": 10.0})
    assert path == tmp_path / "results" / "cpu_fresh.md" and "| base M1 | 10 |" in path.read_text()
    assert (tmp_path / "README.md").read_text() == readme
    assert "`python reproduce.py --scale cpu --seed 3`" in write_summary(out_dir, "cpu", {}, seed=3).read_text()


def test_summary_only_of_the_committed_rows_keeps_their_times(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("<!-- results:cpu -->\nold table\n<!-- /results:cpu -->\n")
    stem = write_first_row_evaluation(tmp_path / "results" / "cpu")
    (tmp_path / "runs" / "cpu").mkdir(parents=True)
    (tmp_path / "runs" / "cpu" / "timings.json").write_text(json.dumps({"base M1": 100.0}))
    # runs/cpu holds a plain run's times, not those of the rows in results/cpu.
    reproduce.main(["--summary-only", "--out-dir", "results/cpu"])
    text = (tmp_path / "results" / "cpu.md").read_text()
    assert text.startswith("Written by `python reproduce.py --scale cpu --out-dir results/cpu` into `results/cpu/`")
    assert "Stage wall times" not in text
    assert f"[png](results/cpu/{stem}.png)" in (tmp_path / "README.md").read_text()
    reproduce.main(["--summary-only", "--out-dir", "results/cpu", "--run-dir", "runs/cpu"])  # named: they are
    assert "| base M1 | 100 |" in (tmp_path / "results" / "cpu.md").read_text()


def test_summary_rewrites_the_tables_of_docs_with_links_from_their_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    history = "<!-- results:cpu_old -->\nold\n<!-- /results:cpu_old -->\n<!-- times:cpu_old -->\nold\n<!-- /times:cpu_old -->\n"
    (tmp_path / "docs" / "history.md").write_text(history)
    out_dir = tmp_path / "results" / "cpu_old"
    stem = write_first_row_evaluation(out_dir)
    write_summary(out_dir, "cpu", {"base M1": 10.0})
    text = (tmp_path / "docs" / "history.md").read_text()
    assert f"[png](../results/cpu_old/{stem}.png)" in text and "| base M1 | 10 |" in text and "old\n" not in text


def test_progress_line_is_the_outer_bar_of_nested_ones(tmp_path):
    log = tmp_path / "stage.log"
    log.write_text("train:  40%|####  | 40/100\r\nPC sampling:  10%|#  | 10/100\x1b[A\rPC sampling:  20%|##  | 20/100\x1b[A")
    assert last_progress(log) == "train:  40%|####  | 40/100"
    log.write_text("PC sampling:  20%|##  | 20/100\r")
    assert last_progress(log) == "PC sampling:  20%|##  | 20/100"
    log.write_text("")
    assert last_progress(log) == "starting"
