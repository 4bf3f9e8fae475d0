"""reproduce.py: stage order, skipping finished stages, checkpoint export, results summary."""
import json

import torch

import reproduce
from models.score_model import ScoreNet
from sde import VESDE
from utils import load_score_model


def stage_lines(capsys, argv):
    reproduce.main(argv)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]


def test_dry_run_lists_stages_in_dependency_order(tmp_path, capsys):
    dirs = ["--run-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "ckpt"), "--out-dir", str(tmp_path / "out")]
    lines = stage_lines(capsys, ["--dry-run", *dirs])
    names = [line.split(":")[0][7:] for line in lines]
    position = {name: i for i, name in enumerate(names)}
    assert position["base M2"] < position["classifier M1/M2"] < position["base MN1"]
    assert position["base MN3"] < position["3-way classifier"] < position["3-way conditional classifier"]
    assert position["base 2"] < position["classifier 1/2"] < min(i for n, i in position.items() if n.startswith("sample"))
    assert sum(n.startswith("evaluate") for n in names) == len(reproduce.SHOWCASE)
    assert all(line.startswith("[run ]") for line in lines)
    assert "--num-steps 500" in next(line for line in lines if "sample composition_M1_M2_y1-1_y2-1_g20" in line)
    # The cpu scale trains the 3-way classifier for fewer steps and exports it under the reference name.
    three_way = next(line for line in lines if line.startswith("[run ] 3-way classifier"))
    assert "--steps 300" in three_way
    conditional = next(line for line in lines if line.startswith("[run ] 3-way conditional classifier"))
    assert "3way_classifier_ckpt_700.pth" in conditional

    # --only runs the matching stages alone.
    lines = stage_lines(capsys, ["--dry-run", *dirs, "--only", "_g1$"])
    assert lines and all(line.endswith("_g1") or "_g1:" in line or "_g1.pt" in line for line in lines)

    # A finished base model is skipped; a half-finished one resumes.
    (tmp_path / "run" / "gen_M1_ckpt_11.pth").write_bytes(b"")
    (tmp_path / "run" / "gen_M2_train_state.pth").write_bytes(b"")
    lines = stage_lines(capsys, ["--dry-run", *dirs])
    assert lines[0].startswith("[skip] base M1")
    assert "--resume" in next(line for line in lines if line.startswith("[run ] base M2"))


def test_export_halves_storage_and_loading_restores_float32(tmp_path):
    model = ScoreNet(VESDE().marginal_prob_std, (32, 32, 32, 32), embed_dim=32, input_channels=3)
    torch.save(model.state_dict(), tmp_path / "full.pth")
    reproduce.export_checkpoint(tmp_path / "full.pth", tmp_path / "half.pth", half=True)
    stored = torch.load(tmp_path / "half.pth")
    assert all(v.dtype == torch.float16 for v in stored.values())
    loaded = load_score_model(tmp_path / "half.pth", VESDE())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=2e-3, rtol=1e-3)


def test_summary_marks_pending_rows_and_reports_evaluations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "results" / "cpu"
    out_dir.mkdir(parents=True)
    _, models, observations, scales = reproduce.SHOWCASE[0]
    stem = reproduce.composition_stem(models, observations, scales)
    (out_dir / f"{stem}_eval.json").write_text(json.dumps({
        "num_samples": 512, "support_precision": 0.97, "support_precision_ci": [0.95, 0.98], "tv_distance": 0.05,
        "tv_distance_ci": [0.03, 0.07], "tv_of_exact_samples": {"mean": 0.01}, "unrecognisable_share": 0.02}))
    _, models, observations, scales = reproduce.SHOWCASE[1]
    second = reproduce.composition_stem(models, observations, scales)
    (out_dir / f"{second}_eval.json").write_text((out_dir / f"{stem}_eval.json").read_text())
    (out_dir / f"{second}.json").write_text(json.dumps({"precision": "bfloat16"}))
    (tmp_path / "README.md").write_text("intro\n<!-- results:cpu -->\nold table\n<!-- /results:cpu -->\nrest\n")
    text = reproduce.write_summary(out_dir, "cpu", {"base M1": 100.4, "export M1": 0.0}).read_text()
    readme = (tmp_path / "README.md").read_text()
    assert "old table" not in readme and readme.startswith("intro\n<!-- results:cpu -->\n| composition |")
    assert f"[png](results/cpu/{stem}.png)" in readme
    assert readme.endswith("|\n<!-- /results:cpu -->\nrest\n") and readme.count("(bfloat16)") == 1
    assert "| 20 (bfloat16) | 512 |" in text and text.count("(bfloat16)") == 1
    assert f"| 512 | 97.0% (95.0%–98.0%) | 0.050 (0.030–0.070) | 0.010 | 2.0% | [png](cpu/{stem}.png) |" in text
    assert text.count("pending") == len(reproduce.SHOWCASE) - 2
    assert "| base M1 | 100 |" in text and "export M1" not in text
