"""evaluate_classifier.py: the exact posterior per cell and the classifier's calibration against it."""
import json
import math

import pytest
import torch

import evaluate_classifier
from cli import UserError
from models.classifier_model import ThreeWayJointYClassifier
from targets import model_posteriors


def test_exact_posteriors_of_the_3way_models():
    posteriors = model_posteriors(["MN1", "MN2", "MN3"])
    assert posteriors[(1, "red")] == [0.0, 1.0, 0.0] and posteriors[(3, "green")] == [1.0, 0.0, 0.0]
    green_0 = posteriors[(0, "green")]
    assert all(0.3 < p < 0.37 for p in green_0) and math.isclose(sum(green_0), 1.0)


def test_uniform_classifier_is_scored_against_the_exact_tables():
    def uniform(x, t):
        return torch.full((len(x), 3, 3), -math.log(9.0))

    rows = {row["cell"]: row for row in evaluate_classifier.calibration(uniform, ["MN1", "MN2", "MN3"], 4, 1e-3)}
    assert len(rows) == 7 and rows["red 1"]["images"] == 4
    assert rows["red 1"]["marginal"] == pytest.approx([1 / 3] * 3)
    assert rows["red 1"]["off_diagonal_mass"] == pytest.approx(2 / 3) and rows["red 1"]["exact_off_diagonal_mass"] == 0
    assert rows["red 0"]["exact_joint"][1][2] == pytest.approx(0.48 * 0.52, abs=0.01)


def test_script_writes_json_and_rejects_bad_input(tmp_path):
    path = tmp_path / "3way_classifier_ckpt_700.pth"
    torch.save(ThreeWayJointYClassifier(embed_dim=8, t_embed_dim=8, input_channels=3, channels=(4, 4)).state_dict(),
               path)
    evaluate_classifier.main(["--classifier-ckpt", str(path), "--images-per-cell", "2", "--out-dir", str(tmp_path)])
    report = json.loads((tmp_path / "3way_classifier_ckpt_700_calibration.json").read_text())
    assert [row["cell"] for row in report["cells"]][:2] == ["green 0", "red 0"]
    with pytest.raises(UserError, match="2 or 3 models"):
        evaluate_classifier.main(["--classifier-ckpt", str(path), "--models", "MN1"])
    with pytest.raises(UserError, match="does not fit JointYClassifier"):
        evaluate_classifier.main(["--classifier-ckpt", str(path), "--models", "M1", "M2"])
