"""The benchmark scripts run end to end on tiny settings and report what README quotes."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import attribution  # noqa: E402
import classifier_benchmark  # noqa: E402
import last_step  # noqa: E402
import sampling_benchmark  # noqa: E402
from models.score_model import ScoreNet  # noqa: E402
from sculpting.sde import VESDE  # noqa: E402


def test_sampling_benchmark_reports_ratio_and_fast_paths(tmp_path):
    out = tmp_path / "sampling.json"
    sampling_benchmark.main(["--batch-size", "2", "--num-steps", "2", "--repeats", "1", "--channels", "32", "32", "32",
                             "32", "--cases", "single", "three_way", "--fast-paths", "channels_last", "bfloat16",
                             "--out", str(out)])
    report = json.loads(out.read_text())
    single, three_way = report["results"]
    assert three_way["networks_per_score_call"] == 5 and "base_vmap_s" in three_way and "base_vmap_s" not in single
    for result in report["results"]:
        assert result["overhead_ratio"] == result["composed_s"] / result["bare_s"]
        assert set(result["fast_paths"]) == {"channels_last", "bfloat16"}
        assert result["fast_paths"]["channels_last"]["max_abs_score_diff"] <= 1e-4 * result["score_scale"]


def test_classifier_benchmark_step_and_convergence(tmp_path):
    for gen_idx in ("M1", "M2"):
        model = ScoreNet(VESDE().marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=8, input_channels=3)
        torch.save(model.state_dict(), tmp_path / f"gen_{gen_idx}_ckpt_195.pth")
    out = tmp_path / "classifier.json"
    classifier_benchmark.POOLS = [[2, 1], [4, 3]]
    classifier_benchmark.main(["--step-batch-size", "2", "--repeats", "1", "--gen-ckpt-dir", str(tmp_path),
                               "--trajectory-steps", "5", "--batch-size", "2", "--steps", "3", "--warmup-steps", "1",
                               "--test-every", "1", "--test-samples", "2", "--classifier-channels", "4", "4",
                               "--terminal-target", "0.0", "--noisy-target", "1.01", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [r["case"] for r in report["step"]] == list(classifier_benchmark.STEP_CASES)
    fresh, pool = report["convergence"]
    # Fresh trajectories: a refresh of 2 per model at every step; the pool of 4 serves 3 steps.
    per_refresh = lambda size: size * 2 * 5 * 2  # noqa: E731
    assert [row["score_evaluations"] for row in fresh["history"]] == [0] + [k * per_refresh(2) for k in (1, 2, 3)]
    assert [row["score_evaluations"] for row in pool["history"]] == [0] + [per_refresh(4)] * 3
    assert fresh["reached"]["terminal_accuracy"]["step"] == 0 and fresh["reached"]["noisy_accuracy"] is None


def test_last_step_benchmark_compares_the_three_endings(tmp_path):
    path = tmp_path / "gen_MN1_ckpt_195.pth"
    torch.save(ScoreNet(VESDE().marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=8,
                        input_channels=3).state_dict(), path)
    last_step.main(["--ckpt-paths", str(path), "--num-images", "4", "--num-steps", "5", "--tail-steps", "3",
                    "--out-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "last_step_MN1.json").read_text())["rows"]
    assert [row["ending"] for row in rows] == ["-", "reference", "one step earlier", "denoised last step"]
    clean = rows[0]  # MN1 lights only green: red and blue are the empty channels, and clean digits have no speckle
    assert clean["speckle_share"] == 0.0 and clean["mse_to_clean"] == 0.0 and clean["recognised_share"] > 0.5
    assert all(row["mse_to_clean"] > 0.0 for row in rows[1:])


def quality_cell(label, sampler, steps, evaluations, precision, tv, baseline=False):
    return {"composition": label, "source": "x", "sampler": sampler, "num_steps": steps, "evaluations": evaluations,
            "support_precision": precision, "support_precision_ci": [precision - 0.02, precision + 0.02],
            "tv_distance": tv, "tv_distance_ci": [tv - 0.03, tv + 0.03], "unrecognisable": 0.01,
            "seconds_per_sample": 0.1, **({"baseline": True} if baseline else {})}


def test_sampler_quality_names_the_cheapest_setting_that_meets_each_row(tmp_path):
    import sampler_quality

    guided, exact = "M1/M2 (1, 2) λ=20", "M1/M2 (1, 1) λ=1"
    cells = [quality_cell(guided, "pc", 250, 500, 0.96, 0.04, baseline=True),
             quality_cell(guided, "heun-churn", 10, 19, 0.50, 0.50),  # far below the interval [0.94, 0.98]
             quality_cell(guided, "heun-churn", 20, 39, 0.945, 0.05),  # inside it: meets
             quality_cell(guided, "heun-churn", 40, 79, 0.99, 0.01),  # above it: meets, but costs more
             quality_cell(exact, "pc", 250, 500, 0.80, 0.20, baseline=True),
             quality_cell(exact, "heun-churn", 40, 79, 0.99, 0.25),  # λ = 1 rows are judged by TV: 0.25 > 0.23
             quality_cell(exact, "pc", 100, 200, 0.80, 0.10)]  # meets, but over the 100-evaluation budget
    judged = sampler_quality.verdicts(cells)
    assert judged[guided][1]["num_steps"] == 20 and judged[exact][1] is None
    (tmp_path / "sampler_quality.json").write_text(json.dumps(cells))
    sampler_quality.main(["--plot-only", "--out-dir", str(tmp_path)])
    table = (tmp_path / "sampler_quality.md").read_text()
    guided_line = next(line for line in table.splitlines() if line.startswith(f"| {guided} | support precision |"))
    exact_line = next(line for line in table.splitlines() if line.startswith(f"| {exact} | TV |"))
    assert guided_line.startswith(f"| {guided} | support precision | pc:250 (500): 96.0%")
    assert "| heun-churn:40 (79): 99.0%" in guided_line and guided_line.endswith("| heun-churn:20 (39) |")
    assert "| heun-churn:40 (79): 0.250" in exact_line and exact_line.endswith("| none |")
    assert (tmp_path / "sampler_quality.png").stat().st_size > 0


def test_sampler_quality_refuses_a_malformed_setting():
    import sampler_quality
    from sculpting.errors import UserError

    for text in ("heun-churn", "euler:10", "pc:1"):
        try:
            sampler_quality.parse_setting(text)
        except UserError as error:
            assert "<sampler>:<steps>" in str(error)
        else:
            raise AssertionError(f"{text} was accepted")


def test_precision_speed_reports_both_precisions_and_the_capability(tmp_path):
    import precision_speed

    out = tmp_path / "precision.json"
    precision_speed.main(["--train-batch", "4", "--sample-batch", "2", "--sample-steps", "2", "--repeats", "1",
                          "--channels", "32", "32", "32", "32", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["auto_precision"] in ("float32", "bfloat16")
    assert set(report["train_step_s"]) == set(report["sampling_s"]) == {"float32", "bfloat16"}


def test_attribution_cells_are_kept_and_a_rerun_continues_where_it_stopped(data_root, tmp_path):
    args = ["--only", "M1_M2_y1-1_y2-2_g1$", "--samplers", "heun-churn", "--num-samples", "2", "--batch-size", "2",
            "--out-dir", str(tmp_path), "--device", "cpu"]
    attribution.main([*args, "--ingredients", "exact_exact"])
    first = tmp_path / "composition_M1_M2_y1-1_y2-2_g1" / "exact_exact_heun-churn.json"
    cell, written = json.loads(first.read_text()), first.stat().st_mtime_ns
    assert cell["ingredients"] == "exact_exact" and cell["num_samples"] == 2 and cell["cpu_capability"]
    attribution.main([*args, "--ingredients", "exact_exact", "learned_exact"])  # the first cell is not redrawn
    assert first.stat().st_mtime_ns == written
    assert (tmp_path / "composition_M1_M2_y1-1_y2-2_g1" / "learned_exact_heun-churn.json").is_file()
    table = (tmp_path / "attribution.md").read_text()
    assert "| exact, exact | 2 |" in table and "Sampling wall time of these 2 cells" in table
