"""Joint diffusion: the joint loss, the score part as a plain ScoreNet, guidance, a short training run."""
import json

import pytest
import torch
import torch.nn.functional as F

import evaluate_joint_diffusion
import sample_joint_diffusion
import train_joint_diffusion
from sculpting import checkpoints
from sculpting.checkpoints import file_sha256, load_labelled_model, load_score_model
from custom_datasets import LabelledImages
from sculpting.errors import UserError
from sculpting.losses import joint_diffusion_loss
from models.joint_diffusion import GUIDANCE_VARIANTS, JointScoreNet, LabelClassifier, guided_score, score_part
from models.score_model import ScoreNet
from samplers import Sampler, sample_in_batches
from sculpting.sde import VESDE
from tests.analytic import assert_beyond_standard_errors, assert_within_standard_errors, frequency_standard_error

LABELS = {"label": "cell", "classes": ["red 0", "green 0", "red 1", "green 1"], "datasets": ["MN2"],
          "multi_label": False}
MULTI_LABELS = {**LABELS, "multi_label": True, "attributes": ["0", "1", "red", "green"],
                "class_attributes": [[0, 2], [0, 3], [1, 2], [1, 3]]}
TINY = ["--channels", "32", "32", "32", "32", "--embed-dim", "16", "--epochs", "1", "--batch-size", "32",
        "--train-subset", "64", "--device", "cpu"]


def tiny_joint(labels=LABELS, head_features="all"):
    torch.manual_seed(0)
    return JointScoreNet(VESDE().marginal_prob_std, labels, head_features, (32, 32, 32, 32), 16, 3)


@pytest.mark.parametrize("noised", [True, False])
def test_joint_loss_is_score_loss_plus_scaled_cross_entropy(noised):
    model, sde = tiny_joint(), VESDE()
    x, classes = torch.rand(4, 3, 28, 28), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    total, score_loss, head_loss = joint_diffusion_loss(model, x, classes, sde, 0.001, noised)
    torch.manual_seed(1)  # by hand, the same draws
    t = torch.rand(4) * (1 - 1e-5) + 1e-5
    z = torch.randn_like(x)
    std = sde.marginal_prob_std(t)[:, None, None, None]
    expected_score = ((model(x + z * std, t) * std + z) ** 2).sum(dim=(1, 2, 3)).mean()
    logits = model.head(torch.cat([*(f.mean(dim=(2, 3)) for f in model.encode(x + z * std if noised else x,
                                                                                t if noised else torch.full_like(t, 1e-5))[1]),
                                   model.encode(x, t if noised else torch.full_like(t, 1e-5))[0]], dim=1))
    expected_head = F.cross_entropy(logits, classes)
    assert torch.allclose(score_loss, expected_score, rtol=1e-5)
    assert torch.allclose(head_loss, expected_head, rtol=1e-5)
    assert torch.allclose(total, expected_score + 0.001 * 3 * 28 * 28 * expected_head, rtol=1e-5)


def test_multi_label_head_scores_a_cell_by_its_digit_and_colour():
    model = tiny_joint(MULTI_LABELS)
    logits = torch.randn(5, 4)
    log_p = F.logsigmoid(logits)
    assert torch.allclose(model.head.log_probs(logits)[:, 1], log_p[:, 0] + log_p[:, 3])  # green 0: "0" and "green"
    targets = torch.tensor([[1, 0, 0, 1.0]])  # green 0 as attributes: "0" and "green"
    assert torch.allclose(model.head.loss(logits[:1], torch.tensor([1])),
                          F.binary_cross_entropy_with_logits(logits[:1], targets))


def test_score_part_loads_into_a_plain_scorenet_and_scores_alike(tmp_path):
    model = tiny_joint()
    path = tmp_path / "joint.pth"
    torch.save(model.state_dict(), path)
    plain = ScoreNet(VESDE().marginal_prob_std, (32, 32, 32, 32), 16, 3)
    plain.load_state_dict(score_part(torch.load(path)), strict=True)
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([0.3, 0.9])
    assert torch.equal(plain.eval()(x, t), model.eval()(x, t))
    assert torch.equal(load_score_model(path, VESDE())(x, t), plain(x, t))  # the scripts' loader does the same
    reloaded = load_labelled_model(path, VESDE())
    assert isinstance(reloaded, JointScoreNet) and reloaded.head.labels == LABELS
    assert torch.equal(reloaded.log_probs(x, t), model.log_probs(x, t))


def test_a_plain_scorenet_is_no_labelled_model(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(ScoreNet(VESDE().marginal_prob_std, (32, 32, 32, 32), 16, 3).state_dict(), path)
    with pytest.raises(UserError, match="no classifier head"):
        load_labelled_model(path, VESDE())


@pytest.mark.parametrize("variant", [*GUIDANCE_VARIANTS, "classifier"])
def test_guidance_with_alpha_zero_is_unguided_sampling(variant):
    model, sde = tiny_joint(), VESDE()
    classifier = LabelClassifier(LABELS, 3, (8, 16)) if variant == "classifier" else None
    sampler = Sampler("heun-churn", 4, True, churn=40.0)
    unguided = sample_in_batches(model.eval(), sde, sampler, 3, 3, seed=5, progress=False)
    guided = guided_score(model, [2], 0.0, "input" if classifier else variant, classifier)
    assert torch.equal(sample_in_batches(guided, sde, sampler, 3, 3, seed=5, progress=False), unguided)
    moved = guided_score(model, [2], 5.0, "input" if classifier else variant, classifier)
    assert not torch.equal(sample_in_batches(moved, sde, sampler, 3, 3, seed=5, progress=False), unguided)


def test_input_guidance_adds_the_heads_gradient():
    model = tiny_joint().eval()
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([0.5, 0.5])
    x_grad = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model.log_probs(x_grad, t)[:, [1, 3]].sum(), x_grad)
    guided = guided_score(model, [1, 3], 2.0, "input")(x, t)
    assert torch.allclose(guided, model(x, t) + 2.0 * gradient, atol=1e-5)


def test_union_labels_and_balanced_epochs(data_root):
    data = LabelledImages(["M1", "M2"], "dataset", root=data_root)
    assert data.label_space()["classes"] == ["M1", "M2"]
    assert len(data) == 2 * 5923 + 5923 + 6742  # green 0 appears once per dataset
    generator = torch.Generator().manual_seed(0)
    draws = data.sources[torch.cat([data.epoch_order(generator) for _ in range(4)])]  # independent draws
    shares = torch.bincount(draws) / len(draws)
    # Within 5 standard errors (0.008) of 0.5 each: not 0.48 / 0.52 by size, 10 of them away.
    assert_within_standard_errors(shares, [0.5, 0.5], frequency_standard_error(shares, len(draws)),
                                  what="datasets' shares of 4 epochs")
    with pytest.raises(UserError, match="two or more datasets"):
        LabelledImages(["M1"], "dataset", root=data_root)
    with pytest.raises(UserError, match="multi-label"):
        LabelledImages(["MN2"], "digit", multi_label=True, root=data_root)


def test_short_training_run_beats_chance(data_root, tmp_path):
    """A tiny network at the cpu preset's learning rate, 2 epochs on 512 images, the head on clean images: it reads
    MN2's four cells from held-out test images better than chance."""
    train_joint_diffusion.main(TINY[:7] + ["--gen-idx", "MN2", "--label", "cell", "--epochs", "2", "--lr", "5e-3",
                                           "--batch-size", "32", "--train-subset", "512", "--no-train-noised-classifier",
                                           "--ckpt-dir", str(tmp_path), "--data-root", str(data_root), "--device", "cpu"])
    model = load_labelled_model(tmp_path / "joint_MN2_cell_clean_ckpt_1.pth", VESDE())
    test = LabelledImages(["MN2"], "cell", root=data_root, train=False)
    x, y = test.batch(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:400])
    accuracy = evaluate_joint_diffusion.accuracies(model.log_probs, x, y, [0.0], VESDE(), seed=0)[0]
    # Above chance (0.25) by 5 standard errors of 400 images at chance's spread, i.e. above 0.36: seeds 0-7 of
    # this run read 0.64-0.93, so the training's own spread (which another CPU's rounding draws from) stays clear.
    assert_beyond_standard_errors(accuracy, 0.25, frequency_standard_error(0.25, len(x)), what="accuracy")


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("joint")
    common = TINY + ["--ckpt-dir", str(folder), "--data-root", str(data_root)]
    train_joint_diffusion.main(["--gen-idx", "MN2", "--label", "cell"] + common)
    train_joint_diffusion.main(["--gen-idx", "MN2", "--label", "cell", "--model", "classifier",
                                "--classifier-channels", "8", "16"] + common)
    train_joint_diffusion.main(["--gen-idx", "M1", "M2", "--label", "dataset"] + common)
    return {"cell": folder / "joint_MN2_cell_ckpt_0.pth", "classifier": folder / "classifier_MN2_cell_ckpt_0.pth",
            "dataset": folder / "joint_M1+M2_dataset_ckpt_0.pth", "folder": folder}


def test_training_resume_refuses_other_settings_and_overwrite_guard(tiny_checkpoints, data_root):
    common = TINY + ["--ckpt-dir", str(tiny_checkpoints["folder"]), "--data-root", str(data_root)]
    with pytest.raises(UserError, match="already holds a run of joint_MN2_cell"):
        train_joint_diffusion.main(["--gen-idx", "MN2", "--label", "cell"] + common)
    with pytest.raises(UserError, match="other settings"):
        train_joint_diffusion.main(["--gen-idx", "MN2", "--label", "cell", "--resume", "--lr", "0.5"] + common)


def test_sample_script_writes_samples_and_refuses_bad_classes(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    common = ["--num-samples", "4", "--batch-size", "4", "--num-steps", "3", "--out-dir", str(out), "--device", "cpu"]
    png = sample_joint_diffusion.main(["--joint-ckpt", str(tiny_checkpoints["dataset"]), "--classes", "M1", "M2",
                                       "--sampling-lr", "2"] + common)
    meta = json.loads(png.with_suffix(".json").read_text())
    assert (meta["models"], meta["observations"], meta["score_evaluations_per_sample"]) == (["M1", "M2"], [1, 2], 5)
    assert torch.load(png.with_suffix(".pt")).shape == (4, 3, 28, 28)
    sample_joint_diffusion.main(["--joint-ckpt", str(tiny_checkpoints["cell"]), "--classes", "red 1",
                                 "--classifier-ckpt", str(tiny_checkpoints["classifier"])] + common)
    with pytest.raises(UserError, match="predicts cells"):
        sample_joint_diffusion.main(["--joint-ckpt", str(tiny_checkpoints["cell"]), "--classes", "blue 7"] + common)
    with pytest.raises(UserError, match="not a classifier .* of the labels"):
        sample_joint_diffusion.main(["--joint-ckpt", str(tiny_checkpoints["dataset"]), "--classes", "M1",
                                     "--classifier-ckpt", str(tiny_checkpoints["classifier"])] + common)


def test_evaluation_tables(tiny_checkpoints, tmp_path):
    evaluate_joint_diffusion.main([
        "--joint-cell-ckpt", str(tiny_checkpoints["cell"]), "--cell-classifier-ckpt", str(tiny_checkpoints["classifier"]),
        "--joint-dataset-ckpt", str(tiny_checkpoints["dataset"]), "--num-samples", "2", "--batch-size", "2",
        "--num-steps", "2", "--input-scales", "1", "--bottleneck-lrs", "2", "--noise-levels", "0", "1", "--out-dir", str(tmp_path),
        "--no-update-docs", "--device", "cpu"])
    results = json.loads((tmp_path / "joint_diffusion.json").read_text())
    kinds = [row["kind"] for row in results["accuracy"]["rows"]]
    assert kinds[:3] == ["joint head", "separate classifier", "joint head"] and "sculpting" in kinds[3]
    assert all(len(row["accuracy"]) == 2 for row in results["accuracy"]["rows"])
    names = [row["name"] for row in results["sampling"]["rows"]]
    assert len(names) == 1 + 4 * 4 + 1 + 3 * 2 and "dataset/M1-M2/input-a20" in names
    assert "| own head, bottleneck moved | 2 |" in (tmp_path / "joint_diffusion.md").read_text()
    assert (tmp_path / "samples.png").stat().st_size > 0


def test_evaluate_classifier_reads_a_dataset_head_as_a_product_of_marginals(tiny_checkpoints, tmp_path):
    import evaluate_classifier

    rows = evaluate_classifier.main(["--classifier-ckpt", str(tiny_checkpoints["dataset"]), "--models", "M1", "M2",
                                     "--images-per-cell", "8", "--out-dir", str(tmp_path)])
    for row in rows:
        marginal, joint = torch.tensor(row["marginal"]), torch.tensor(row["joint"])
        assert torch.allclose(joint.sum(dim=1), marginal, atol=1e-5)  # its table is its marginals' product
    with pytest.raises(UserError, match="not which of"):
        evaluate_classifier.main(["--classifier-ckpt", str(tiny_checkpoints["cell"]), "--models", "M1", "M2",
                                  "--out-dir", str(tmp_path)])


def test_features_guidance_needs_a_head_that_reads_every_level():
    with pytest.raises(ValueError, match="bottleneck alone"):
        guided_score(tiny_joint(head_features="bottleneck"), [0], 1.0, "features")


def test_export_is_half_precision_and_never_replaces_the_run_or_a_shipped_file(tiny_checkpoints, tmp_path, data_root,
                                                                             monkeypatch):
    common = TINY + ["--gen-idx", "MN2", "--label", "cell", "--data-root", str(data_root)]
    shipped = tmp_path / "checkpoints" / "joint_MN2_cell_ckpt_23.pth"  # a manifest of tmp_path ships this name
    shipped.parent.mkdir()
    shipped.write_bytes(b"shipped")
    (shipped.parent / "MANIFEST.sha256").write_text(f"{file_sha256(shipped)}  checkpoints/{shipped.name}\n")
    monkeypatch.setattr(checkpoints, "MANIFEST", shipped.parent / "MANIFEST.sha256")
    with pytest.raises(UserError, match="is shipped"):  # refused before any training
        train_joint_diffusion.main(common + ["--epochs", "24", "--ckpt-dir", str(tmp_path / "run"),
                                             "--export-dir", str(shipped.parent)])
    monkeypatch.undo()
    folder = str(tiny_checkpoints["folder"])
    with pytest.raises(UserError, match="would replace the run's own checkpoint"):
        train_joint_diffusion.main(common + ["--ckpt-dir", folder, "--resume", "--export-dir", folder])
    train_joint_diffusion.main(common + ["--ckpt-dir", folder, "--resume", "--export-dir", str(tmp_path)])
    exported = torch.load(tmp_path / "joint_MN2_cell_ckpt_0.pth")
    assert exported["conv1.weight"].dtype == torch.float16 and exported["head._extra_state"] == LABELS
