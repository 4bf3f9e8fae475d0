"""Chained compositions (docs/reference.md §9): a composite of two base models used as a base model. Its names, its
exact target, the chained score on analytic bases against its closed form, and the scripts: a composite loads,
samples, trains a chain classifier and records what it is built from."""
import json

import pytest
import torch

import reproduce
import sample_composition
import sample_individual_model
import train_classifier
from models.classifier_model import JointYClassifier
from models.compositions import BinaryDiffusionComposition
from sculpting.artefacts import composition_stem
from sculpting.checkpoints import classifier_provenance
from sculpting.composites import load_model, model_source, parse_model
from sculpting.errors import UserError
from sculpting.reproduction.report import write_chain_summary
from sculpting.reproduction.stages import chain_rows
from sculpting.sde import VESDE
from sculpting.targets import digit_counts, target_distribution
from tests.analytic import GaussianMixtureBases
from tests.scripts.test_provenance import tiny_base, tiny_classifier

SDE = VESDE()


def test_composite_names_say_which_pair_classifier_and_labels():
    harmonic, contrast, reverse = parse_model("MN3xMN2"), parse_model("MN2-MN3"), parse_model("MN3-MN2")
    assert parse_model("MN2") is None
    assert harmonic.pair == contrast.pair == reverse.pair == ("MN2", "MN3")
    assert (harmonic.observations, contrast.observations, reverse.observations) == ((1, 2), (1, 1), (2, 2))
    assert harmonic.classifier_name == "classifier_MN2_MN3" and parse_model("M2xM1").classifier_name == "classifier"


@pytest.mark.parametrize("name, message", [
    ("MN2+MN3", "unknown model 'MN2+MN3'"),
    ("MN2xMN9", "names unknown model 'MN9'"),
    ("MN2xMN2", "composes MN2 with itself"),
    ("1xM2", "mixes a grey and a coloured dataset"),
])
def test_a_bad_composite_name_is_one_line(name, message):
    with pytest.raises(UserError, match=message.replace("+", r"\+")):
        parse_model(name)


def test_the_chains_exact_target_applies_the_rule_to_the_composites_cells(data_root):
    composite = target_distribution(["MN2", "MN3"], [1, 2])
    assert target_distribution(["MN2xMN3"]) == composite == {(0, "green"): 0.5, (0, "red"): 0.5}
    assert target_distribution(["MN1", "MN2xMN3"], [1, 2]) == {(0, "green"): 1.0}
    # MN1 ◑ (MN2 ⊗ MN3): weight (mean q)^-1 q_1^2 per cell, with q_1 = count / |MN1| and the composite's shares
    counts = digit_counts()
    size = sum(counts[:4])
    weights = {(d, "green"): (counts[d] / size) ** 2 / ((counts[d] / size + composite.get((d, "green"), 0.0)) / 2)
               for d in range(4)}
    expected = {cell: w / sum(weights.values()) for cell, w in weights.items()}
    got = target_distribution(["MN1", "MN2xMN3"], [1, 1])
    assert got.keys() == expected.keys() and all(got[c] == pytest.approx(expected[c]) for c in expected)
    with pytest.raises(UserError, match="names unknown model"):
        target_distribution(["MN1", "MN2xMN4"], [1, 2])


@pytest.mark.parametrize("composite_labels, chain_labels", [((1, 2), (1, 2)), ((1, 1), (1, 2)), ((2, 2), (2, 2))])
def test_a_chain_of_exact_ingredients_is_the_closed_form_chained_score(composite_labels, chain_labels):
    """a ⊗/◑ (b ∘ c) on Gaussian mixtures over shared components: the composite (exact pair classifier, λ = 1) as
    model 2 of a composition under the exact classifier of a against it is the score of the chained composition."""
    means = [[-6.0, 0.0], [-2.0, 0.0], [2.0, 0.0], [6.0, 0.0]]
    a, b, c = [0.4, 0.3, 0.3, 0.0], [0.0, 0.5, 0.3, 0.2], [0.2, 0.0, 0.4, 0.4]
    pair = GaussianMixtureBases(means, [b, c], 0.5, SDE)
    composite = BinaryDiffusionComposition([pair.score_model(0), pair.score_model(1)], pair.joint_classifier(),
                                           *composite_labels, guidance_scale=1.0)
    chain_bases = GaussianMixtureBases(means, [a, pair.composition_weights(composite_labels).tolist()], 0.5, SDE)
    chain = BinaryDiffusionComposition([chain_bases.score_model(0), composite], chain_bases.joint_classifier(),
                                       *chain_labels, guidance_scale=1.0)
    closed_form = chain_bases.mixture_score(chain_bases.composition_weights(chain_labels))
    generator = torch.Generator().manual_seed(0)
    x = 6 * torch.randn(64, 2, generator=generator)
    t = torch.rand(64, generator=generator) * 0.9 + 0.05
    torch.testing.assert_close(chain(x, t), closed_form(x, t), rtol=1e-3, atol=1e-3)


@pytest.fixture
def composite_files(tmp_path):
    """Tiny MN1, MN2, MN3 and the MN2/MN3 pair classifier, as a chain reads them."""
    bases = [(g, tiny_base(tmp_path / f"gen_{g}_ckpt_195.pth", seed)) for seed, g in enumerate(("MN1", "MN2", "MN3"))]
    tiny_classifier(tmp_path / "classifier_MN2_MN3_ckpt_200.pth", JointYClassifier, classifier_provenance(bases[1:]))
    return tmp_path


def sample_args(folder, *extra):
    return ["--gen-ckpt-dir", str(folder), "--num-samples", "2", "--num-steps", "2", "--sampler", "heun-churn",
            "--out-dir", str(folder / "out"), "--device", "cpu", *extra]


def test_a_composite_samples_trains_a_chain_classifier_and_records_its_parts(composite_files):
    folder = composite_files
    sample_individual_model.main(sample_args(folder, "--gen-idx", "MN2xMN3"))
    record = json.loads((folder / "out" / "individual_MN2xMN3.json").read_text())
    parts = record["checkpoints"][0]["composite"]
    assert [entry["name"] for entry in parts["base_models"]] == ["MN2", "MN3"]
    assert parts["observations"] == [1, 2] and parts["guidance"] == 20.0
    assert parts["classifier"]["checkpoint"].endswith("classifier_MN2_MN3_ckpt_200.pth")

    chain = ["--gen-idx-1", "MN1", "--gen-idx-2", "MN3-MN2", "--gen-ckpt-dir", str(folder), "--ckpt-dir",
             str(folder / "run"), "--classifier-name", "chain", "--device", "cpu", "--steps", "1", "--batch-size", "2",
             "--pool-size", "2", "--trajectory-steps", "3", "--test-samples", "2", "--sampler", "heun-churn",
             "--classifier-channels", "4", "4", "--embed-dim", "8", "--t-embed-dim", "8"]
    train_classifier.main(chain)
    sidecar = json.loads((folder / "run" / "chain_ckpt_1.pth.provenance.json").read_text())
    assert [entry["name"] for entry in sidecar["base_models"]] == ["MN1", "MN3-MN2"]
    assert sidecar["base_models"][1]["composite"]["observations"] == [2, 2]

    classifier = str(folder / "run" / "chain_ckpt_1.pth")
    chained = sample_args(folder, "--gen-idx-1", "MN1", "--gen-idx-2", "MN3-MN2", "--y-1", "1", "--y-2", "2",
                          "--classifier-ckpt", classifier)
    sample_composition.main(chained)
    samples = torch.load(folder / "out" / "composition_MN1_MN3-MN2_y1-1_y2-2_g20.pt")
    assert samples.shape == (2, 3, 28, 28) and torch.isfinite(samples).all()
    # The same composite at another guidance is another model: the chain classifier was not trained on it.
    with pytest.raises(UserError, match="was trained on MN3-MN2"):
        sample_composition.main(chained + ["--composite-guidance", "5", "--overwrite"])


def test_a_composite_is_its_files_contents_wherever_they_lie_and_however_it_is_spelt(composite_files, tmp_path_factory):
    moved = tmp_path_factory.mktemp("moved")
    for path in composite_files.glob("*.pth*"):
        (moved / path.name).write_bytes(path.read_bytes())
    sources = [model_source("MN2xMN3", folder, 195) for folder in (composite_files, moved)]
    assert sources[0].sha256() == sources[1].sha256() == model_source("MN3xMN2", moved, 195).sha256()
    assert sources[0].sha256() != model_source("MN2xMN3", moved, 195, guidance=5.0).sha256()
    (moved / "gen_MN3_ckpt_195.pth").unlink()  # a part missing: the loader's one line, not a traceback
    with pytest.raises(UserError, match="gen_MN3_ckpt_195.pth not found"):
        load_model(model_source("MN2xMN3", moved, 195), SDE, "cpu")
    with pytest.raises(UserError, match="--gen-idx-1 and --gen-idx-2 name the same model MN3xMN2"):
        train_classifier.main(["--gen-idx-1", "MN2xMN3", "--gen-idx-2", "MN3xMN2", "--device", "cpu"])


def test_a_composite_without_its_pair_classifier_says_how_to_train_it(composite_files):
    (composite_files / "classifier_MN2_MN3_ckpt_200.pth").unlink()
    with pytest.raises(UserError, match="train it with train_classifier.py --gen-idx-1 MN2 --gen-idx-2 MN3 "
                                        "--classifier-name classifier_MN2_MN3"):
        sample_individual_model.main(sample_args(composite_files, "--gen-idx", "MN2-MN3"))


def test_the_chain_group_runs_each_stage_after_what_it_reads(tmp_path, capsys):
    pipeline = reproduce.main(["--group", "chains", "--dry-run", "--run-dir", str(tmp_path / "run"), "--base-dir",
                               str(tmp_path / "bases")])
    names = [stage.name for stage in pipeline.stages]
    for position, stage in enumerate(pipeline.stages):
        assert all(names.index(needed) < position for needed in stage.after), stage.name
    # The group's stage names are its own: it shares the run dir's logs and timings with the showcase's stages.
    assert all(name.startswith("chains: ") for name in names)
    names = [name[len("chains: "):] for name in names]
    needs = {name: {needed[len("chains: "):] for needed in stage.after} for name, stage in zip(names, pipeline.stages)}
    commands = {name: " ".join(stage.command) for name, stage in zip(names, pipeline.stages)}
    assert sum(name.startswith("chain classifier") for name in names) == 9
    assert sum(name.startswith("evaluate composition") for name in names) == 27 == len(chain_rows())
    assert needs["chain classifier MN1/MN3-MN2"] == {"classifier MN2/MN3"}
    assert needs["sample composition_MN1_MN3-MN2_y1-2_y2-2_g20"] == {"chain classifier MN1/MN3-MN2"}
    assert needs["evaluate composition_MN1_MN3-MN2_y1-2_y2-2_g20"] == {
        "sample composition_MN1_MN3-MN2_y1-2_y2-2_g20", "evaluate individual MN1", "evaluate individual MN3-MN2"}
    chained = commands["sample composition_MN1_MN3-MN2_y1-2_y2-2_g20"]
    assert "--gen-idx-2 MN3-MN2" in chained and "chain_MN1_MN3-MN2_ckpt_200.pth" in chained
    assert f"--gen-ckpt-dir {tmp_path / 'bases'}" in chained and "--composite-guidance 20" in chained
    assert "--classifier-name classifier_MN2_MN3" in commands["classifier MN2/MN3"]
    assert all(path.parent == tmp_path / "run" / "chain_results" for name, stage in zip(names, pipeline.stages)
               if name.startswith("sample") for path in stage.outputs)


def test_the_chain_summary_gives_each_row_and_the_3way_comparison(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir, three_way_dir = tmp_path / "results" / "chains", tmp_path / "results" / "cpu"
    out_dir.mkdir(parents=True)
    three_way_dir.mkdir()
    report = {"num_samples": 256, "support_precision": 0.97, "support_precision_ci": [0.95, 0.98],
              "tv_distance": 0.03, "tv_distance_ci": [0.02, 0.05], "tv_of_exact_samples": {"mean": 0.0},
              "unrecognisable_share": 0.02, "plug_in_target": {"support_precision": 0.9, "tv_distance": 0.1,
                                                                 "tv_distance_ci": [0.08, 0.12]}}
    stem = composition_stem(["MN1", "MN2xMN3"], [1, 2], [20.0])
    (out_dir / f"{stem}_eval.json").write_text(json.dumps(report))
    (three_way_dir / "composition_MN1_MN2_MN3_y1-1_y2-2_y3-3_g10_g75_eval.json").write_text(
        json.dumps({**report, "support_precision": 0.959, "tv_distance": 0.041}))
    text = write_chain_summary(out_dir, three_way_dir, {"chains: chain classifier MN1/MN2xMN3": 300.2}).read_text()
    assert "| MN1 ⊗ (MN2 ⊗ MN3) | MN1 | MN2xMN3 | (1, 2) | 256 | 97.0% (95.0%–98.0%) | 0.030 (0.020–0.050) |" in text
    assert "| 90.0% | 0.100 (0.080–0.120) |" in text and text.count("pending") == 26 + 2  # 2 comparisons pending
    comparison = "| MN1 ⊗ (MN2 ⊗ MN3) | green 0 100.0% | green 0 100.0% | 0.000 | 97.0%; 0.030 | 95.9%; 0.041 |"
    assert comparison in text
    assert "| chains: chain classifier MN1/MN2xMN3 | 300 |" in text
    # --summary-only, without the run dir's timings, keeps the times an earlier call measured.
    assert write_chain_summary(out_dir, three_way_dir, {}).read_text().endswith("| chains: chain classifier "
                                                                               "MN1/MN2xMN3 | 300 |\n")
