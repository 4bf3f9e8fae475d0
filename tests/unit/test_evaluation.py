"""Composition metrics on synthetic cell lists, and evaluate_composition.py end to end on real test digits."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sculpting.errors import UserError
from custom_datasets import colour_images, load_mnist
from evaluate_composition import main
from sculpting.evaluation import CI_LEVEL, UNRECOGNISABLE, composition_metrics
from tests.analytic import assert_within_standard_errors, frequency_standard_error

RED0, GREEN0, GREEN1 = (0, "red"), (0, "green"), (1, "green")


def rows_by_cell(metrics):
    return {row["cell"]: row for row in metrics["cells"]}


def test_metrics_by_hand():
    cells = [RED0] * 5 + [GREEN1] * 2 + [UNRECOGNISABLE]
    metrics = composition_metrics(cells, {RED0: 0.5, GREEN0: 0.5}, bootstrap=200)
    assert [row["cell"] for row in metrics["cells"]] == ["red 0", "green 0", "green 1", UNRECOGNISABLE]
    assert [row["count"] for row in metrics["cells"]] == [5, 0, 2, 1]
    assert metrics["support_precision"] == pytest.approx(5 / 8)
    assert metrics["unrecognisable_share"] == pytest.approx(1 / 8)
    # 1/2 (|5/8 - 1/2| + |0 - 1/2| + 2/8 + 1/8)
    assert metrics["tv_distance"] == pytest.approx(0.5)


def test_samples_in_exact_proportion_have_no_error():
    metrics = composition_metrics([RED0] * 3 + [GREEN0], {RED0: 0.75, GREEN0: 0.25}, bootstrap=200)
    assert metrics["tv_distance"] == pytest.approx(0.0)
    assert metrics["support_precision"] == 1.0 and metrics["support_precision_ci"] == [1.0, 1.0]
    assert rows_by_cell(metrics)[UNRECOGNISABLE]["measured"] == 0.0


def test_intervals_are_ordered_and_seeded():
    rng = np.random.default_rng(1)
    options = [RED0, GREEN0, GREEN1, UNRECOGNISABLE]
    cells = [options[i] for i in rng.choice(4, size=64, p=[0.5, 0.2, 0.2, 0.1])]
    target = {RED0: 0.66, GREEN0: 0.34}
    metrics = composition_metrics(cells, target, bootstrap=500, seed=3)
    low, high = metrics["support_precision_ci"]
    assert low <= metrics["support_precision"] <= high and low < high
    low, high = metrics["tv_distance_ci"]
    assert 0.0 <= low <= metrics["tv_distance"] <= high <= 1.0
    for row in metrics["cells"]:
        assert row["measured_ci"][0] <= row["measured"] <= row["measured_ci"][1]
    assert composition_metrics(cells, target, bootstrap=500, seed=3) == metrics


@pytest.mark.parametrize("name, true_value", [("support_precision", 0.8), ("tv_distance", 0.3)])
def test_intervals_cover_the_truth(name, true_value):
    # Samples from q = (0.4 red 0, 0.4 green 0, 0.2 green 1) against target (0.7, 0.3):
    # precision 0.8, TV 1/2 (0.3 + 0.1 + 0.2) = 0.3, far from 0 so the TV bootstrap is nearly unbiased.
    rng = np.random.default_rng(0)
    options, target = [RED0, GREEN0, GREEN1], {RED0: 0.7, GREEN0: 0.3}
    repeats, covered = 400, 0
    for repeat in range(repeats):
        cells = [options[i] for i in rng.choice(3, size=200, p=[0.4, 0.4, 0.2])]
        low, high = composition_metrics(cells, target, bootstrap=400, seed=repeat)[f"{name}_ci"]
        covered += low <= true_value <= high
    # The coverage, a frequency of independent repeats, within 5 standard errors of the nominal level (over 1000
    # repeats it measured 0.952 and 0.949: no allowance for the percentile bootstrap's bias).
    coverage = covered / repeats
    assert_within_standard_errors(coverage, CI_LEVEL, frequency_standard_error(coverage, repeats),
                                  what=f"{name} interval coverage")


def test_exact_sample_tv_shrinks_with_more_samples():
    target = {RED0: 0.66, GREEN0: 0.34}
    few = composition_metrics([RED0] * 10, target, bootstrap=500)["tv_of_exact_samples"]
    many = composition_metrics([RED0] * 1000, target, bootstrap=500)["tv_of_exact_samples"]
    assert many["mean"] < few["mean"] <= few["upper"]


def real_samples(data_root, cells, channels):
    """Test-split digits put into the given (digit, colour) cells; None gives a blank image."""
    images, labels = load_mnist(data_root, train=False)
    used = {}
    samples = []
    for cell in cells:
        if cell is None:
            samples.append(torch.zeros(1, channels, 28, 28, dtype=torch.uint8))
            continue
        digit, colour = cell
        index = used.get(digit, 0)
        used[digit] = index + 1
        samples.append(colour_images(images[labels == digit][index:index + 1], colour, channels))
    return torch.cat(samples).float() / 255.0


def write_samples(folder, samples, meta=None):
    path = folder / "samples.pt"
    torch.save(samples, path)
    if meta is not None:
        (folder / "samples.json").write_text(json.dumps(meta))
    return path


def test_end_to_end_coloured(data_root, tmp_path):
    samples = real_samples(data_root, [RED0] * 6 + [GREEN0] * 3 + [GREEN1] * 2 + [None], channels=3)
    meta = {"kind": "composition", "models": ["M1", "M2"], "observations": [1, 1], "guidance_scales": [20.0]}
    path = write_samples(tmp_path, samples, meta)
    report = main(["--samples", str(path), "--bootstrap", "200"])
    rows = rows_by_cell(report)
    assert {name: rows[name]["count"] for name in rows} == {"red 0": 6, "green 0": 3, "green 1": 2,
                                                             UNRECOGNISABLE: 1}
    assert rows["red 0"]["target"] == pytest.approx(0.659, abs=1e-3)
    assert report["support_precision"] == pytest.approx(9 / 12)
    assert report["unrecognisable_reasons"] == {"blank": 1, "mixed colour": 0, "uncertain digit": 0}
    saved = json.loads((tmp_path / "samples_eval.json").read_text())
    assert saved["tv_distance"] == pytest.approx(report["tv_distance"])
    assert (tmp_path / "samples_eval.png").stat().st_size > 0


def test_end_to_end_grey_with_flags_and_out_dir(data_root, tmp_path):
    grey = [(4, "grey")] * 3 + [(5, "grey")] * 2 + [(9, "grey")]
    path = write_samples(tmp_path, real_samples(data_root, grey, channels=1))  # no json: flags supply it
    out_dir = tmp_path / "eval"
    report = main([str(path), "--models", "1", "2", "--observations", "1", "2",
                   "--bootstrap", "200", "--out-dir", str(out_dir)])
    assert {row["cell"]: row["count"] for row in report["cells"]} == {"grey 4": 3, "grey 5": 2, "grey 9": 1,
                                                                      UNRECOGNISABLE: 0}
    assert report["support_precision"] == pytest.approx(5 / 6)
    assert (out_dir / "samples_eval.png").is_file()


@pytest.mark.parametrize("meta, flags, message", [
    (None, [], "pass --models"),
    ({"models": ["M1", "M2"], "observations": [1, 3]}, [], "out of range"),
    ({"models": ["M1", "M9"], "observations": [1, 2]}, [], "unknown model 'M9'"),
    ({"models": ["1", "2"], "observations": [1, 2]}, [], "channel"),
    ({"models": ["M1", "M2"]}, ["--observations", "one"], "integer"),
])
def test_bad_input_is_a_user_error(tmp_path, meta, flags, message):
    path = write_samples(tmp_path, torch.zeros(2, 3, 28, 28), meta)
    with pytest.raises(UserError, match=message):
        main(["--samples", str(path), *flags])


def test_missing_samples_exit_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "evaluate_composition.py", "--samples", str(tmp_path / "none.pt")],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "not found" in result.stderr


def evaluate_base_model(data_root, folder, model, cells):
    """The _eval.json of a base model's 'samples': real test digits in the given cells (None: blank)."""
    folder.mkdir()
    path = write_samples(folder, real_samples(data_root, cells, channels=1), {"kind": "individual", "models": [model]})
    main([str(path), "--bootstrap", "50"])
    return str(folder / "samples_eval.json")


def test_plug_in_target_is_the_composition_of_the_base_models_as_they_sample(data_root, tmp_path):
    four, blank = (4, "grey"), None
    base = [evaluate_base_model(data_root, tmp_path / "1", "1", [four, four, (1, "grey"), blank]),
            evaluate_base_model(data_root, tmp_path / "2", "2", [four, (7, "grey"), blank, blank])]
    samples = real_samples(data_root, [four] * 3 + [(5, "grey")] * 2 + [(9, "grey")], channels=1)
    path = write_samples(tmp_path, samples, {"models": ["1", "2"], "observations": [1, 2]})
    report = main([str(path), "--bootstrap", "200", "--base-evaluations", *base])
    plug_in = report["plug_in_target"]
    # (1, 2): q1 q2 / mean(q) per cell. 4: (1/2)(1/4) / (3/8) = 1/3; unrecognisable: (1/4)(1/2) / (3/8) = 1/3;
    # 1 and 7 are drawn by one model only.
    assert plug_in["cells"] == pytest.approx({"grey 4": 0.5, UNRECOGNISABLE: 0.5})
    assert plug_in["support_precision"] == pytest.approx(0.5)  # the exact target is 4 and 5
    assert plug_in["tv_distance"] == pytest.approx(0.5 * (0 + 2 / 6 + 1 / 6 + 0.5))
    assert plug_in["base_samples"] == [4, 4]
    assert report["support_precision"] == pytest.approx(5 / 6)  # the exact target's metrics are unchanged

    with pytest.raises(UserError, match="one _eval.json per base model"):
        main([str(path), "--base-evaluations", base[0]])
    with pytest.raises(UserError, match="not of base model 1"):
        main([str(path), "--base-evaluations", base[1], base[1]])
