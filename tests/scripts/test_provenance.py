"""A classifier's provenance sidecar: the base models (names, SHA-256 of their checkpoints) it was trained on. The
sample and evaluation scripts refuse another pairing unless --force, which the output's .json records; a
classifier without a sidecar (written before provenance was recorded) loads with a warning."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate_classifier
import sample_3way_composition
import sample_composition
from sculpting.artefacts import provenance_sidecar
from sculpting.checkpoints import classifier_provenance, file_sha256, write_provenance
from sculpting.errors import UserError
from models.classifier_model import JointYClassifier, ThreeWayConditionalYClassifier, ThreeWayJointYClassifier
from models.score_model import ScoreNet
from sculpting.sde import VESDE

REPO = Path(__file__).resolve().parents[2]
TINY_CLASSIFIER = {"embed_dim": 8, "t_embed_dim": 8, "channels": (4, 4), "input_channels": 3}


def tiny_base(path, seed):
    torch.manual_seed(seed)
    torch.save(ScoreNet(VESDE().marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=16,
                        input_channels=3).state_dict(), path)
    return str(path)


def tiny_classifier(path, cls, provenance=None):
    torch.save(cls(**TINY_CLASSIFIER).state_dict(), path)
    if provenance is not None:
        write_provenance(path, provenance)
    return str(path)


def sample_args(tmp_path, *extra):
    return ["--gen-ckpt-dir", str(tmp_path), "--num-samples", "2", "--num-steps", "2", "--out-dir",
            str(tmp_path / "out"), "--device", "cpu", *extra]


def test_a_classifier_without_provenance_still_loads_with_a_warning(tmp_path, capsys):
    for g in ("M1", "M2"):
        tiny_base(tmp_path / f"gen_{g}_ckpt_195.pth", 0)
    old = tiny_classifier(tmp_path / "old_classifier.pth", JointYClassifier)  # a plain state_dict, as ever
    sample_composition.main(sample_args(tmp_path, "--classifier-ckpt", old))
    warning = capsys.readouterr().err
    assert f"warning: {old} records no provenance" in warning
    meta = json.loads((tmp_path / "out" / "composition_M1_M2_y1-1_y2-1_g20.json").read_text())
    assert "forced" not in meta


def test_other_base_model_content_is_refused_and_forced_into_the_record(tmp_path, capsys):
    bases = [(g, tiny_base(tmp_path / f"gen_{g}_ckpt_195.pth", seed)) for seed, g in enumerate(("M1", "M2"))]
    classifier = tiny_classifier(tmp_path / "classifier.pth", JointYClassifier, classifier_provenance(bases))
    args = sample_args(tmp_path, "--classifier-ckpt", classifier)
    sample_composition.main(args)  # trained on exactly these: no warning, nothing forced
    assert "warning" not in capsys.readouterr().err

    trained_on = file_sha256(bases[1][1])
    tiny_base(tmp_path / "gen_M2_ckpt_195.pth", 7)  # retrained: the same name, other weights
    message = (f"{classifier} was trained on M2 = {bases[1][1]} (SHA-256 {trained_on[:12]}), not {bases[1][1]} "
               f"(SHA-256 {file_sha256(bases[1][1])[:12]})")
    args[args.index("--out-dir") + 1] = str(tmp_path / "forced")
    stem = tmp_path / "forced" / "composition_M1_M2_y1-1_y2-1_g20"
    with pytest.raises(UserError) as caught:
        sample_composition.main(args)
    assert str(caught.value) == f"{message}; pass the classifier trained on them, or --force to use it anyway"
    assert not stem.with_suffix(".json").exists()

    sample_composition.main(args + ["--force"])
    assert f"warning: {message}; used anyway (--force)" in capsys.readouterr().err
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["forced"] is True and meta["provenance_mismatch"] == message


def test_a_conditional_classifier_must_come_with_its_joint_classifier(tmp_path):
    bases = [(g, tiny_base(tmp_path / f"gen_{g}_ckpt_195.pth", 0)) for g in ("MN1", "MN2", "MN3")]
    joint = tiny_classifier(tmp_path / "joint.pth", ThreeWayJointYClassifier, classifier_provenance(bases))
    conditional = tiny_classifier(tmp_path / "conditional.pth", ThreeWayConditionalYClassifier,
                                  classifier_provenance(bases, joint_classifier=joint))
    args = sample_args(tmp_path, "--classifier-ckpt", joint, "--conditional-classifier-ckpt", conditional)
    sample_3way_composition.main(args)
    other_joint = tiny_classifier(tmp_path / "other_joint.pth", ThreeWayJointYClassifier, classifier_provenance(bases))
    torch.save({k: v + 1 for k, v in torch.load(other_joint).items()}, other_joint)  # other weights
    args[args.index(joint)] = other_joint
    with pytest.raises(UserError, match=f"{conditional} was trained with the joint classifier {joint} "):
        sample_3way_composition.main(args)


def test_a_classifier_of_other_base_models_is_one_line_and_exit_2():
    """The shipped M1/M2 classifier with MN1 and MN2: refused before anything is sampled."""
    result = subprocess.run([sys.executable, "sample_composition.py", "--gen-idx-1", "MN1", "--gen-idx-2", "MN2",
                             "--num-steps", "2", "--num-samples", "2", "--out-dir", "/nonexistent/never_written"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sample_composition.py: error: checkpoints/classifier_ckpt_200.pth was trained on M1, M2, not MN1, MN2; "
        "pass the classifier trained on them, or --force to use it anyway"]


def test_evaluate_classifier_checks_the_models_by_name(tmp_path):
    classifier = tiny_classifier(tmp_path / "classifier.pth", JointYClassifier,
                                 {"base_models": [{"name": "M1", "checkpoint": "m1.pth", "sha256": "0" * 64},
                                                  {"name": "M2", "checkpoint": "m2.pth", "sha256": "1" * 64}]})
    args = ["--classifier-ckpt", classifier, "--images-per-cell", "1", "--out-dir", str(tmp_path)]
    evaluate_classifier.main(args + ["--models", "M1", "M2"])  # by name: the checkpoints' content is not read
    with pytest.raises(UserError, match=f"{classifier} was trained on M1, M2, not MN1, MN2; .* --force"):
        evaluate_classifier.main(args + ["--models", "MN1", "MN2"])
    evaluate_classifier.main(args + ["--models", "MN1", "MN2", "--force"])
    report = json.loads((tmp_path / "classifier_calibration.json").read_text())
    assert report["forced"] is True and "not MN1, MN2" in report["provenance_mismatch"]


def test_an_unreadable_sidecar_is_one_line(tmp_path):
    for g in ("M1", "M2"):
        tiny_base(tmp_path / f"gen_{g}_ckpt_195.pth", 0)
    classifier = tiny_classifier(tmp_path / "classifier.pth", JointYClassifier)
    for broken in ("{not json", '{"base_models": [{"name": "M1"}]}',
                   '{"base_models": [], "joint_classifier": {"checkpoint": "joint.pth"}}'):  # no sha256
        provenance_sidecar(classifier).write_text(broken)
        with pytest.raises(UserError, match=r"cannot read .*classifier.pth.provenance.json: .*restore it or remove it"):
            sample_composition.main(sample_args(tmp_path, "--classifier-ckpt", classifier))
