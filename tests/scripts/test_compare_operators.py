"""compare_operators.py: one row end to end on the committed checkpoints (2 samples), reuse, and bad input."""
import json

import pytest

import compare_operators
from sculpting.errors import UserError


def test_one_row_is_scored_saved_and_reused(data_root, tmp_path):
    args = ["--num-samples", "2", "--batch-size", "2", "--only", "M1_M2/superdiff-or", "--out-dir", str(tmp_path),
            "--ingredients", "learned"]
    compare_operators.main(args)
    row = json.loads((tmp_path / "M1_M2_superdiff-or.json").read_text())
    assert row["target_kind"].startswith("exact") and set(row["target"]) == {"green 0", "green 1", "red 0"}
    assert row["score_evaluations_per_sample"] == compare_operators.EM_STEPS == 100
    assert 0 <= row["support_precision"] <= 1 and row["cpu_capability"]
    assert (tmp_path / "M1_M2_superdiff-or.png").is_file() and (tmp_path / "operators.png").is_file()
    saved = (tmp_path / "M1_M2_superdiff-or.pt").stat().st_mtime_ns
    compare_operators.main(args)  # unchanged settings: the row is reused, not resampled
    assert (tmp_path / "M1_M2_superdiff-or.pt").stat().st_mtime_ns == saved
    assert "superdiff-or" in (tmp_path / "operators.md").read_text()


def test_the_exact_column_runs_operators_on_exact_bases_with_their_energies(data_root, tmp_path):
    args = ["--exact-num-samples", "2", "--batch-size", "2", "--only", "M1_M2/(rrr-mala|composable-and-energy)",
            "--out-dir", str(tmp_path), "--ingredients", "exact"]
    compare_operators.main(args)
    row = json.loads((tmp_path / "M1_M2_rrr-mala_exact.json").read_text())  # the Metropolis test on exact energies
    assert row["settings"]["ingredients"] == "exact" and row["settings"]["num_samples"] == 2
    assert 0 <= sum(row["acceptance_rate"]) / len(row["acceptance_rate"]) <= 1
    assert not (tmp_path / "M1_M2_composable-and-energy_exact.json").exists()  # its exact twin is composable-and
    assert not (tmp_path / "M1_M2_rrr-mala.json").exists()
    table = (tmp_path / "operators.md").read_text()
    assert "exact bases" in table and "n = 2" in table


def test_targets_of_the_rows(data_root):
    kinds = {(suite, method): compare_operators.target_of(models, operator, how)
             for suite, (models, methods) in compare_operators.SUITES.items() for method, operator, how in methods}
    assert kinds[("M1_M2", "sculpting-harmonic")] == ({(0, "green"): 1.0}, kinds[("M1_M2", "fkc-smc")][1])
    assert kinds[("M1_M2", "superdiff-and")][1].startswith("intended")
    assert kinds[("M1_M2", "composable-not-w1")] == ({(0, "red"): 1.0}, kinds[("M1_M2", "composable-not-w1")][1])
    assert list(kinds[("M1_M2", "sculpting-contrast")][0]) == [(0, "red"), (0, "green")]
    assert kinds[("MN1_MN2_MN3", "sculpting-123")][0] == {(0, "green"): 1.0}


@pytest.mark.parametrize("args, message", [
    (["--only", "M1_M2/nothing"], "matches no row"),
    (["--plot-only", "--only", "M1_M2/fkc-smc"], "holds no rows yet"),
])
def test_bad_input_is_a_user_error(tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        compare_operators.main(args + ["--out-dir", str(tmp_path)])
