"""evaluate_classifier.py --trajectories: a classifier against the exact posterior along the sampler's trajectories."""
import json

import pytest

import evaluate_classifier
from sculpting.exact import exact_ingredients

ARGS = ["--classifier-ckpt", "checkpoints/classifier_ckpt_200.pth", "--models", "M1", "M2", "--trajectories", "2",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def exact_pair(data_root):
    return exact_ingredients(["M1", "M2"], root=data_root)


def test_the_exact_classifier_meets_itself_along_the_trajectories(exact_pair):
    """The comparison's own machinery: the exact posterior against itself has no error and gradients that agree."""
    _, exact, _ = exact_pair
    config = {"DEVICE": "cpu", "GEN_CKPT_DIR": "checkpoints", "SEED": 0}
    rows = evaluate_classifier.along_trajectories(exact, ["M1", "M2"], 2, config)
    assert len(rows) == 40 and rows[0]["t"] == pytest.approx(1.0) and rows[-1]["sigma"] < rows[0]["sigma"]
    for row in rows:
        assert row["mean_abs_error"] == 0.0
        for pair in ("y=(1,1)", "y=(1,2)", "y=(2,2)"):
            assert row[pair]["cosine"] == pytest.approx(1.0, abs=1e-5) and row[pair]["norm_ratio"] == pytest.approx(1.0)


def test_the_shipped_classifier_along_the_trajectories_is_written(tmp_path):
    rows = evaluate_classifier.main([*ARGS, "--out-dir", str(tmp_path)])
    written = json.loads((tmp_path / "classifier_ckpt_200_trajectories.json").read_text())
    assert written["levels"] == rows and written["models"] == ["M1", "M2"]
    assert all(0.0 <= row["mean_abs_error"] <= 1.0 and -1.0 <= row["y=(1,2)"]["cosine"] <= 1.0 for row in rows)
