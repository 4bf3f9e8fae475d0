"""evaluate_classifier.py: the exact posterior per cell and the classifier's calibration against it."""
import json
import math

import pytest
import torch

import evaluate_classifier
from sculpting.errors import UserError
from custom_datasets import load_mnist
from models.classifier_model import JointYClassifier, ThreeWayJointYClassifier
from sculpting.checkpoints import load_oracle
from sculpting.targets import model_posteriors


def test_exact_posteriors_of_the_3way_models():
    posteriors = model_posteriors(["MN1", "MN2", "MN3"])
    assert posteriors[(1, "red")] == [0.0, 1.0, 0.0] and posteriors[(3, "green")] == [1.0, 0.0, 0.0]
    green_0 = posteriors[(0, "green")]
    assert all(0.3 < p < 0.37 for p in green_0) and math.isclose(sum(green_0), 1.0)


def uniform(x, t):
    models = 3 if x.shape[1] == 3 else 2
    return torch.full((len(x), models, models), -2 * math.log(models))


def test_uniform_classifier_is_scored_against_the_exact_tables():
    groups = evaluate_classifier.real_image_groups(["MN1", "MN2", "MN3"], 4)
    rows = {row["cell"]: row for row in evaluate_classifier.calibration(uniform, groups, 1e-3)}
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


def grey_samples(data_root):
    """Three test 4s, two test 7s and one blank image, as a grey-model sample file would hold them."""
    images, labels = load_mnist(data_root, train=False)
    fours, sevens = images[labels == 4][:3], images[labels == 7][:2]
    digits = torch.cat([fours, sevens]).unsqueeze(1).float() / 255.0
    return torch.cat([digits, torch.zeros(1, 1, 28, 28)])


def test_samples_are_grouped_by_the_oracles_reading(data_root):
    groups = evaluate_classifier.sample_groups(grey_samples(data_root), ["1", "2"], load_oracle())
    by_name = {name: (len(x), posterior) for name, x, posterior in groups}
    assert [name for name, _, _ in groups][0] == "grey 4"  # the largest group first
    assert by_name["grey 4"][0] == 3 and by_name["grey 4"][1] == pytest.approx([0.49, 0.51], abs=0.01)
    assert by_name["grey 7"] == (2, [0.0, 1.0])
    assert by_name["unrecognisable"] == (1, None)  # a cell of no dataset: no exact posterior
    rows = {row["cell"]: row for row in evaluate_classifier.calibration(uniform, groups, 1e-3)}
    assert rows["unrecognisable"]["exact_off_diagonal_mass"] is None
    assert rows["grey 7"]["off_diagonal_mass"] == pytest.approx(0.5) and rows["grey 7"]["exact_off_diagonal_mass"] == 0


def test_script_on_samples_reads_their_models_and_rejects_bad_input(tmp_path, data_root):
    samples = tmp_path / "composition_1_2_y1-1_y2-2_g20.pt"
    torch.save(grey_samples(data_root), samples)
    samples.with_suffix(".json").write_text(json.dumps({"models": ["1", "2"], "observations": [1, 2]}))
    classifier = tmp_path / "subdigits_classifier_ckpt_200.pth"
    torch.save(JointYClassifier(embed_dim=8, t_embed_dim=8, input_channels=1, channels=(4, 4)).state_dict(), classifier)
    evaluate_classifier.main(["--classifier-ckpt", str(classifier), "--samples", str(samples), "--out-dir", str(tmp_path)])
    report = json.loads((tmp_path / "subdigits_classifier_ckpt_200_on_composition_1_2_y1-1_y2-2_g20.json").read_text())
    assert report["models"] == ["1", "2"] and sum(row["images"] for row in report["cells"]) == 6
    with pytest.raises(UserError, match="not found"):
        evaluate_classifier.main(["--classifier-ckpt", str(classifier), "--samples", str(tmp_path / "missing.pt")])
    with pytest.raises(UserError, match="1-channel samples; models .* draw 3"):
        evaluate_classifier.main(["--classifier-ckpt", str(classifier), "--samples", str(samples),
                                  "--models", "MN1", "MN2", "MN3"])
