"""A fast path can never silently change results: checked once against eager float32, it falls back when it
disagrees; --compile auto keeps the faster path by measurement; no non-finite sample, pool or loss is kept."""
import json

import pytest
import torch
import torch.nn as nn

import sample_individual_model
import train_diffusion
from sculpting.errors import UserError
from models import fast_paths
from models.fast_paths import FAST_PATH_TOLERANCE, FastScore, fast_path_report, fast_score_model, fast_score_models
from models.score_model import ScoreNet
from sculpting.sde import VESDE

SDE = VESDE()
X = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 5
T = torch.full((4,), 0.9)


def tiny_score_net():
    torch.manual_seed(0)
    return ScoreNet(SDE.marginal_prob_std, (32, 32, 32, 32), embed_dim=16, input_channels=3)


class Corrupted(nn.Module):
    """A fast path gone wrong: the right network, a wrong score (scaled, or NaN)."""

    def __init__(self, network, corrupt):
        super().__init__()
        self.network, self.corrupt = network, corrupt
        self.input_channels = network.input_channels

    def forward(self, x, t):
        return self.corrupt(self.network(x, t))


def fails_to_build(score):
    raise RuntimeError("C++ compile error\nmore lines")


@pytest.mark.parametrize("corrupt, reason", [(lambda score: score * 1.5, "relative error"),
                                             (lambda score: score.index_fill(0, torch.tensor([2]), float("nan")),
                                              "not finite"),
                                             (fails_to_build, "raised RuntimeError: C++ compile error")])
def test_a_fast_path_that_disagrees_falls_back_to_eager_float32(monkeypatch, capsys, corrupt, reason):
    network = tiny_score_net()
    expected = network(X, T)
    monkeypatch.setattr(fast_paths, "apply_fast_path", lambda model, networks, precision: Corrupted(model, corrupt))
    checked = fast_score_model(network, [], compile="off", precision="bfloat16")
    assert isinstance(checked, FastScore)
    torch.testing.assert_close(checked(X, T), expected, rtol=0, atol=0)  # eager float32's bits
    torch.testing.assert_close(checked(X, T * 0.5), network(X, T * 0.5), rtol=0, atol=0)  # and from then on
    report = fast_path_report(checked)
    assert report["ran"] == "eager float32" and reason in report["rejected"]["eager bfloat16"]
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: the fast path disagrees with eager float32")


def test_an_agreeing_bfloat16_path_is_kept_within_its_tolerance():
    network = tiny_score_net()
    expected = network(X, T)
    checked = fast_score_model(network, [network], compile="off", precision="bfloat16")
    score = checked(X, T)
    assert checked.report()["ran"] == "eager bfloat16" and checked.report()["rejected"] == {}
    relative_error = float((score - expected).detach().norm() / expected.detach().norm())
    assert 0 < relative_error <= FAST_PATH_TOLERANCE["bfloat16"]  # reduced precision did act, within its bound


def test_score_models_sharing_networks_share_one_decision(monkeypatch):
    """The conditional classifier's pools: several score models over the same networks, decided once."""
    network = tiny_score_net()
    monkeypatch.setattr(fast_paths, "apply_fast_path",
                        lambda model, networks, precision: Corrupted(model, lambda score: score + 1.0))
    first, second = fast_score_models([network, network], [], compile="off", precision="bfloat16")
    first(X, T)
    assert not second.decision.use_fast and second.report()["ran"] == "eager float32"
    torch.testing.assert_close(second(X, T), network(X, T), rtol=0, atol=0)


def test_eager_float32_is_returned_unwrapped():
    network = tiny_score_net()
    assert fast_score_model(network, [network], compile="off", precision="float32") is network
    assert fast_path_report(network)["ran"] == "eager float32"


COMPILING_SECONDS = 30.0


@pytest.fixture
def scripted_timer(monkeypatch):
    """Replaces the timer and the compile switch: an eager evaluation takes 1 s, a compiled one `seconds["compiled"]`,
    and the first compiled call COMPILING_SECONDS more. Records the switches."""
    seconds, switches, compiled_calls = {"compiled": None}, [], []
    monkeypatch.setattr(fast_paths, "set_compiled", lambda networks, compiled: switches.append(compiled))

    def timed(call):
        if not switches[-1]:
            return call(), 1.0
        compiled_calls.append(1)
        return call(), seconds["compiled"] + (COMPILING_SECONDS if len(compiled_calls) == 1 else 0.0)

    monkeypatch.setattr(fast_paths, "timed", timed)
    return seconds, switches


@pytest.mark.parametrize("compiled_seconds, expected_calls, keeps", [
    (0.4, None, "compiled"),  # faster per evaluation, run length unknown: compiling is taken to pay off
    (2.5, None, "eager"),
    (0.4, 1000, "compiled"),  # 30 s + 400 s against 1000 s
    (0.4, 40, "eager")])  # 30 s + 16 s against 40 s: too short a run to win the compiling back
def test_compile_auto_keeps_the_faster_path_by_measurement(scripted_timer, capsys, compiled_seconds, expected_calls,
                                                           keeps):
    seconds, switches = scripted_timer
    seconds["compiled"] = compiled_seconds
    network = tiny_score_net()
    checked = fast_score_model(network, [network], compile="auto", precision="float32", expected_calls=expected_calls)
    checked(X, T)
    report = checked.report()
    assert report["ran"] == f"{keeps} float32"
    assert report["compiled_over_eager"] == compiled_seconds and report["compile_seconds"] == COMPILING_SECONDS
    assert switches == [False, True, keeps == "compiled"]  # timed eager, then compiled, then kept the faster
    printed = capsys.readouterr().err
    assert f"compiled/eager time per score evaluation {compiled_seconds:.2f}" in printed
    assert printed.strip().endswith(f"{keeps} kept")


def test_compile_on_switches_the_networks_to_compiled_and_back():
    network = tiny_score_net()
    fast_paths.set_compiled([network], True)
    assert fast_paths.is_compiled(network)
    fast_paths.set_compiled([network], False)
    assert not fast_paths.is_compiled(network)
    assert list(network.state_dict()) == list(tiny_score_net().state_dict())  # checkpoints load either way


def test_compiled_code_is_cached_per_kernel_set(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    fast_paths.use_cache_of_this_kernel_set()
    assert fast_paths.os.environ["TORCHINDUCTOR_CACHE_DIR"].endswith("_avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/chosen")  # the user's own choice stays
    fast_paths.use_cache_of_this_kernel_set()
    assert fast_paths.os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/chosen"


def test_older_compile_settings_are_read_and_others_refused():
    assert fast_paths.compile_setting(True) == "on" and fast_paths.compile_setting(False) == "off"
    with pytest.raises(ValueError, match="compile must be one of"):
        fast_paths.compile_setting("sometimes")


# ---- no non-finite number is saved or scored ----

@pytest.fixture
def tiny_base_model(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(tiny_score_net().state_dict(), folder / "gen_M2_ckpt_0.pth")
    return folder


def test_a_sample_script_writes_nothing_when_samples_are_not_finite(monkeypatch, tiny_base_model, tmp_path):
    from sculpting import sampling

    real = sampling.sample_in_batches

    def with_nan(*args, **kwargs):
        samples = real(*args, **kwargs)
        return samples.index_fill(0, torch.tensor([0]), float("inf"))

    monkeypatch.setattr(sampling, "sample_in_batches", with_nan)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^1 of 2 samples contain NaN or Inf; nothing was written; try --compile "
                                        r"off or --precision float32$"):
        sample_individual_model.main(["--gen-idx", "M2", "--gen-ckpt-dir", str(tiny_base_model), "--gen-ckpt-epoch",
                                      "0", "--num-samples", "2", "--num-steps", "3", "--sampler", "heun-churn",
                                      "--device", "cpu", "--out-dir", str(out)])
    assert not out.exists() or not any(out.iterdir())


def test_epoch_0_checkpoint_samples_and_the_fast_path_is_recorded(tiny_base_model, tmp_path):
    png = sample_individual_model.main(["--gen-idx", "M2", "--gen-ckpt-dir", str(tiny_base_model), "--gen-ckpt-epoch",
                                        "0", "--num-samples", "2", "--num-steps", "3", "--sampler", "heun-churn",
                                        "--device", "cpu", "--out-dir", str(tmp_path / "out"), "--precision",
                                        "bfloat16"])
    meta = json.loads(png.with_suffix(".json").read_text())
    assert meta["fast_path"]["ran"] == "eager bfloat16" and meta["fast_path"]["precision"] == "bfloat16"


def test_a_non_finite_training_loss_stops_with_the_last_finite_state(data_root, tmp_path, monkeypatch):
    args = ["--gen-idx", "M1", "--channels", "32", "32", "32", "32", "--embed-dim", "16", "--train-subset", "64",
            "--batch-size", "32", "--epochs", "1", "--ckpt-dir", str(tmp_path), "--data-root", str(data_root),
            "--device", "cpu"]
    real_loss, calls = train_diffusion.denoising_score_matching_loss, []

    def nan_at_second_step(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train_diffusion, "denoising_score_matching_loss", nan_at_second_step)
    state_file = tmp_path / "gen_M1_train_state.pth"
    with pytest.raises(UserError, match=r"^the loss became \[nan\] at epoch 0 step 2 of 2; the state before it is "
                                        r"saved to .*gen_M1_train_state.pth \(--resume continues from it\)"):
        train_diffusion.main(args)
    state = torch.load(state_file, weights_only=False)
    assert state["position"] == 1 and all(torch.isfinite(value).all() for value in state["model"].values())
    monkeypatch.undo()
    train_diffusion.main(args + ["--resume"])  # continues from the last finite step
    assert (tmp_path / "gen_M1_ckpt_0.pth").is_file()
